"""timm: a ``Reader`` so ``timm.data.ImageDataset`` (and so ``create_loader``) reads an LMDB dataset.

Usage::

    from timm.data import ImageDataset, create_loader
    from lmdb_dataset.integrations.timm import ReaderLMDB

    dataset = ImageDataset(path, reader=ReaderLMDB(path))
    loader = create_loader(dataset, input_size=(3, 224, 224), batch_size=256, is_training=True)

``timm.data.create_dataset`` takes readers by name only, so build the ``ImageDataset`` as
above. ``create_loader`` also accepts an :class:`~lmdb_dataset.LMDBImageDataset` directly
(it sets the dataset's ``transform``), which skips the reader's re-wrapping of pixels.
"""

from __future__ import annotations

import io
import os

from timm.data.readers.reader import Reader

from ..read.dataset import LMDBImageDataset


class ReaderLMDB(Reader):
    """Serves an LMDB dataset's samples as timm's image-folder reader does: ``(image file, label)``.

    Records are decoded by this package (pixels equal ``ImageFolder``'s, grayscale and CMYK
    converted to RGB), then handed to timm as an uncompressed BMP file object, which timm's
    ``Image.open`` reads without a second decode. Picklable for DataLoader workers: the file
    is opened lazily in each process.

    Args:
        path: Dataset directory.
        verify_checksums: Check each record's CRC32. Defaults to True.
    """

    def __init__(self, path: str | os.PathLike, *, verify_checksums: bool = True) -> None:
        super().__init__()
        self.dataset = LMDBImageDataset(path, output="pil", verify_checksums=verify_checksums)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[io.BytesIO, int]:
        image, label = self.dataset[index]
        buffer = io.BytesIO()
        image.save(buffer, format="BMP")
        buffer.seek(0)
        return buffer, int(label)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        """The record's source path relative to the converted folder (``str(index)`` if none was kept).

        ``absolute`` is accepted for timm's interface; the name stays relative to the source root
        (which an image folder's conversion keeps in the dataset's ``info.source``; not joined here).
        """
        name = self.dataset.source_path(index) or str(index)
        return os.path.basename(name) if basename else name
