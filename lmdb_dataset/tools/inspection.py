"""Looking after a dataset without training on it: summary (``info``), integrity check
(``verify``) and rebuilding the record offset table (``reindex``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import lmdb
import numpy as np
from tqdm import tqdm

from ..decode.image import pixels_of
from ..errors import IncompleteDatasetError, LMDBDatasetError, printable
from ..storage import format as fmt
from ..storage.environment import (
    DATA_FILE,
    FileIdentity,
    begin_read,
    damage_reported,
    data_file,
    environments,
    incomplete_reason,
    lock_for_writing,
    open_databases,
    proven_spans,
    read_info,
    read_path_table,
    record_spans,
    store_spans,
)
from ..storage.system import can_pread, release_lock


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    """What ``lmdb-dataset info`` prints."""

    path: str
    info: fmt.DatasetInfo
    size_bytes: int

    def lines(self) -> list[str]:
        """Human-readable lines; names that are not valid UTF-8 are shown with ``\\xNN`` escapes."""
        info = self.info
        classes = ", ".join(printable(c) for c in info.classes[:8]) + (", ..." if len(info.classes) > 8 else "")
        lines = [f"path:      {printable(self.path)}",
                 f"records:   {info.num_records}",
                 f"complete:  {'yes' if info.complete else 'NO (resume the conversion with --resume)'}",
                 f"storage:   {info.storage}",
                 f"classes:   {len(info.classes)} ({classes})",
                 f"size:      {self.size_bytes / 1e6:.1f} MB on disk",
                 f"source:    {printable(info.source) or '-'}",
                 f"format:    version {info.format_version}"]
        if info.shaping is not None:
            lines.append(f"shaping:   {shaping_line(info.shaping, info.storage)}")
        if info.skipped:
            lines.append(f"skipped:   {len(info.skipped)} unreadable source file(s), e.g. "
                         f"{printable(info.skipped[0]['path'])}")
        return lines


def shaping_line(shaping: dict, storage: str) -> str:
    """What ``info.shaping`` says, in one sentence for ``lmdb-dataset info``.

    E.g. ``lossy: images longer than 256 px resized (Lanczos) and re-encoded as JPEG at quality
    90: 560 of 600; the other 40 kept as they were``.
    """
    done = (f"resized ({shaping['filter'].capitalize()}) and re-encoded as JPEG at quality {shaping['quality']}"
            if storage == "encoded" else f"resized ({shaping['filter'].capitalize()}) and stored as pixels")
    total = shaping["resized"] + shaping["kept"]
    return (f"lossy: images longer than {shaping['max_side']} px {done}: {shaping['resized']} of {total}; "
            f"the other {shaping['kept']} kept as they were")


def summarize(path: str | os.PathLike) -> DatasetSummary:
    """Read a dataset's metadata, complete or not."""
    with damage_reported(path):
        env, _ = environments.get(path)
        _, meta_db = open_databases(env, path)
        info = read_info(env, meta_db, path)
    file = data_file(path)
    files = [file] if os.fspath(file) == os.fspath(path) else [f for f in file.parent.iterdir() if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    return DatasetSummary(os.fspath(path), info, size)


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """A record that failed verification.

    Attributes:
        index: The record index.
        reason: What is wrong with it.
        source: The source file it was converted from, when the dataset kept it.
    """

    index: int
    reason: str
    source: str | None = None


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_dataset` found.

    Attributes:
        path: The dataset.
        num_records: Records checked.
        bad: Records that failed, in index order.
        problems: Dataset-wide findings, each a sentence naming the fix: an incomplete
            conversion, or a record offset table that readers cannot use.
    """

    path: str
    num_records: int
    bad: list[BadRecord]
    problems: list[str]

    @property
    def ok(self) -> bool:
        """True only when every record and the dataset as a whole are sound (and complete)."""
        return not self.bad and not self.problems


def verify_dataset(path: str | os.PathLike, *, decode: bool = False, progress: bool = True) -> VerifyReport:
    """Check every record as the readers read it.

    Walks the records with an LMDB cursor and checks the key sequence, each header, its
    CRC32, its label against the label table and (``decode``) its image. When the record
    offset table passes the readers' proof (:func:`storage.environment.proven_spans`) each record's
    bytes at its span are compared with the record too, since ``pread`` readers read those;
    a table the readers ignore is reported as a problem with the command that rebuilds it.
    An incomplete dataset is verified as far as it was committed and reported as incomplete.
    """
    with damage_reported(path):
        env, _ = environments.get(path, readahead=True)
        records_db, meta_db = open_databases(env, path)
        info = read_info(env, meta_db, path)
        problems: list[str] = []
        labels = spans = None
        if not info.complete:
            problems.append(f"the dataset is incomplete: {incomplete_reason(path, info.num_records)}")
        else:
            labels = _label_table(env, meta_db, info.num_records)
            if labels is None:
                problems.append("the label table is missing or has the wrong size; convert the dataset again")
            spans, distrust = proven_spans(env, records_db, meta_db, path, info.num_records)
            if distrust:
                problems.append(f"readers ignore the record offset table: {distrust}; rebuild it with "
                                f"`lmdb-dataset reindex {path}` (or lmdb_dataset.reindex(path))")
        with begin_read(env) as txn:
            stored = int(txn.stat(records_db)["entries"])
        count = info.num_records
        if count > stored + MAX_MISSING_LISTED:  # a damaged count, not a few lost records: list what is there
            problems.append(f"meta/info says {count} records but the data file holds {stored}: the metadata is "
                            "damaged or the records are gone; convert the dataset again")
            count = stored
    bad: list[BadRecord] = []
    try:
        _check_records(env, records_db, path, count, labels, spans, bad, decode=decode, progress=progress)
    except lmdb.Error as exc:
        problems.append(f"LMDB reports the data file damaged after record {bad[-1].index if bad else '-'} "
                        f"was checked ({exc}); restore it from a good copy or convert the dataset again")
    if any(r.reason.startswith("its bytes at the offset table's span") for r in bad):
        problems.append(f"the record offset table does not match the records; rebuild it with "
                        f"`lmdb-dataset reindex {path}` (or lmdb_dataset.reindex(path))")
    if bad and info.complete:
        try:
            with damage_reported(path):
                paths = read_path_table(path, info.num_records)
        except LMDBDatasetError as exc:
            problems.append(f"the source path table is unusable ({exc}); convert the dataset again")
            paths = None
        if paths is not None:
            bad = [dataclasses.replace(r, source=paths[r.index] or None) if r.index < info.num_records else r
                   for r in bad]
    return VerifyReport(os.fspath(path), info.num_records, bad, problems)


MAX_MISSING_LISTED = 100_000
"""Missing records ``verify`` lists one by one; a count claiming more than this beyond the stored records is
reported as one problem instead (a damaged ``meta/info`` must not make a list of 2**40 entries)."""


def _label_table(env: lmdb.Environment, meta_db, count: int) -> np.ndarray | None:
    """The label table, or None if it is missing or not ``count`` labels."""
    with begin_read(env) as txn:
        raw = txn.get(fmt.LABELS_KEY, db=meta_db)
    if raw is None or len(raw) != 8 * count:
        return None
    return fmt.decode_labels(raw)


def _check_records(env: lmdb.Environment, records_db, path: str | os.PathLike, count: int,
                   labels: np.ndarray | None, spans: np.ndarray | None, bad: list[BadRecord], *, decode: bool,
                   progress: bool) -> None:
    """Walk the records with a cursor, appending each bad one to ``bad`` (lmdb.Error escapes on damage)."""
    expected = 0
    fd = os.open(data_file(path), os.O_RDONLY) if spans is not None and can_pread() else None
    try:
        with begin_read(env, buffers=True) as txn, tqdm(total=count, unit="rec", disable=not progress,
                                                        desc="verify") as bar:
            for key, value in txn.cursor(db=records_db):
                index = fmt.decode_key(bytes(key))
                if index < expected or index >= count:
                    bad.append(BadRecord(index, f"unexpected key after record {expected - 1}: out of order or "
                                                f"beyond the {count} records (LMDB page damaged)"))
                    continue
                while expected < index:
                    bad.append(BadRecord(expected, "record is missing"))
                    expected += 1
                expected = index + 1
                bar.update()
                reason = _record_problem(index, value, labels, decode=decode)
                if reason is None and fd is not None and spans is not None and index < len(spans):
                    offset, length = (int(x) for x in spans[index])
                    if os.pread(fd, length, offset) != value:
                        reason = "its bytes at the offset table's span differ from the record (pread readers)"
                if reason is not None:
                    bad.append(BadRecord(index, reason))
    finally:
        if fd is not None:
            os.close(fd)
    bad.extend(BadRecord(i, "record is missing") for i in range(expected, count))


def _record_problem(index: int, value: memoryview, labels: np.ndarray | None, *, decode: bool) -> str | None:
    """Why one record value is bad, or None."""
    try:
        header = fmt.decode_header(value)
    except ValueError as exc:
        return f"malformed header: {exc}"
    payload = fmt.payload_of(value)
    if not fmt.payload_crc_matches(header, payload):
        return "CRC32 mismatch"
    if labels is not None:
        if index >= len(labels):
            return f"record beyond the {len(labels)} records the label table holds"
        if header.label != labels[index]:
            return f"header label {header.label} differs from the label table's {labels[index]}"
    if decode:
        try:
            pixels_of(header, payload)
        except ValueError as exc:
            return f"does not decode: {exc}"
    return None


def reindex(path: str | os.PathLike) -> int:
    """Measure and store the record offset table again, so ``pread`` readers can trust it.

    Needed after anything that moves records inside the file or writes to it: a compacted
    copy (``mdb_copy -c``, ``Environment.copy(compact=True)``), a record rewritten with
    py-lmdb. Readers then ignore the old table with a :class:`StaleOffsetsWarning`. Writes
    two small values in one transaction; the records are not touched. Run it with no
    reader of the dataset open elsewhere: their dataset objects raise ``DatasetChangedError``
    afterwards and must be created again.

    Returns:
        The number of records indexed.

    Raises:
        IncompleteDatasetError: The dataset's conversion did not finish (resume it first).
        LMDBDatasetError: The dataset cannot be written (read-only), another writer holds
            it (a conversion), or the offsets cannot be measured on this platform (no ``/proc``).
    """
    path = os.fspath(path)
    env, _ = environments.get(path)
    _, meta_db = open_databases(env, path)
    info = read_info(env, meta_db, path)
    if not info.complete:
        raise IncompleteDatasetError(f"the dataset at {path!r} is incomplete; finish its conversion "
                                     f"with `lmdb-dataset convert SRC {path} --resume` before reindexing")
    environments.release(path)
    file = data_file(path)
    in_directory = file.name == DATA_FILE  # a directory dataset, however it was named: lock file inside it
    try:
        lock: int | None = lock_for_writing(path, create=True, then="then run reindex again")
    except OSError:
        lock = None  # read-only: lmdb.open below says so
    try:
        return _store_spans_again(path, file, in_directory, info)
    finally:
        if lock is not None:
            release_lock(lock)


def _store_spans_again(path: str, file: Path, in_directory: bool, info: fmt.DatasetInfo) -> int:
    """Measure and store ``path``'s record offset table (:func:`reindex`, under the writer's lock)."""
    try:
        env = lmdb.open(str(file.parent if in_directory else file), subdir=in_directory, readonly=False,
                        max_dbs=2, create=False, map_size=os.stat(file).st_size + 32 * info.num_records + (64 << 20))
    except lmdb.Error as exc:
        raise LMDBDatasetError(f"cannot open {path!r} for writing to rebuild its offset table ({exc}); run "
                               "reindex where the dataset is writable") from None
    try:
        records_db, meta_db = open_databases(env, path)
        spans = record_spans(env, records_db, FileIdentity.of(os.stat(file)))
        if spans is None or len(spans) != info.num_records:
            raise LMDBDatasetError(f"cannot measure the record offsets of {path!r} on this platform; "
                                   "readers keep reading through LMDB")
        with env.begin(write=True) as txn:
            store_spans(txn, meta_db, spans)
    finally:
        env.close()
    return info.num_records
