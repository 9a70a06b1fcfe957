"""Converting a torchvision-style ImageFolder tree (``src/<class>/<image>``) into a dataset."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import LMDBDatasetError, SourceImageError, printable
from ..storage.environment import DATA_FILE, load_metadata
from ..storage.format import DatasetInfo
from ..storage.system import available_cpus
from .folder import image_folder_samples
from .parallel import ordered_map
from .shaping import Shaping
from .writer import LMDBWriter, build_shaped_record, check_shaping


@dataclasses.dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_image_folder` did.

    Attributes:
        path: The dataset written.
        num_records: Records in the finished dataset.
        skipped: Source files left out (``skip_bad``), as ``{"path": ..., "error": ...}``.
        converted: Source files processed by this call (fewer than all when resumed).
        seconds: Wall time of this call.
        bytes_read: Bytes of source files read by this call.
        skipped_indices: For an image folder, the ``ImageFolder(src)`` index of each skipped
            file, ascending. Sample ``i`` of the dataset is ImageFolder's sample ``j``, found by
            starting from ``j = i`` and adding one for each skipped index, in ascending order,
            that is at most ``j``. Empty for other sources.
    """

    path: Path
    num_records: int
    skipped: list[dict[str, str]]
    converted: int
    seconds: float
    bytes_read: int
    skipped_indices: list[int] = dataclasses.field(default_factory=list)


ORDERS = ("shuffled", "folder")
"""Physical record orders ``convert_image_folder(order=...)`` writes."""


def write_plan(paths: Sequence[str], *, order: str, seed: int) -> np.ndarray:
    """The source indices in the order their records are written.

    ``"folder"`` keeps the given (ImageFolder) order. ``"shuffled"`` sorts the sources by a
    hash of their path keyed by ``seed``: a seeded random permutation that stays the same
    for the remaining files when some are removed, so a conversion can be resumed after
    deleting a bad file.

    Args:
        paths: Relative source paths, in ImageFolder order.
        order: ``"shuffled"`` or ``"folder"``.
        seed: Non-negative integer below 2**64, the key of the shuffle.

    Raises:
        ValueError: ``order`` or ``seed`` is not valid.
    """
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is not supported; use one of {', '.join(ORDERS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**64)")
    if order == "folder":
        return np.arange(len(paths), dtype=np.int64)
    key = int(seed).to_bytes(8, "little")
    ranks = np.fromiter((int.from_bytes(hashlib.blake2b(os.fsencode(p), key=key, digest_size=8).digest(), "little")
                         for p in paths), dtype=np.uint64, count=len(paths))
    return np.argsort(ranks, kind="stable").astype(np.int64)


def check_destination(src: Path, dst: str | os.PathLike) -> None:
    """Refuse a destination that is the source directory or lies inside it.

    A dataset written inside an image folder becomes one more "class folder" (without images)
    for ``ImageFolder(src)`` and for every later conversion of ``src``, which then fail.

    Raises:
        ValueError: ``dst`` is ``src`` or inside it.
    """
    target = Path(dst).resolve()
    if src.is_dir() and (target == src or src in target.parents):
        raise ValueError(f"the destination {str(dst)!r} is inside the source {str(src)!r}: it would become part "
                         "of the source (a class folder without images for ImageFolder and every later "
                         "conversion); write it outside, e.g. next to the source folder")


def resumable(dst: str | os.PathLike, resume: bool) -> bool:
    """``resume``, unless there is nothing at ``dst`` to resume: then the conversion starts afresh.

    So a job script may always pass ``resume=True`` (``--resume``): the first run starts the
    conversion, every later one continues it.
    """
    return resume and (Path(dst) / DATA_FILE).exists()


class NothingConvertedError(LMDBDatasetError):
    """A conversion ended without a record (:func:`refuse_empty`)."""


def refuse_empty(writer: LMDBWriter, what: str, *, created: bool = False) -> None:
    """Raise unless the conversion wrote a record: a dataset of 0 records is never reported a success.

    Raised inside the writer's ``with`` block, so the dataset stays incomplete (readers refuse it);
    :func:`removed_if_empty` then removes it if this call created it.

    Args:
        writer: The conversion's writer.
        what: What the source holds, plural (``"records"``).
        created: Whether this call created the destination (the message then says it is removed).

    Raises:
        NothingConvertedError: Nothing was written; the message says why (every source skipped, or
            an empty source).
    """
    if writer.num_records:
        return
    skipped = writer.info.skipped
    if skipped:
        first = skipped[0]
        why = (f"every one of the {len(skipped)} {what} was unreadable and skipped, e.g. "
               f"{printable(first['path'])}: {printable(first['error'])}")
    else:
        why = f"the source holds no {what}"
    fix = ("nothing is left there: fix the source, then convert again" if created
           else "fix the source, then convert again with overwrite=True")
    raise NothingConvertedError(f"nothing converted into {str(writer.path)!r}: {why}. A dataset of 0 records is "
                                f"not written: {fix}.")


@contextlib.contextmanager
def removed_if_empty(dst: str | os.PathLike) -> Iterator[bool]:
    """Around a conversion's writer: remove ``dst`` when nothing was converted, if this call created it.

    Yields whether ``dst`` did not exist yet (this call creates it). A destination that existed (a
    resumed conversion, whose earlier records and skip list stay; an overwritten one) is left as the
    writer leaves it.
    """
    created = not os.path.lexists(dst)
    try:
        yield created
    except NothingConvertedError:
        if created:
            shutil.rmtree(dst, ignore_errors=True)
        raise


Task = tuple[str, int, str, Shaping | None]
"""What a worker builds one record from: (source file, label, storage, shaping or None)."""
Built = tuple[bytes | None, int, str, bool]
"""A worker's result: (record or None, bytes read, error, whether shaping resized the image)."""


def _build(task: Task) -> Built:
    """Read one source file, shape it (``max_side``) and build its record."""
    path, label, storage, shaping = task
    try:
        with open(path, "rb") as file:
            data = file.read()
        record, resized = build_shaped_record(data, label, storage=storage, shaping=shaping)
        return record, len(data), "", resized
    except (OSError, ValueError) as exc:
        return None, 0, str(exc), False


def build_records(tasks: Iterable[Task], workers: int) -> Generator[Built, None, None]:
    """Build records in ``workers`` processes (0: in this process), yielding in task order.

    Source files are read only a bounded window ahead of the writer (:func:`write.parallel.ordered_map`):
    a slow writer holds back the readers instead of letting built records pile up in memory,
    whatever the dataset size.
    """
    return ordered_map(_build, tasks, workers)


def convert_image_folder(src: str | os.PathLike, dst: str | os.PathLike, *, storage: str = "encoded",
                         workers: int | None = None, order: str = "shuffled", seed: int = 0,
                         resume: bool = False, skip_bad: bool = False, overwrite: bool = False,
                         progress: bool = True, max_side: int | None = None,
                         quality: int | None = None) -> ConversionReport:
    """Convert an ImageFolder tree into an LMDB dataset.

    The dataset's index is exactly torchvision's ``ImageFolder``: ``LMDBImageDataset(dst)[i]``
    is ``ImageFolder(src)[i]`` (same classes, label and pixels), while the records lie in the
    file in a seeded shuffled order by default, so that reading the file sequentially
    (``ChunkShuffleSampler``, ``LMDBIterableDataset``) already mixes classes. Worker
    processes read, check (every image is decoded once) and encode the images; the single
    writer appends them in large crash-safe transactions. Interrupted (killed, Ctrl-C, a
    full disk, a bad file)? Run again with ``resume=True``: it continues after the last
    committed record, and the result equals an uninterrupted run. A bad file that stopped
    the conversion may be deleted before resuming: it is simply left out.

    Args:
        src: ImageFolder root, holding one sub-directory per class.
        dst: Dataset directory to write (e.g. ``train.lmdb``).
        storage: ``"encoded"`` (original file bytes, JPEG not re-encoded) or ``"raw"``
            (decoded RGB uint8 pixels: no decode when reading, ~7x the size). Defaults to
            ``"encoded"``.
        workers: Processes that read and check images. Defaults to the number of usable
            cores; 0 works in this process.
        order: Physical order of the records in the file: ``"shuffled"`` (a random
            permutation seeded by ``seed``; the dataset stores the mapping back to the
            ImageFolder index) or ``"folder"`` (ImageFolder's order, class by class).
            Defaults to ``"shuffled"``.
        seed: Seed of the shuffled order, an integer in ``[0, 2**64)``. Defaults to 0.
        resume: Continue an interrupted conversion into ``dst``; with nothing at ``dst`` yet,
            start one (so a job script may always pass it). Defaults to False.
        skip_bad: Leave unreadable images out and list them in the report and the metadata,
            instead of stopping with an error naming the file. The dataset's index is then
            ImageFolder's without those files (the report's ``skipped_indices`` lists their
            ImageFolder indices). Defaults to False.
        overwrite: Replace an existing dataset at ``dst``. Defaults to False.
        progress: Show a progress bar (images/s, MB/s). Defaults to True.
        max_side: Opt-in, lossy storage shaping, as FFCV's ``max_resolution``: images whose
            longer side exceeds it are resized (Pillow Lanczos, aspect kept) to a longer side
            of exactly ``max_side``, and with ``encoded`` storage re-encoded as JPEG at
            ``quality``; smaller images keep their original bytes. With ``raw`` storage the
            resized pixels are stored (at 256 about the disk of the original JPEGs, and no
            decode when reading). Faster reading and less disk, at the cost of the detail that
            crops of the full image would have kept: ``dataset[i]`` is then no longer
            ``ImageFolder(src)[i]`` for resized images. Recorded in the metadata and shown by
            ``lmdb-dataset info``; :mod:`lmdb_dataset.write.shaping` has the rules (rounding,
            grayscale, CMYK, PNG). Defaults to None: every image stored as given.
        quality: JPEG quality (1-100) of the images ``max_side`` re-encodes; ``encoded``
            storage only. Defaults to 90 (FFCV's ImageNet example).

    Returns:
        A :class:`ConversionReport`.

    Raises:
        SourceImageError: A source file is not a readable image (without ``skip_bad``); what
            was converted before it is kept: fix or delete the file and resume.
        FileExistsError: ``dst`` exists and neither ``resume`` nor ``overwrite`` was given.
        FileNotFoundError: ``src`` is not an image folder (the message explains the layout).
        LMDBDatasetError: Writing failed (e.g. the disk is full); ``resume`` was asked for
            a conversion started with other settings (``max_side``/``quality`` included) or from
            a changed source; or nothing was converted (every file skipped: a dataset of 0
            records is never written, and a ``dst`` this call created is removed).
        ValueError: An argument is out of range, or ``dst`` lies inside ``src``.
    """
    started = time.perf_counter()
    workers = available_cpus() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers={workers} must be >= 0")
    shaping = Shaping.of(max_side, quality, storage)
    src = Path(src).resolve()
    check_destination(src, dst)
    resume = resumable(dst, resume)
    classes, samples = image_folder_samples(src)
    prefix = os.path.join(str(src), "")  # make_dataset joins paths onto str(src)
    relative = [path[len(prefix):] for path, _ in samples]
    plan = write_plan(relative, order=order, seed=seed)
    state = {"source": str(src), "order": order, "seed": seed}
    finished = _finished_conversion(dst, state, classes, storage, shaping) if resume else None
    if finished is not None:  # e.g. killed after it completed: nothing left to do
        return ConversionReport(Path(dst), finished.num_records, list(finished.skipped), 0,
                                time.perf_counter() - started, 0, _skipped_indices(finished.skipped, relative))
    with removed_if_empty(dst) as created, \
            LMDBWriter(dst, storage=storage, classes=classes, source=str(src), resume=resume,
                       overwrite=overwrite, max_side=max_side, quality=quality) as writer:
        if resume and (writer.info.conversion is not None or writer.num_records or writer.info.skipped):
            first = _resume_point(writer, state, classes, [relative[i] for i in plan])
        else:
            first = 0
            writer.set_conversion_state(state)
            writer.commit()
        tasks = ((samples[i][0], samples[i][1], storage, shaping) for i in plan[first:])
        bytes_read = 0
        with tqdm(total=len(samples), initial=first, unit="img", disable=not progress,
                  desc=f"convert {src.name}", dynamic_ncols=True) as bar, \
                contextlib.closing(build_records(tasks, workers)) as built:  # a stop ends the worker pool now
            for position, (record, size, error, resized) in enumerate(built, start=first):
                source = int(plan[position])
                if record is None and not skip_bad:
                    raise SourceImageError(
                        f"{samples[source][0]}: {error}. Delete or replace the file and run again with "
                        "resume=True, or pass skip_bad=True to leave such files out.",
                        source=samples[source][0])
                if record is None:
                    writer.skip(relative[source], error)
                else:
                    writer.add_record(record, samples[source][1], path=relative[source], resized=resized)
                bytes_read += size
                bar.update()
                if position % 16 == 0 or position + 1 == len(samples):
                    elapsed = max(bar.format_dict["elapsed"], 1e-9)
                    bar.set_postfix_str(f"{bytes_read / elapsed / 1e6:.1f} MB/s", refresh=False)
        refuse_empty(writer, "source files", created=created)
        if order != "folder":
            writer.set_sample_order(record_of_sample(writer.record_paths(), relative))
    if progress and writer.info.skipped:
        print(f"skipped {len(writer.info.skipped)} unreadable file(s):")
        for entry in writer.info.skipped:
            print(f"  {printable(entry['path'])}: {printable(entry['error'])}")
    return ConversionReport(Path(dst), writer.info.num_records, list(writer.info.skipped), len(samples) - first,
                            time.perf_counter() - started, bytes_read, _skipped_indices(writer.info.skipped, relative))


def _skipped_indices(skipped: list[dict[str, str]], relative: list[str]) -> list[int]:
    """The ImageFolder indices of the skipped files, ascending."""
    index_of = {path: i for i, path in enumerate(relative)}
    return sorted(index_of[entry["path"]] for entry in skipped if entry["path"] in index_of)


def _finished_conversion(dst: str | os.PathLike, state: dict, classes: list[str], storage: str,
                         shaping: Shaping | None) -> DatasetInfo | None:
    """The info of a complete dataset at ``dst`` converted with these settings, or None if there is none.

    Raises:
        LMDBDatasetError: ``dst`` holds a complete dataset made otherwise.
    """
    try:
        info = load_metadata(dst).info
    except LMDBDatasetError:
        return None  # absent, incomplete or damaged: the writer decides
    if info.conversion != state or info.classes != classes or info.storage != storage:
        raise LMDBDatasetError(f"the dataset at {str(dst)!r} is already complete, converted with other "
                               "settings or from another source; nothing to resume (pass overwrite=True "
                               "to write it again)")
    check_shaping(dst, info, shaping, complete=True)
    return info


def record_of_sample(record_paths: list[str], relative: list[str]) -> np.ndarray:
    """For each converted source in ImageFolder order (skipped files left out), its record."""
    index_of = {path: i for i, path in enumerate(relative)}
    sources = np.fromiter((index_of[p] for p in record_paths), dtype=np.int64, count=len(record_paths))
    return np.argsort(sources, kind="stable").astype(np.int64)


def _resume_point(writer: LMDBWriter, state: dict, classes: list[str], planned: list[str]) -> int:
    """Where in ``planned`` (source paths in write order) an interrupted conversion continues.

    The plan is identified by what was committed, not by the number of source files: files
    deleted after the last committed one (a bad file that stopped the conversion) are
    simply left out. Refuses (LMDBDatasetError) when the settings differ, or when the
    source changed in the part already converted.
    """
    saved = writer.info.conversion
    where = f"cannot resume {str(writer.path)!r}"
    if saved is None or "order" not in saved:
        raise LMDBDatasetError(f"{where}: it was not started by this version of convert_image_folder; "
                               "start over with overwrite=True.")
    for key in ("order", "seed"):
        if saved.get(key) != state[key]:
            raise LMDBDatasetError(f"{where}: it was started with {key}={saved.get(key)!r}, now "
                                   f"{key}={state[key]!r}; resume with the same {key}, or start over "
                                   "with overwrite=True.")
    if writer.info.classes != classes:
        raise LMDBDatasetError(f"{where}: the class folders of the source changed since it was started; "
                               "start over with overwrite=True.")
    position = {path: k for k, path in enumerate(planned)}
    committed = writer.record_paths()
    gone = [p for p in committed if p not in position]
    if gone:
        raise LMDBDatasetError(f"{where}: {printable(gone[0])!r} (and {len(gone) - 1} more) was converted "
                               "but is no longer in the source; restore it, or start over with overwrite=True.")
    done = committed + [entry["path"] for entry in writer.info.skipped]
    cut = 1 + max((position[p] for p in done if p in position), default=-1)
    done_set = set(done)
    new = [p for p in planned[:cut] if p not in done_set]
    if any(position[a] > position[b] for a, b in zip(committed, committed[1:])):
        new = ["(files were renamed)"]
    if new:
        raise LMDBDatasetError(f"{where}: the source changed in the part already converted ({printable(new[0])!r} "
                               "is new); start over with overwrite=True.")
    return cut
