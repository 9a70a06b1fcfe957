"""Opening LMDB environments safely across processes, and reading a dataset's metadata.

py-lmdb refuses to open the same data file twice in one process, and a process forked
from one that had it open inherits both the open handle (which must not be used: LMDB
environments are not fork-safe) and py-lmdb's "already open" bookkeeping. This module
keeps one read-only environment per data file per process:

* Every dataset object over the same file in one process shares it (train and eval views,
  a peek with ``ds[0]`` before a DataLoader starts its workers).
* A handle inherited over ``fork`` is recognised by its pid, closed in the child only
  (the parent keeps using its own), and a fresh one is opened: each DataLoader worker
  reads through its own environment, whatever the start method.
* A data file replaced on disk (re-converted into the same path) is opened afresh, and the
  stale handle is closed so the old file's space is released; dataset objects still bound
  to the old file get :class:`DatasetChangedError` instead of mixing old metadata with new
  records.
* A data file that grew (a conversion resumed by another process) is re-mapped at its new
  size the next time a read transaction starts.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import lmdb
import numpy as np

from . import format as fmt
from .errors import DatasetChangedError, DatasetNotFoundError, IncompleteDatasetError, NotADatasetError

DATA_FILE = "data.mdb"
MAX_DBS = 2


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
    """The ``data.mdb`` file of the dataset directory ``path``."""
    return Path(path) / DATA_FILE


def identity_of(path: str | os.PathLike) -> FileIdentity:
    """Identity of the dataset's data file. Raises DatasetNotFoundError/NotADatasetError."""
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"dataset path {str(path)!r} does not exist")
    try:
        st = os.stat(data_file(path))
    except FileNotFoundError:
        raise NotADatasetError(f"{str(path)!r} is not an lmdb_dataset dataset: it has no {DATA_FILE}. "
                               "Create one with `lmdb-dataset convert SRC DST`.") from None
    return FileIdentity.of(st)


@dataclasses.dataclass
class _OpenEnvironment:
    env: lmdb.Environment
    identity: FileIdentity
    pid: int


class _EnvironmentRegistry:
    """One read-only environment per dataset path, per process (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_path: dict[str, _OpenEnvironment] = {}

    def get(self, path: str | os.PathLike, identity: FileIdentity | None = None, *,
            readahead: bool = False) -> tuple[lmdb.Environment, FileIdentity]:
        """The environment of ``path`` in this process, opened if needed.

        Args:
            path: Dataset directory.
            identity: The file identity the caller's metadata came from; if the file at
                ``path`` is now another one, DatasetChangedError is raised.
            readahead: OS readahead for the memory map, used only when this call opens the
                environment (one process holds one environment per file, so the first
                opener chooses). On for sequential cursor reads, off for random access.
        """
        key = os.path.realpath(path)
        current = identity_of(path)
        if identity is not None and identity != current:
            raise DatasetChangedError(
                f"the dataset at {str(path)!r} was replaced on disk (re-converted?) after this "
                "dataset object read its metadata; create the dataset object again")
        with self._lock:
            entry = self._by_path.get(key)
            if entry is not None and (entry.pid != os.getpid() or entry.identity != current):
                # Inherited over fork (never usable here) or a replaced file: drop it. Closing
                # in a forked child unmaps only the child's copy.
                entry.env.close()
                entry = None
            if entry is None:
                env = lmdb.open(str(path), readonly=True, lock=False, readahead=readahead,
                                max_readers=2048, max_dbs=MAX_DBS, create=False, subdir=True)
                entry = _OpenEnvironment(env, current, os.getpid())
                self._by_path[key] = entry
            return entry.env, entry.identity

    def release(self, path: str | os.PathLike) -> None:
        """Close this process's environment of ``path`` (before a writer opens the file)."""
        with self._lock:
            entry = self._by_path.pop(os.path.realpath(path), None)
            if entry is not None:
                entry.env.close()


environments = _EnvironmentRegistry()
"""The process's environment registry; use ``environments.get(path)``."""


def begin_read(env: lmdb.Environment, *, buffers: bool = False) -> lmdb.Transaction:
    """Start a read transaction, adopting a map that another process grew meanwhile."""
    try:
        return env.begin(buffers=buffers)
    except lmdb.MapResizedError:
        env.set_mapsize(0)
        return env.begin(buffers=buffers)


def open_databases(env: lmdb.Environment, path: str | os.PathLike) -> tuple[lmdb._Database, lmdb._Database]:
    """The (records, meta) sub-databases. Raises NotADatasetError if they are missing."""
    try:
        return env.open_db(fmt.RECORDS_DB, create=False), env.open_db(fmt.META_DB, create=False)
    except lmdb.NotFoundError:
        raise NotADatasetError(f"{str(path)!r} is an LMDB environment but not an lmdb_dataset "
                               "dataset (no 'records'/'meta' sub-databases)") from None


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
    """Everything a reader loads once at construction: info, labels, order and record spans.

    ``labels`` is an int64 array in record (file) order; ``record_of_sample`` maps a logical
    sample index to the record holding it and ``file_order`` is its inverse (the sample held
    by each record), both identity for datasets stored in logical order; ``spans`` is an
    (N, 2) int64 array of (offset, length) of each record value inside ``data.mdb`` (None for
    datasets written without them). All are numpy arrays, so DataLoader workers share them
    copy-on-write instead of touching per-sample objects.
    """

    path: str
    identity: FileIdentity
    info: fmt.DatasetInfo
    labels: np.ndarray
    spans: np.ndarray | None
    record_of_sample: np.ndarray
    file_order: np.ndarray


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


def load_metadata(path: str | os.PathLike) -> DatasetMetadata:
    """Read and validate a complete dataset's metadata: 40 bytes a record (~51 MB for 1.28M), never the records.

    Raises:
        DatasetNotFoundError: ``path`` does not exist.
        NotADatasetError: ``path`` is not a dataset, or of an unsupported format version.
        IncompleteDatasetError: The conversion that writes it did not finish.
    """
    path = os.fspath(path)
    env, identity = environments.get(path)
    _, meta_db = open_databases(env, path)
    info = read_info(env, meta_db, path)
    if not info.complete:
        raise IncompleteDatasetError(
            f"the dataset at {path!r} is incomplete: its conversion stopped after "
            f"{info.num_records} records. Finish it with `lmdb-dataset convert SRC {path} --resume` "
            "(or convert_image_folder(..., resume=True)).")
    with begin_read(env) as txn:
        labels = txn.get(fmt.LABELS_KEY, db=meta_db)
        spans = txn.get(fmt.SPANS_KEY, db=meta_db)
        order = txn.get(fmt.ORDER_KEY, db=meta_db)
    if labels is None:
        raise NotADatasetError(f"{path!r} has no label table (meta/labels is missing)")
    labels = fmt.decode_labels(labels)
    if len(labels) != info.num_records:
        raise NotADatasetError(f"{path!r}: label table holds {len(labels)} labels for "
                               f"{info.num_records} records")
    spans_array = fmt.decode_spans(spans) if spans is not None else None
    if spans_array is not None and len(spans_array) != info.num_records:
        spans_array = None
    if order is None:
        record_of_sample = file_order = np.arange(info.num_records, dtype=np.int64)
    else:
        try:
            record_of_sample, file_order = fmt.decode_order(order, info.num_records)
        except ValueError as exc:
            raise NotADatasetError(f"{path!r}: {exc}; the dataset is damaged, re-convert it") from None
    return DatasetMetadata(path, identity, info, labels, spans_array, record_of_sample, file_order)


def read_path_table(path: str | os.PathLike, count: int) -> fmt.PathTable | None:
    """The relative source paths of a dataset's records, or None if it stores none."""
    env, _ = environments.get(path)
    _, meta_db = open_databases(env, path)
    with begin_read(env) as txn:
        blob = txn.get(fmt.PATHS_KEY, db=meta_db)
    return fmt.PathTable(blob, count) if blob is not None else None


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
    if count and not _spans_match(env, records_db, spans):
        return None
    return spans


def _spans_match(env: lmdb.Environment, records_db: lmdb._Database, spans: np.ndarray) -> bool:
    """Check the first and last spans against the values read through LMDB."""
    fd = os.open(env.path() + "/" + DATA_FILE, os.O_RDONLY)
    try:
        with begin_read(env) as txn:
            for index in {0, len(spans) - 1}:
                offset, length = spans[index]
                if os.pread(fd, int(length), int(offset)) != txn.get(fmt.encode_key(index), db=records_db):
                    return False
    finally:
        os.close(fd)
    return True
