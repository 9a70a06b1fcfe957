"""Writing datasets: :class:`LMDBWriter` appends records in large, crash-safe transactions."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from . import format as fmt
from .decoding import check_decodes, decode_image
from .environment import DATA_FILE, FileIdentity, begin_read, environments, record_spans, store_spans
from .errors import LMDBDatasetError, NotADatasetError, SourceImageError

INITIAL_MAP_SIZE = 1 << 30
DEFAULT_COMMIT_BYTES = 64 << 20
DEFAULT_COMMIT_RECORDS = 4096


def build_record(image: bytes | memoryview | np.ndarray, label: int, *, storage: str,
                 check: bool = True) -> bytes:
    """Encode one image as a record value (header + payload) of the given storage kind.

    Args:
        image: Encoded image bytes (``encoded`` storage; JPEG/PNG/... kept as-is), or for
            ``raw`` storage either a uint8 array (HxW, HxWx1 or HxWx3) or encoded bytes,
            which are decoded to RGB.
        label: Integer class label.
        storage: ``"encoded"`` or ``"raw"``.
        check: Decode encoded bytes to prove they are a readable image (see
            :func:`decoding.check_decodes`). Defaults to True.

    Raises:
        ValueError: The image is not decodable, or not of a storable shape/dtype.
    """
    if storage not in fmt.STORAGE_KINDS:
        raise ValueError(f"storage={storage!r} is not supported; use 'encoded' or 'raw'")
    if storage == "encoded":
        if isinstance(image, np.ndarray):
            raise ValueError("encoded storage takes the image file's bytes; use storage='raw' for arrays")
        height, width = check_decodes(image) if check else (0, 0)
        return fmt.encode_record(image, kind=fmt.KIND_ENCODED, label=label, height=height, width=width,
                                 channels=3)
    pixels = image if isinstance(image, np.ndarray) else decode_image(image)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3)):
        raise ValueError(f"raw storage takes uint8 HxW, HxWx1 or HxWx3 arrays, got {pixels.dtype} "
                         f"{pixels.shape}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return fmt.encode_record(np.ascontiguousarray(pixels).data.cast("B"), kind=fmt.KIND_RAW, label=label,
                             height=pixels.shape[0], width=pixels.shape[1], channels=channels)


class LMDBWriter:
    """Appends images to a new (or resumed) dataset; a context manager.

    Records are buffered and committed together in large transactions (``commit_bytes`` or
    ``commit_records``, whichever comes first). A commit is atomic and durable: the records,
    their labels and source paths, and the progress recorded in ``conversion`` land
    together, so a process killed at any point loses nothing that was committed, and
    ``LMDBWriter(path, resume=True)`` continues after the last committed record. The LMDB
    map grows by doubling when full: no map size to choose. Leaving the ``with`` block
    normally marks the dataset complete; leaving it by an exception commits what was added
    and leaves the dataset incomplete (readers refuse it until it is resumed).

    Example::

        with LMDBWriter("train.lmdb", classes=["cat", "dog"]) as writer:
            writer.add(open("cat1.jpg", "rb").read(), 0)

    Args:
        path: Dataset directory to create (or resume).
        storage: ``"encoded"`` keeps the image file's bytes (JPEG as-is, smallest);
            ``"raw"`` stores decoded HxWxC uint8 pixels (no decode cost when reading, ~10x
            larger). Defaults to ``"encoded"``.
        classes: Class names, label ``i`` meaning ``classes[i]``. Defaults to none.
        source: A description of where the images came from. Defaults to ``""``.
        resume: Continue an incomplete dataset at ``path`` instead of creating one.
        overwrite: Replace an existing dataset at ``path``. Defaults to False (error).
        commit_bytes: Commit once this many bytes are pending. Defaults to 64 MiB: large
            transactions are fast; each holds its records in memory until committed.
        commit_records: Commit once this many records are pending. Defaults to 4096.
        sync: fsync each commit. Defaults to True (committed data survives power loss,
            not only a crash of the process).
    """

    def __init__(self, path: str | os.PathLike, *, storage: str = "encoded",
                 classes: Sequence[str] | None = None, source: str = "", resume: bool = False,
                 overwrite: bool = False, commit_bytes: int = DEFAULT_COMMIT_BYTES,
                 commit_records: int = DEFAULT_COMMIT_RECORDS, sync: bool = True) -> None:
        if storage not in fmt.STORAGE_KINDS:
            raise ValueError(f"storage={storage!r} is not supported; use 'encoded' or 'raw'")
        if commit_bytes <= 0 or commit_records <= 0:
            raise ValueError("commit_bytes and commit_records must be positive")
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other")
        self.path = Path(path)
        self._commit_bytes = commit_bytes
        self._commit_records = commit_records
        self._pending: list[bytes] = []
        self._pending_labels: list[int] = []
        self._pending_paths: list[str] = []
        self._pending_bytes = 0
        self._closed = False
        environments.release(self.path)
        if resume:
            self._env = self._open(map_size=max(INITIAL_MAP_SIZE, 2 * self._file_size()), sync=sync)
            self._records_db, self._meta_db = self._open_dbs(create=False)
            with begin_read(self._env) as txn:
                raw = txn.get(fmt.INFO_KEY, db=self._meta_db)
            self.info = fmt.DatasetInfo.from_json(raw)
            if self.info.complete:
                raise LMDBDatasetError(f"the dataset at {str(self.path)!r} is already complete; "
                                       "nothing to resume")
            if self.info.storage != storage:
                raise ValueError(f"cannot resume {str(self.path)!r} with storage={storage!r}: it was "
                                 f"started with storage={self.info.storage!r}")
        else:
            self._prepare_new_directory(overwrite)
            self._env = self._open(map_size=INITIAL_MAP_SIZE, sync=sync)
            self._records_db, self._meta_db = self._open_dbs(create=True)
            self.info = fmt.DatasetInfo(storage=storage, classes=list(classes or []), source=source)
            self.commit()

    def _file_size(self) -> int:
        data = self.path / DATA_FILE
        if not data.exists():
            raise NotADatasetError(f"cannot resume {str(self.path)!r}: it holds no dataset ({DATA_FILE} "
                                   "is missing); start the conversion without resume")
        return data.stat().st_size

    def _prepare_new_directory(self, overwrite: bool) -> None:
        if self.path.exists():
            is_dataset = (self.path / DATA_FILE).exists()
            if is_dataset and not overwrite:
                raise FileExistsError(f"a dataset already exists at {str(self.path)!r}; pass "
                                      "overwrite=True (--overwrite) to replace it or resume=True "
                                      "(--resume) to continue it")
            if not is_dataset and (not self.path.is_dir() or any(self.path.iterdir())):
                raise FileExistsError(f"{str(self.path)!r} exists and is not a dataset; refusing to "
                                      "write into it (choose a new path)")
            if is_dataset:
                shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def _open(self, *, map_size: int, sync: bool = True) -> lmdb.Environment:
        return lmdb.open(str(self.path), map_size=map_size, max_dbs=2, subdir=True, sync=sync,
                         readahead=False, create=True)

    def _open_dbs(self, *, create: bool) -> tuple[Any, Any]:
        try:
            return (self._env.open_db(fmt.RECORDS_DB, create=create),
                    self._env.open_db(fmt.META_DB, create=create))
        except lmdb.NotFoundError:
            raise NotADatasetError(f"{str(self.path)!r} is not an lmdb_dataset dataset") from None

    @property
    def num_records(self) -> int:
        """Records added so far (committed or pending)."""
        return self.info.num_records + len(self._pending)

    def add(self, image: bytes | memoryview | np.ndarray, label: int, *, path: str | None = None,
            check: bool = True) -> int:
        """Append one image; returns its record index.

        Args:
            image: Encoded image bytes, or (raw storage) a uint8 array; see :func:`build_record`.
            label: Integer class label.
            path: The image's source path relative to the dataset root, kept in the metadata.
            check: Decode encoded bytes to prove they are readable. Defaults to True.

        Raises:
            SourceImageError: The image cannot be decoded or stored (names ``path``).
        """
        try:
            record = build_record(image, label, storage=self.info.storage, check=check)
        except ValueError as exc:
            name = path if path is not None else f"image #{self.num_records}"
            raise SourceImageError(f"{name}: {exc}", source=name) from None
        return self.add_record(record, label, path=path)

    def add_record(self, record: bytes, label: int, *, path: str | None = None) -> int:
        """Append a record already built by :func:`build_record` (e.g. in a worker process)."""
        self._ensure_open()
        index = self.num_records
        self._pending.append(record)
        self._pending_labels.append(label)
        self._pending_paths.append(path or "")
        self._pending_bytes += len(record)
        if self._pending_bytes >= self._commit_bytes or len(self._pending) >= self._commit_records:
            self.commit()
        return index

    def skip(self, path: str, error: str) -> None:
        """Record a source file that was left out (listed in ``info.skipped``)."""
        self._ensure_open()
        self.info.skipped.append({"path": path, "error": error})

    def set_conversion_state(self, state: dict[str, Any]) -> None:
        """Converter bookkeeping saved atomically with the next commit (``info.conversion``)."""
        self.info.conversion = dict(state)

    def _ensure_open(self) -> None:
        if self._closed:
            raise LMDBDatasetError(f"the writer of {str(self.path)!r} is closed")

    def commit(self) -> None:
        """Write pending records, their label/path chunks and the info in one transaction."""
        start = self.info.num_records
        info = fmt.DatasetInfo(**{**self.info.__dict__, "num_records": start + len(self._pending)})
        self._write(lambda txn: self._put_pending(txn, start, info))
        self.info = info
        self._pending, self._pending_labels, self._pending_paths = [], [], []
        self._pending_bytes = 0

    def _put_pending(self, txn: lmdb.Transaction, start: int, info: fmt.DatasetInfo) -> None:
        for offset, record in enumerate(self._pending):
            if not txn.put(fmt.encode_key(start + offset), record, db=self._records_db, append=True):
                raise LMDBDatasetError(f"record {start + offset} of {str(self.path)!r} already exists")
        if self._pending:
            txn.put(fmt.chunk_key(fmt.LABELS_KEY, start),
                    fmt.encode_labels(np.asarray(self._pending_labels)), db=self._meta_db)
            txn.put(fmt.chunk_key(fmt.PATHS_KEY, start), fmt.encode_paths(self._pending_paths),
                    db=self._meta_db)
        txn.put(fmt.INFO_KEY, info.to_json(), db=self._meta_db)

    def _write(self, body) -> None:
        """Run ``body(txn)`` in a write transaction, doubling the map until it fits."""
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    body(txn)
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def close(self, *, complete: bool = True) -> None:
        """Commit pending records; with ``complete`` also finalise and mark the dataset complete.

        Finalising merges the per-commit label/path chunks into one table each and records
        each value's (offset, length) in the data file for one-``pread`` reads.
        """
        if self._closed:
            return
        try:
            self.commit()
            if complete:
                self._finalise()
        finally:
            self._closed = True
            self._env.close()

    def _finalise(self) -> None:
        labels, paths = self._merge_chunks()
        if len(labels) != 8 * self.info.num_records:
            raise LMDBDatasetError(f"{str(self.path)!r}: {len(labels) // 8} labels for "
                                   f"{self.info.num_records} records; the dataset is damaged")

        def put_tables(txn: lmdb.Transaction) -> None:
            txn.put(fmt.LABELS_KEY, labels, db=self._meta_db)
            txn.put(fmt.PATHS_KEY, paths, db=self._meta_db)

        self._write(put_tables)
        spans = record_spans(self._env, self._records_db, FileIdentity.of(os.stat(self.path / DATA_FILE)))
        info = fmt.DatasetInfo(**{**self.info.__dict__, "complete": True, "conversion": None})

        def put_spans_and_complete(txn: lmdb.Transaction) -> None:
            if spans is not None:
                store_spans(txn, self._meta_db, spans)
            txn.put(fmt.INFO_KEY, info.to_json(), db=self._meta_db)

        self._write(put_spans_and_complete)
        self.info = info

    def _merge_chunks(self) -> tuple[bytes, bytes]:
        """Concatenate and delete the ``labels/*`` and ``paths/*`` chunks, in record order."""
        labels: list[bytes] = []
        paths: list[bytes] = []

        def take(txn: lmdb.Transaction) -> None:
            labels.clear()
            paths.clear()
            for prefix, out in ((fmt.LABELS_KEY, labels), (fmt.PATHS_KEY, paths)):
                cursor = txn.cursor(db=self._meta_db)
                marker = prefix + b"/"
                keys = []
                if cursor.set_range(marker):
                    for key, value in cursor:
                        if not key.startswith(marker):
                            break
                        out.append(value)
                        keys.append(key)
                for key in keys:
                    txn.delete(key, db=self._meta_db)

        self._write(take)
        return b"".join(labels), b"\0".join(paths)

    def __enter__(self) -> LMDBWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)
