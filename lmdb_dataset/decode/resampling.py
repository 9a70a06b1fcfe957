"""Batched crop + antialiased resize + flip of decoded images of any sizes, in a fixed number of kernels.

The device-decoding path (:mod:`lmdb_dataset.decode.device`) gets a batch's JPEGs back from
nvJPEG as ``K`` separate full-size images of different sizes. Cropping and resizing them one
by one with :meth:`CropDecoder.finish <lmdb_dataset.decode.crop.CropDecoder.finish>` launches
about six kernels per image from a Python loop (~1,500 per batch of 256). Here the whole batch
goes through the same few kernels whatever ``K``::

    K images (3 x H_k x W_k) --cat--> one flat buffer (+ a zero tail)
      --one gather of rows--> K x 3 x Hp x Wp crops, padded to the largest crop (uint8)
      --float, Wy @ crops @ Wx^T (two batched matmuls)--> K x 3 x S x S --round--> uint8

``Wy`` (``K x S x Hp``) and ``Wx`` (``K x S x Wp``) hold, per image, the weights of
torchvision's antialiased bilinear resize (PyTorch's ``_upsample_bilinear2d_aa``: a triangle
filter stretched by the downscaling factor, normalised per output pixel), computed on the
device from each image's 9 geometry values: the padding rows and columns get weight 0, so what the
gather reads past a crop's edge never counts. A flip reverses ``Wx``'s rows; validation's
centre crop keeps the ``S`` middle rows and columns of the resize's weights. Per chunk that is
about 60 tensor operations whatever ``K`` (counted on the CPU by ``tests/test_resampling.py``):
``cat`` (PyTorch's CUDA ``cat`` copies up to 128 inputs per launch), one gather, the two
``matmul``, rounding, and a few dozen tiny element-wise ones that build the weights and indices
from ``K x 13`` integers; the per-image loop it replaces launched ~1,500 kernels a batch of 256.

Cost and memory. The matmuls are dense: ``3 x S x (Hp + S) x Wp`` multiply-adds per image
(0.24 G for a 500x500 crop at ``S = 224``, 62 G for a batch of such crops: ~6 ms at an A100's
float32 peak; RandomResizedCrop's crops average a third of the image), growing with the crop's
area, so multi-megapixel photos cost more than a per-image resize would. The padded crops take
``5 x K x 3 x Hp x Wp`` bytes (uint8 and float32): images are sorted by crop size and cut into
chunks of at most ``max_elements`` padded values (default 2**26, ~320 MB), each chunk a fixed number of kernels.

Pixels against the worker path. Measured on the CPU against :meth:`CropDecoder.finish
<lmdb_dataset.decode.crop.CropDecoder.finish>` applied to the same full-size images with the
same boxes (64 ImageNet-sized photos from ``make_photo_folder``, output 224, train and val):
torchvision's uint8 CPU kernel rounds its weights to fixed point and this one computes in
float32, so values differ by at most 1 grey level, 16% of them by one (mean 0.16). Against
torchvision's float path (what ``finish`` runs on a CUDA tensor): at most 1, mean 2e-5 (train)
and 7e-6 (val): ties at .5 rounded the other way. ``tests/test_resampling.py`` keeps these
bounds. With TF32 matmuls enabled globally (``torch.backends.cuda.matmul.allow_tf32 = True``)
expect a few tenths of a grey level more on a GPU (not measured: no GPU yet).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .crop import CenterCropDecode, CropBox, CropDecoder, RandomResizedCropDecode

GEOMETRY_COLUMNS = ("top", "left", "height", "width", "resized_height", "resized_width", "offset_y", "offset_x",
                    "flip")
"""Columns of a resampling geometry row: the crop in the image, the size it is resized to, the
first output row and column kept of that resized crop (validation's centre crop), and the flip."""

DEFAULT_MAX_ELEMENTS = 2**26


def resampling_geometry(crop: CropDecoder, box: CropBox, *, full_height: int, full_width: int) -> list[int]:
    """The row of :data:`GEOMETRY_COLUMNS` that gives ``crop.finish`` of a full-size image.

    Args:
        crop: A :class:`RandomResizedCropDecode` or :class:`CenterCropDecode`.
        box: The crop drawn by ``crop.box`` for the image.
        full_height: The image's height.
        full_width: The image's width.

    Raises:
        TypeError: ``crop`` is another decoder (its ``finish`` has no known batched form).
    """
    if isinstance(crop, RandomResizedCropDecode):
        return [box.top, box.left, box.height, box.width, crop.size, crop.size, 0, 0, int(box.flip)]
    if isinstance(crop, CenterCropDecode):
        height, width, offset_y, offset_x = crop.crop_origin(full_height, full_width)
        return [0, 0, full_height, full_width, height, width, offset_y, offset_x, 0]
    raise TypeError(f"{type(crop).__name__} has no batched resampling; use RandomResizedCropDecode or "
                    "CenterCropDecode")


def antialias_weights(length: torch.Tensor, resized: torch.Tensor, offset: torch.Tensor, flip: torch.Tensor, *,
                      size: int, padded: int) -> torch.Tensor:
    """``K x size x padded`` float32 weights of torchvision's antialiased bilinear resize, per image.

    Row ``i`` of image ``k`` gives output pixel ``offset[k] + i`` (``size - 1 - i`` when
    ``flip[k]``) of a resize of ``length[k]`` input pixels to ``resized[k]``, over input
    pixels ``0 .. padded - 1``; pixels at or past ``length[k]`` get weight 0. The same maths as
    PyTorch's ``_compute_indices_weights_aa`` (``antialias=True``, ``align_corners=False``).

    Args:
        length: ``K`` input lengths (int64, on the device).
        resized: ``K`` lengths the inputs are resized to.
        offset: ``K`` first output pixels kept.
        flip: ``K`` flags (0 or 1) reversing the output order.
        size: Output pixels kept per image.
        padded: Input pixels per row of the result (at least ``max(length)``).
    """
    device = length.device
    out = torch.arange(size, device=device, dtype=torch.float32)
    out = torch.where(flip[:, None].bool(), size - 1 - out, out) + offset[:, None]  # K x size
    scale = (length.float() / resized.float())[:, None, None]  # input pixels per output pixel
    support = torch.clamp(scale, min=1.0)  # bilinear: radius 1, stretched when downscaling
    center = scale * (out[:, :, None] + 0.5)
    source = torch.arange(padded, device=device, dtype=torch.float32)
    weights = torch.clamp(1.0 - ((source + 0.5 - center) / support).abs(), min=0.0)
    weights = weights * (source < length[:, None, None])
    return weights / weights.sum(-1, keepdim=True)


def crop_resize(images: Sequence[torch.Tensor], geometry: torch.Tensor, *, size: int,
                max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """``K x 3 x size x size`` uint8: each image cropped, resized (antialiased), centre-kept and flipped.

    Args:
        images: ``K`` CHW uint8 images, all on one device (any sizes), contiguous (planar, as
            nvJPEG decodes) or HWC-contiguous viewed as CHW (as libjpeg-turbo decodes); other
            layouts are copied.
        geometry: ``K x 9`` int64 rows of :data:`GEOMETRY_COLUMNS` (on the CPU).
        size: Output side.
        max_elements: Most padded crop values processed at once; a larger batch is cut into
            chunks of similar crop sizes. Defaults to 2**26.
    """
    if not images:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    device = images[0].device
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    crop_sizes = [(height, width) for _, _, height, width, *_ in geometry.tolist()]
    order = sorted(range(len(images)), key=crop_sizes.__getitem__)
    for chunk in _chunks(order, crop_sizes, max_elements):
        index = torch.tensor(chunk, dtype=torch.int64)
        out[index.to(device)] = _crop_resize_chunk([images[k] for k in chunk], geometry[index], size=size)
    return out


def _chunks(order: list[int], crop_sizes: list[tuple[int, int]], max_elements: int) -> list[list[int]]:
    """``order`` (sorted by crop size) cut into runs whose padded crops hold at most ``max_elements`` values."""
    chunks: list[list[int]] = []
    current: list[int] = []
    height = width = 0
    for k in order:
        h, w = max(height, crop_sizes[k][0]), max(width, crop_sizes[k][1])
        if current and (len(current) + 1) * 3 * h * w > max_elements:
            chunks.append(current)
            current, (h, w) = [], crop_sizes[k]
        current.append(k)
        height, width = h, w
    return chunks + [current]


def _crop_resize_chunk(images: list[torch.Tensor], geometry: torch.Tensor, *, size: int) -> torch.Tensor:
    device = images[0].device
    heights = torch.tensor([image.shape[-2] for image in images], dtype=torch.int64)
    widths = torch.tensor([image.shape[-1] for image in images], dtype=torch.int64)
    planes = heights * widths
    bases = torch.cumsum(3 * planes, 0) - 3 * planes
    padded_height, padded_width = int(geometry[:, 2].max()), int(geometry[:, 3].max())
    params = torch.cat([geometry, torch.stack([heights, widths, planes, bases], 1)], 1).to(device)
    top, left, height, width, resized_h, resized_w, offset_y, offset_x, flip, _, full_w, plane, base = params.T
    # nvJPEG gives planar CHW images, libjpeg-turbo (the CPU) HWC ones viewed as CHW: flattened in
    # their own memory order, both are free views and the gather reads whole rows of either.
    planar = all(image.is_contiguous() for image in images)
    flat = torch.cat([image.reshape(-1) if planar else image.permute(1, 2, 0).reshape(-1) for image in images]
                     + [torch.zeros(3 * padded_width, dtype=torch.uint8, device=device)])
    # One gather of rows: row y < Hp of crop k starts at its pixel (top + y, left); rows past the
    # crop repeat its last one and columns past it read on: both weigh 0 below.
    rows = torch.minimum(torch.arange(padded_height, device=device), height[:, None] - 1)  # K x Hp
    pixel = (top[:, None] + rows) * full_w[:, None] + left[:, None]  # K x Hp
    if planar:
        windows = flat.as_strided((flat.numel() - padded_width + 1, padded_width), (1, 1))
        starts = base[:, None, None] + torch.arange(3, device=device)[:, None] * plane[:, None, None] + pixel[:, None]
        crops = windows[starts.reshape(-1)].view(len(images), 3, padded_height, padded_width)
    else:
        windows = flat.as_strided((flat.numel() - 3 * padded_width + 1, 3 * padded_width), (1, 1))
        starts = base[:, None] + 3 * pixel
        crops = windows[starts.reshape(-1)].view(len(images), padded_height, padded_width, 3).permute(0, 3, 1, 2)
    weights_y = antialias_weights(height, resized_h, offset_y, torch.zeros_like(flip), size=size,
                                  padded=padded_height)
    weights_x = antialias_weights(width, resized_w, offset_x, flip, size=size, padded=padded_width)
    resized = weights_y[:, None] @ crops.float() @ weights_x.transpose(1, 2)[:, None]
    return resized.round_().clamp_(0, 255).to(torch.uint8)
