"""Converting a non-ImageFolder source (legacy LMDB, tar, list file, HDF5) into a dataset."""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import LMDBDatasetError, SourceImageError
from ..storage.environment import load_metadata
from ..storage.format import DatasetInfo, label_problem
from ..storage.system import available_cpus
from ..write.convert import (
    ConversionReport,
    check_destination,
    record_of_sample,
    refuse_empty,
    removed_if_empty,
    resumable,
)
from ..write.interrupts import deferred_interrupts
from ..write.parallel import ordered_map
from ..write.shaping import Shaping
from ..write.writer import LMDBWriter, build_shaped_record, check_shaping
from .base import Image, Source, SourceRecord, read_classes_file
from .detect import open_source
from .tar import FolderTarSource


def _build(task: tuple[Image | None, int, str, Shaping | None]) -> tuple[bytes | None, str, bool]:
    """Worker: check, shape (``max_side``) and build one record from an in-memory image.

    Returns (record or None, error, whether shaping resized the image). A record the source
    could not read (image None) is passed through: its error is the source's.
    """
    image, label, storage, shaping = task
    if image is None:
        return None, "", False
    if storage == "encoded" and isinstance(image, np.ndarray):
        return None, (f"holds decoded pixels ({'x'.join(map(str, image.shape))} uint8), not an image file; "
                      "convert with storage='raw' (--storage raw)"), False
    try:
        record, resized = build_shaped_record(image, label, storage=storage, shaping=shaping)
        return record, "", resized
    except ValueError as exc:
        return None, str(exc), False


def _built(
    records: Iterator[SourceRecord], storage: str, shaping: Shaping | None, workers: int, num_classes: int | None
) -> Generator[tuple[SourceRecord, bytes | None, str, bool], None, None]:
    """(source record, built record or None, error) in source order; checks run in ``workers`` processes.

    Each record's label is checked here, before it is sent to a worker (:func:`storage.format.label_problem`,
    ``num_classes`` as it takes them): a record with a label that cannot be stored is not built, its
    error is the label's. Source records are read only a bounded window ahead of the writer
    (:func:`write.parallel.ordered_map`), so memory stays bounded however large the source is.
    """
    in_flight: collections.deque[tuple[SourceRecord, str]] = collections.deque()

    def tasks() -> Iterator[tuple[Image | None, int, str, Shaping | None]]:
        for record in records:
            problem = "" if record.error else label_problem(record.label, num_classes)
            in_flight.append((record, problem))
            yield None if problem else record.image, record.label, storage, shaping

    with contextlib.closing(ordered_map(_build, tasks(), workers)) as results:  # closed: the workers end now
        for built, error, resized in results:
            record, problem = in_flight.popleft()
            yield record, built, problem or error, resized


def _first_storage(records: Iterator[SourceRecord]) -> tuple[str, Iterator[SourceRecord]]:
    """``"raw"`` if the first readable record holds pixels, else ``"encoded"``; and the records, unconsumed."""
    peeked: list[SourceRecord] = []
    for record in records:
        peeked.append(record)
        if record.image is not None:
            break
    storage = "raw" if peeked and isinstance(peeked[-1].image, np.ndarray) else "encoded"
    return storage, itertools.chain(peeked, records)


def source_fingerprint(path: Path) -> list[list]:
    """(name, size, mtime_ns) of the source file, or of each file directly in a source directory.

    Saved with the conversion's progress, so ``resume`` refuses a source that changed (its
    records would no longer line up). LMDB lock files are left out: readers touch them.
    """
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files
            if f.name != "lock.mdb" and not f.name.endswith("-lock")]


def _renamed(source: Source, names: list[str], classes: str | os.PathLike) -> list[str]:
    """The names of a classes file, checked against the classes the source names itself, if any."""
    own = source.classes
    if own is not None and len(own) != len(names):
        raise ValueError(f"{str(source.path)!r} names its own {len(own)} classes ({own[0]!r} .. {own[-1]!r}), but the "
                         f"classes file {str(classes)!r} has {len(names)} lines: to rename them it needs one line a "
                         "class, line i naming the source's i-th class; without it the source's names are kept")
    return names


def convert_source(src: str | os.PathLike, dst: str | os.PathLike, *, kind: str | None = None,
                   classes: str | os.PathLike | None = None, storage: str | None = None,
                   workers: int | None = None, resume: bool = False, skip_bad: bool = False,
                   overwrite: bool = False, progress: bool = True, max_side: int | None = None,
                   quality: int | None = None, **options: str) -> ConversionReport:
    """Convert a legacy LMDB, tar archive, list file or HDF5 file into an LMDB dataset.

    Records keep the source's order (an LMDB's key order, an archive's member order, a list
    file's line order) and its labels; image files' bytes are kept as-is (JPEG not
    re-encoded) and decoded once to check them. Values stored with pickle or msgpack are
    parsed by decoders that never execute anything (:mod:`.safe_pickle`,
    :mod:`.msgpack_values`): a value they refuse is a bad record, named by its key. The
    guarantees of :func:`~lmdb_dataset.convert_image_folder` hold: crash-safe commits,
    ``resume``, ``skip_bad``, a progress bar.

    Args:
        src: The source: an LMDB directory or file, a ``.tar`` archive (ILSVRC2012's tar of class tars,
            a tar of an image folder, a webdataset shard or a directory of shards), a list file, an HDF5 file.
            A tar of an image folder keeps ``ImageFolder``'s index of the extracted tree (:mod:`.tar`).
        dst: Dataset directory to write.
        kind: The source kind (see :data:`lmdb_dataset.sources.detect.KINDS`). Defaults to
            detecting it from the content.
        classes: A text file of class names, one a line (line ``i`` names label ``i``), for
            sources that store only labels. Without it such sources get the names
            ``"0"`` .. ``"K-1"``, K being one more than the largest label (at most
            :data:`~lmdb_dataset.storage.format.MAX_IMPLIED_CLASSES`). For a source that names
            its classes (a tar of class folders or class tars, a list file of class names, an HDF5
            file with a ``classes`` attribute) it renames them: line ``i`` names the source's
            ``i``-th class, so the file must have one line a class.
        storage: ``"encoded"`` or ``"raw"``. Defaults to ``"encoded"``, or ``"raw"`` when the
            source stores decoded pixels (raw Caffe datums, numpy-mode LMDBs, HDF5 image
            arrays), which cannot be kept as image files.
        workers: Processes that check images. Defaults to the number of usable cores; 0
            works in this process.
        resume: Continue an interrupted conversion into ``dst``; with nothing at ``dst`` yet,
            start one (so a job script may always pass it). Defaults to False.
        skip_bad: Leave bad records out (listed in the report and the metadata) instead of
            stopping with an error naming the record. Defaults to False.
        overwrite: Replace an existing dataset at ``dst``. Defaults to False.
        progress: Show a progress bar. Defaults to True.
        max_side: Opt-in, lossy: resize images (and pixel arrays) whose longer side exceeds it,
            as :func:`~lmdb_dataset.convert_image_folder` does. Defaults to None (stored as given).
        quality: JPEG quality (1-100) of the images ``max_side`` re-encodes; ``encoded`` storage
            only. Defaults to 90.
        **options: Options of the source kind: ``root`` (list files: the folder paths are
            relative to; defaults to the list file's folder), ``images`` and ``labels``
            (HDF5: dataset names; detected when there is one obvious choice).

    Returns:
        A :class:`~lmdb_dataset.ConversionReport`.

    Raises:
        SourceImageError: A record is bad (without ``skip_bad``); the message names its key. A
            record's label must be in 0..2**31-1 and below the number of classes
            (:func:`~lmdb_dataset.storage.format.label_problem`).
        FileExistsError: ``dst`` exists and neither ``resume`` nor ``overwrite`` was given.
        ValueError: Unknown ``kind`` or options, a source that is not of that kind, ``dst`` inside a source
            directory, or ``storage="encoded"`` for a source of decoded pixels (all before anything is written).
        LMDBDatasetError: Nothing was converted (an empty source, every record skipped: a
            dataset of 0 records is never written; a ``dst`` this call created is removed), or the source
            changed since the conversion being resumed started.
    """
    started = time.perf_counter()
    workers = available_cpus() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers={workers} must be >= 0")
    Shaping.of(max_side, quality, storage or "encoded")  # ranges checked before the source is opened
    check_destination(Path(src).resolve(), dst)
    resume = resumable(dst, resume)
    source = open_source(src, kind=kind, **options)
    names = source.classes if classes is None else _renamed(source, read_classes_file(classes), classes)
    count = source.count()
    if count == 0:
        raise LMDBDatasetError(f"{str(source.path)!r} holds no records: nothing to convert (a dataset of 0 "
                               "records is not written)")
    state: dict[str, Any] = {"source": str(source.path), "source_kind": source.kind, "source_count": count,
                             "source_files": source_fingerprint(source.path), "next_source": 0, "max_label": -1}
    finished = _finished_conversion(dst, state) if resume else None
    if finished is not None:
        check_shaping(dst, finished, Shaping.of(max_side, quality, finished.storage), complete=True)
    if finished is not None:  # e.g. a job script that always passes --resume, run once more
        return ConversionReport(path=Path(dst), num_records=finished.num_records, skipped=list(finished.skipped),
                                converted=0, seconds=time.perf_counter() - started, bytes_read=0)
    source_records = source.records()
    detected, records = _first_storage(source_records)
    if storage == "encoded" and detected == "raw":
        source_records.close()
        raise ValueError(f"{str(source.path)!r} stores decoded pixels, not image files: they cannot be kept as "
                         "encoded images (storage='encoded'); pass storage='raw', the default for such sources")
    storage = storage or detected
    shaping = Shaping.of(max_side, quality, storage)
    num_classes = len(names) if names is not None else None  # None: the class names come from the labels
    with removed_if_empty(dst) as created, \
            LMDBWriter(dst, storage=storage, classes=names, source=f"{source.kind}:{source.path}",
                       resume=resume, overwrite=overwrite, max_side=max_side, quality=quality) as writer:
        # Cut before the conversion saved its settings (right after the writer's first commit): nothing to continue.
        if resume and (writer.info.conversion is not None or writer.num_records or writer.info.skipped):
            _check_resumable(writer, state)
            assert writer.info.conversion is not None  # _check_resumable refuses a dataset without one
            state.update(next_source=writer.info.conversion["next_source"],
                         max_label=writer.info.conversion["max_label"])
            source_records.close()  # the storage peek; the source may be opened once at a time
            source_records = records = source.records(state["next_source"])
        else:
            writer.set_conversion_state(state)
            writer.commit()
        first = state["next_source"]
        bytes_read = 0
        with tqdm(total=count, initial=first, unit="img", disable=not progress,
                  desc=f"convert {source.path.name}", dynamic_ncols=True) as bar, \
                contextlib.closing(source_records), \
                contextlib.closing(_built(records, storage, shaping, workers, num_classes)) as built:
            for position, (record, built_record, error, resized) in enumerate(built, start=first):
                error = record.error or (f"record {record.name!r}: {error}" if error else "")
                if error and not skip_bad:
                    raise SourceImageError(
                        f"{source.path}: {error}. The records before it are kept: run again with resume=True "
                        "(--resume) and skip_bad=True (--skip-bad) to leave such records out.", source=record.name)
                # The progress and its record, or neither: a signal between the two would save a next_source
                # past a record that was never added, and the resumed dataset would lack it.
                with deferred_interrupts():
                    state["next_source"] = position + 1
                    if not error:  # a skipped record's label implies no class
                        state["max_label"] = max(state["max_label"], record.label)
                    writer.set_conversion_state(state)
                    if error:
                        writer.skip(record.name, error)
                    else:
                        assert built_record is not None  # a record is built unless it has an error
                        writer.add_record(built_record, record.label, path=record.name, resized=resized)
                bytes_read += record.size
                bar.update()
                if position % 16 == 0:
                    elapsed = max(bar.format_dict["elapsed"], 1e-9)
                    bar.set_postfix_str(f"{bytes_read / elapsed / 1e6:.1f} MB/s", refresh=False)
        refuse_empty(writer, "records", created=created)
        if names is None:
            writer.info.classes = [str(label) for label in range(state["max_label"] + 1)]
        if isinstance(source, FolderTarSource):  # records in archive order, samples in ImageFolder's
            writer.set_sample_order(record_of_sample(writer.record_paths(), [path for path, _ in source.samples]))
    if progress and writer.info.skipped:
        print(f"skipped {len(writer.info.skipped)} bad record(s):")
        for entry in writer.info.skipped:
            print(f"  {entry['path']}: {entry['error']}")
    return ConversionReport(path=Path(dst), num_records=writer.info.num_records, skipped=list(writer.info.skipped),
                            converted=state["next_source"] - first, seconds=time.perf_counter() - started,
                            bytes_read=bytes_read)


def _finished_conversion(dst: str | os.PathLike, state: dict) -> DatasetInfo | None:
    """The info of a complete dataset at ``dst`` converted from this source, or None if there is none.

    Raises:
        LMDBDatasetError: ``dst`` holds a complete dataset converted from another source.
    """
    try:
        info = load_metadata(dst).info
    except LMDBDatasetError:
        return None  # absent, incomplete or damaged: the writer decides
    saved = info.conversion or {}
    if any(saved.get(key) != state[key] for key in ("source_kind", "source_count", "source_files")):
        raise LMDBDatasetError(f"the dataset at {str(dst)!r} is already complete, converted from another source "
                               "(or the source changed since); nothing to resume (pass overwrite=True to write "
                               "it again)")
    return info


def _check_resumable(writer: LMDBWriter, state: dict) -> None:
    """Refuse to resume a conversion started from another source."""
    saved = writer.info.conversion or {}
    for key in ("source_kind", "source_count", "source_files"):
        if key not in saved or saved[key] != state[key]:
            raise LMDBDatasetError(
                f"cannot resume {str(writer.path)!r}: it was started with {key}={saved.get(key)!r}, now "
                f"{key}={state[key]!r} (the source changed, or is another one). Start over with "
                "overwrite=True (--overwrite).")
