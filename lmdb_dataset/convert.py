"""Converting a torchvision-style ImageFolder tree (``src/<class>/<image>``) into a dataset."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from tqdm import tqdm

from .errors import LMDBDatasetError, SourceImageError
from .writer import LMDBWriter, build_record


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
    """

    path: Path
    num_records: int
    skipped: list[dict[str, str]]
    converted: int
    seconds: float
    bytes_read: int


def image_folder_samples(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (path, label) samples in exactly torchvision ImageFolder's order.

    Uses torchvision's own ``find_classes``/``make_dataset`` with its ``IMG_EXTENSIONS``,
    so record ``i`` of an unshuffled conversion is ``ImageFolder(root).samples[i]``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {str(root)!r} does not exist or is not a directory")
    classes, class_to_idx = find_classes(str(root))
    return classes, make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)


def source_order(count: int, *, shuffle: bool, seed: int) -> np.ndarray:
    """The source index written as record ``i``: identity, or a permutation seeded by ``seed``."""
    if not shuffle:
        return np.arange(count, dtype=np.int64)
    return np.random.default_rng(seed).permutation(count).astype(np.int64)


def _build(task: tuple[str, int, str]) -> tuple[bytes | None, int, str]:
    """Worker: read one source file and build its record; returns (record or None, size, error)."""
    path, label, storage = task
    try:
        with open(path, "rb") as file:
            data = file.read()
        return build_record(data, label, storage=storage), len(data), ""
    except (OSError, ValueError) as exc:
        return None, 0, str(exc)


def _results(tasks: Iterator[tuple[str, int, str]], workers: int) -> Iterator[tuple[bytes | None, int, str]]:
    """Build records in ``workers`` processes (0: in this process), yielding in task order."""
    if workers == 0:
        yield from map(_build, tasks)
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap(_build, tasks, chunksize=16)


def convert_image_folder(src: str | os.PathLike, dst: str | os.PathLike, *, storage: str = "encoded",
                         workers: int | None = None, shuffle: bool = False, seed: int = 0,
                         resume: bool = False, skip_bad: bool = False, overwrite: bool = False,
                         progress: bool = True) -> ConversionReport:
    """Convert an ImageFolder tree into an LMDB dataset.

    Classes and sample order are exactly torchvision's ``ImageFolder``. Worker processes read,
    check (every image is decoded once) and encode the images; the single writer appends
    them in order in large crash-safe transactions. Interrupted (killed, Ctrl-C, a bad file)?
    Run again with ``resume=True``: it continues after the last committed record, and the
    result equals an uninterrupted run.

    Args:
        src: ImageFolder root, holding one sub-directory per class.
        dst: Dataset directory to write (e.g. ``train.lmdb``).
        storage: ``"encoded"`` (original file bytes, JPEG not re-encoded) or ``"raw"``
            (decoded RGB uint8 pixels: no decode when reading, ~10x the size). Defaults to
            ``"encoded"``.
        workers: Processes that read and check images. Defaults to the number of usable
            cores; 0 works in this process.
        shuffle: Write records in a random permutation of the ImageFolder order, so that
            reading the file sequentially already mixes classes; the metadata keeps every
            record's source path. Defaults to False.
        seed: Seed of that permutation. Defaults to 0.
        resume: Continue an interrupted conversion into ``dst``. Defaults to False.
        skip_bad: Leave unreadable images out and list them in the report and the metadata,
            instead of stopping with an error naming the file. Defaults to False.
        overwrite: Replace an existing dataset at ``dst``. Defaults to False.
        progress: Show a progress bar (images/s, MB/s). Defaults to True.

    Returns:
        A :class:`ConversionReport`.

    Raises:
        SourceImageError: A source file is not a readable image (without ``skip_bad``); what
            was converted before it is kept: fix or remove the file and resume.
        FileExistsError: ``dst`` exists and neither ``resume`` nor ``overwrite`` was given.
    """
    started = time.perf_counter()
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers={workers} must be >= 0")
    src = Path(src).resolve()
    classes, samples = image_folder_samples(src)
    order = source_order(len(samples), shuffle=shuffle, seed=seed)
    state = {"source": str(src), "source_count": len(samples), "shuffle": shuffle, "seed": seed,
             "next_source": 0}
    with LMDBWriter(dst, storage=storage, classes=classes, source=str(src), resume=resume,
                    overwrite=overwrite) as writer:
        if resume:
            _check_resumable(writer, state)
            state["next_source"] = writer.info.conversion["next_source"]
        else:
            writer.set_conversion_state(state)
            writer.commit()
        first = state["next_source"]
        prefix = os.path.join(str(src), "")  # make_dataset joins paths onto str(src)
        tasks = ((samples[i][0], samples[i][1], storage) for i in order[first:])
        bytes_read = 0
        with tqdm(total=len(samples), initial=first, unit="img", disable=not progress,
                  desc=f"convert {src.name}", dynamic_ncols=True) as bar:
            for position, (record, size, error) in enumerate(_results(tasks, workers), start=first):
                source_path, label = samples[order[position]]
                relative = source_path[len(prefix):]
                if record is None and not skip_bad:
                    raise SourceImageError(
                        f"{source_path}: {error}. Remove or replace the file and run again with "
                        "resume=True (--resume), or pass skip_bad=True (--skip-bad) to leave such "
                        "files out.", source=source_path)
                state["next_source"] = position + 1
                writer.set_conversion_state(state)
                if record is None:
                    writer.skip(relative, error)
                else:
                    writer.add_record(record, label, path=relative)
                bytes_read += size
                bar.update()
                if position % 16 == 0 or position + 1 == len(samples):
                    elapsed = max(bar.format_dict["elapsed"], 1e-9)
                    bar.set_postfix_str(f"{bytes_read / elapsed / 1e6:.1f} MB/s", refresh=False)
    if progress and writer.info.skipped:
        print(f"skipped {len(writer.info.skipped)} unreadable file(s):")
        for entry in writer.info.skipped:
            print(f"  {entry['path']}: {entry['error']}")
    return ConversionReport(Path(dst), writer.info.num_records, list(writer.info.skipped),
                            len(samples) - first, time.perf_counter() - started, bytes_read)


def _check_resumable(writer: LMDBWriter, state: dict) -> None:
    """Refuse to resume a conversion that was started from another source or order."""
    saved = writer.info.conversion
    if saved is None:
        raise LMDBDatasetError(f"{str(writer.path)!r} was not written by convert_image_folder; "
                               "cannot resume it from an image folder")
    for key in ("source_count", "shuffle", "seed"):
        if saved.get(key) != state[key]:
            raise LMDBDatasetError(
                f"cannot resume {str(writer.path)!r}: it was started with {key}={saved.get(key)!r}, "
                f"now {key}={state[key]!r} (did the source folder change?). Start over with overwrite=True.")
