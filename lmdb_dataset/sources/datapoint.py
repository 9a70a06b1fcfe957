"""Reading an (image, label) pair out of a decoded legacy datapoint.

Legacy writers store a datapoint as a tuple or list whose first element is the image and
whose second is the integer label (extra elements are ignored):

* the image file's bytes: ``bytes``, or a 1-D uint8 array of them (tensorpack's
  ``BinaryILSVRC12``, cjsg's ``jpeg``/``raw`` modes) - kept as-is;
* decoded pixels: a uint8 array of shape HxW, {1,3}xHxW or HxWx{1,3}. The known writers
  (cjsg's ``numpy`` mode) store CHW, so a 3-D array whose first axis has 1 or 3 entries is
  read as CHW and transposed to HxWxC; otherwise one whose last axis has 1 or 3 entries is
  read as HxWxC. (An HxWxC image only 1 or 3 pixels tall is therefore misread: no writer
  known to us stores such arrays.)

The label is an int (or a numpy integer scalar, or a 0-d/1-element integer array).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..storage.format import label_problem
from .errors import UnsupportedValueError

Image = bytes | np.ndarray


def image_and_label(value: Any, *, where: str) -> tuple[Image, int]:
    """The (image, label) of a decoded datapoint; see the module docstring for the shapes.

    Raises:
        UnsupportedValueError: The datapoint is not such a pair.
    """
    if not isinstance(value, (tuple, list)) or len(value) < 2:
        raise UnsupportedValueError(f"{where}: expected an (image, label) pair, got "
                                    f"{_describe(value)}")
    return _image(value[0], where), _label(value[1], where)


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def _image(image: Any, where: str) -> Image:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise UnsupportedValueError(f"{where}: the image is {_describe(image)}"
                                    f"{' of ' + str(image.dtype) if isinstance(image, np.ndarray) else ''}, "
                                    "not file bytes or a uint8 array")
    if image.ndim == 1:
        return image.tobytes()
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3)):
        return np.ascontiguousarray(image)
    raise UnsupportedValueError(f"{where}: uint8 image of shape {image.shape} is neither HxWxC nor CxHxW "
                                "with 1 or 3 channels")


def _label(label: Any, where: str) -> int:
    if isinstance(label, np.ndarray) and label.size == 1 and label.dtype.kind in "iu":
        label = label.reshape(()).item()
    if type(label) is not int:
        raise UnsupportedValueError(f"{where}: the label is {_describe(label)}, not an integer")
    if problem := label_problem(label):
        raise UnsupportedValueError(f"{where}: {problem}")
    return label
