"""lmdb_dataset: ImageNet-scale image datasets in LMDB, read fast into PyTorch.

Public API:

* :class:`LMDBImageDataset` - map-style random access (drop-in for ``ImageFolder``).
* :class:`LMDBIterableDataset` - sequential cursor reads, sharded over workers and ranks.
* :class:`ChunkShuffleSampler` - near-sequential shuffled order for map-style datasets.
* :func:`convert_image_folder`, :class:`LMDBWriter` - writing datasets.
* :class:`NormalizeBatch`, :func:`train_transform`, :func:`val_transform` - fast uint8 pipelines.
* :func:`make_photo_folder` - a sample ImageFolder of photographic JPEGs.

Framework glue lives in :mod:`lmdb_dataset.integrations` (``.lightning.SetEpochCallback``,
``.timm.ReaderLMDB``), imported on its own so the package never imports those frameworks.
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
    "NormalizeBatch",
    "NotADatasetError",
    "SourceImageError",
    "convert_image_folder",
    "make_photo_folder",
    "train_transform",
    "val_transform",
]
