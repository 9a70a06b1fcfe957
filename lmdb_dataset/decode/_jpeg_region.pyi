"""Types of the optional compiled piece ``_jpeg_region.c`` (region decoding with the system's libjpeg-turbo)."""

from typing_extensions import Buffer

LIBJPEG_TURBO_VERSION_NUMBER: int
"""The libjpeg-turbo it was built against, e.g. 2001005 for 2.1.5."""

def decode_region(
    data: Buffer, eighths: int, top: int, bottom: int, left: int, right: int, /
) -> tuple[bytearray, int, int, int]:
    """Rows ``[top, bottom)`` and at least the columns ``[left, right)`` of the JPEG decoded at scale ``eighths/8``.

    Returns ``(RGB bytes, rows, columns, first column)``.
    """
