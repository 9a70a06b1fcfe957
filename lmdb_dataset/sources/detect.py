"""Telling source kinds apart by content, and opening the right reader."""

from __future__ import annotations

import os
from pathlib import Path

from . import legacy_lmdb
from .base import Source

KINDS = ("lmdb", *legacy_lmdb.KINDS)
"""The ``--from`` kinds besides ``folder`` (an ImageFolder tree, read by ``convert_image_folder``).

``lmdb`` is a legacy LMDB whose writer is detected; the others name the writer or format.
"""


def detect_kind(path: str | os.PathLike) -> str:
    """The kind of source at ``path``: one of :data:`KINDS`, or ``"folder"`` for any other directory.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a file of no known kind.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"source {str(path)!r} does not exist")
    if legacy_lmdb.is_lmdb(path):
        return "lmdb"
    if path.is_dir():
        return "folder"
    raise ValueError(f"cannot tell what kind of source {str(path)!r} is; pass kind= (--from) with one of "
                     f"{', '.join(KINDS)}")


def open_source(path: str | os.PathLike, *, kind: str | None = None, **options: str) -> Source:
    """The reader of the source at ``path``, of the given or detected kind.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Unknown kind or options, or a kind that cannot be detected.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a source kind; use one of {', '.join(KINDS)}")
    kind = kind or detect_kind(path)
    if kind == "folder":
        raise ValueError(f"{str(path)!r} is an image folder: convert it with convert_image_folder")
    _no_options(options, kind)
    return legacy_lmdb.LegacyLMDBSource(path, kind=None if kind == "lmdb" else kind)


def _no_options(options: dict[str, str], kind: str) -> None:
    if options:
        raise ValueError(f"source options {', '.join(sorted(options))} do not apply to {kind} sources")
