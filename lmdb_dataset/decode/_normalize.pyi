"""Types of the optional compiled piece ``_normalize.c`` (NormalizeBatch's one-pass kernel on the CPU)."""

from collections.abc import Sequence

import numpy as np
from typing_extensions import Buffer

def normalize(
    src: Buffer | np.ndarray, dst: Buffer | np.ndarray, scale: Sequence[float], shift: Sequence[float],
    images: int, channels: int, plane: int, kind: int, channels_last: bool, /
) -> None:
    """``dst = src * scale[c] + shift[c]`` of a uint8 NCHW batch, into float32 (kind 0) or bfloat16 (1)."""
