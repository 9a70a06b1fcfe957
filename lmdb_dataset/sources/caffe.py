"""Caffe ``Datum`` values, parsed from the protobuf wire format by hand (no protobuf needed).

``message Datum`` (BVLC/caffe ``src/caffe/proto/caffe.proto``)::

    field  wire type  name
    1      varint     channels
    2      varint     height
    3      varint     width
    4      bytes      data        raw: C x H x W planar BGR uint8; encoded: the image file's bytes
    5      varint     label
    6      fixed32    float_data  (packed or repeated; refused: float pixels are not images)
    7      varint     encoded     (bool)

``convert_imageset`` writes a raw 256x256 datum as
``08 03 10 80 02 18 80 02 22 80 80 0c <196608 bytes> 28 <label> 38 00`` and an encoded one as
``22 <varint length> ff d8 ... 28 <label> 38 01``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .errors import UnsupportedValueError

_BYTES = 2  # the wire type of length-delimited fields; the others here are varints (0)
_FIELDS = {1: "channels", 2: "height", 3: "width", 4: "data", 5: "label", 6: "float_data", 7: "encoded"}


@dataclasses.dataclass(frozen=True)
class Datum:
    """The fields of one Caffe Datum that matter for images."""

    channels: int = 0
    height: int = 0
    width: int = 0
    data: bytes = b""
    label: int = 0
    encoded: bool = False

    def image(self, *, where: str = "datum") -> bytes | np.ndarray:
        """The encoded file bytes, or raw pixels as an HxWxC RGB (or gray) uint8 array.

        Raises:
            UnsupportedValueError: A raw datum whose data does not match C x H x W, or C not 1/3.
        """
        if self.encoded:
            return self.data
        if self.channels not in (1, 3) or len(self.data) != self.channels * self.height * self.width:
            raise UnsupportedValueError(
                f"{where}: raw Caffe datum of {self.channels}x{self.height}x{self.width} holds "
                f"{len(self.data)} bytes of pixels (need 1 or 3 channels of C*H*W bytes)")
        planes = np.frombuffer(self.data, dtype=np.uint8).reshape(self.channels, self.height, self.width)
        return np.ascontiguousarray(planes[::-1].transpose(1, 2, 0))  # planar BGR -> interleaved RGB


def _varint(data: memoryview, pos: int, where: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise UnsupportedValueError(f"{where}: Caffe datum has a truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def parse_datum(data: bytes | memoryview, *, where: str = "value") -> Datum:
    """Parse a serialised Caffe ``Datum``.

    Args:
        data: The protobuf bytes.
        where: What the bytes are, for error messages.

    Raises:
        UnsupportedValueError: Not a Datum (unknown field, wrong wire type, truncated) or
            one holding float_data.
    """
    view = memoryview(data).cast("B")
    fields: dict[str, Any] = {}  # Datum's keyword arguments: ints, bytes and a bool
    pos = 0
    while pos < len(view):
        tag, pos = _varint(view, pos, where)
        number, wire = tag >> 3, tag & 7
        name = _FIELDS.get(number)
        if name is None or name == "float_data":
            what = "float_data (float pixels)" if name else f"field {number}"
            raise UnsupportedValueError(f"{where}: Caffe datum has {what}, which is not supported")
        if (wire == _BYTES) != (name == "data"):
            raise UnsupportedValueError(f"{where}: Caffe datum field {name} has wire type {wire}")
        if wire == _BYTES:
            size, pos = _varint(view, pos, where)
            if pos + size > len(view):
                raise UnsupportedValueError(f"{where}: Caffe datum data runs past the value's end")
            fields[name] = bytes(view[pos:pos + size])
            pos += size
        else:
            value, pos = _varint(view, pos, where)
            fields[name] = value - (1 << 64) if name == "label" and value >= 1 << 63 else value
    fields["encoded"] = bool(fields.get("encoded", 0))
    return Datum(**fields)
