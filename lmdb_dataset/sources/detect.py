"""Telling source kinds apart by content, and opening the right reader."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from . import legacy_lmdb
from .base import Source
from .hdf5 import HDF5Source, is_hdf5
from .listfile import ListFileSource
from .tar import SHARD_SUFFIXES, ClassTarsSource, FolderTarSource, WebDatasetSource, tar_kind

LIST_SUFFIXES = frozenset({".txt", ".csv", ".tsv", ".lst"})

_READERS: dict[str, tuple[Callable[..., Source], tuple[str, ...]]] = {
    "lmdb": (lambda path: legacy_lmdb.LegacyLMDBSource(path), ()),
    **{kind: (lambda path, kind=kind: legacy_lmdb.LegacyLMDBSource(path, kind=kind), ())
       for kind in legacy_lmdb.KINDS},
    "tar": (ClassTarsSource, ()),
    "folder-tar": (FolderTarSource, ()),
    "webdataset": (WebDatasetSource, ()),
    "list": (ListFileSource, ("root",)),
    "hdf5": (HDF5Source, ("images", "labels")),
}

KINDS = tuple(_READERS)
"""The ``--from`` kinds besides ``folder`` (an ImageFolder tree, read by ``convert_image_folder``).

``lmdb``: a legacy LMDB whose writer is detected; ``tensorpack``, ``folder2lmdb``, ``caffe``:
one of a known writer; ``tar``: ILSVRC2012's tar of per-class tars; ``folder-tar``: a tar of an
ImageFolder tree (``<root>/<class>/<image>`` members); ``webdataset``: shards
of ``key.jpg`` + ``key.cls``; ``list``: a list file of ``path,label`` lines; ``hdf5``.
"""


def detect_kind(path: str | os.PathLike) -> str:
    """The kind of source at ``path``: one of :data:`KINDS`, or ``"folder"`` for an image folder.

    A directory is an LMDB if it holds ``data.mdb``, webdataset shards if it holds ``.tar``
    (``.tar.gz``, ``.tgz``) files and no sub-directory, else an image folder. A file is an LMDB, HDF5 or tar by its
    first bytes, a list file by its suffix (``.txt``, ``.csv``, ``.tsv``, ``.lst``); a tar's layout by its
    first members (:func:`.tar.tar_kind`): ILSVRC2012's when the first is a ``.tar``, webdataset when one is
    a ``<key>.cls`` label, a folder tar when they are images in folders and no label.

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
        entries = list(path.iterdir())
        shards = (any(e.name.endswith(SHARD_SUFFIXES) and e.is_file() for e in entries)
                  and not any(e.is_dir() for e in entries))
        return "webdataset" if shards else "folder"
    if is_hdf5(path):
        return "hdf5"
    if path.suffix.lower() in LIST_SUFFIXES:
        return "list"
    if tarfile.is_tarfile(path):
        return tar_kind(path)
    raise ValueError(f"cannot tell what kind of source {str(path)!r} is; pass kind= (--from) with one of "
                     f"{', '.join(KINDS)}")


def open_source(path: str | os.PathLike, *, kind: str | None = None, **options: str) -> Source:
    """The reader of the source at ``path``, of the given or detected kind.

    Args:
        path: The source.
        kind: One of :data:`KINDS`. Defaults to :func:`detect_kind`.
        **options: The kind's options: ``root`` (list), ``images`` and ``labels`` (hdf5).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Unknown kind or options, or a kind that cannot be detected.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a source kind; use one of {', '.join(KINDS)}")
    if not Path(path).exists():
        raise FileNotFoundError(f"source {str(path)!r} does not exist")
    kind = kind or detect_kind(path)
    if kind == "folder":
        raise ValueError(f"{str(path)!r} is an image folder: convert it with convert_image_folder")
    reader, allowed = _READERS[kind]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"source options {', '.join(unknown)} do not apply to {kind} sources"
                         + (f" (they take {', '.join(allowed)})" if allowed else ""))
    return reader(path, **options)
