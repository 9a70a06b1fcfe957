"""Reading record values in the current process, by record index (one ``pread`` each, or LMDB's map).

A :class:`RecordReader` belongs to one process. Datasets create it lazily on their first
read and drop it when pickled, and it re-creates itself after a fork, so every DataLoader
worker reads through its own file handles whatever the start method.

Before each batch the reader checks, with one ``stat`` of the data
file, that the file is still the one its metadata came from: a dataset re-converted into the
same path (or written to) raises :class:`DatasetChangedError` in both access modes, and the
reader lets go of the old file so its disk space is released.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import lmdb
import numpy as np

from ..errors import CorruptRecordError, RecordReadError
from . import format as fmt
from .environment import (
    DatasetMetadata,
    FileIdentity,
    begin_read,
    changed_error,
    data_file,
    environments,
    open_databases,
    read_path_table,
)
from .prefetching import Prefetcher, SharedAsk, advise
from .system import fadvise

Access = Literal["pread", "mmap"]
ACCESS_MODES = ("pread", "mmap")


class RecordReader:
    """Fetches record values of one complete dataset in this process.

    Args:
        meta: The dataset's metadata (from :func:`storage.environment.load_metadata`).
        access: ``"pread"`` reads a record with one ``os.pread`` of exactly its bytes, using
            the (offset, length) table written when the dataset was finalised: a single
            I/O request per record, fast on a cold page cache and on network filesystems.
            ``"mmap"`` reads through LMDB's memory map (no system call, but every 4 KB page
            of a value not in the page cache faults in synchronously). Datasets without the
            offset table always use ``"mmap"``.
        readahead: OS readahead on LMDB's memory map; on for sequential readers,
            off for random access.
    """

    def __init__(self, meta: DatasetMetadata, *, access: Access = "pread", readahead: bool = False) -> None:
        self.meta = meta
        self.access: Access = access if meta.spans is not None else "mmap"
        self._readahead = readahead
        self._pid = os.getpid()
        self._fd: int | None = None
        self._env: lmdb.Environment | None = None
        self._records_db: lmdb._Database | None = None
        self._prefetcher: Prefetcher | None = None

    @property
    def stale(self) -> bool:
        """True in a process other than the one that created this reader (after a fork)."""
        return self._pid != os.getpid()

    def _data_fd(self) -> int:
        if self._fd is None:
            fd = os.open(data_file(self.meta.path), os.O_RDONLY)
            if FileIdentity.of(os.fstat(fd)) != self.meta.identity:
                os.close(fd)
                raise changed_error(self.meta.path)
            # A record's pread reads its own pages only, not a readahead window past it (4x a
            # ~110 KB record: 3 ms more per cold record at 150 MB/s); explicit prefetches
            # (WILLNEED) are unaffected.
            fadvise(fd, 0, 0, "RANDOM")
            self._fd = fd
        return self._fd

    def _check_unchanged(self) -> None:
        """Raise DatasetChangedError, releasing the old file, if the data file was replaced or written.

        One ``stat`` (about a microsecond on a local disk; served from the attribute cache on NFS).
        """
        try:
            current = FileIdentity.of(os.stat(data_file(self.meta.path)))
        except FileNotFoundError:
            current = None
        if current != self.meta.identity:
            self.close()
            environments.release(self.meta.path, self.meta.identity)
            raise changed_error(self.meta.path)

    def _environment(self) -> tuple[lmdb.Environment, lmdb._Database]:
        if self._env is None:
            self._env, _ = environments.get(self.meta.path, self.meta.identity, readahead=self._readahead)
            self._records_db, _ = open_databases(self._env, self.meta.path)
        assert self._records_db is not None  # opened with the environment
        return self._env, self._records_db

    def _transaction(self) -> lmdb.Transaction[memoryview]:
        env, _ = self._environment()
        try:
            return begin_read(env, buffers=True)
        except lmdb.Error:
            # Closed under us: a writer in this process re-opened the file. Re-acquire, which
            # raises DatasetChangedError if the file was replaced.
            self._env = None
            env, _ = self._environment()
            return begin_read(env, buffers=True)

    def _prefetch(self, spans: Sequence[Sequence[int]]) -> None:
        """Ask the kernel to start reading these (offset, length) byte spans now (:func:`storage.prefetching.advise`).

        For a batch about to be read: its cold reads then overlap with the decoding of its
        earlier records, and a memory map opened without readahead finds its pages cached
        instead of faulting them in one 4 KB page at a time.
        """
        advise(self._data_fd(), spans)

    def prefetch(self, spans: Sequence[Sequence[int]] | np.ndarray, *,
                 read: Sequence[Sequence[int]] | np.ndarray | None = None, wait: bool = False,
                 shared: SharedAsk | None = None) -> threading.Event:
        """Queue these (offset, length) byte spans for the page cache on this process's prefetch thread.

        Returns at once (or, with ``wait``, once done) an event set when the spans, or ``read``
        of them, are cached; see :class:`Prefetcher` (``shared``: who asks the kernel).
        """
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(self._data_fd())
        return self._prefetcher.request(spans, read=read, wait=wait, shared=shared)

    def values(self, indices: Sequence[int]) -> Iterator[tuple[int, bytes | memoryview | None]]:
        """Yield ``(index, value)`` for ``indices``, in the order given (pass them sorted to read forward).

        The value is None for a record missing from the LMDB (``"mmap"`` access); :func:`record_pixels` refuses it.

        A yielded value stays valid only until the next one is requested; decode it first.

        Raises:
            DatasetChangedError: The data file was replaced or written since the metadata was read.
            RecordReadError: A ``pread`` failed (I/O error) or came back short (truncated file).
        """
        self._check_unchanged()
        spans = self.meta.spans[np.asarray(indices, dtype=np.int64)].tolist() if self.meta.spans is not None else None
        if spans is not None and len(spans) > 1:
            self._prefetch(spans)
        if self.access == "pread":
            fd = self._data_fd()
            assert spans is not None  # access is "pread" only for a dataset with the offset table
            for index, (offset, length) in zip(indices, spans):
                yield index, self._pread(fd, index, offset, length)
            return
        with self._transaction() as txn:
            _, records_db = self._environment()
            for index in indices:
                try:
                    value = txn.get(fmt.encode_key(index), db=records_db)
                except lmdb.Error as exc:
                    raise _corrupt(self.meta, index, f"LMDB reports its page damaged ({exc})") from None
                yield index, value

    def _pread(self, fd: int, index: int, offset: int, length: int) -> bytes:
        try:
            value = os.pread(fd, length, offset)
        except OSError as exc:
            raise _corrupt(self.meta, index, f"reading its {length} bytes at offset {offset} failed ({exc}); "
                                             "the storage may be failing", RecordReadError) from exc
        if len(value) != length:
            raise _corrupt(self.meta, index, f"reading its {length} bytes at offset {offset} returned "
                                             f"{len(value)}: the data file is shorter than its offset table "
                                             "says (truncated?)", RecordReadError)
        return value

    def close(self) -> None:
        """Release this reader's file handle (the environment stays shared in the process).

        Safe on a reader inherited over fork: it closes only this process's copy.
        """
        if self._prefetcher is not None:
            if self.stale:
                self._prefetcher.abandon()  # its thread is the parent's
            else:
                self._prefetcher.close()
            self._prefetcher = None
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._env = None

    def __del__(self) -> None:
        self.close()


def record_pixels(meta: DatasetMetadata, index: int, value: bytes | memoryview | None, *,
                  decode: Callable[[fmt.RecordHeader, memoryview], Any], verify: bool = True) -> tuple[Any, int]:
    """The image and label of record ``index`` from its stored value, checked.

    ``decode(header, payload)`` turns the checked payload into the image (``decode.image.pixels_of``
    for HxWx3 uint8 RGB pixels, a fused crop decoder, ...); it raises ValueError for an image that
    does not decode.

    Raises:
        CorruptRecordError: The record is missing, malformed, fails its CRC32 check (with
            ``verify``), holds another label than the label table, or its image does not decode.
            The message names the dataset path, the record index and, when known, the source file.
    """
    if value is None:
        raise _corrupt(meta, index, "the record is missing")
    try:
        header = fmt.decode_header(value)
    except ValueError as exc:
        raise _corrupt(meta, index, f"malformed record header ({exc})") from None
    payload = fmt.payload_of(value)
    if verify:
        crc = fmt.crc32(payload)
        if crc != header.crc32:
            raise _corrupt(meta, index, f"CRC32 mismatch (stored {header.crc32:08x}, computed {crc:08x}): "
                                        "the data file is damaged; restore or re-convert it")
    if header.label != meta.labels[index]:
        raise _corrupt(meta, index, f"its header says label {header.label} but the label table says "
                                    f"{meta.labels[index]}: the data file is damaged; restore or re-convert it")
    try:
        return decode(header, payload), header.label
    except ValueError as exc:
        raise _corrupt(meta, index, f"the image does not decode: {exc}") from None


def _corrupt(meta: DatasetMetadata, index: int, reason: str,
             kind: type[CorruptRecordError] = CorruptRecordError) -> CorruptRecordError:
    source = ""
    try:
        paths = read_path_table(meta.path, meta.info.num_records)
        if paths is not None and paths[index]:
            source = f" (source file {paths[index]!r})"
    except Exception:
        pass
    return kind(f"{meta.path}: record {index}{source}: {reason}. "
                              f"Run `lmdb-dataset verify {meta.path}` to list every bad record.",
                              path=meta.path, index=index)


def check_access(access: str) -> None:
    """Raise ValueError unless ``access`` is one of :data:`ACCESS_MODES`."""
    if access not in ACCESS_MODES:
        raise ValueError(f"access={access!r} is not supported; use one of {', '.join(ACCESS_MODES)}")
