"""lmdb_dataset: ImageNet-scale image datasets in LMDB, read fast into PyTorch.

Public API:

* :class:`LMDBImageDataset` - map-style random access (drop-in for ``ImageFolder``).
* :class:`LMDBIterableDataset` - sequential reads in mixing pools, sharded over workers and ranks.
* :class:`ChunkShuffleSampler` - near-sequential shuffled order for map-style datasets.
* :func:`convert_image_folder`, :class:`LMDBWriter` - writing datasets.
* :func:`convert_source` - converting legacy LMDBs, tar archives, list files and HDF5, safely.
* :class:`LegacyLMDBDataset` - a tensorpack / folder2lmdb / Caffe LMDB read in place, safely.
* :class:`NormalizeBatch`, :func:`train_transform`, :func:`val_transform` - fast uint8 pipelines.
* :class:`LMDBLoader` - normalised batches on the device (CPU or CUDA decode) in one call.
* :class:`RandomResizedCropDecode`, :class:`CenterCropDecode` - fused crop decoding of JPEG records.
* :func:`make_photo_folder` - a sample ImageFolder of photographic JPEGs.
* :func:`order_quality`, :class:`ClassLocalityWarning` - how well a sample order mixes.
* :func:`verify_dataset`, :func:`reindex` - checking a dataset, rebuilding its offset table.

The names are imported on first use (PEP 562), so ``import lmdb_dataset`` and the commands that
only read metadata (``lmdb-dataset info``, ``verify``) do not pay for importing torch.
``from lmdb_dataset import X`` works as usual.

Framework glue lives in :mod:`lmdb_dataset.integrations` (``.lightning.SetEpochCallback``,
``.timm.ReaderLMDB``), imported on its own so the package never imports those frameworks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Public name -> the module (relative to this package) that defines it.
_EXPORTS = {
    "BadRecordWarning": "bad_records",
    "CenterCropDecode": "crop_decode",
    "ChunkShuffleSampler": "sampler",
    "ClassLocalityWarning": "mixing",
    "ConversionReport": "convert",
    "CorruptDatasetError": "errors",
    "CorruptRecordError": "errors",
    "DatasetChangedError": "errors",
    "DatasetNotFoundError": "errors",
    "IncompleteDatasetError": "errors",
    "LMDBDatasetError": "errors",
    "LMDBImageDataset": "dataset",
    "LMDBIterableDataset": "iterable",
    "LMDBLoader": "loader",
    "LMDBWriter": "writer",
    "LegacyLMDBDataset": "sources.in_place",
    "NormalizeBatch": "transforms",
    "NotADatasetError": "errors",
    "OrderQuality": "mixing",
    "RandomResizedCropDecode": "crop_decode",
    "RecordReadError": "errors",
    "SourceImageError": "errors",
    "SkipReport": "bad_records",
    "StaleOffsetsWarning": "errors",
    "UnsupportedValueError": "sources.errors",
    "convert_image_folder": "convert",
    "convert_source": "sources.conversion",
    "make_photo_folder": "samples",
    "order_quality": "mixing",
    "reindex": "inspection",
    "train_transform": "transforms",
    "val_transform": "transforms",
    "verify_dataset": "inspection",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmdb_dataset' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .bad_records import BadRecordWarning, SkipReport
    from .convert import ConversionReport, convert_image_folder
    from .crop_decode import CenterCropDecode, RandomResizedCropDecode
    from .dataset import LMDBImageDataset
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
    from .inspection import reindex, verify_dataset
    from .iterable import LMDBIterableDataset
    from .loader import LMDBLoader
    from .mixing import ClassLocalityWarning, OrderQuality, order_quality
    from .sampler import ChunkShuffleSampler
    from .samples import make_photo_folder
    from .sources.conversion import convert_source
    from .sources.errors import UnsupportedValueError
    from .sources.in_place import LegacyLMDBDataset
    from .transforms import NormalizeBatch, train_transform, val_transform
    from .writer import LMDBWriter
