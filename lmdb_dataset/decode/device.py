"""Decoding on the training device: workers ship JPEG bytes and crops, the device decodes the batch.

With ``decode="device"`` a DataLoader worker does not decode colour JPEGs. It draws the
crop from the record header's height and width (:meth:`CropDecoder.box`, the same draws as
the CPU path) and ships the encoded bytes with the crop's resampling geometry
(:class:`EncodedImage`). In the main process, on a thread of its own
(:class:`lmdb_dataset.decode.device_stage.DeviceDecodeStage`), all of a batch's JPEGs are decoded with
one ``torchvision.io.decode_jpeg(list, device=...)`` call (nvJPEG on a CUDA device,
libjpeg-turbo on the CPU) by :func:`decode_jpegs`, then :func:`assemble` crops, resizes and
flips them all at once (:func:`lmdb_dataset.decode.resampling.crop_resize`: a fixed number of kernels
per batch) and merges the images decoded in the workers.

Images the device decoder must not take are decoded in the worker by the datasets' pixel
policy (fused crop decode, :mod:`lmdb_dataset.decode.crop`) and merged into the batch at
their positions: grayscale and CMYK JPEGs, PNG and other formats, JPEGs without an end-of-image
marker (truncated files, which a GPU decoder may turn into grey pixels where Pillow raises),
``raw`` storage. A JPEG that the device decoder still rejects is decoded again alone, then on
the CPU by the datasets' policy; one that nothing decodes raises
:class:`~lmdb_dataset.errors.CorruptRecordError` naming the record.

Which CUDA stream runs what, and why no kernel reads memory that nvJPEG is rewriting, is
explained in :mod:`lmdb_dataset.decode.device_stage`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import simplejpeg
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from ..errors import CorruptRecordError
from ..storage.format import KIND_ENCODED, RecordHeader
from .crop import CropDecoder
from .image import JPEG_EOI, JPEG_SOI, decode_image
from .resampling import GEOMETRY_COLUMNS, crop_resize, resampling_geometry


@dataclasses.dataclass
class EncodedImage:
    """A colour JPEG shipped undecoded from a worker, with its crop.

    Attributes:
        data: The JPEG bytes as a 1-D uint8 tensor.
        geometry: The ``crop_resize`` geometry of its crop: 9 int64 values, the columns of
            :data:`lmdb_dataset.decode.resampling.GEOMETRY_COLUMNS`.
        record: The record it came from (named in errors).
    """

    data: torch.Tensor
    geometry: torch.Tensor
    record: int = -1


def device_decodable(header: RecordHeader, payload: bytes | memoryview) -> bool:
    """Whether a record's payload is a complete colour (YCbCr) JPEG of the header's size."""
    if header.kind != KIND_ENCODED or bytes(payload[:2]) != JPEG_SOI or bytes(payload[-2:]) != JPEG_EOI:
        return False
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(payload)
    except ValueError:
        return False
    return colorspace == "YCbCr" and (height, width) == (header.height, header.width)


class SplitDecoder:
    """Worker side of device decoding: ``decoder(header, payload)`` -> :class:`EncodedImage` or a crop.

    Colour JPEGs leave undecoded with the crop ``crop`` draws for them; every other image is
    decoded here by ``crop`` itself (a ``3 x size x size`` uint8 tensor).

    Args:
        crop: The fused decoder whose boxes and finishing are used.
    """

    def __init__(self, crop: CropDecoder) -> None:
        self.crop = crop

    def __call__(self, header: RecordHeader, payload: bytes | memoryview,
                 generator: torch.Generator | None = None) -> EncodedImage | torch.Tensor:
        if not device_decodable(header, payload):
            return self.crop(header, payload, generator)
        box = self.crop.box(header.height, header.width, generator)
        geometry = resampling_geometry(self.crop, box, full_height=header.height, full_width=header.width)
        return EncodedImage(torch.frombuffer(bytearray(payload), dtype=torch.uint8),
                            torch.tensor(geometry, dtype=torch.int64))


@dataclasses.dataclass
class MixedBatch:
    """A collated batch of :class:`EncodedImage` and already-decoded crops.

    Attributes:
        labels: ``N`` int64 labels, in sample order.
        encoded: The ``K`` JPEGs' bytes, concatenated (one tensor: one shared-memory segment
            between processes, not ``K``).
        lengths: ``K`` byte lengths of the JPEGs in ``encoded``.
        geometry: ``K x 9`` resampling geometry of the JPEGs (see :class:`EncodedImage`).
        records: ``K`` record indices of the JPEGs.
        encoded_at: ``K`` positions of the JPEGs in the batch.
        decoded: ``(N - K) x 3 x S x S`` uint8 crops decoded in the worker.
        decoded_at: Their ``N - K`` positions in the batch.
    """

    labels: torch.Tensor
    encoded: torch.Tensor
    lengths: torch.Tensor
    geometry: torch.Tensor
    records: torch.Tensor
    encoded_at: torch.Tensor
    decoded: torch.Tensor
    decoded_at: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def jpegs(self) -> list[torch.Tensor]:
        """The JPEGs as ``K`` 1-D uint8 views of :attr:`encoded`."""
        return list(torch.split(self.encoded, self.lengths.tolist()))

    def pin_memory(self) -> MixedBatch:
        """Pinned copies of the tensors (called by the DataLoader's pin thread)."""
        return dataclasses.replace(self, labels=self.labels.pin_memory(), encoded=self.encoded.pin_memory(),
                                   decoded=self.decoded.pin_memory())


def collate_mixed(samples: Sequence[tuple[Any, Any]]) -> MixedBatch:
    """DataLoader ``collate_fn`` for samples whose images are :class:`EncodedImage` or uint8 crops."""
    encoded_at = [i for i, (image, _) in enumerate(samples) if isinstance(image, EncodedImage)]
    decoded_at = [i for i, (image, _) in enumerate(samples) if not isinstance(image, EncodedImage)]
    jpegs = [samples[i][0] for i in encoded_at]
    decoded = [samples[i][0] for i in decoded_at]
    return MixedBatch(
        labels=torch.tensor([int(label) for _, label in samples], dtype=torch.int64),
        encoded=torch.cat([image.data for image in jpegs]) if jpegs else torch.empty(0, dtype=torch.uint8),
        lengths=torch.tensor([len(image.data) for image in jpegs], dtype=torch.int64),
        geometry=(torch.stack([image.geometry for image in jpegs]) if jpegs
                  else torch.empty(0, len(GEOMETRY_COLUMNS), dtype=torch.int64)),
        records=torch.tensor([image.record for image in jpegs], dtype=torch.int64),
        encoded_at=torch.tensor(encoded_at, dtype=torch.int64),
        decoded=torch.stack(decoded) if decoded else torch.empty(0, dtype=torch.uint8),
        decoded_at=torch.tensor(decoded_at, dtype=torch.int64),
    )


def decode_batch(batch: MixedBatch, size: int, device: torch.device, *, path: str) -> torch.Tensor:
    """The ``N x 3 x size x size`` uint8 batch on ``device``, decoded and assembled in the calling thread.

    :func:`decode_jpegs` then :func:`assemble`, with no stream of their own: what
    :class:`lmdb_dataset.decode.device_stage.DeviceDecodeStage` runs ahead, on its own streams.

    Args:
        batch: A batch from :func:`collate_mixed`.
        size: Output side.
        device: Where to decode and assemble.
        path: The dataset path, named in errors.

    Raises:
        CorruptRecordError: A JPEG decodes neither on the device nor on the CPU.
    """
    return assemble(batch, decode_jpegs(batch, device, path=path), size, device)


def assemble(batch: MixedBatch, full_images: list[torch.Tensor], size: int, device: torch.device) -> torch.Tensor:
    """The ``N x 3 x size x size`` uint8 batch: the JPEGs' crops (batched) and the workers' crops, in order.

    Args:
        batch: A batch from :func:`collate_mixed`.
        full_images: Its JPEGs decoded at full size on ``device`` (:func:`decode_jpegs`).
        size: Output side.
        device: Where to assemble.
    """
    images = torch.empty((len(batch), 3, size, size), dtype=torch.uint8, device=device)
    if len(batch.decoded_at):
        images[batch.decoded_at.to(device)] = batch.decoded.to(device, non_blocking=True)
    if full_images:
        images[batch.encoded_at.to(device)] = crop_resize(full_images, batch.geometry, size=size)
    return images


def decode_jpegs(batch: MixedBatch, device: torch.device, *, path: str) -> list[torch.Tensor]:
    """Full-size CHW uint8 images of the batch's JPEGs on ``device``; one call when all decode.

    Args:
        batch: A batch from :func:`collate_mixed`.
        device: Where to decode (nvJPEG on CUDA, libjpeg-turbo on the CPU).
        path: The dataset path, named in errors.

    Raises:
        CorruptRecordError: A JPEG decodes neither on the device nor on the CPU.
    """
    jpegs = batch.jpegs()
    if not jpegs:
        return []
    try:
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return [_decode_alone(data, record, device, path=path) for data, record in zip(jpegs, batch.records.tolist())]


def _decode_alone(data: torch.Tensor, record: int, device: torch.device, *, path: str) -> torch.Tensor:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        warnings.warn(f"{path}: record {record}: torchvision's decode_jpeg on {device} rejected it ({exc}); "
                      "decoding it on the CPU in the main process", RuntimeWarning, stacklevel=2)
    try:
        pixels = decode_image(data.numpy().tobytes())
    except ValueError as exc:
        raise CorruptRecordError(f"{path}: record {record}: the image does not decode: {exc}. "
                                 f"Run `lmdb-dataset verify {path}` to list every bad record.",
                                 path=path, index=record) from None
    return torch.from_numpy(pixels).permute(2, 0, 1).to(device)
