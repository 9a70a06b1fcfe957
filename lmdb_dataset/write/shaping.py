"""Storage shaping: bounding the longer side of stored images at conversion time (opt-in, lossy).

``convert --max-side N [--quality Q]`` does what FFCV's ``RGBImageField(max_resolution=N,
jpeg_quality=Q)`` does, with two differences an FFCV user should know:

* **Only images longer than N change.** An image whose longer side is at most N keeps its
  original file bytes (``encoded`` storage) or its decoded pixels (``raw``), untouched; FFCV's
  ``write_mode="jpg"`` re-encodes every image. An image is never upscaled.
* **The longer side becomes exactly N.** The shorter side is ``round(short * N / long)``,
  halves rounded up, computed in integers (:func:`shaped_size`), and at least 1. FFCV truncates
  ``ratio * size`` in floating point, so its longer side can come out at N - 1.

A resized image is decoded exactly as the readers decode it (:func:`decode.image.decode_image`:
RGB; grayscale, CMYK and palette images as Pillow's ``convert("RGB")``), resized with Pillow's
``Image.LANCZOS`` and, in ``encoded`` storage, re-encoded as a baseline YCbCr 4:2:0 JPEG at
``quality`` with libjpeg-turbo (simplejpeg; accurate DCT). Whatever its source format: a PNG
longer than N is stored as a JPEG (alpha dropped, as ``convert("RGB")`` drops it), a
grayscale JPEG as a colour JPEG whose channels stay equal. Metadata that readers ignore
anyway (EXIF, ICC profiles) is not carried over. In ``raw`` storage the resized RGB pixels
are stored; ``quality`` does not apply.

Why Lanczos: it is the sharpest antialiased filter Pillow has (its support widens with the
reduction factor, so a 4000 px photo shrunk to 256 px does not alias), it works on uint8 pixels
directly, and it is the filter FFCV users compare against when they care about quality (FFCV
itself uses OpenCV's ``INTER_AREA``, a box average). The resize happens once, at conversion, so
its cost does not matter for training speed.

The settings and what they did are recorded in the dataset's metadata (``info.shaping``, see
:mod:`lmdb_dataset.storage.format`) and printed by ``lmdb-dataset info``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import simplejpeg
from PIL import Image

from ..decode.image import decode_image, image_size

DEFAULT_QUALITY = 90
"""JPEG quality of re-encoded images when none is given (FFCV's ImageNet example uses 90)."""
FILTER = "lanczos"
"""The resampling filter, as named in the metadata: Pillow's ``Image.LANCZOS``."""
SUBSAMPLING = "420"
"""Chroma subsampling of re-encoded JPEGs (4:2:0, as Pillow, OpenCV and FFCV write them)."""


def _positive_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy, not a bool) of at least 1."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and bool(value >= 1)


def shaped_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The ``(height, width)`` an image of ``height x width`` is stored at under ``max_side``.

    Unchanged when the longer side is at most ``max_side`` (never upscales). Otherwise the
    longer side becomes exactly ``max_side`` and the shorter one ``round(short * max_side /
    long)`` (halves rounded up, exact integer arithmetic), at least 1: the aspect ratio is kept
    to within half a pixel of the shorter side.

    Raises:
        ValueError: A size is not a positive integer.
    """
    for name, value in (("height", height), ("width", width), ("max_side", max_side)):
        if not _positive_int(value):
            raise ValueError(f"{name}={value!r} must be a positive integer")
    longer = max(height, width)
    if longer <= max_side:
        return int(height), int(width)
    shorter = max(1, (2 * min(height, width) * max_side + longer) // (2 * longer))
    return (max_side, shorter) if height >= width else (shorter, max_side)


@dataclasses.dataclass(frozen=True)
class Shaping:
    """Validated storage-shaping settings: what ``max_side`` and ``quality`` ask for.

    Attributes:
        max_side: Longer side, in pixels, above which images are resized down to it.
        quality: JPEG quality (1-100) of re-encoded images; None for ``raw`` storage, which
            stores pixels.
    """

    max_side: int
    quality: int | None

    @classmethod
    def of(cls, max_side: int | None, quality: int | None, storage: str) -> Shaping | None:
        """The shaping ``max_side``/``quality`` ask for with ``storage``; None when ``max_side`` is None.

        ``quality`` defaults to :data:`DEFAULT_QUALITY` for ``encoded`` storage.

        Raises:
            ValueError: ``max_side`` is not a positive integer, ``quality`` is not in 1..100, or
                ``quality`` is given without ``max_side`` or with ``raw`` storage.
        """
        if quality is not None and not (_positive_int(quality) and quality <= 100):
            raise ValueError(f"quality={quality!r} must be a JPEG quality, an integer from 1 to 100 (e.g. 90)")
        if max_side is None:
            if quality is not None:
                raise ValueError(f"quality={quality} applies only to images resized by max_side; pass max_side "
                                 "too (e.g. max_side=256), or leave quality out: without max_side no image "
                                 "is re-encoded")
            return None
        if not _positive_int(max_side):
            raise ValueError(f"max_side={max_side!r} must be a positive integer, the longest side in pixels "
                             "to store (e.g. 256 or 512)")
        if storage == "raw":
            if quality is not None:
                raise ValueError(f"quality={quality} does not apply to storage='raw', which stores pixels "
                                 "(nothing is JPEG-encoded); leave quality out")
            return cls(int(max_side), None)
        return cls(int(max_side), int(DEFAULT_QUALITY if quality is None else quality))

    def settings(self) -> dict[str, Any]:
        """The settings as recorded in ``info.shaping`` (without the counts)."""
        return {"max_side": self.max_side, "quality": self.quality, "filter": FILTER}


def resize_pixels(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """``pixels`` (HxW, HxWx1 or HxWx3 uint8) resized to :func:`shaped_size` with Pillow's Lanczos.

    Returns ``pixels`` itself when it is not longer than ``max_side``; otherwise a new array of
    the same number of dimensions and channels.
    """
    height, width = pixels.shape[:2]
    target = shaped_size(height, width, max_side)
    if target == (height, width):
        return pixels
    plane = pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize(target[::-1], Image.Resampling.LANCZOS))
    return resized.reshape(*target, *pixels.shape[2:])


def shape_image(image: bytes | memoryview | np.ndarray, shaping: Shaping,
                storage: str) -> tuple[bytes | memoryview | np.ndarray, bool]:
    """The image to store under ``shaping``, and whether it was resized.

    An image not longer than ``max_side`` is returned as given (its original bytes). A longer
    one is decoded as the readers decode it, resized (:func:`resize_pixels`) and returned as
    RGB pixels for ``raw`` storage, or as JPEG bytes at ``shaping.quality`` for ``encoded``.
    Arrays (sources that hold decoded pixels) are resized as arrays.

    Raises:
        ValueError: The image's header cannot be read, or a longer image does not decode.
    """
    if isinstance(image, np.ndarray):
        if image.ndim < 2 or image.dtype != np.uint8:
            return image, False  # not storable: build_record says why
        resized = resize_pixels(image, shaping.max_side)
        return resized, resized is not image
    height, width = image_size(image)
    if max(height, width) <= shaping.max_side:
        return image, False
    pixels = resize_pixels(decode_image(image), shaping.max_side)
    if storage == "raw":
        return pixels, True
    return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=shaping.quality, colorspace="RGB",
                                  colorsubsampling=SUBSAMPLING, fastdct=False), True
