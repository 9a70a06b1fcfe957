"""lmdb_dataset: ImageNet-scale image datasets in LMDB, read fast into PyTorch.

Public API:

* :class:`LMDBImageDataset` - map-style random access (drop-in for ``ImageFolder``).
* :class:`LMDBIterableDataset` - sequential cursor reads, sharded over workers and ranks.
* :class:`ChunkShuffleSampler` - near-sequential shuffled order for map-style datasets.
* :func:`convert_image_folder`, :class:`LMDBWriter` - writing datasets.
* :func:`convert_source` - converting legacy LMDBs, tar archives, list files and HDF5, safely.
* :class:`LegacyLMDBDataset` - a tensorpack / folder2lmdb / Caffe LMDB read in place, safely.
* :class:`NormalizeBatch`, :func:`train_transform`, :func:`val_transform` - fast uint8 pipelines.
* :func:`make_photo_folder` - a sample ImageFolder of photographic JPEGs.
"""

from .convert import ConversionReport, convert_image_folder
from .dataset import LMDBImageDataset
from .errors import (
                     CorruptRecordError,
                     DatasetChangedError,
                     DatasetNotFoundError,
                     IncompleteDatasetError,
                     LMDBDatasetError,
                     NotADatasetError,
                     SourceImageError,
)
from .iterable import LMDBIterableDataset
from .sampler import ChunkShuffleSampler
from .sources.conversion import convert_source
from .sources.errors import UnsupportedValueError
from .sources.in_place import LegacyLMDBDataset
from .samples import make_photo_folder
from .transforms import NormalizeBatch, train_transform, val_transform
from .writer import LMDBWriter

__version__ = "0.1.0"

__all__ = [
    "ChunkShuffleSampler",
    "LMDBIterableDataset",
    "ConversionReport",
    "CorruptRecordError",
    "DatasetChangedError",
    "DatasetNotFoundError",
    "IncompleteDatasetError",
    "LMDBDatasetError",
    "LMDBImageDataset",
    "LMDBWriter",
    "LegacyLMDBDataset",
    "NormalizeBatch",
    "NotADatasetError",
    "SourceImageError",
    "UnsupportedValueError",
    "convert_image_folder",
    "convert_source",
    "make_photo_folder",
    "train_transform",
    "val_transform",
]
