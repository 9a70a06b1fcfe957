"""Reading a legacy image LMDB in place, without converting it: :class:`LegacyLMDBDataset`."""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from typing import Any

import lmdb
import numpy as np
from torchvision.datasets import VisionDataset

from ..decode.image import Output, check_output, decode_image, to_output
from ..errors import CorruptRecordError
from ..read.bad_records import BadRecords, OnError, SkipReport
from ..storage import format as fmt
from .base import read_classes_file
from .errors import UnsupportedValueError
from .legacy_lmdb import LegacyLMDBSource, key_name


def rgb_pixels(image: bytes | np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of a record's image (file bytes decoded, gray pixels repeated)."""
    if isinstance(image, bytes):
        return decode_image(image)
    if image.ndim == 2:
        image = image[:, :, None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


class LegacyLMDBDataset(VisionDataset):
    """Map-style access to a tensorpack / folder2lmdb / Caffe LMDB, read in place (read-only).

    For users without room for a converted copy. Record ``i`` is the ``i``-th record in the
    writer's order (see :mod:`lmdb_dataset.sources.legacy_lmdb`); values are decoded by the
    safe parsers (nothing in the file is executed) and images decoded like
    :class:`~lmdb_dataset.LMDBImageDataset` does. The LMDB is opened lazily in each process
    that reads (DataLoader workers, fork or spawn), once per process: dataset objects over one LMDB
    (train and eval views) share its environment. Compared with a converted dataset there
    is no checksum, no one-``pread`` offset table, and ``targets`` costs a pass over every
    value the first time it is read. The key table is a numpy array (shared copy-on-write).

    Args:
        path: The legacy LMDB: a directory (``subdir=True``) or a single file.
        transform: Applied to each image (as given by ``output``). Defaults to None.
        target_transform: Applied to each label. Defaults to None.
        kind: ``"tensorpack"``, ``"folder2lmdb"`` or ``"caffe"``. Defaults to detecting it.
        classes: Class names (a list, or a text file with one a line). Defaults to none
            (``classes`` is then empty; labels are the stored integers). Given, every label must
            have one: reading a record whose label has no class name raises :class:`CorruptRecordError`
            (the rule ``convert`` follows: :func:`~lmdb_dataset.storage.format.label_problem`; the
            labels are stored in the values, so they are checked as records are read).
        output: ``"pil"``, ``"tensor"`` (CHW uint8) or ``"numpy"`` (HWC uint8). Defaults to ``"pil"``.
        on_error: ``"raise"``: a record that cannot be parsed or decoded raises
            :class:`CorruptRecordError` naming it. ``"skip"``: it is replaced by a fixed other
            record, reported once (:class:`BadRecordWarning`) and listed in :attr:`skipped`,
            as in :class:`LMDBImageDataset`. Defaults to ``"raise"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsupportedValueError: ``path`` is not an LMDB, or its writer cannot be detected (pass ``kind``).
    """

    def __init__(self, path: str | os.PathLike, transform: Callable | None = None,
                 target_transform: Callable | None = None, *, kind: str | None = None,
                 classes: Sequence[str] | str | os.PathLike | None = None, output: Output = "pil",
                 on_error: OnError = "raise") -> None:
        check_output(output)
        self._source = LegacyLMDBSource(path, kind=kind)
        super().__init__(os.fspath(path), transform=transform, target_transform=target_transform)
        self.path = self._source.path
        self.kind = self._source.kind
        self.output = output
        names = read_classes_file(classes) if isinstance(classes, (str, os.PathLike)) else classes
        self.classes: list[str] = list(names or [])
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(self.classes)}
        self._targets: np.ndarray | None = None
        self._env: lmdb.Environment | None = None  # this process's shared environment, kept open while in use
        self._bad = BadRecords(on_error, self._source.count())

    def __len__(self) -> int:
        return self._source.count()

    def _transaction(self) -> lmdb.Transaction[bytes]:
        # The registry hands out this process's environment: one inherited over fork is closed in the child
        # and replaced (storage.environment), one another dataset object opened is shared.
        self._env = self._source.open_environment()
        return self._env.begin(buffers=False)

    def _record(self, txn: lmdb.Transaction[bytes], index: int) -> tuple[bytes | np.ndarray, int]:
        key = bytes(self._source.keys[index])
        value = txn.get(key)
        try:
            if value is None:
                raise UnsupportedValueError(f"record {key_name(key)!r} is missing")
            image, label = self._source.decode(key, value)
            if problem := fmt.label_problem(label, len(self.classes) or fmt.MAX_LABEL + 1):
                raise UnsupportedValueError(f"record {key_name(key)!r}: {problem}")
            return image, label
        except UnsupportedValueError as exc:
            raise CorruptRecordError(f"{self.path}: record {index}: {exc}", path=str(self.path), index=index) from None

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        count = len(self)
        position = operator.index(index)
        position += count if position < 0 else 0
        if not 0 <= position < count:
            raise IndexError(f"index {index} is out of range for the {count} records of {self.path}")
        try:
            return self._load(position)
        except CorruptRecordError as error:
            return self._bad.replace(position, error, self._load)

    @property
    def on_error(self) -> OnError:
        """``"raise"`` or ``"skip"`` a record that cannot be parsed or decoded."""
        return self._bad.on_error

    @property
    def skipped(self) -> SkipReport:
        """The bad records skipped so far with ``on_error="skip"``, by this object and its DataLoader workers."""
        return self._bad.report

    def _load(self, position: int) -> tuple[Any, Any]:
        with self._transaction() as txn:
            image, label = self._record(txn, position)
        try:
            sample = to_output(rgb_pixels(image), self.output)
        except ValueError as exc:
            raise CorruptRecordError(f"{self.path}: record {position} ({bytes(self._source.keys[position])!r}): "
                                     f"{exc}", path=str(self.path), index=position) from None
        if self.transform is not None:
            sample = self.transform(sample)
        target: Any = label if self.target_transform is None else self.target_transform(label)
        return sample, target

    @property
    def targets(self) -> np.ndarray:
        """Every record's label (int64), read from the values on first use (a pass over the file)."""
        if self._targets is None:
            with self._transaction() as txn:
                self._targets = np.array([self._record(txn, i)[1] for i in range(len(self))], dtype=np.int64)
        return self._targets

    def extra_repr(self) -> str:
        return f"Kind: {self.kind} (read in place)\nOutput: {self.output}\nClasses: {len(self.classes)}"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_env"] = None  # LMDB handles never cross a pickle
        return state
