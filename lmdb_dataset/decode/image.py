"""Turning stored payloads into RGB pixels, and pixels into the requested output type.

Colour JPEGs (YCbCr) are decoded with simplejpeg (libjpeg-turbo, accurate integer DCT,
fancy upsampling): the same library and settings Pillow uses, at ~1.4x Pillow's speed,
so pixels equal what ``torchvision.datasets.ImageFolder`` yields. Grayscale and CMYK
JPEGs, JPEGs that simplejpeg rejects (e.g. recoverable corruption that Pillow tolerates),
PNG and every other format go through Pillow's ``convert("RGB")``, exactly as
ImageFolder's loader does.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Literal, Union

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from ..storage.format import KIND_RAW, RecordHeader

if TYPE_CHECKING:
    import torch

Output = Literal["pil", "tensor", "numpy"]
OUTPUTS = ("pil", "tensor", "numpy")
Sample = Union[Image.Image, "torch.Tensor", np.ndarray]

JPEG_SOI = b"\xff\xd8"
"""A JPEG file's first two bytes (start of image)."""
JPEG_EOI = b"\xff\xd9"
"""A whole JPEG file's last two bytes (end of image)."""


def decode_image(data: bytes | memoryview) -> np.ndarray:
    """Decode encoded image bytes to an HxWx3 uint8 RGB array.

    Raises:
        ValueError: The bytes are not a decodable image (the message says why).
    """
    if bytes(data[:2]) == JPEG_SOI:
        try:
            if simplejpeg.decode_jpeg_header(data)[2] == "YCbCr":
                return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass  # Pillow below decides: it tolerates some files libjpeg-turbo flags as corrupt.
    return np.array(_decode_with_pillow(data))  # np.asarray of a PIL image is read-only


def _decode_with_pillow(data: bytes | memoryview) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("not a decodable image (UnidentifiedImageError: no known image format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None


def check_decodes(data: bytes | memoryview) -> tuple[int, int]:
    """Prove encoded image bytes decode as readers will decode them; returns (height, width).

    Colour JPEGs are decoded at 1/8 scale with libjpeg-turbo's strict error checking: every
    entropy-coded coefficient is still parsed, so truncated or corrupt data is caught, at
    about two thirds of a full decode's cost. Whatever simplejpeg rejects must decode fully
    with Pillow, which is what readers then use.

    Raises:
        ValueError: The bytes are not a decodable image.
    """
    if bytes(data[:2]) == JPEG_SOI:
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            if colorspace == "YCbCr":
                simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=1, min_width=1)
                return height, width
        except ValueError:
            pass
    image = _decode_with_pillow(data)
    return image.height, image.width


def image_size(data: bytes | memoryview) -> tuple[int, int]:
    """(height, width) of encoded image bytes, read from the file's header without decoding.

    JPEGs are read with ``simplejpeg.decode_jpeg_header``, other formats (and JPEGs it
    rejects) with Pillow's ``Image.open``, which reads only the header. Nothing proves the
    rest of the file is readable (:func:`check_decodes` does).

    Raises:
        ValueError: The header is not one of a known image format.
    """
    if bytes(data[:2]) == JPEG_SOI:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return height, width
        except ValueError:
            pass
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except UnidentifiedImageError:
        raise ValueError("not an image (UnidentifiedImageError: no known image format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read the image's header ({type(exc).__name__}: {exc})") from None
    return height, width


def pixels_of(header: RecordHeader, payload: bytes | memoryview) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of a record's payload (a new array; never a view of ``payload``)."""
    if header.kind == KIND_RAW:
        pixels = np.frombuffer(payload, dtype=np.uint8).reshape(header.height, header.width,
                                                                 header.channels)
        return np.repeat(pixels, 3, axis=2) if header.channels == 1 else pixels.copy()
    return decode_image(payload)


def to_output(pixels: np.ndarray, output: Output) -> Sample:
    """Wrap HxWx3 uint8 pixels as a PIL image, a CHW uint8 tensor (a view), or the array itself."""
    if output == "pil":
        return Image.fromarray(pixels)
    if output == "tensor":
        import torch  # here, so that metadata-only users (``lmdb-dataset info``) never import torch

        # A CHW view of HWC memory: torchvision's uint8 resize takes its fast channels-last path.
        return torch.from_numpy(pixels).permute(2, 0, 1)
    return pixels


def check_output(output: str) -> None:
    """Raise ValueError unless ``output`` is one of :data:`OUTPUTS`."""
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r} is not supported; use one of {', '.join(OUTPUTS)}")
