"""Writing datasets: :class:`LMDBWriter` appends records in large, crash-safe transactions."""

from __future__ import annotations

import operator
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from ..decode.image import check_decodes, decode_image, image_size
from ..errors import LMDBDatasetError, NotADatasetError, SourceImageError
from ..storage import format as fmt
from ..storage.environment import (
    DATA_FILE,
    LOCK_FILE,
    WRITER_LOCK_FILE,
    FileIdentity,
    begin_read,
    environments,
    lock_for_writing,
    record_spans,
    store_spans,
)
from ..storage.system import allocate, release_lock
from .interrupts import deferred_interrupts
from .shaping import Shaping, shape_image

DISK_FULL_MARGIN = 1 << 20
"""Free bytes below which a failed commit is reported as a full disk."""
LOCK_FILE_BYTES = 16 << 10
"""Allocated up front for LMDB's lock file (~8 KiB for its default 126 readers)."""

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
            :func:`decode.image.check_decodes`). Defaults to True. Without the check the
            image's size is still read from its header (:func:`decode.image.image_size`), so
            the record carries it, as readers that plan crops from it need; bytes without
            a readable header are stored as given, with size 0 x 0, and fail when read.

    Raises:
        ValueError: The image is not decodable, or not of a storable shape/dtype.
    """
    if storage not in fmt.STORAGE_KINDS:
        raise ValueError(f"storage={storage!r} is not supported; use 'encoded' or 'raw'")
    if storage == "encoded":
        if isinstance(image, np.ndarray):
            raise ValueError("encoded storage takes the image file's bytes; use storage='raw' for arrays")
        height, width = check_decodes(image) if check else _header_size(image)
        return fmt.encode_record(image, kind=fmt.KIND_ENCODED, label=label, height=height, width=width,
                                 channels=3)
    pixels = image if isinstance(image, np.ndarray) else decode_image(image)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3)):
        raise ValueError(f"raw storage takes uint8 HxW, HxWx1 or HxWx3 arrays, got {pixels.dtype} "
                         f"{pixels.shape}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return fmt.encode_record(np.ascontiguousarray(pixels).data.cast("B"), kind=fmt.KIND_RAW, label=label,
                             height=pixels.shape[0], width=pixels.shape[1], channels=channels)


def build_shaped_record(image: bytes | memoryview | np.ndarray, label: int, *, storage: str,
                        shaping: Shaping | None, check: bool = True) -> tuple[bytes, bool]:
    """:func:`build_record` of the image ``shaping`` stores (:func:`write.shaping.shape_image`; None: as given),
    and whether shaping resized it.

    Raises:
        ValueError: The image is not decodable, or not of a storable shape/dtype.
    """
    stored, resized = shape_image(image, shaping, storage) if shaping is not None else (image, False)
    return build_record(stored, label, storage=storage, check=check), resized


def _header_size(image: bytes | memoryview) -> tuple[int, int]:
    """(height, width) from the image's header, or (0, 0) when it has none (``check=False``: stored as given)."""
    try:
        return image_size(image)
    except ValueError:
        return 0, 0


def check_shaping(path: str | os.PathLike, info: fmt.DatasetInfo, shaping: Shaping | None, *,
                  complete: bool = False) -> None:
    """Refuse to resume the conversion ``info`` describes (``complete``: a finished one) with other shaping.

    Raises:
        LMDBDatasetError: ``info.shaping``'s settings differ from ``shaping``'s; the message
            gives both and the fix.
    """
    saved = info.shaping
    wanted = None if shaping is None else shaping.settings()
    if (None if saved is None else {key: saved.get(key) for key in ("max_side", "quality", "filter")}) == wanted:
        return

    def said(settings: dict | None) -> str:
        if settings is None:
            return "every image stored as given"
        return f"max_side={settings['max_side']}" + (f", quality={settings['quality']}"
                                                     if settings["quality"] is not None else "")

    where = f"the dataset at {str(path)!r} is already complete" if complete else f"cannot resume {str(path)!r}"
    raise LMDBDatasetError(f"{where}: it was converted with {said(saved)}, now with {said(wanted)}; run again with "
                           f"{said(saved)}, or start over with overwrite=True")


class LMDBWriter:
    """Appends images to a new (or resumed) dataset; a context manager.

    Records are buffered and committed together in large transactions (``commit_bytes`` or
    ``commit_records``, whichever comes first). A commit is atomic and durable: the records,
    their labels and source paths, and the progress recorded in ``conversion`` land
    together, so a process killed at any point loses nothing that was committed, and
    ``LMDBWriter(path, resume=True)`` continues after the last committed record. The LMDB
    map grows by doubling when full: no map size to choose. Leaving the ``with`` block
    normally marks the dataset complete; leaving it by an exception commits what was added
    and leaves the dataset incomplete (readers refuse it until it is resumed). Sample ``i``
    of the dataset is record ``i`` unless :meth:`set_sample_order` says otherwise (records
    written in a shuffled order, indexed in their source's order). A writer holds an exclusive
    advisory lock on its dataset's lock file from construction to :meth:`close` (the kernel drops
    it if the process dies, so a killed conversion can be resumed at once): a second writer of the
    same dataset, in any process, fails at once, before touching it (see
    :mod:`lmdb_dataset.storage.system`: not on Windows).

    Example::

        with LMDBWriter("train.lmdb", classes=["cat", "dog"]) as writer:
            writer.add(open("cat1.jpg", "rb").read(), 0)

    Args:
        path: Dataset directory to create (or resume).
        storage: ``"encoded"`` keeps the image file's bytes (JPEG as-is, smallest);
            ``"raw"`` stores decoded HxWxC uint8 pixels (no decode cost when reading, ~7x
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
        max_side: Opt-in, lossy storage shaping (like FFCV's ``max_resolution``): images whose
            longer side exceeds it are resized (Pillow Lanczos, aspect kept) to a longer side of
            exactly ``max_side`` when added with :meth:`add`; smaller ones are stored as given
            (encoded: their original bytes). Smaller stored images read faster and take less
            disk, at the cost of detail a crop of the original would have kept. Recorded in
            ``info.shaping``; see :mod:`lmdb_dataset.write.shaping` for grayscale, CMYK and PNG.
            Defaults to None: every image stored as given.
        quality: JPEG quality (1-100) of the images ``max_side`` re-encodes (``encoded``
            storage only). Defaults to 90 (FFCV's ImageNet example); higher keeps more detail,
            lower takes less disk.

    Raises:
        ValueError: An option is out of range (the message names it and what is allowed).
        LMDBDatasetError: ``resume`` of a dataset started with other ``max_side``/``quality``,
            or another writer (a conversion still running) holds the dataset.
    """

    def __init__(self, path: str | os.PathLike, *, storage: str = "encoded",
                 classes: Sequence[str] | None = None, source: str = "", resume: bool = False,
                 overwrite: bool = False, commit_bytes: int = DEFAULT_COMMIT_BYTES,
                 commit_records: int = DEFAULT_COMMIT_RECORDS, sync: bool = True, max_side: int | None = None,
                 quality: int | None = None) -> None:
        if storage not in fmt.STORAGE_KINDS:
            raise ValueError(f"storage={storage!r} is not supported; use 'encoded' or 'raw'")
        self._shaping = Shaping.of(max_side, quality, storage)
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
        self._sample_order: np.ndarray | None = None
        self._closed = False
        self._lock_fd: int | None = None
        self._lock_created = False
        environments.release(self.path)
        new_info = fmt.DatasetInfo(storage=storage, classes=list(classes or []), source=source,
                                   shaping=None if self._shaping is None
                                   else {**self._shaping.settings(), "resized": 0, "kept": 0})
        try:
            if resume:
                self._resume(new_info, storage, sync)
            else:
                self._prepare_new_directory(overwrite)
                self._env = self._open(map_size=INITIAL_MAP_SIZE, sync=sync)
                self._records_db, self._meta_db = self._open_dbs(create=True)
                self.info = new_info
                self.commit()
        except BaseException:
            self._closed = True
            if hasattr(self, "_env"):
                self._env.close()
            if self._lock_created:  # leave the directory as it was, so the same call can be repeated
                (self.path / WRITER_LOCK_FILE).unlink(missing_ok=True)
            self._unlock()
            raise

    def _resume(self, new_info: fmt.DatasetInfo, storage: str, sync: bool) -> None:
        map_size = max(INITIAL_MAP_SIZE, 2 * self._file_size())
        self._lock(create=True)
        self._env = self._open(map_size=map_size, sync=sync)
        # A writer killed before its first commit leaves no metadata and no records (perhaps not
        # even both sub-databases): start afresh.
        with begin_read(self._env) as txn:
            names = set(txn.cursor().iternext(keys=True, values=False))
        self._records_db, self._meta_db = self._open_dbs(create=names <= {fmt.RECORDS_DB, fmt.META_DB})
        with begin_read(self._env) as txn:
            raw = txn.get(fmt.INFO_KEY, db=self._meta_db)
            empty = txn.stat(self._records_db)["entries"] == 0
        if raw is None and not empty:
            raise NotADatasetError(f"cannot resume {str(self.path)!r}: it holds records but no dataset "
                                   "metadata; start over with overwrite=True")
        self.info = new_info if raw is None else fmt.DatasetInfo.from_json(raw)
        if self.info.complete:
            raise LMDBDatasetError(f"the dataset at {str(self.path)!r} is already complete; "
                                   "nothing to resume (pass overwrite=True to write it again)")
        if self.info.storage != storage:
            raise ValueError(f"cannot resume {str(self.path)!r} with storage={storage!r}: it was "
                             f"started with storage={self.info.storage!r}")
        check_shaping(self.path, self.info, self._shaping)

    def _lock(self, *, create: bool) -> None:
        """Take the writer's lock on :data:`WRITER_LOCK_FILE` (``create``: creating it), held until :meth:`close`.

        Not on LMDB's ``lock.mdb``: LMDB puts ``fcntl`` locks on that, which conflict with a
        ``flock`` on BSD and macOS. The descriptor is not inherited by programs run from this
        process (``os.open``'s default), and a fork's copy is closed in the child
        (:func:`storage.system.try_lock`).

        Raises:
            LMDBDatasetError: Another writer holds it (nothing was changed).
        """
        created = create and not (self.path / WRITER_LOCK_FILE).exists()
        self._lock_fd = lock_for_writing(self.path, create=create, then="or stop it and run again with resume=True")
        self._lock_created = created

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            release_lock(self._lock_fd)
            self._lock_fd = None

    def _file_size(self) -> int:
        data = self.path / DATA_FILE
        if not data.exists():
            raise NotADatasetError(f"cannot resume {str(self.path)!r}: it holds no dataset ({DATA_FILE} "
                                   "is missing); start the conversion without resume=True")
        return data.stat().st_size

    def _prepare_new_directory(self, overwrite: bool) -> None:
        """Check ``path`` may be written, take the writer's lock, and empty it (all but the lock file)."""
        if (self.path / WRITER_LOCK_FILE).is_file():
            self._lock(create=False)  # before anything else: a running writer's dataset is left alone
        if self.path.exists():
            is_dataset = (self.path / DATA_FILE).exists()
            if is_dataset and not overwrite:
                raise FileExistsError(f"a dataset already exists at {str(self.path)!r}; pass "
                                      "overwrite=True to replace it or resume=True to continue it")
            # An interrupt between creating the lock files and the data file leaves the lock files alone.
            if not is_dataset and (not self.path.is_dir()
                                   or any(p.name not in (LOCK_FILE, WRITER_LOCK_FILE) for p in self.path.iterdir())):
                raise FileExistsError(f"{str(self.path)!r} exists and is not a dataset; refusing to "
                                      "write into it (choose a new path)")
            if is_dataset:  # the writer's lock file stays: it is locked
                for entry in self.path.iterdir():
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    elif entry.name != WRITER_LOCK_FILE:
                        entry.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock(create=True)

    def _open(self, *, map_size: int, sync: bool = True) -> lmdb.Environment:
        # LMDB writes into its lock file through a memory map: on a full disk a page it cannot
        # allocate kills the process with SIGBUS. Allocating the file first makes that an error.
        lock = self.path / LOCK_FILE
        created = not lock.exists()
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < LOCK_FILE_BYTES:
                allocate(fd, LOCK_FILE_BYTES)
        except OSError as exc:
            if created:
                lock.unlink()  # leave the directory as it was, so the same call can be repeated
            raise LMDBDatasetError(f"cannot write {str(self.path)!r}: {exc.strerror}; free space on its disk "
                                   "(or choose a path on another one) and run again") from None
        finally:
            os.close(fd)
        return lmdb.open(str(self.path), map_size=map_size, max_dbs=2, subdir=True, sync=sync,
                         readahead=False, create=True)

    def _open_dbs(self, *, create: bool) -> tuple[Any, Any]:
        try:
            return (self._env.open_db(fmt.RECORDS_DB, create=create),
                    self._env.open_db(fmt.META_DB, create=create))
        except lmdb.NotFoundError:
            raise NotADatasetError(f"{str(self.path)!r} is an LMDB but not an lmdb_dataset dataset; "
                                   "write the dataset to a new path") from None

    @property
    def num_records(self) -> int:
        """Records added so far (committed or pending)."""
        return self.info.num_records + len(self._pending)

    def add(self, image: bytes | memoryview | np.ndarray, label: int, *, path: str | os.PathLike | None = None,
            check: bool = True) -> int:
        """Append one image; returns its record index.

        Args:
            image: Encoded image bytes, or (raw storage) a uint8 array; see :func:`build_record`.
            label: Integer class label.
            path: The image's source path relative to the dataset root, kept in the metadata.
            check: Decode encoded bytes to prove they are readable. Defaults to True; without
                it only the image's header is read, for its size.

        Raises:
            SourceImageError: The image cannot be decoded or stored (names ``path``).
            TypeError, ValueError: ``label`` is not a class index, or ``path`` not a path (see :meth:`add_record`).
        """
        self._ensure_open()
        label, path = self._checked(label, path)
        try:
            record, resized = build_shaped_record(image, label, storage=self.info.storage, shaping=self._shaping,
                                                  check=check)
        except ValueError as exc:
            name = path if path is not None else f"image #{self.num_records}"
            raise SourceImageError(f"{name}: {exc}", source=name) from None
        return self._append(record, label, path, resized)

    def _checked(self, label: int, path: str | os.PathLike | None) -> tuple[int, str | None]:
        """``(label, path)`` as stored (an int, a str), checked before anything is kept; errors name the image.

        Raises:
            TypeError: ``label`` is not an integer (a float, a str), or ``path`` not a str or path.
            ValueError: ``label`` is not a class index of this dataset (:func:`storage.format.label_problem`;
                without ``classes``, below :data:`~lmdb_dataset.storage.format.MAX_IMPLIED_CLASSES`).
        """
        if path is not None:
            path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
            if not isinstance(path, str):
                raise TypeError(f"image #{self.num_records}: path={path!r} is a {type(path).__name__}, "
                                "not a str or os.PathLike of str")
        name = path if path is not None else f"image #{self.num_records}"
        try:
            if isinstance(label, (bool, np.bool_)):
                raise TypeError
            index = operator.index(label)  # ints and numpy integers; never a float's or a str's truncation
        except TypeError:
            raise TypeError(f"{name}: label={label!r} is a {type(label).__name__}, not an integer class index; "
                            "pass int(label) if it holds one") from None
        if problem := fmt.label_problem(index, len(self.info.classes) or None):  # None: classes from the labels
            raise ValueError(f"{name}: {problem}")
        return index, path

    def add_record(self, record: bytes, label: int, *, path: str | os.PathLike | None = None,
                   resized: bool = False) -> int:
        """Append a record already built by :func:`build_record` (e.g. in a worker process).

        Args:
            record: The record value.
            label: Integer class label.
            path: The image's source path relative to the dataset root, kept in the metadata.
            resized: The record holds an image :func:`write.shaping.shape_image` resized under this
                writer's ``max_side``; counted in ``info.shaping`` (``resized``, else ``kept``).
                Defaults to False.

        Raises:
            TypeError: ``label`` is not an integer, or ``path`` not a str or ``os.PathLike``.
            ValueError: ``label`` is not a class index: negative, not in ``range(len(classes))`` when
                ``classes`` were given, else past the classes labels may imply
                (:func:`storage.format.label_problem`).
        """
        self._ensure_open()
        label, path = self._checked(label, path)
        return self._append(record, label, path, resized)

    def _append(self, record: bytes, label: int, path: str | None, resized: bool) -> int:
        """Keep a record whose label and path :meth:`_checked` returned; commit when enough is pending."""
        index = self.num_records
        with deferred_interrupts():  # the record's bytes, label, path and counts, or none of them
            if self.info.shaping is not None:
                self.info.shaping["resized" if resized else "kept"] += 1
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

    def record_paths(self) -> list[str]:
        """The source path of every record added so far (committed or pending), in record order."""
        with begin_read(self._env) as txn:
            _, paths, _ = self._chunks(txn)
        if not paths:
            return list(self._pending_paths)
        committed = fmt.PathTable(b"\0".join(paths), self.info.num_records)
        return [committed[i] for i in range(len(committed))] + self._pending_paths

    def set_sample_order(self, record_of_sample: np.ndarray) -> None:
        """Store a logical sample order, written as ``meta/order`` when the dataset is finalised.

        Args:
            record_of_sample: For logical sample ``i``, the index of the record holding it; a
                permutation of all records (checked when the dataset is finalised). Without
                it, sample ``i`` is record ``i``.
        """
        self._sample_order = np.array(record_of_sample, dtype=np.int64)

    def set_conversion_state(self, state: dict[str, Any]) -> None:
        """Converter settings saved atomically with the next commit (``info.conversion``)."""
        self.info.conversion = dict(state)

    def _ensure_open(self) -> None:
        if self._closed:
            raise LMDBDatasetError(f"the writer of {str(self.path)!r} is closed")

    def commit(self) -> None:
        """Write pending records, their label/path chunks and the info in one transaction.

        Ctrl-C (or SIGTERM handled by the command line) during a commit takes effect once the
        commit and its bookkeeping are done (:func:`write.interrupts.deferred_interrupts`): the
        transaction either lands with the writer knowing it or not at all, so closing the
        writer afterwards never writes the same records twice.
        """
        with deferred_interrupts():
            start = self.info.num_records
            info = fmt.DatasetInfo(**{**self.info.__dict__, "num_records": start + len(self._pending)})
            try:
                self._write(lambda txn: self._put_pending(txn, start, info))
            except BaseException:
                if self._pending and self._committed_records() == info.num_records:
                    self._committed(info)  # it landed before the exception: keep the books right
                raise
            self._committed(info)

    def _committed(self, info: fmt.DatasetInfo) -> None:
        """Bookkeeping once the pending records are committed with ``info``."""
        self.info = info
        self._pending, self._pending_labels, self._pending_paths = [], [], []
        self._pending_bytes = 0

    def _committed_records(self) -> int | None:
        """The record count of the committed info, or None if it cannot be read."""
        try:
            with begin_read(self._env) as txn:
                raw = txn.get(fmt.INFO_KEY, db=self._meta_db)
            return None if raw is None else fmt.DatasetInfo.from_json(raw).num_records
        except (lmdb.Error, LMDBDatasetError, ValueError):
            return None

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
        """Run ``body(txn)`` in a write transaction, doubling the map until it fits.

        Raises:
            LMDBDatasetError: The transaction could not be written (a full disk, an I/O
                error); what was committed before it is kept and can be resumed.
        """
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    body(txn)
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                raise self._write_failed(exc) from None

    def _write_failed(self, exc: lmdb.Error) -> LMDBDatasetError:
        free = shutil.disk_usage(self.path).free
        cause = (f"no space left on the device holding it ({free / 2**20:.1f} MiB free)"
                 if free < self._pending_bytes + DISK_FULL_MARGIN else f"{exc}")
        return LMDBDatasetError(
            f"writing {str(self.path)!r} failed: {cause}. The {self.info.num_records} records committed "
            "before are kept: free space (or move the dataset directory to a larger disk) and continue "
            "with resume=True.")

    def close(self, *, complete: bool = True) -> None:
        """Commit pending records; with ``complete`` also finalise and mark the dataset complete.

        Finalising merges the per-commit label/path chunks into one table each, records each
        value's (offset, length) in the data file for one-``pread`` reads and stores the
        sample order, all in the one transaction that marks the dataset complete: killed at
        any instant, the dataset is either complete or resumable as it was before.
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
            self._unlock()

    def _finalise(self) -> None:
        # Offsets are read before the final transaction: it writes only the meta database,
        # so no record value moves (LMDB copies on write only the pages it changes).
        spans = record_spans(self._env, self._records_db, FileIdentity.of(os.stat(self.path / DATA_FILE)))
        order = None if self._sample_order is None else self._checked_sample_order()
        info = fmt.DatasetInfo(**{**self.info.__dict__, "complete": True})

        def finish(txn: lmdb.Transaction) -> None:
            labels, paths, keys = self._chunks(txn)
            labels_blob = b"".join(labels)
            if len(labels_blob) != 8 * info.num_records:
                raise LMDBDatasetError(f"{str(self.path)!r}: {len(labels_blob) // 8} labels for "
                                       f"{info.num_records} records; the dataset is damaged")
            for key in keys:
                txn.delete(key, db=self._meta_db)
            txn.put(fmt.LABELS_KEY, labels_blob, db=self._meta_db)
            txn.put(fmt.PATHS_KEY, b"\0".join(paths), db=self._meta_db)
            if order is not None:
                txn.put(fmt.ORDER_KEY, order, db=self._meta_db)
            if spans is not None:
                store_spans(txn, self._meta_db, spans)
            txn.put(fmt.INFO_KEY, info.to_json(), db=self._meta_db)

        with deferred_interrupts():
            self._write(finish)
            self.info = info

    def _checked_sample_order(self) -> bytes:
        assert self._sample_order is not None  # called only once set_sample_order has set it
        if len(self._sample_order) != self.info.num_records:
            raise ValueError(f"the sample order of {str(self.path)!r} has {len(self._sample_order)} "
                             f"entries for {self.info.num_records} records")
        return fmt.encode_order(self._sample_order)

    def _chunks(self, txn: lmdb.Transaction) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """The ``labels/*`` and ``paths/*`` chunk values in record order, and all their keys."""
        labels: list[bytes] = []
        paths: list[bytes] = []
        keys: list[bytes] = []
        for prefix, out in ((fmt.LABELS_KEY, labels), (fmt.PATHS_KEY, paths)):
            cursor = txn.cursor(db=self._meta_db)
            marker = prefix + b"/"
            if cursor.set_range(marker):
                for key, value in cursor:
                    if not bytes(key).startswith(marker):
                        break
                    out.append(bytes(value))
                    keys.append(bytes(key))
        return labels, paths, keys

    def __enter__(self) -> LMDBWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)
