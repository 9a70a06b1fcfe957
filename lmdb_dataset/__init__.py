"""lmdb_dataset: ImageNet-scale image datasets in LMDB, read fast into PyTorch.

Public API:

* :class:`LMDBImageDataset` - map-style random access (drop-in for ``ImageFolder``).
* :class:`LMDBIterableDataset` - sequential cursor reads, sharded over workers and ranks.
* :class:`ChunkShuffleSampler` - near-sequential shuffled order for map-style datasets.
* :func:`convert_image_folder`, :class:`LMDBWriter` - writing datasets.
* :class:`NormalizeBatch`, :func:`train_transform`, :func:`val_transform` - fast uint8 pipelines.
* :func:`make_photo_folder` - a sample ImageFolder of photographic JPEGs.
* :func:`verify_dataset`, :func:`reindex` - checking a dataset, rebuilding its offset table.
"""

from .convert import ConversionReport, convert_image_folder
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
from .sampler import ChunkShuffleSampler
from .samples import make_photo_folder
from .transforms import NormalizeBatch, train_transform, val_transform
from .writer import LMDBWriter

__version__ = "0.1.0"

__all__ = [
    "ChunkShuffleSampler",
    "LMDBIterableDataset",
    "ConversionReport",
    "CorruptDatasetError",
    "CorruptRecordError",
    "DatasetChangedError",
    "DatasetNotFoundError",
    "IncompleteDatasetError",
    "LMDBDatasetError",
    "LMDBImageDataset",
    "LMDBWriter",
    "NormalizeBatch",
    "NotADatasetError",
    "RecordReadError",
    "SourceImageError",
    "StaleOffsetsWarning",
    "convert_image_folder",
    "make_photo_folder",
    "reindex",
    "train_transform",
    "val_transform",
    "verify_dataset",
]
