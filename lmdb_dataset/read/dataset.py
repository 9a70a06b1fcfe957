"""Map-style access: :class:`LMDBImageDataset`, plus the base shared with the iterable dataset."""

from __future__ import annotations

import operator
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
from torchvision.datasets import VisionDataset

from ..decode.image import Output, Sample, check_output, pixels_of, to_output
from ..errors import CorruptRecordError
from ..storage.environment import DatasetMetadata, load_metadata, read_path_table
from ..storage.format import PathTable
from ..storage.prefetching import SharedAsk
from ..storage.reader import Access, RecordReader, check_access, record_pixels
from .bad_records import BadRecords, OnError, SkipReport, check_on_error
from .process_memory import freeze_inherited_objects


class LMDBDatasetBase(VisionDataset):
    """Metadata, output conversion and transforms shared by both dataset classes.

    Loads the dataset's metadata once (info, labels, sample order and record offsets: ~48
    bytes a record, ~61 MB for 1.28M images, in one shared-memory block that DataLoader workers
    map under any start method, :class:`~lmdb_dataset.storage.shared_tables.SharedTables`; the
    records themselves are never touched) and keeps the per-process :class:`RecordReader` out of
    pickles.
    """

    def __init__(self, path: str | os.PathLike, transform: Callable | None, target_transform: Callable | None,
                 *, output: Output, verify_checksums: bool, access: Access, readahead: bool,
                 on_error: OnError = "raise") -> None:
        check_output(output)
        check_access(access)
        check_on_error(on_error)
        self._meta: DatasetMetadata = load_metadata(path)
        super().__init__(os.fspath(path), transform=transform, target_transform=target_transform)
        self.path = self._meta.path
        self.output = output
        self.verify_checksums = verify_checksums
        self.access = access
        self._readahead = readahead
        self.classes: list[str] = list(self._meta.info.classes)
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(self.classes)}
        self._reader: RecordReader | None = None
        self._paths: PathTable | Literal[False] | None = None  # loaded on first source_path(); False: none stored
        self._bad = BadRecords(on_error, len(self.targets))

    @property
    def on_error(self) -> OnError:
        """``"raise"`` or ``"skip"``: what a record that cannot be read or decoded does (see :mod:`.bad_records`)."""
        return self._bad.on_error

    @property
    def skipped(self) -> SkipReport:
        """The bad records skipped so far with ``on_error="skip"``, by this object and its DataLoader workers.

        ``skipped.records`` are record indices; the sample each holds is ``file_order[record]``.
        """
        return self._bad.report

    @property
    def targets(self) -> np.ndarray:
        """The label of each sample, in index order (int64, read-only, shared with DataLoader workers)."""
        return self._meta.targets

    @property
    def file_order(self) -> np.ndarray:
        """Logical sample indices in the order their records lie in the file (``file_order[r]`` is the sample
        held by record ``r``); identity for a dataset stored in logical order. The labels in file order are
        ``targets[file_order]``. Read-only, shared with DataLoader workers."""
        return self._meta.file_order

    @property
    def storage(self) -> str:
        """``"encoded"`` or ``"raw"``: how the images are stored."""
        return self._meta.info.storage

    @property
    def reader(self) -> RecordReader:
        """This process's record reader, created on first use (and again after a fork).

        In a DataLoader worker, creating it also freezes the objects the worker inherited
        (:func:`read.process_memory.freeze_inherited_objects`).
        """
        if self._reader is None or self._reader.stale:
            if self._reader is not None:
                self._reader.close()  # the copy inherited over fork
            freeze_inherited_objects()
            self._reader = RecordReader(self._meta, access=self.access, readahead=self._readahead)
        return self._reader

    def prefetch(self, runs: np.ndarray | Sequence[tuple[int, int]], *,
                 records: Sequence[int] | np.ndarray | None = None, wait: bool = False,
                 shared: SharedAsk | None = None) -> threading.Event | None:
        """Have the records of these storage runs ``[start, stop)`` read into the page cache, in the background.

        The sequential readers call it for their next mixing pool. This process's prefetch
        thread asks the kernel for the runs (each one sequential stream) once the requests
        made earlier are done, and reads them through (:class:`storage.prefetching.Prefetcher`).

        Args:
            runs: Storage runs of record indices, rows ``[start, stop)`` (``order.maths.contiguous_runs``).
            records: The records this process will read (the request is done once they are
                cached; other processes read the rest). Defaults to every record of ``runs``.
            wait: Return once the request is done (a cold start's first pool).
            shared: When the rank's other processes read the same runs, who of them asks the
                kernel for them (:class:`storage.prefetching.SharedAsk`). Defaults to this process.

        Returns:
            An event set when the request is done; None (nothing to wait for) for datasets
            without a record offset table, which are read through LMDB's map.
        """
        spans = self._meta.spans
        if spans is None or len(runs) == 0:
            return None
        wanted = np.concatenate([spans[start:stop] for start, stop in runs])
        read = None if records is None else spans[np.asarray(records, dtype=np.int64)]
        return self.reader.prefetch(wanted, read=read, wait=wait, shared=shared)

    def source_path(self, index: int) -> str | None:
        """The relative source path sample ``index`` was converted from, if the dataset kept it.

        Takes negative indices like ``dataset[index]``. Raises IndexError out of range.
        """
        record = int(self._meta.record_of_sample[self._checked_index(index)])
        if self._paths is None:
            self._paths = read_path_table(self.path, len(self.targets)) or False
        return self._paths[record] if self._paths else None

    def _checked_index(self, index: Any) -> int:
        position = operator.index(index)
        count = len(self.targets)
        if position < 0:
            position += count
        if not 0 <= position < count:
            raise IndexError(f"index {index} is out of range for the {count} records of {self.path}")
        return position

    def _read_samples(self, records: Sequence[int]) -> Iterator[tuple[Any, Any]]:
        """Yield the samples of ``records`` in order (read forward when sorted), bad ones per :attr:`on_error`."""
        position = 0
        while position < len(records):
            values = self.reader.values(records[position:])
            for record in records[position:]:
                position += 1
                try:
                    _, value = next(values)
                except CorruptRecordError as error:  # its bytes could not be read: the reads start again after it
                    yield self._bad.replace(record, error, self._read_one)
                    break
                try:
                    sample = self._sample(record, value)
                except CorruptRecordError as error:
                    sample = self._bad.replace(record, error, self._read_one)
                yield sample

    def _read_one(self, record: int) -> tuple[Any, Any]:
        ((_, value),) = self.reader.values([record])
        return self._sample(record, value)

    def _sample(self, record: int, value: bytes | memoryview | None) -> tuple[Any, Any]:
        """Decode, verify and transform the stored value of ``record`` into ``(image, target)``."""
        pixels, label = record_pixels(self._meta, record, value, decode=pixels_of, verify=self.verify_checksums)
        image: Sample = to_output(pixels, self.output)
        if self.transform is not None:
            image = self.transform(image)
        target: Any = label
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def extra_repr(self) -> str:
        return f"Storage: {self.storage}\nOutput: {self.output}\nClasses: {len(self.classes)}"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None  # file handles and LMDB environments never cross a pickle
        state["_paths"] = None  # reloaded on demand rather than shipped to every worker
        return state


class LMDBImageDataset(LMDBDatasetBase):
    """Random access to an LMDB image dataset, a drop-in for ``torchvision.datasets.ImageFolder``.

    ``dataset[i]`` is ``(image, label)`` of sample ``i``: for a converted folder that is
    ``ImageFolder(src)[i]``, with equal pixels, whatever order the records were written in
    (the dataset maps sample ``i`` to its record). The file is opened lazily in
    the process that first reads, so each DataLoader worker (fork, spawn or forkserver,
    persistent or not) reads through its own handles. The DataLoader's batched fetch
    (``__getitems__``) reads a batch's records in file order.

    Example::

        dataset = LMDBImageDataset("train.lmdb", transform=transforms.Compose([...]))
        loader = DataLoader(dataset, batch_size=256, shuffle=True, num_workers=8, pin_memory=True)

    Args:
        path: Dataset directory written by :func:`convert_image_folder` or :class:`LMDBWriter`, or
            its data file (``train.lmdb/data.mdb``; also a single-file LMDB copy).
        transform: Applied to each image (as given by ``output``). Defaults to None.
        target_transform: Applied to each label. Defaults to None.
        output: ``"pil"`` an RGB ``PIL.Image`` (classic torchvision transforms), ``"tensor"``
            a CHW uint8 ``torch.Tensor`` (torchvision's ``transforms.v2``; fastest), ``"numpy"`` an HWC uint8
            array. Defaults to ``"pil"``.
        verify_checksums: Check each record's CRC32 on read (a few percent of decode time).
            Defaults to True.
        access: ``"pread"`` (one system call per record, reads exactly its bytes: best on a
            cold cache, spinning disks and network filesystems) or ``"mmap"`` (LMDB's memory
            map). Defaults to ``"pread"``; datasets without an offset table, or with one that
            cannot be proven to belong to the file, use ``"mmap"``.
        on_error: ``"raise"``: a record that fails its CRC32 check, cannot be read or does not
            decode raises :class:`CorruptRecordError` naming it. ``"skip"``: it is replaced by a
            fixed other record (the same on every rank, worker layout and resume, so epoch
            lengths never change), reported once with a :class:`BadRecordWarning` and listed
            in :attr:`skipped`. Defaults to ``"raise"``.

    Raises:
        DatasetNotFoundError: ``path`` does not exist.
        NotADatasetError: ``path`` holds no dataset (or one of an unknown format version).
        IncompleteDatasetError: Its conversion did not finish (resume it).
        CorruptDatasetError: The data file is truncated or LMDB reports it damaged.

    Warns:
        StaleOffsetsWarning: The offset table does not belong to the file (a compacted copy,
            a write after conversion); records are read through LMDB. ``lmdb-dataset reindex``.
    """

    def __init__(self, path: str | os.PathLike, transform: Callable | None = None,
                 target_transform: Callable | None = None, *, output: Output = "pil",
                 verify_checksums: bool = True, access: Access = "pread", on_error: OnError = "raise") -> None:
        super().__init__(path, transform, target_transform, output=output, verify_checksums=verify_checksums,
                         access=access, readahead=False, on_error=on_error)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, target)`` of every sample in index order, like ``ImageFolder.samples``.

        Paths are the source paths relative to the source root (``class/file.JPEG``), so
        ``os.path.join(src, path)`` is ImageFolder's path for a dataset converted from ``src``
        (which need not exist any more); for other sources the record's key or member name,
        for :class:`LMDBWriter` datasets the ``path`` given, ``""`` where none was. Built
        on first use (a pass over the path table, 1.75 us a sample: about 2 s for ImageNet),
        then kept; never pickled (DataLoader workers rebuild it only if they read it).
        """
        if self.__dict__.get("_samples") is None:
            self._samples = [(self.source_path(i) or "", int(target)) for i, target in enumerate(self.targets)]
        return self._samples

    @property
    def imgs(self) -> list[tuple[str, int]]:
        """The same list as :attr:`samples` (``ImageFolder.imgs`` is an alias of its ``samples`` too)."""
        return self.samples

    def loader(self, path: str | os.PathLike) -> Any:
        """The image converted from the source file ``path``, read from the dataset: ``ImageFolder.loader``'s part.

        ImageFolder's loader opens the file at ``path``; this one reads the record converted
        from it, so code written as ``self.loader(self.samples[i][0])`` keeps working, with
        the file system never touched. The image is decoded like ``dataset[i]`` and returned
        as ``output`` gives it (an RGB ``PIL.Image`` by default), before ``transform``.

        Args:
            path: A path of :attr:`samples`, or the same path under the source root
                (``ImageFolder(src).samples[i][0]``).

        Raises:
            FileNotFoundError: No sample of the dataset was converted from ``path``.
        """
        if self.__dict__.get("_sample_of_path") is None:
            self._sample_of_path = {sample_path: i for i, (sample_path, _) in enumerate(self.samples) if sample_path}
        name, root = os.fspath(path), os.path.join(self._meta.info.source, "")
        index = self._sample_of_path.get(name)
        if index is None and os.path.isabs(root) and os.path.abspath(name).startswith(root):
            index = self._sample_of_path.get(os.path.abspath(name)[len(root):])  # ImageFolder's path
        if index is None:
            raise FileNotFoundError(f"no sample of {self.path} was converted from {name!r}; the paths it holds are "
                                    "those of dataset.samples (relative to the source root)")
        record = int(self._meta.record_of_sample[index])
        ((_, value),) = self.reader.values([record])
        pixels, _ = record_pixels(self._meta, record, value, decode=pixels_of, verify=self.verify_checksums)
        return to_output(pixels, self.output)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_samples", None)  # rebuilt on demand rather than shipped to every worker
        state.pop("_sample_of_path", None)
        return state

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, Any]]:
        """Fetch a batch: records are read in file order, samples returned in ``indices`` order."""
        records = self._meta.record_of_sample[[self._checked_index(i) for i in indices]].tolist()
        order = sorted(range(len(records)), key=records.__getitem__)
        samples: list[Any] = [None] * len(records)
        for k, sample in zip(order, self._read_samples([records[k] for k in order])):
            samples[k] = sample
        return samples
