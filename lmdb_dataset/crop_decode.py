"""Fused crop decoding: choose the crop from the stored image size, then decode only what it needs.

A ``RandomResizedCrop(224)`` of a 500x375 ImageNet photo keeps on average a third of its
pixels and shrinks them; of a 12 MP photo it keeps a few percent of the detail. Decoding the
whole JPEG first, as ``decode -> RandomResizedCrop`` does, pays for pixels that are thrown
away. The decoders here pick the crop box from the record header's height and width first,
then decode the JPEG at the smallest DCT scale (libjpeg-turbo scales by 1/8, 1/4 or 1/2
inside the inverse DCT) at which the box still covers the output size, cut the box
out at that scale and resize it (antialiased, torchvision's uint8 kernel) to the output size::

    record header (H, W) --> crop box in the original image (torchvision's distribution)
    JPEG bytes --> decode at scale s in {1/8, 1/4, 1/2, 1}, minimal with box * s >= output size
              --> box * s --> resize to output size --> flip

The geometry is exactly torchvision's. :func:`random_resized_crop_box` draws from the global
torch RNG with ``RandomResizedCrop``'s algorithm (same scale/ratio draws, ten tries, same
centre-crop fallback) and the flip is drawn after the box, as in
``Compose([RandomResizedCrop, RandomHorizontalFlip])``: under the same seed both pipelines
choose the same box and flip, and a decoder's :meth:`CropDecoder.finish` applied to the
full-size image gives torchvision's pixels exactly. The validation decoder decodes at the
smallest scale covering the ``Resize(resize)`` output, resizes to exactly that size and
centre-crops.

Pixels differ from ``full decode -> torchvision transforms`` only by the DCT-domain
downscaling (and, for training crops, by the box's edges being rounded to whole pixels of
the scaled image). Measured on 240 ImageNet-like photos (``make_photo_folder``, imagenet
profile, seed 0; grainy, sharpened photos, a hard case), output 224: mean absolute difference
0.13 grey levels of 255 (train and validation), 99th percentile 3, maximum 96 (train) and 84
(validation) on single values at high-contrast edges. The difference grows when the decode
scale leaves little for the resize to do (crops barely larger than the output): on 64-160 px
images cropped to 48 px it is 0.8-1.2 on average. ``tests/test_crop_decode.py`` keeps bounds on it.

Images the fused path cannot take are decoded in full by the datasets' own policy
(:func:`decoding.pixels_of`: grayscale and CMYK JPEGs, PNG and other formats, JPEGs that
libjpeg-turbo rejects but Pillow tolerates, ``raw`` storage), then cropped and resized with
the same box maths: the crop distribution does not depend on the file type.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import simplejpeg
import torch
from torchvision.transforms.v2 import functional as F

from .decoding import decode_image, pixels_of
from .format import KIND_ENCODED, RecordHeader

JPEG_SOI = b"\xff\xd8"
FAST_SCALES = (1, 2, 4, 8)
"""DCT scales (in eighths) the fused decoders use. libjpeg-turbo's SIMD code covers these; at
3/8, 5/8, 6/8 and 7/8 its plain-C scaled IDCT makes the decode slower than a full one (measured
on ImageNet-sized photos: 7/8 2.6 ms, 6/8 2.2 ms, 1/1 1.5 ms, 1/4 0.95 ms)."""


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A crop of an image, in the pixels of the full-size image, and whether to mirror it.

    Attributes:
        top: First row.
        left: First column.
        height: Rows.
        width: Columns.
        flip: Mirror horizontally after resizing.
    """

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def random_resized_crop_box(height: int, width: int, *, scale: Sequence[float] = (0.08, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3),
                            generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random crop, drawn exactly as torchvision's RandomResizedCrop.

    The same algorithm and the same draws as
    ``torchvision.transforms.v2.RandomResizedCrop.make_params`` (and ``v1``'s ``get_params``):
    up to ten tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in
    ``ratio``, then a centre crop clamped to ``ratio`` as the fallback. The draws come from
    ``generator``, or the global torch RNG (torchvision's source) when it is None.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_shape(height: int, width: int, *, resize: int) -> tuple[int, int]:
    """The ``(height, width)`` torchvision's ``Resize(resize)`` gives an image: shorter side ``resize``."""
    if height <= width:
        return resize, int(resize * width / height)
    return int(resize * height / width), resize


def fast_scaled_shape(height: int, width: int, *, min_height: int, min_width: int) -> tuple[int, int]:
    """Shape of the JPEG decoded at the smallest of :data:`FAST_SCALES` reaching both minimums."""
    for eighths in FAST_SCALES:
        shape = math.ceil(height * eighths / 8), math.ceil(width * eighths / 8)
        if shape[0] >= min_height and shape[1] >= min_width:
            return shape
    return height, width


def decode_scaled(payload: bytes | memoryview, header: RecordHeader, *, min_height: int,
                  min_width: int) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of a record, at the smallest fast DCT scale at least ``min_height x min_width``.

    Colour (YCbCr) JPEGs are decoded by libjpeg-turbo at scale 1/8, 1/4, 1/2 or 1 (see
    :data:`FAST_SCALES`), the smallest that reaches both minimums; everything else is decoded
    in full, by the datasets' policy (:func:`decoding.pixels_of`).

    Raises:
        ValueError: The image does not decode, or the JPEG's size disagrees with the record header.
    """
    if header.kind == KIND_ENCODED and bytes(payload[:2]) == JPEG_SOI:
        try:
            jpeg_height, jpeg_width, colorspace, _ = simplejpeg.decode_jpeg_header(payload)
        except ValueError:
            return decode_image(payload)  # Pillow decides, as for the datasets
        if (jpeg_height, jpeg_width) != (header.height, header.width):
            raise ValueError(f"the JPEG is {jpeg_height}x{jpeg_width}, its record header says "
                             f"{header.height}x{header.width}")
        if colorspace == "YCbCr":
            try:
                height, width = fast_scaled_shape(header.height, header.width, min_height=min_height,
                                                  min_width=min_width)
                return simplejpeg.decode_jpeg(payload, colorspace="RGB", min_height=height, min_width=width)
            except ValueError:
                return decode_image(payload)
    return pixels_of(header, payload)


def _scaled_span(start: int, length: int, factor: float, limit: int) -> tuple[int, int]:
    """``[start, start + length)`` scaled by ``factor`` and rounded to whole pixels (never empty)."""
    first = min(round(start * factor), limit - 1)
    return first, max(first + 1, min(round((start + length) * factor), limit))


class CropDecoder:
    """Base of the fused decoders: ``decoder(header, payload)`` -> ``3 x size x size`` uint8 tensor.

    A decoder works in three steps, which the GPU-decoding loader runs in two places (the box
    in the DataLoader worker, the rest on the device):

    1. :meth:`box` chooses the crop from the image's full size (random draws happen here);
    2. :meth:`decode_size` says how large the decoded image must at least be;
    3. :meth:`finish` turns the decoded image (at whatever scale) into the output.

    Instances hold only their settings, so DataLoader workers can use them; the random draws
    come from the ``generator`` given (:class:`lmdb_dataset.draws.RecordDraws` in
    :class:`LMDBLoader`: one per sample), else from torch's global RNG, which the DataLoader
    seeds per worker.

    Args:
        size: Output side in pixels (square output).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size={size} must be >= 1")
        self.size = size

    def box(self, height: int, width: int, generator: torch.Generator | None = None) -> CropBox:
        """The crop of an image of ``height x width`` pixels (random draws from ``generator``, else torch's RNG)."""
        raise NotImplementedError

    def decode_size(self, height: int, width: int, box: CropBox) -> tuple[int, int]:
        """Smallest ``(height, width)`` the image must be decoded at for ``box`` to lose no detail."""
        raise NotImplementedError

    def finish(self, image: torch.Tensor, box: CropBox, *, full_height: int, full_width: int) -> torch.Tensor:
        """``3 x size x size`` output from the CHW uint8 ``image`` decoded at any scale, on any device."""
        raise NotImplementedError

    def __call__(self, header: RecordHeader, payload: bytes | memoryview,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode the crop of one record: a ``3 x size x size`` uint8 CHW tensor.

        Raises:
            ValueError: The image does not decode (the dataset names the record).
        """
        if not (header.height and header.width):  # written unchecked, without a readable size: decode to learn it
            pixels = pixels_of(header, payload)
            header = dataclasses.replace(header, height=pixels.shape[0], width=pixels.shape[1])
            box = self.box(header.height, header.width, generator)
        else:
            box = self.box(header.height, header.width, generator)
            min_height, min_width = self.decode_size(header.height, header.width, box)
            pixels = decode_scaled(payload, header, min_height=min_height, min_width=min_width)
        if not pixels.flags.writeable:  # Pillow's arrays are read-only views
            pixels = pixels.copy()
        image = torch.from_numpy(pixels).permute(2, 0, 1)  # CHW view: torchvision's fast uint8 path
        return self.finish(image, box, full_height=header.height, full_width=header.width)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({settings})"


class RandomResizedCropDecode(CropDecoder):
    """Fused ``RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip(flip_p)`` decoding.

    Same boxes and flips as torchvision's transforms under the same torch seed; the box is
    cut out of the image decoded at the smallest DCT scale where it still spans ``size``
    pixels both ways, then resized. Pixels differ as documented in :mod:`lmdb_dataset.crop_decode`.

    Args:
        size: Output side. Defaults to 224.
        scale: Range of the crop's area fraction. Defaults to (0.08, 1.0).
        ratio: Range of the crop's aspect ratio (width / height). Defaults to (3/4, 4/3).
        flip_p: Probability of a horizontal flip. Defaults to 0.5; 0 disables flipping.
    """

    def __init__(self, size: int = 224, *, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> None:
        super().__init__(size)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale={tuple(scale)} must satisfy 0 < min <= max <= 1")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio={tuple(ratio)} must satisfy 0 < min <= max")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p={flip_p} must be in [0, 1]")
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.flip_p = flip_p

    def box(self, height: int, width: int, generator: torch.Generator | None = None) -> CropBox:
        top, left, h, w = random_resized_crop_box(height, width, scale=self.scale, ratio=self.ratio,
                                                  generator=generator)
        flip = bool(torch.rand(1, generator=generator) < self.flip_p)  # drawn even at flip_p 0, as torchvision does
        return CropBox(top, left, h, w, flip)

    def decode_size(self, height: int, width: int, box: CropBox) -> tuple[int, int]:
        return (min(height, math.ceil(self.size * height / box.height)),
                min(width, math.ceil(self.size * width / box.width)))

    def finish(self, image: torch.Tensor, box: CropBox, *, full_height: int, full_width: int) -> torch.Tensor:
        scaled_height, scaled_width = image.shape[-2:]
        top, bottom = _scaled_span(box.top, box.height, scaled_height / full_height, scaled_height)
        left, right = _scaled_span(box.left, box.width, scaled_width / full_width, scaled_width)
        out = F.resize(image[:, top:bottom, left:right], [self.size, self.size], antialias=True)
        return out.flip(-1) if box.flip else out


class CenterCropDecode(CropDecoder):
    """Fused ``Resize(resize) + CenterCrop(size)`` decoding.

    The image is decoded at the smallest DCT scale at least as large as the resized image,
    resized to exactly the size ``Resize(resize)`` gives the full image, and centre-cropped:
    the geometry is torchvision's to the pixel; only the DCT-domain downscaling differs.

    Args:
        size: Output side. Defaults to 224.
        resize: Shorter side the image is resized to before cropping. Defaults to 256.
    """

    def __init__(self, size: int = 224, *, resize: int = 256) -> None:
        super().__init__(size)
        if resize < size:
            raise ValueError(f"resize={resize} must be >= size={size}")
        self.resize = resize

    def box(self, height: int, width: int, generator: torch.Generator | None = None) -> CropBox:
        """The whole image (the crop is taken after resizing, in :meth:`finish`); nothing is drawn."""
        return CropBox(0, 0, height, width)

    def decode_size(self, height: int, width: int, box: CropBox) -> tuple[int, int]:
        resized_height, resized_width = resized_shape(height, width, resize=self.resize)
        return min(height, resized_height), min(width, resized_width)

    def finish(self, image: torch.Tensor, box: CropBox, *, full_height: int, full_width: int) -> torch.Tensor:
        resized = F.resize(image, list(resized_shape(full_height, full_width, resize=self.resize)), antialias=True)
        return F.center_crop(resized, [self.size, self.size])
