"""The error every legacy-source reader raises for a value it will not decode."""

from __future__ import annotations

from ..errors import LMDBDatasetError


class UnsupportedValueError(LMDBDatasetError, ValueError):
    """A stored value is malformed, or holds something the safe decoders refuse to build.

    The message names the record (its key or member name) and what was refused; nothing in
    the value was executed.
    """


class MissingDependencyError(LMDBDatasetError, ImportError):
    """A source kind needs an optional package that is not installed (the message names the extra)."""


def optional_import(module: str, extra: str):
    """Import an optional dependency, or raise :class:`MissingDependencyError` saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"this source needs the {module!r} package: pip install "
                                     f"\"lmdb-dataset[{extra}]\"") from None
