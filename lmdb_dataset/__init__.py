"""lmdb_dataset: ImageNet-scale image datasets in LMDB, read fast into PyTorch.

Public API:

* :class:`LMDBImageDataset` - map-style random access (drop-in for ``ImageFolder``).
* :class:`LMDBIterableDataset` - sequential cursor reads, sharded over workers and ranks.
* :class:`ChunkShuffleSampler` - near-sequential shuffled order for map-style datasets.
* :func:`convert_image_folder`, :class:`LMDBWriter` - writing datasets.
* :class:`NormalizeBatch`, :func:`train_transform`, :func:`val_transform` - fast uint8 pipelines.
* :class:`LMDBLoader` - normalised batches on the device (CPU or CUDA decode) in one call.
* :class:`RandomResizedCropDecode`, :class:`CenterCropDecode` - fused crop decoding of JPEG records.
* :func:`make_photo_folder` - a sample ImageFolder of photographic JPEGs.
"""

from .convert import ConversionReport, convert_image_folder
from .crop_decode import CenterCropDecode, RandomResizedCropDecode
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
from .loader import LMDBLoader
from .sampler import ChunkShuffleSampler
from .samples import make_photo_folder
from .transforms import NormalizeBatch, train_transform, val_transform
from .writer import LMDBWriter

__version__ = "0.1.0"

__all__ = [
    "CenterCropDecode",
    "ChunkShuffleSampler",
    "LMDBIterableDataset",
    "ConversionReport",
    "CorruptRecordError",
    "DatasetChangedError",
    "DatasetNotFoundError",
    "IncompleteDatasetError",
    "LMDBDatasetError",
    "LMDBImageDataset",
    "LMDBLoader",
    "LMDBWriter",
    "NormalizeBatch",
    "NotADatasetError",
    "RandomResizedCropDecode",
    "SourceImageError",
    "convert_image_folder",
    "make_photo_folder",
    "train_transform",
    "val_transform",
]
