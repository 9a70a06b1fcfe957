"""HDF5 files (h5py, the ``hdf5`` extra): an images dataset plus a labels dataset.

The images dataset holds, per row, either an image file's bytes - variable-length uint8
(``h5py.vlen_dtype(np.uint8)``) or opaque (``np.void``) elements, kept as-is - or decoded
uint8 pixels: a 4-D array NHWC (last axis 1 or 3) or NCHW (second axis 1 or 3), or 3-D NHW
(gray), stored as ``raw``. The labels dataset is 1-D (or Nx1) integers of the same length.

Without names (``images=`` / ``labels=``, ``--images`` / ``--labels``), the datasets are
detected: the one dataset of an images shape, and the one 1-D integer dataset of the same
length (preferring a name containing ``label``, ``target``, ``class`` or ``y``); when there
is no single obvious choice the error lists the candidates, or, when there is none, why the
datasets shaped like images (or like labels) do not fit. Class names come from a
``classes`` attribute on the labels or images dataset (or the file) when there is one.
Rows are read in slices of :data:`ROWS_PER_READ`, in order.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import numpy as np

from .base import SourceRecord
from .errors import optional_import

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ROWS_PER_READ = 256
_LABEL_HINTS = ("label", "target", "class", "y")
_REASONS_SHOWN = 4


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` is a file starting with the HDF5 signature."""
    if not path.is_file():
        return False
    with open(path, "rb") as file:
        return file.read(8) == HDF5_SIGNATURE


def _is_bytes_dataset(dataset) -> bool:
    base = optional_import("h5py", "hdf5").check_vlen_dtype(dataset.dtype)
    opaque = dataset.dtype.kind == "V" and dataset.dtype.names is None
    return dataset.ndim == 1 and ((base is not None and base == np.uint8) or opaque)


def _is_pixels_dataset(dataset) -> bool:
    return dataset.dtype == np.uint8 and (dataset.ndim == 3 or (
        dataset.ndim == 4 and (dataset.shape[3] in (1, 3) or dataset.shape[1] in (1, 3))))


def _images_problem(name: str, dataset) -> str:
    """Why dataset ``name`` holds no images, or ``""`` when it does."""
    if _is_bytes_dataset(dataset) or _is_pixels_dataset(dataset):
        return ""
    return (f"{name!r} of {dataset.dtype} {dataset.shape} holds neither encoded images (vlen uint8 / opaque) nor "
            "uint8 NHWC/NCHW/NHW pixels")


def _labels_problem(name: str, dataset, rows: int) -> str:
    """Why dataset ``name`` cannot hold the labels of ``rows`` images, or ``""`` when it can."""
    if dataset.dtype.kind not in "iu":
        return f"{name!r} is {dataset.dtype}, not integers"
    if not (dataset.ndim == 1 or (dataset.ndim == 2 and dataset.shape[1] == 1)):
        return f"{name!r} has shape {dataset.shape}, not ({rows},) or ({rows}, 1)"
    if dataset.shape[0] != rows:
        return f"{name!r} has {dataset.shape[0]} entries for {rows} images"
    return ""


def _choose(problems: dict[str, str], what: str, path: Path, flag: str, hints: tuple[str, ...] = ()) -> str:
    """The one dataset without a problem (or the one among them named by a hint).

    Args:
        problems: Each dataset that might hold the ``what``, and why it cannot (``""``: a candidate).
            With no candidate, the error says why each was rejected (the first :data:`_REASONS_SHOWN`).
    """
    candidates = [name for name, problem in problems.items() if not problem]
    preferred = [name for name in candidates if any(hint in name.rsplit("/", 1)[-1].lower() for hint in hints)]
    for group in (candidates, preferred):
        if len(group) == 1:
            return group[0]
    found = ", ".join(candidates) or "none"
    rejected = [problem for problem in problems.values() if problem]
    if not candidates and rejected:
        more = len(rejected) - _REASONS_SHOWN
        found += ": " + "; ".join(rejected[:_REASONS_SHOWN]) + (f"; {more} more" if more > 0 else "")
    raise ValueError(f"{str(path)!r}: cannot tell which dataset holds the {what} (candidates: {found}); "
                     f"name it with {flag}")


class HDF5Source:
    """Images and labels of an HDF5 file; see the module docstring.

    Args:
        path: The HDF5 file.
        images: Name of the images dataset. Defaults to detecting it.
        labels: Name of the labels dataset. Defaults to detecting it.
    """

    kind = "hdf5"

    def __init__(self, path: str | os.PathLike, *, images: str | None = None, labels: str | None = None) -> None:
        h5py = optional_import("h5py", "hdf5")
        self.path = Path(path)
        with h5py.File(self.path, "r") as file:
            datasets: list[str] = []
            file.visititems(lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None)
            for name, flag in ((images, "--images"), (labels, "--labels")):
                if name is not None and name not in datasets:
                    raise ValueError(f"{str(self.path)!r} has no dataset {name!r} ({flag}); it has "
                                     f"{', '.join(datasets) or 'none'}")
            # Rejected datasets worth explaining: those shaped like images (3-D, 4-D, or 1-D of bytes) ...
            self.images = images or _choose(
                {n: _images_problem(n, file[n]) for n in datasets
                 if file[n].ndim in (3, 4) or (file[n].ndim == 1 and file[n].dtype.kind in "OSV")},
                "images", self.path, "images= (--images)")
            image_set = file[self.images]
            if problem := _images_problem(self.images, image_set):
                raise ValueError(f"{str(self.path)!r}: dataset {problem}")
            rows = image_set.shape[0]
            # ... and numbers in a column or two.
            self.labels = labels or _choose(
                {n: _labels_problem(n, file[n], rows) for n in datasets
                 if n != self.images and file[n].ndim in (1, 2) and file[n].dtype.kind in "biuf"},
                "labels", self.path, "labels= (--labels)", _LABEL_HINTS)
            if problem := _labels_problem(self.labels, file[self.labels], rows):
                raise ValueError(f"{str(self.path)!r}: labels dataset {problem}")
            self._rows = rows
            self._channels_first = image_set.ndim == 4 and image_set.shape[3] not in (1, 3)
            self.classes = self._classes(file)

    def _classes(self, file) -> list[str] | None:
        for owner in (file[self.labels], file[self.images], file):
            if "classes" in owner.attrs:
                return [c.decode() if isinstance(c, bytes) else str(c) for c in owner.attrs["classes"]]
        return None

    def count(self) -> int:
        """Number of rows."""
        return self._rows

    def records(self, start: int = 0) -> Generator[SourceRecord, None, None]:
        """Read rows from ``start`` on, :data:`ROWS_PER_READ` at a time."""
        h5py = optional_import("h5py", "hdf5")
        with h5py.File(self.path, "r") as file:
            images, labels = file[self.images], file[self.labels]
            for first in range(start, self._rows, ROWS_PER_READ):
                block = images[first:first + ROWS_PER_READ]
                targets = np.asarray(labels[first:first + ROWS_PER_READ]).reshape(-1)
                for offset, (image, label) in enumerate(zip(block, targets)):
                    yield self._record(first + offset, image, int(label))

    def _record(self, row: int, image, label: int) -> SourceRecord:
        name = f"{self.images}[{row}]"
        if isinstance(image, np.void):
            image = image.tobytes()
        elif image.ndim == 1:
            image = image.tobytes()
        elif self._channels_first:
            image = np.ascontiguousarray(image.transpose(1, 2, 0))
        size = len(image) if isinstance(image, bytes) else image.nbytes
        return SourceRecord(name, image, label, "", size)
