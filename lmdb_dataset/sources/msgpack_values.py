"""Decoding msgpack / msgpack-numpy values (tensorpack's msgpack serializer) without hooks.

msgpack-numpy stores an array as a map ``{"nd": True, "type": "|u1", "kind": "", "shape":
[...], "data": <bytes>}`` and a numpy scalar as ``{"nd": False, "type": "<i8", "data":
<bytes>}``. Its decode hook calls ``pickle.loads`` for ``kind == "O"``, so it is never used
here: values are read with plain ``msgpack.unpackb`` (no ext hook, no object hook) and those
maps are rebuilt with ``np.frombuffer`` for numeric dtypes only. Old writers that stored
bytes as msgpack "raw" strings (``use_bin_type=False``) are read too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import UnsupportedValueError, optional_import
from .safe_pickle import MAX_DEPTH, NUMERIC_DTYPES


def loads(data: bytes | memoryview, *, where: str = "value") -> Any:
    """Decode a msgpack(-numpy) value into plain data and numeric numpy arrays.

    Args:
        data: The msgpack bytes.
        where: What the bytes are, for error messages.

    Returns:
        Nested lists of ``bytes``/``str``/numbers/``None``/numpy arrays (maps other than
        msgpack-numpy's are kept as dicts).

    Raises:
        UnsupportedValueError: Not msgpack, an ext type, an object array, or malformed.
    """
    msgpack = optional_import("msgpack", "msgpack")
    data = bytes(data)
    try:
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except UnicodeDecodeError:  # bytes written as msgpack "raw" strings by old writers
            value = msgpack.unpackb(data, raw=True, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise UnsupportedValueError(f"{where}: not a msgpack value ({exc})") from None
    return _rebuild(value, where, 0)


def _text(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _rebuild(value: Any, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise UnsupportedValueError(f"{where}: msgpack value nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, list):
        return [_rebuild(item, where, depth + 1) for item in value]
    if isinstance(value, dict):
        fields = {_text(key): item for key, item in value.items()}
        if "nd" in fields and "type" in fields and "data" in fields:
            return _array(fields, where)
        return {key: _rebuild(item, where, depth + 1) for key, item in fields.items()}
    if isinstance(value, (bytes, str, int, float, bool, type(None))):
        return value
    raise UnsupportedValueError(f"{where}: msgpack value holds a {type(value).__name__} (ext types are refused)")


def _array(fields: dict[str, Any], where: str) -> np.ndarray | int | float | bool:
    """Rebuild one msgpack-numpy array or scalar map with np.frombuffer."""
    kind = _text(fields.get("kind", ""))
    descr = _text(fields["type"])
    if kind != "" or not isinstance(descr, str) or descr[-2:] not in NUMERIC_DTYPES or len(descr) != 3:
        raise UnsupportedValueError(f"{where}: msgpack-numpy array of kind {kind!r} / type {descr!r} is not a "
                                    "plain numeric array (object arrays are refused: decoding them runs pickle)")
    dtype = np.dtype(descr)
    data = fields["data"]
    if not isinstance(data, bytes):
        raise UnsupportedValueError(f"{where}: msgpack-numpy array data is not bytes")
    if fields["nd"] is not True:
        if len(data) != dtype.itemsize:
            raise UnsupportedValueError(f"{where}: msgpack-numpy scalar of {len(data)} bytes for {dtype}")
        return np.frombuffer(data, dtype=dtype)[0].item()
    shape = fields.get("shape")
    if (not isinstance(shape, (list, tuple)) or len(shape) > 8
            or not all(type(n) is int and 0 <= n < 1 << 40 for n in shape)):
        raise UnsupportedValueError(f"{where}: msgpack-numpy shape {shape!r} is not a list of sizes")
    if math.prod(shape) * dtype.itemsize != len(data):
        raise UnsupportedValueError(f"{where}: msgpack-numpy array of shape {shape} and type {descr} needs "
                                    f"{math.prod(shape) * dtype.itemsize} bytes, holds {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
