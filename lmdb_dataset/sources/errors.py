"""The error every legacy-source reader raises for a value it will not decode."""

from __future__ import annotations

from ..errors import LMDBDatasetError


class UnsupportedValueError(LMDBDatasetError, ValueError):
    """A stored value is malformed, or holds something the safe decoders refuse to build.

    The message names the record (its key or member name) and what was refused; nothing in
    the value was executed.
    """
