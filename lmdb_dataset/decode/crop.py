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
the scaled image). Measured on 300 ImageNet-like photos (``make_photo_folder``, imagenet
profile, seed 0; grainy, sharpened photos, a hard case), output 224: mean absolute difference
0.13 (train) and 0.12 (validation) grey levels of 255, 99th percentile 3, maximum 131 (train)
and 84 (validation) on single values at high-contrast edges; on generated 1-4 MP photos mean
1.35 and 1.19, 99th percentile 14 and 12 (``benchmarks/decode/fused_decode.json``, 2026-12-06). The
region decode below gives these same pixels. The difference grows when the decode
scale leaves little for the resize to do (crops barely larger than the output): on 64-160 px
images cropped to 48 px it is 0.8-1.2 on average. ``tests/test_crop_decode.py`` keeps bounds on it.

Region decoding (the optional compiled piece ``lmdb_dataset/decode/_jpeg_region.c``, built by
``pip install`` where libjpeg-turbo's headers are installed, e.g. Debian's ``libjpeg62-turbo-dev``):
on the CPU a colour JPEG is not decoded whole. Only the part of the image the output needs
(:meth:`CropDecoder.window`: the crop box for training; for validation, the centre crop mapped
back to the full image and widened by the resize filter's reach, when the JPEG is decoded below
full scale) is decoded, at the same DCT scale, with libjpeg-turbo's libjpeg API as DALI's CPU
decoder does: the rows above it are skipped (``jpeg_skip_scanlines``: entropy-decoded only, no
IDCT, upsampling or colour conversion), the rows below it are never read, and columns outside
it (widened to whole iMCUs, ``jpeg_crop_scanline``) get no IDCT or colour conversion. With
:data:`REGION_MARGIN` spare columns the region's pixels equal the whole decode's bit for bit,
so the outputs are exactly those of the whole-decode path (same draws, same pixels; ``tests/test_region_decode.py``).
Without the extension (:func:`region_decoding` is None) the decoders decode whole JPEGs as
described above. JPEGs the region decoder declines (not YCbCr, no EOI marker at the end,
corrupt data in the rows read) take the whole-decode path, so errors are the same.

Why this decoder (measured 2026-12-06, 1 thread, decode only, on the training boxes:
``python -m benchmarks.decode.fused_decode --candidates``, ``benchmarks/NOTES.md``): simplejpeg links
libjpeg-turbo statically with hidden symbols (``nm -D`` lists only ``PyInit__jpeg``), so no
region API is reachable through it; TurboJPEG 3's ``tj3SetCroppingRegion`` needs libjpeg-turbo
>= 3.0, which no PyPI wheel ships as a usable library (PyTurboJPEG 2.6 refuses Debian's 2.1.5)
and Debian 12 does not package; TurboJPEG 2.1's lossless ``tjTransform`` crop then a scaled
decode took 1.5-1.6x the whole decode's time (it entropy-decodes the whole file, then
re-encodes and decodes the crop); pyvips (shrink-on-load + crop) 1.2-2.3x; Pillow's ``draft``
1.4-1.5x. The libjpeg API region decode took 0.75x (ImageNet-sized) and 0.67x (1-4 MP) of it;
end to end the training decoder ran 1.12-1.21x faster (wall clock over five runs on a loaded
machine; 1.19-1.21x in CPU time).

Images the fused path cannot take are decoded in full by the datasets' own policy
(:func:`decode.image.pixels_of`: grayscale and CMYK JPEGs, PNG and other formats, JPEGs that
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

from ..storage.format import KIND_ENCODED, RecordHeader
from .image import JPEG_EOI, JPEG_SOI, decode_image, pixels_of

try:  # the optional compiled piece (setup.py): region decoding with the system's libjpeg-turbo
    from . import _jpeg_region
except ImportError:  # not built (no libjpeg headers at install time): whole JPEGs are decoded, as before
    _jpeg_region = None  # type: ignore[assignment]  # callers check for None first

Window = tuple[float, float, float, float]
"""``(top, left, height, width)`` of a part of an image, in (possibly fractional) pixels of the full-size image."""
REGION_MARGIN = 4
"""Pixels of the scaled image decoded beyond a window's left and right edges. At the edge of a cropped
decode libjpeg-turbo's fancy upsampling has no chroma neighbour and the edge column differs from a whole
decode's; one spare pixel makes 4:2:0 and 4:2:2 regions exact (measured), four covers 4:1:1 chroma. The
cost is nil: the decoded columns are widened to whole iMCUs (8-32 pixels) anyway."""
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
        log_aspect = torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=generator)
        aspect_ratio = torch.exp(log_aspect).item()
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


def _scaled_shape(height: int, width: int, eighths: int) -> tuple[int, int]:
    """Shape of a ``height x width`` JPEG decoded at scale ``eighths / 8`` (libjpeg-turbo rounds up)."""
    return math.ceil(height * eighths / 8), math.ceil(width * eighths / 8)


def fast_scale(height: int, width: int, *, min_height: int, min_width: int) -> int:
    """The smallest of :data:`FAST_SCALES` (in eighths) at which the JPEG reaches both minimums; 8 if none does."""
    for eighths in FAST_SCALES:
        scaled_height, scaled_width = _scaled_shape(height, width, eighths)
        if scaled_height >= min_height and scaled_width >= min_width:
            return eighths
    return 8


def fast_scaled_shape(height: int, width: int, *, min_height: int, min_width: int) -> tuple[int, int]:
    """Shape of the JPEG decoded at the smallest of :data:`FAST_SCALES` reaching both minimums."""
    return _scaled_shape(height, width, fast_scale(height, width, min_height=min_height, min_width=min_width))


def region_decoding() -> str | None:
    """Version of the libjpeg-turbo that decodes JPEG regions (e.g. ``"2.1.5"``); None when the optional
    extension is not built and whole JPEGs are decoded (:func:`decode_scaled`)."""
    if _jpeg_region is None:
        return None
    number = _jpeg_region.LIBJPEG_TURBO_VERSION_NUMBER  # 2001005 for 2.1.5
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def decode_scaled(payload: bytes | memoryview, header: RecordHeader, *, min_height: int,
                  min_width: int) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of a record, at the smallest fast DCT scale at least ``min_height x min_width``.

    Colour (YCbCr) JPEGs are decoded by libjpeg-turbo at scale 1/8, 1/4, 1/2 or 1 (see
    :data:`FAST_SCALES`), the smallest that reaches both minimums; everything else is decoded
    in full, by the datasets' policy (:func:`decode.image.pixels_of`).

    Raises:
        ValueError: The image does not decode, or the JPEG's size disagrees with the record header.
    """
    if header.kind == KIND_ENCODED and bytes(payload[:2]) == JPEG_SOI:
        colorspace = _jpeg_colorspace(payload, header)
        if colorspace is None:
            return decode_image(payload)  # Pillow decides, as for the datasets
        if colorspace == "YCbCr":
            try:
                height, width = fast_scaled_shape(header.height, header.width, min_height=min_height,
                                                  min_width=min_width)
                return simplejpeg.decode_jpeg(payload, colorspace="RGB", min_height=height, min_width=width)
            except ValueError:
                return decode_image(payload)
    return pixels_of(header, payload)


@dataclasses.dataclass(frozen=True)
class DecodedWindow:
    """Part of a JPEG decoded at a DCT scale: ``pixels`` are rows ``top:top + h`` and columns
    ``left:left + w`` of the image decoded at ``scaled_height x scaled_width``.

    Attributes:
        pixels: ``h x w x 3`` uint8 RGB.
        top: Row of the scaled image where ``pixels`` start.
        left: Column of the scaled image where ``pixels`` start.
        scaled_height: Rows of the whole image at this scale.
        scaled_width: Columns of the whole image at this scale.
    """

    pixels: np.ndarray
    top: int
    left: int
    scaled_height: int
    scaled_width: int


def decode_window(payload: bytes | memoryview, header: RecordHeader, window: Window, *, min_height: int,
                  min_width: int) -> DecodedWindow | None:
    """``window`` of a colour JPEG record, decoding only the rows and columns it needs.

    The JPEG is decoded at the scale :func:`decode_scaled` would choose (the smallest of
    :data:`FAST_SCALES` reaching ``min_height x min_width``), the window is rounded to whole pixels
    of that scale (:func:`scaled_window`), and libjpeg-turbo decodes only its rows (the rows above
    are entropy-decoded and skipped, those below never read) and its columns widened to whole
    iMCUs. The pixels equal ``decode_scaled(...)`` cut to the same rows and columns.

    Returns:
        The pixels, or None when the region decoder is not built (:func:`region_decoding`), the
        window is the whole image (decoded whole by simplejpeg), or the decoder cannot take the
        record: not a YCbCr JPEG, a JPEG that does not end with its EOI marker (truncated:
        the rows a crop skips could hide it), or libjpeg-turbo reports corrupt data in the rows it
        reads. The caller then decodes the record as without it (:func:`decode_scaled`), so
        grayscale, CMYK and damaged JPEGs are decoded, tolerated or rejected as before. Damage that
        leaves the file's length and markers intact and lies wholly outside the rows read is not
        seen; the crop then shows the intact pixels (the whole decode hands such a file to Pillow,
        which decodes it too, damage included).

    Raises:
        ValueError: The JPEG's size disagrees with the record header.
    """
    if _jpeg_region is None or header.kind != KIND_ENCODED or bytes(payload[:2]) != JPEG_SOI:
        return None
    if bytes(payload[-2:]) != JPEG_EOI:  # truncated (or trailing bytes): the whole decode notices and decides
        return None
    if _jpeg_colorspace(payload, header) != "YCbCr":
        return None
    eighths = fast_scale(header.height, header.width, min_height=min_height, min_width=min_width)
    scaled_height, scaled_width = _scaled_shape(header.height, header.width, eighths)
    top, bottom, left, right = scaled_window(window, header.height, header.width, scaled_height, scaled_width)
    if (top, bottom, left, right) == (0, scaled_height, 0, scaled_width):
        return None  # nothing to leave out: simplejpeg's (newer, faster) libjpeg-turbo decodes it whole
    try:
        data, rows, columns, first = _jpeg_region.decode_region(
            payload, eighths, top, bottom, max(0, left - REGION_MARGIN), min(scaled_width, right + REGION_MARGIN))
    except ValueError:
        return None
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(rows, columns, 3)[:, left - first:right - first]
    return DecodedWindow(pixels, top, left, scaled_height, scaled_width)


def _jpeg_colorspace(payload: bytes | memoryview, header: RecordHeader) -> str | None:
    """The JPEG's colour space from its header, None if simplejpeg cannot read the header.

    Raises:
        ValueError: The JPEG's size disagrees with the record header.
    """
    try:
        jpeg_height, jpeg_width, colorspace, _ = simplejpeg.decode_jpeg_header(payload)
    except ValueError:
        return None
    if (jpeg_height, jpeg_width) != (header.height, header.width):
        raise ValueError(f"the JPEG is {jpeg_height}x{jpeg_width}, its record header says "
                         f"{header.height}x{header.width}")
    return colorspace


def scaled_window(window: Window, full_height: int, full_width: int, scaled_height: int,
                  scaled_width: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of ``window`` in the image scaled to ``scaled_height x scaled_width``.

    Edges are rounded to whole pixels of the scaled image; the window is never empty.
    """
    top, left, height, width = window
    return (*_scaled_span(top, height, scaled_height / full_height, scaled_height),
            *_scaled_span(left, width, scaled_width / full_width, scaled_width))


def _scaled_span(start: float, length: float, factor: float, limit: int) -> tuple[int, int]:
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

    On the CPU, when the region decoder is built (:func:`region_decoding`), colour JPEGs are not
    decoded whole: :meth:`window` says which part of the image :meth:`finish` reads, only that
    part is decoded (:func:`decode_window`) and :meth:`finish_window` turns it into the output,
    with the pixels :meth:`finish` gives from the whole image decoded at the same scale.

    Instances hold only their settings, so DataLoader workers can use them; the random draws
    come from the ``generator`` given (:class:`lmdb_dataset.order.draws.RecordDraws` in
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

    def window(self, height: int, width: int, box: CropBox) -> Window | None:
        """The part of a ``height x width`` image :meth:`finish` reads, in full-size pixels; None (the
        default) if it needs the whole image, which then is decoded whole."""
        return None

    def finish_window(self, decoded: DecodedWindow, box: CropBox, *, full_height: int,
                      full_width: int) -> torch.Tensor:
        """``3 x size x size`` output from the decoded :meth:`window`: :meth:`finish`'s pixels.

        This default pastes the window into an image of the scaled size (zeros elsewhere, which
        :meth:`finish` does not read) and finishes that.
        """
        image = torch.zeros(decoded.scaled_height, decoded.scaled_width, 3, dtype=torch.uint8)
        rows, columns = decoded.pixels.shape[:2]
        image[decoded.top:decoded.top + rows, decoded.left:decoded.left + columns] = torch.from_numpy(decoded.pixels)
        return self.finish(image.permute(2, 0, 1), box, full_height=full_height, full_width=full_width)

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
            window = self.window(header.height, header.width, box)
            if window is not None:
                decoded = decode_window(payload, header, window, min_height=min_height, min_width=min_width)
                if decoded is not None:
                    return self.finish_window(decoded, box, full_height=header.height, full_width=header.width)
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
    pixels both ways, then resized. Pixels differ as documented in :mod:`lmdb_dataset.decode.crop`.

    Args:
        size: Output side. Defaults to 224.
        scale: Range of the crop's area fraction. Defaults to (0.08, 1.0).
        ratio: Range of the crop's aspect ratio (width / height). Defaults to (3/4, 4/3).
        flip_p: Probability of a horizontal flip. Defaults to 0.5; 0 disables flipping.
    """

    def __init__(self, size: int = 224, *, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> None:
        super().__init__(size)
        if len(scale) != 2 or len(ratio) != 2:
            raise ValueError(f"scale={tuple(scale)} and ratio={tuple(ratio)} must each be (min, max)")
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
        top, bottom, left, right = scaled_window(self.window(full_height, full_width, box), full_height, full_width,
                                                 scaled_height, scaled_width)
        return self._resize_and_flip(image[:, top:bottom, left:right], box)

    def window(self, height: int, width: int, box: CropBox) -> Window:
        """The box itself: :meth:`finish` and the region decode cut the same pixels."""
        return box.top, box.left, box.height, box.width

    def finish_window(self, decoded: DecodedWindow, box: CropBox, *, full_height: int,
                      full_width: int) -> torch.Tensor:
        """The decoded window is the box's pixels at the decode scale: resized and flipped, as :meth:`finish` does."""
        return self._resize_and_flip(torch.from_numpy(decoded.pixels).permute(2, 0, 1), box)

    def _resize_and_flip(self, pixels: torch.Tensor, box: CropBox) -> torch.Tensor:
        out = F.resize(pixels, [self.size, self.size], antialias=True)
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

    def crop_origin(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(resized_height, resized_width, top, left)``: the shape ``Resize(resize)`` gives a
        ``height x width`` image, and where torchvision's ``CenterCrop(size)`` starts in it
        (``int(round((resized - size) / 2))``, Python's round: halves to even)."""
        resized_height, resized_width = resized_shape(height, width, resize=self.resize)
        return (resized_height, resized_width, round((resized_height - self.size) / 2.0),
                round((resized_width - self.size) / 2.0))

    def window(self, height: int, width: int, box: CropBox) -> Window | None:
        """What ``CenterCrop(size)`` keeps of ``Resize(resize)``, mapped back to full-size pixels and widened
        by the resize filter's reach; None (decode the whole image) when the JPEG is decoded at full scale.

        An output pixel of the antialiased resize reads input within one output pixel of its
        centre (``height / resized_height`` full-size pixels); the window adds two of those on each
        side, and 8 full-size pixels (a pixel at the smallest DCT scale) for rounding to the
        decode scale.

        At full scale (a 500x375 photo resized to 256) the window keeps about two thirds of the
        pixels, and what the region decode saves was measured to be no more than the region
        decoder's libjpeg-turbo (the system's, 2.1.5 on Debian 12) loses to simplejpeg's (3.1.2):
        0.93-0.99x. At reduced DCT scales (larger photos) it gained 1.07x.
        """
        min_height, min_width = self.decode_size(height, width, box)
        if fast_scale(height, width, min_height=min_height, min_width=min_width) == 8:
            return None
        resized_height, resized_width, top, left = self.crop_origin(height, width)
        rows = _widened_span(top * height / resized_height, self.size * height / resized_height,
                             2 * height / resized_height + 8, height)
        columns = _widened_span(left * width / resized_width, self.size * width / resized_width,
                                2 * width / resized_width + 8, width)
        return rows[0], columns[0], rows[1], columns[1]

    def finish_window(self, decoded: DecodedWindow, box: CropBox, *, full_height: int,
                      full_width: int) -> torch.Tensor:
        """:meth:`finish`'s pixels, resizing only the window's rows and then only the crop's columns.

        torchvision's antialiased uint8 resize is separable (a horizontal pass, a uint8
        intermediate, a vertical pass) and skips an axis whose size does not change, so two calls
        give the one call's pixels exactly: the window's rows across to the resized width (their
        columns outside the window are zeros that no crop pixel reads), the crop's columns of it,
        then down to the resized height (rows outside the window likewise).
        """
        resized_height, resized_width, top, left = self.crop_origin(full_height, full_width)
        rows, columns = decoded.pixels.shape[:2]
        band = torch.zeros(rows, decoded.scaled_width, 3, dtype=torch.uint8)  # HWC: the channels-last fast path
        band[:, decoded.left:decoded.left + columns] = torch.from_numpy(decoded.pixels)
        across = F.resize(band.permute(2, 0, 1), [rows, resized_width], antialias=True)[:, :, left:left + self.size]
        strip = torch.zeros(decoded.scaled_height, self.size, 3, dtype=torch.uint8)
        strip[decoded.top:decoded.top + rows] = across.permute(1, 2, 0)
        return F.resize(strip.permute(2, 0, 1), [resized_height, self.size], antialias=True)[:, top:top + self.size]


def _widened_span(start: float, length: float, margin: float, limit: int) -> tuple[float, float]:
    """``(start, length)`` of ``[start - margin, start + length + margin)`` clipped to ``[0, limit)``."""
    first = max(0.0, start - margin)
    return first, min(float(limit), start + length + margin) - first
