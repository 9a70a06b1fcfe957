"""lmdb_dataset: ImageNet-scale image datasets in LMDB, read fast into PyTorch.

Public API (everything below is importable from ``lmdb_dataset``):

* :class:`LMDBImageDataset` - map-style random access (drop-in for ``ImageFolder``).
* :class:`LMDBIterableDataset` - sequential reads in mixing pools, sharded over workers and ranks.
* :class:`ChunkShuffleSampler` - near-sequential shuffled order for map-style datasets.
* :class:`LMDBLoader` - normalised batches on the device (CPU or CUDA decode) in one call.
* :func:`convert_image_folder`, :class:`LMDBWriter` - writing datasets.
* :func:`convert_source` - converting legacy LMDBs, tar archives, list files and HDF5, safely.
* :class:`LegacyLMDBDataset` - a tensorpack / folder2lmdb / Caffe LMDB read in place, safely.
* :class:`NormalizeBatch`, :func:`train_transform`, :func:`val_transform` - fast uint8 pipelines.
* :class:`RandomResizedCropDecode`, :class:`CenterCropDecode` - fused crop decoding of JPEG records.
* :func:`verify_dataset`, :func:`reindex` - checking a dataset, rebuilding its offset table.
* the errors and warnings (:class:`LMDBDatasetError` and its subclasses, :class:`BadRecordWarning`,
  :class:`ClassLocalityWarning`, :class:`StaleOffsetsWarning`).

The names are imported on first use (PEP 562), so ``import lmdb_dataset`` and the commands that
only read metadata (``lmdb-dataset info``, ``verify``) do not pay for importing torch.

Layout, by stage; a stage imports only from the stages above it (and :mod:`.errors`)::

    errors.py       the exception and warning classes
    storage/        the on-disk format (format.py: the one place it is documented), opened LMDB
                    environments and their per-sample tables (shared across worker processes),
                    record reads, page-cache prefetching, the operating-system calls they need
    order/          the order of samples: pure ordering maths (maths.py), epoch and resume state
                    (resume.py), the DDP world, order quality, per-record augmentation draws
    decode/         record bytes to pixels: full decode, fused crop decode on the CPU, batched
                    decode and resampling on the device, the uint8 transforms
    read/           what goes into a DataLoader: the datasets, the sampler, the bad-record policy,
                    worker-process memory hygiene, batches collated into reused shared memory
    loader.py       LMDBLoader: read/ and decode/ composed into normalised batches
    write/          LMDBWriter, the image-folder converter, its worker pool, class discovery,
                    storage shaping (--max-side), the signal handling that keeps an interrupted
                    conversion resumable
    sources/        the formats converted from (legacy LMDBs, tar, list files, HDF5), parsed
                    without unpickling; legacy LMDBs read in place
    tools/          the ``lmdb-dataset`` command, info/verify/reindex, bench, demo and its photos
    integrations/   Lightning and timm glue, imported on its own so the package never imports them
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Public name -> the module (relative to this package) that defines it.
_EXPORTS = {
    "BadRecordWarning": "read.bad_records",
    "CenterCropDecode": "decode.crop",
    "ChunkShuffleSampler": "read.sampler",
    "ClassLocalityWarning": "order.quality",
    "ConversionReport": "write.convert",
    "CorruptDatasetError": "errors",
    "CorruptRecordError": "errors",
    "DatasetChangedError": "errors",
    "DatasetNotFoundError": "errors",
    "IncompleteDatasetError": "errors",
    "LMDBDatasetError": "errors",
    "LMDBImageDataset": "read.dataset",
    "LMDBIterableDataset": "read.iterable",
    "LMDBLoader": "loader",
    "LMDBWriter": "write.writer",
    "LegacyLMDBDataset": "sources.in_place",
    "NormalizeBatch": "decode.transforms",
    "NotADatasetError": "errors",
    "RandomResizedCropDecode": "decode.crop",
    "RecordReadError": "errors",
    "SourceImageError": "errors",
    "SkipReport": "read.bad_records",
    "StaleOffsetsWarning": "errors",
    "UnsupportedValueError": "sources.errors",
    "convert_image_folder": "write.convert",
    "convert_source": "sources.conversion",
    "reindex": "tools.inspection",
    "train_transform": "decode.transforms",
    "val_transform": "decode.transforms",
    "verify_dataset": "tools.inspection",
}

__all__ = sorted(_EXPORTS)

# Demo and benchmark helpers that 0.1.0 exported at the top level: name -> where they live now.
_MOVED = {
    "OrderQuality": "order.quality",
    "make_photo_folder": "tools.photo_folders",
    "order_quality": "order.quality",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None and name in _MOVED:
        warnings.warn(f"lmdb_dataset.{name} moved to lmdb_dataset.{_MOVED[name]}.{name}; the top-level name "
                      "goes in 0.3", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(f".{_MOVED[name]}", __name__), name)
    if module is None:
        raise AttributeError(f"module 'lmdb_dataset' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .decode.crop import CenterCropDecode, RandomResizedCropDecode
    from .decode.transforms import NormalizeBatch, train_transform, val_transform
    from .errors import (
        CorruptDatasetError,
        CorruptRecordError,
        DatasetChangedError,
        DatasetNotFoundError,
        IncompleteDatasetError,
        LMDBDatasetError,
        NotADatasetError,
        RecordReadError,
        SourceImageError,
        StaleOffsetsWarning,
    )
    from .loader import LMDBLoader
    from .order.quality import ClassLocalityWarning
    from .read.bad_records import BadRecordWarning, SkipReport
    from .read.dataset import LMDBImageDataset
    from .read.iterable import LMDBIterableDataset
    from .read.sampler import ChunkShuffleSampler
    from .sources.conversion import convert_source
    from .sources.errors import UnsupportedValueError
    from .sources.in_place import LegacyLMDBDataset
    from .tools.inspection import reindex, verify_dataset
    from .write.convert import ConversionReport, convert_image_folder
    from .write.writer import LMDBWriter
