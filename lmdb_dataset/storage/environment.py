"""Opening LMDB environments safely across processes, and reading a dataset's metadata.

py-lmdb refuses to open the same data file twice in one process, and a process forked
from one that had it open inherits both the open handle (which must not be used: LMDB
environments are not fork-safe) and py-lmdb's "already open" bookkeeping. This module
keeps one read-only environment per data file per process:

* Every dataset object over the same file in one process shares it (train and eval views,
  a peek with ``ds[0]`` before a DataLoader starts its workers). The registry refers to it
  weakly: once no dataset object, reader or transaction uses it, it is closed, releasing its
  file descriptor (and a deleted file's disk space) in a process that goes on making datasets.
* A handle inherited over ``fork`` is recognised by its pid, closed in the child only
  (the parent keeps using its own), and a fresh one is opened: each DataLoader worker
  reads through its own environment, whatever the start method.
* A data file replaced on disk (re-converted into the same path) is opened afresh, and the
  stale handle is closed so the old file's space is released; dataset objects still bound
  to the old file get :class:`DatasetChangedError` instead of mixing old metadata with new
  records.
* A data file that grew (a conversion resumed by another process) is re-mapped at its new
  size the next time a read transaction starts.
* A dataset is a directory holding ``data.mdb`` or, equally, a path to the data file itself:
  ``train.lmdb/data.mdb``, or a single-file LMDB (py-lmdb ``subdir=False``, ``mdb_copy -n``).
  Environments are always opened through the data file, so both spellings share one.
* Legacy LMDBs read in place or converted (:mod:`sources.legacy_lmdb`) share the registry,
  through their own opener (``environments.get(path, opener=...)``): the same rules hold for
  them, keyed by the same real path of the data file.

The record offset table (``meta/spans``) that lets readers fetch a record with one ``pread``
is trusted only when proven (:func:`proven_spans`): it carries the LMDB transaction id and
CRC32 it was stored with, and a few records spread over the file are compared against LMDB
when a dataset is opened. A table that fails is ignored, with a :class:`StaleOffsetsWarning`
saying why and how to rebuild it (``lmdb-dataset reindex PATH``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import warnings
import weakref
from pathlib import Path
from typing import Literal, Protocol, overload

import lmdb
import numpy as np

from ..errors import (
    CorruptDatasetError,
    DatasetChangedError,
    DatasetNotFoundError,
    IncompleteDatasetError,
    LMDBDatasetError,
    NotADatasetError,
    StaleOffsetsWarning,
)
from . import format as fmt
from .shared_tables import SharedTables
from .system import can_pread, lock_held, read_at, try_lock

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"
"""LMDB's lock file beside ``data.mdb``."""
WRITER_LOCK_FILE = "writer.lock"
"""The file beside ``data.mdb`` a writer holds an advisory lock on (:mod:`storage.format`)."""
MAX_DBS = 2
SPOT_CHECKS = 8
"""Records compared between the offset table and LMDB when a dataset opens (first, last, evenly between)."""


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    """Which file, in which state, a path resolved to: ``data.mdb``'s device, inode, size and mtime.

    Size and mtime tell a re-created file apart even when the filesystem reuses the inode
    number, and a file that another process appended to; a complete dataset is never
    written again, so its identity stays fixed.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        """The identity of a ``stat`` result."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def data_file(path: str | os.PathLike) -> Path:
    """The data file of dataset ``path``: ``path/data.mdb`` for a directory, else ``path`` itself."""
    path = Path(path)
    return path if path.is_file() else path / DATA_FILE


def writer_lock_file(path: str | os.PathLike) -> Path:
    """The writer's lock file of dataset ``path``: ``writer.lock`` beside ``data.mdb``, ``FILE-writer.lock`` for a
    single-file LMDB."""
    file = data_file(path)
    return (file.with_name(WRITER_LOCK_FILE) if file.name == DATA_FILE
            else file.with_name(f"{file.name}-{WRITER_LOCK_FILE}"))


def lock_for_writing(path: str | os.PathLike, *, create: bool, then: str) -> int:
    """Take the writer's lock of dataset ``path`` (:func:`writer_lock_file`; ``create``: creating the file).

    Returns the locked descriptor, held until :func:`storage.system.release_lock`.

    Raises:
        LMDBDatasetError: Another writer holds it (``flock``: one in this process too); the message ends
            with ``then``, what to do after the conversion running there.
        OSError: The lock file cannot be opened (a read-only dataset, or none with ``create`` False).
    """
    fd = os.open(writer_lock_file(path), os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    if not try_lock(fd):
        os.close(fd)
        raise LMDBDatasetError(f"another writer holds {str(path)!r} (a conversion still running, in this process or "
                               f"another?); wait for it to finish, {then}")
    return fd


def incomplete_reason(path: str | os.PathLike, num_records: int) -> str:
    """Why the dataset at ``path``, incomplete with ``num_records`` committed, is so, and what to do.

    A live writer's lock on its lock file (:func:`storage.system.lock_held`, a probe that takes
    nothing it keeps) means a conversion is still writing it; otherwise the conversion stopped.
    """
    if lock_held(writer_lock_file(path)):
        return (f"a conversion is still writing it ({num_records} records so far); wait for it to finish, "
                "then open it again")
    return (f"its conversion stopped after {num_records} records. Finish it with "
            f"`lmdb-dataset convert SRC {os.fspath(path)} --resume` (or convert_image_folder(..., resume=True))")


def identity_of(path: str | os.PathLike) -> FileIdentity:
    """Identity of the dataset's data file. Raises DatasetNotFoundError/NotADatasetError."""
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"dataset path {str(path)!r} does not exist")
    try:
        st = os.stat(data_file(path))
    except (FileNotFoundError, NotADirectoryError):
        raise NotADatasetError(f"{str(path)!r} is not an lmdb_dataset dataset: it has no {DATA_FILE}. "
                               "Create one with `lmdb-dataset convert SRC DST`.") from None
    return FileIdentity.of(st)


class Opener(Protocol):
    """Opens the data file of ``path`` read-only (an :class:`_EnvironmentRegistry` opener)."""

    def __call__(self, path: str | os.PathLike, *, readahead: bool) -> lmdb.Environment: ...


def _open_read_only(path: str | os.PathLike, *, readahead: bool) -> lmdb.Environment:
    """Open the data file of ``path`` read-only, refusing one LMDB could only map past its end.

    Without a lock file (``lock=False``) nothing is written next to the data file, so
    read-only directories and filesystems work.
    """
    file = data_file(path)
    try:
        env = lmdb.open(str(file), readonly=True, lock=False, readahead=readahead, max_readers=2048,
                        max_dbs=MAX_DBS, create=False, subdir=False)
    except lmdb.Error as exc:
        raise NotADatasetError(f"{str(path)!r} is not a readable LMDB environment ({exc}); "
                               "create a dataset with `lmdb-dataset convert SRC DST`") from None
    try:
        _check_not_truncated(env, file)
    except CorruptDatasetError:
        env.close()
        raise
    return env


def _check_not_truncated(env: lmdb.Environment, file: Path) -> None:
    """Raise CorruptDatasetError if LMDB's last used page lies past the end of the file.

    LMDB would hand out pointers into the unbacked part of its memory map, and the first
    read there kills the process with SIGBUS: refuse the file instead.
    """
    info, page_size = env.info(), env.stat()["psize"]
    needed = (info["last_pgno"] + 1) * page_size
    size = os.stat(file).st_size
    if size < needed:
        raise CorruptDatasetError(f"{str(file)!r} is truncated: LMDB's pages end at byte {needed}, the file "
                                  f"at {size}; restore the file from a good copy or convert again")


@dataclasses.dataclass
class _OpenEnvironment:
    env: weakref.ref[lmdb.Environment]  # dead once its last user let go: py-lmdb closed it
    identity: FileIdentity
    pid: int


class _EnvironmentRegistry:
    """One read-only environment per dataset path, per process (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_path: dict[str, _OpenEnvironment] = {}

    def get(self, path: str | os.PathLike, identity: FileIdentity | None = None, *, readahead: bool = False,
            opener: Opener = _open_read_only) -> tuple[lmdb.Environment, FileIdentity]:
        """The environment of ``path`` in this process, opened if needed.

        Args:
            path: Dataset directory (or data file).
            identity: The file identity the caller's metadata came from; if the file at
                ``path`` is now another one, DatasetChangedError is raised.
            readahead: OS readahead for the memory map, used only when this call opens the
                environment (one process holds one environment per file, so the first
                opener chooses). On for sequential cursor reads, off for random access.
            opener: Opens the environment when this call has to (with the first caller's
                choice standing, like ``readahead``). Defaults to a dataset's: read-only,
                without locking, refusing a truncated file, raising NotADatasetError.
        """
        current = identity_of(path)
        with self._lock:
            key = os.path.realpath(data_file(path))
            entry = self._by_path.get(key)
            env = entry.env() if entry is not None else None
            if entry is not None and (env is None or entry.pid != os.getpid() or entry.identity != current):
                # Closed when its last user let go, inherited over fork (never usable here) or a
                # replaced file: drop it. Closing in a forked child unmaps only the child's copy;
                # closing a replaced file's environment releases its disk space.
                del self._by_path[key]
                if env is not None:
                    env.close()
                env = None
            if identity is not None and identity != current:
                raise changed_error(path)
            if env is None:
                env = opener(path, readahead=readahead)
                self._by_path[key] = _OpenEnvironment(weakref.ref(env), current, os.getpid())
            return env, current

    def release(self, path: str | os.PathLike, identity: FileIdentity | None = None) -> None:
        """Close this process's environment of ``path`` (before a writer opens the file).

        With ``identity``, only if the open environment is of that file state (a reader that
        found its file replaced lets go of the old one without closing a newer one).
        """
        with self._lock:
            key = os.path.realpath(data_file(path))
            entry = self._by_path.get(key)
            if entry is not None and (identity is None or entry.identity == identity):
                del self._by_path[key]
                env = entry.env()
                if env is not None:
                    env.close()


def changed_error(path: str | os.PathLike) -> DatasetChangedError:
    """The error for a dataset object whose data file was replaced or written after it opened."""
    return DatasetChangedError(f"the dataset at {str(path)!r} was replaced or modified on disk (re-converted?) "
                               "after this dataset object read its metadata; create the dataset object again")


environments = _EnvironmentRegistry()
"""The process's environment registry; use ``environments.get(path)``."""


@overload
def begin_read(env: lmdb.Environment, *, buffers: Literal[False] = False) -> lmdb.Transaction[bytes]: ...


@overload
def begin_read(env: lmdb.Environment, *, buffers: Literal[True]) -> lmdb.Transaction[memoryview]: ...


def begin_read(env: lmdb.Environment, *, buffers: bool = False) -> lmdb.Transaction:
    """Start a read transaction, adopting a map that another process grew meanwhile."""
    # lmdb's stubs overload Environment.begin on buffers=Literal[False] / Literal[True] only, not on a bool.
    try:
        return env.begin(buffers=buffers)  # type: ignore[call-overload]
    except lmdb.MapResizedError:
        env.set_mapsize(0)
        return env.begin(buffers=buffers)  # type: ignore[call-overload]


def open_databases(env: lmdb.Environment, path: str | os.PathLike) -> tuple[lmdb._Database, lmdb._Database]:
    """The (records, meta) sub-databases. Raises NotADatasetError if they are missing."""
    try:
        return env.open_db(fmt.RECORDS_DB, create=False), env.open_db(fmt.META_DB, create=False)
    except lmdb.NotFoundError:
        raise NotADatasetError(f"{str(path)!r} is an LMDB environment but not an lmdb_dataset "
                               "dataset (no 'records'/'meta' sub-databases). If another tool wrote it "
                               "(tensorpack, a folder2lmdb script, Caffe), convert it once: "
                               f"`lmdb-dataset convert {os.fspath(path)} NEW.lmdb` (or read it in place "
                               "with LegacyLMDBDataset)") from None


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
    """Everything a reader loads once at construction: info, labels, order and record spans.

    ``labels`` is an int64 array in record (file) order; ``record_of_sample`` maps a logical
    sample index to the record holding it and ``file_order`` is its inverse (the sample held
    by each record), both identity for datasets stored in logical order; ``targets`` is the
    label of each sample (``labels[record_of_sample]``); ``spans`` is an (N, 2) int64 array of
    (offset, length) of each record value inside ``data.mdb`` (None for datasets written
    without them). They are read-only numpy views of one shared-memory block
    (:class:`storage.shared_tables.SharedTables`), so DataLoader workers map them instead of copying
    them, under ``fork``, ``spawn`` and ``forkserver`` alike.
    """

    path: str
    identity: FileIdentity
    info: fmt.DatasetInfo
    tables: SharedTables

    def _table(self, name: str) -> np.ndarray:
        table = self.tables[name]
        assert table is not None  # every table but the spans is always present
        return table

    @property
    def labels(self) -> np.ndarray:
        return self._table("labels")

    @property
    def spans(self) -> np.ndarray | None:
        return self.tables["spans"]

    @property
    def record_of_sample(self) -> np.ndarray:
        return self._table("record_of_sample")

    @property
    def file_order(self) -> np.ndarray:
        return self._table("file_order")

    @property
    def targets(self) -> np.ndarray:
        return self._table("targets")


def read_info(env: lmdb.Environment, meta_db: lmdb._Database, path: str | os.PathLike) -> fmt.DatasetInfo:
    """Parse ``meta/info``. Raises NotADatasetError if it is missing or not ours."""
    with begin_read(env) as txn:
        raw = txn.get(fmt.INFO_KEY, db=meta_db)
    if raw is None:
        raise NotADatasetError(f"{str(path)!r} has no dataset metadata (meta/info is missing)")
    try:
        return fmt.DatasetInfo.from_json(raw)
    except ValueError as exc:
        raise NotADatasetError(f"{str(path)!r}: {exc}") from None


@contextlib.contextmanager
def damage_reported(path: str | os.PathLike):
    """Turn LMDB's own damage reports (``MDB_CORRUPTED``, ``MDB_PAGE_NOTFOUND``...) into CorruptDatasetError."""
    try:
        yield
    except lmdb.Error as exc:
        raise CorruptDatasetError(f"{os.fspath(path)}: LMDB reports the data file damaged ({exc}); restore it "
                                  "from a good copy or convert the dataset again") from None


def load_metadata(path: str | os.PathLike) -> DatasetMetadata:
    """Read and validate a complete dataset's metadata (32 bytes a record read, ~48 held), never the records.

    The record offset table is kept only if :func:`proven_spans` proves it; otherwise a
    :class:`StaleOffsetsWarning` says why and the readers use LMDB's memory map.

    Raises:
        DatasetNotFoundError: ``path`` does not exist.
        NotADatasetError: ``path`` is not a dataset, or of an unsupported format version.
        IncompleteDatasetError: The conversion that writes it did not finish.
        CorruptDatasetError: The data file is truncated, or LMDB reports it damaged.
    """
    path = os.fspath(path)
    with damage_reported(path):
        return _load_metadata(path)


def _load_metadata(path: str) -> DatasetMetadata:
    env, identity = environments.get(path)
    records_db, meta_db = open_databases(env, path)
    info = read_info(env, meta_db, path)
    if not info.complete:
        raise IncompleteDatasetError(f"the dataset at {path!r} is incomplete: "
                                     f"{incomplete_reason(path, info.num_records)}.")
    with begin_read(env) as txn:
        stored_labels = txn.get(fmt.LABELS_KEY, db=meta_db)
        order = txn.get(fmt.ORDER_KEY, db=meta_db)
    if stored_labels is None:
        raise NotADatasetError(f"{path!r} has no label table (meta/labels is missing)")
    if len(stored_labels) % 8:
        raise NotADatasetError(f"{path!r}: the label table is {len(stored_labels)} bytes, not a multiple of 8")
    labels = fmt.decode_labels(stored_labels)
    if len(labels) != info.num_records:
        raise NotADatasetError(f"{path!r}: label table holds {len(labels)} labels for "
                               f"{info.num_records} records")
    spans, distrust = proven_spans(env, records_db, meta_db, path, info.num_records)
    if distrust:
        warnings.warn(StaleOffsetsWarning(
            f"{path}: ignoring the record offset table: {distrust}. Records are read through LMDB "
            f"instead (correct, but without one-pread reads). Rebuild the table with "
            f"`lmdb-dataset reindex {path}`."), stacklevel=3)
    if order is None:
        record_of_sample = file_order = np.arange(info.num_records, dtype=np.int64)
    else:
        try:
            record_of_sample, file_order = fmt.decode_order(order, info.num_records)
        except ValueError as exc:
            raise NotADatasetError(f"{path!r}: {exc}; the dataset is damaged, re-convert it") from None
    tables = SharedTables({"labels": labels, "spans": spans, "record_of_sample": record_of_sample,
                           "file_order": file_order, "targets": labels[record_of_sample]})
    return DatasetMetadata(path, identity, info, tables)


def proven_spans(env: lmdb.Environment, records_db: lmdb._Database, meta_db: lmdb._Database,
                 path: str | os.PathLike, count: int, *,
                 spot_checks: int = SPOT_CHECKS) -> tuple[np.ndarray | None, str | None]:
    """The record offset table if it provably belongs to the data file, else why not.

    Proof, cheapest first: the table's CRC32; the LMDB transaction id it was stored in
    equals the file's last one (any later write, and a compacted copy, changes it); every
    span lies inside the file; and ``spot_checks`` records spread over the file (first, last
    and evenly between) read at their spans equal what LMDB returns for them.

    Returns:
        ``(spans, None)`` when proven; ``(None, reason)`` when a table exists but fails;
        ``(None, None)`` when the dataset has no table (it is then read through LMDB).
    """
    with begin_read(env) as txn:
        blob = txn.get(fmt.SPANS_KEY, db=meta_db)
        check = txn.get(fmt.SPANS_CHECK_KEY, db=meta_db)
        file_txn = txn.id()
    if blob is None or not can_pread():  # no table, or no pread to use one with: read through LMDB
        return None, None
    if check is None:
        return None, ("it carries no record of the file state it was measured on "
                      "(written by lmdb-dataset 0.1)")
    try:
        txn_id, crc = fmt.decode_spans_check(check)
        spans = fmt.decode_spans(blob)
    except ValueError as exc:
        return None, f"it is malformed ({exc})"
    if fmt.crc32(blob) != crc:
        return None, "it is damaged (CRC32 mismatch)"
    if txn_id != file_txn:
        return None, (f"it was measured at LMDB transaction {txn_id} but the file is at transaction "
                      f"{file_txn}: the file was written to, or copied with compaction, since")
    if len(spans) != count:
        return None, f"it holds {len(spans)} spans for {count} records"
    file = data_file(path)
    size = os.stat(file).st_size
    if count and (spans.min() < 0 or int((spans[:, 0] + spans[:, 1]).max()) > size):
        return None, f"some spans lie outside the {size}-byte data file"
    indices = sorted({int(i) for i in np.linspace(0, count - 1, min(count, spot_checks))}) if count else []
    mismatch = first_span_mismatch(env, records_db, file, spans, indices)
    if mismatch is not None:
        return None, f"record {mismatch}'s bytes at its recorded offset differ from the record LMDB holds"
    return spans, None


def first_span_mismatch(env: lmdb.Environment, records_db: lmdb._Database, file: str | os.PathLike,
                        spans: np.ndarray, indices) -> int | None:
    """The first of ``indices`` whose bytes at its span differ from its LMDB value (None if all match)."""
    fd = os.open(file, os.O_RDONLY)
    try:
        with begin_read(env, buffers=True) as txn:
            for index in indices:
                offset, length = (int(x) for x in spans[index])
                if read_at(fd, length, offset) != txn.get(fmt.encode_key(index), db=records_db):
                    return index
    finally:
        os.close(fd)
    return None


def store_spans(txn: lmdb.Transaction, meta_db: lmdb._Database, spans: np.ndarray) -> None:
    """Write the offset table and its ``spans_check`` (this transaction's id; it must be the file's last write)."""
    blob = fmt.encode_spans(spans)
    txn.put(fmt.SPANS_KEY, blob, db=meta_db)
    txn.put(fmt.SPANS_CHECK_KEY, fmt.encode_spans_check(txn.id(), blob), db=meta_db)


def read_path_table(path: str | os.PathLike, count: int) -> fmt.PathTable | None:
    """The relative source paths of a dataset's records, or None if it stores none.

    Raises:
        NotADatasetError: The table does not hold ``count`` paths.
    """
    env, _ = environments.get(path)
    _, meta_db = open_databases(env, path)
    with begin_read(env) as txn:
        blob = txn.get(fmt.PATHS_KEY, db=meta_db)
    if blob is None:
        return None
    try:
        return fmt.PathTable(blob, count)
    except ValueError as exc:
        raise NotADatasetError(f"{os.fspath(path)!r}: {exc}") from None


def _mapping_of(address: int) -> tuple[int, int, int]:
    """(start address, file offset, inode) of the memory mapping that holds ``address``."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return start, int(fields[2], 16), int(fields[4])
    raise LookupError(f"address {address:#x} is not mapped")


def record_spans(env: lmdb.Environment, records_db: lmdb._Database, identity: FileIdentity) -> np.ndarray | None:
    """(offset, length) of every record value inside data.mdb, from the memory map.

    LMDB maps the data file read-only at file offset 0 and hands out values as pointers into
    that map, so a value's address minus the map's start is its offset in the file. Values
    never move once written (copy-on-write B+tree; finalised datasets are never written
    again). Returns None where that cannot be established (no /proc, or a mismatch).
    """
    with begin_read(env, buffers=True) as txn:
        count = txn.stat(records_db)["entries"]
        spans = np.empty((count, 2), dtype=np.int64)
        base = None
        for index, value in enumerate(txn.cursor(db=records_db).iternext(keys=False, values=True)):
            address = np.frombuffer(value, dtype=np.uint8).__array_interface__["data"][0] if len(value) else 0
            if base is None:
                try:
                    start, file_offset, inode = _mapping_of(address)
                except (OSError, LookupError, ValueError, IndexError):
                    return None
                if inode != identity.inode:
                    return None
                base = start - file_offset
            spans[index] = (address - base, len(value))
    if count and first_span_mismatch(env, records_db, _file_of(env), spans, {0, count - 1}) is not None:
        return None
    return spans


def _file_of(env: lmdb.Environment) -> str:
    """The data file of an open environment (opened on its directory or on the file itself)."""
    return os.path.join(env.path(), DATA_FILE) if env.flags()["subdir"] else env.path()
