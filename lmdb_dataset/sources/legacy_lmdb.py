"""Reading image LMDBs written by earlier tools: tensorpack, the folder2lmdb scripts, Caffe.

Detection, by content (the (image, label) shapes each writer stores: :mod:`.datapoint`):

==========================================  ===============================================
signature                                    kind
==========================================  ===============================================
``__keys__`` and ``__len__`` keys            ``folder2lmdb`` (Efficient-PyTorch and its forks)
``__keys__`` only                            ``tensorpack`` (``LMDBSerializer``, cjsg)
keys ``<8 digits>_<path>``, Datum values     ``caffe`` (``convert_imageset``)
numeric keys, pickle/msgpack values          ``tensorpack`` (no ``__keys__``: an interrupted dump)
==========================================  ===============================================

Record order is the writers' order: numeric keys (unpadded ``'0'``, ``'1'``, ... or 8-digit)
sorted by their integer value, Caffe keys by their numeric prefix, other keys in byte order;
``__keys__`` and ``__len__`` are bookkeeping and ignored. Values of the tensorpack/folder2lmdb
kinds are pickles (protocols 2-5, parsed by :mod:`.safe_pickle`, never unpickled) or msgpack
(-numpy) (:mod:`.msgpack_values`), told apart by their first bytes; pyarrow's removed
``serialize`` format is refused with an explanation. Caffe values are ``Datum`` protobufs
(:mod:`.caffe`). Both LMDB layouts are read: a directory holding ``data.mdb``
(``subdir=True``) and a single file with a ``-lock`` file beside it (``subdir=False``).
The environment is opened read-only without locking: the source is never written. It is
opened through the process's environment registry (:mod:`storage.environment`): every reader
of one LMDB in a process (a :class:`~.in_place.LegacyLMDBDataset` train and eval view, a
conversion) shares one environment, and a forked DataLoader worker opens its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from pathlib import Path

import lmdb
import numpy as np

from ..storage import format as fmt
from ..storage.environment import MAX_DBS, data_file, environments
from . import caffe, msgpack_values, safe_pickle
from .base import SourceRecord
from .datapoint import image_and_label
from .errors import UnsupportedValueError

KINDS = ("tensorpack", "folder2lmdb", "caffe")
BOOKKEEPING_KEYS = frozenset({b"__keys__", b"__len__"})
LMDB_MAGIC = 0xBEEFC0DE.to_bytes(4, "little")
_CAFFE_KEY = re.compile(rb"^(\d{8,})_")
_MSGPACK_ARRAY_STARTS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


def is_lmdb(path: str | Path) -> bool:
    """Whether ``path`` is an LMDB: a directory holding ``data.mdb``, or a file starting with an LMDB meta page."""
    path = Path(path)
    if path.is_dir():
        path = path / "data.mdb"
    if not path.is_file():
        return False
    with open(path, "rb") as file:
        return file.read(20)[16:20] == LMDB_MAGIC


def _open(path: str | os.PathLike, *, readahead: bool) -> lmdb.Environment:
    """Open a legacy LMDB (either layout) read-only, through its data file (the registry's opener).

    Without locking nothing is written beside the data file; ``max_dbs`` is a dataset's, so an
    lmdb-dataset dataset opened here first (and refused) can still be read through the shared environment.
    """
    try:
        return lmdb.open(str(data_file(path)), subdir=False, readonly=True, lock=False, readahead=readahead,
                         max_dbs=MAX_DBS, create=False)
    except lmdb.Error as exc:
        raise UnsupportedValueError(f"{str(path)!r} cannot be opened as an LMDB: {exc}") from None


def ordered_keys(keys: list[bytes]) -> np.ndarray:
    """The record keys in write order, as a numpy bytes array (bookkeeping keys left out).

    All-digit keys sort by integer value, Caffe's ``%08d_path`` keys by that number, other
    keys stay in byte order (the order they are given in: an LMDB cursor's).
    """
    keys = [key for key in keys if key not in BOOKKEEPING_KEYS]
    if keys and all(key.isdigit() for key in keys):
        numbers = [int(key) for key in keys]
    elif keys and all(_CAFFE_KEY.match(key) for key in keys):
        matches = map(_CAFFE_KEY.match, keys)
        numbers = [int(match.group(1)) for match in matches if match is not None]  # every key matches (checked)
    else:
        numbers = list(range(len(keys)))
    order = np.argsort(np.asarray(numbers, dtype=np.int64), kind="stable")
    return np.asarray(keys, dtype=bytes)[order] if keys else np.empty(0, dtype="S1")


def key_name(key: bytes) -> str:
    """A record's key as every message and skip report names it: its text, undecodable bytes escaped."""
    return key.decode("utf-8", "backslashreplace")


def _looks_like_pyarrow(value: bytes) -> bool:
    """pyarrow ``serialize``: a header of small int32 counts, then an Arrow IPC stream (``ff ff ff ff``)."""
    for offset in (4, 8, 12, 16):
        counts = np.frombuffer(value[:offset], dtype="<u4") if len(value) >= offset + 4 else None
        if counts is not None and value[offset:offset + 4] == b"\xff" * 4 and (counts < 1 << 16).all():
            return True
    return False


def decode_datapoint(value: bytes, *, where: str) -> tuple[bytes | np.ndarray, int]:
    """The (image, label) of a tensorpack / folder2lmdb value: a pickle or msgpack datapoint.

    Raises:
        UnsupportedValueError: Neither format, pyarrow's, or not an (image, label) pair.
    """
    if value[:1] == b"\x80":
        return image_and_label(safe_pickle.loads(value, where=where), where=where)
    if value[:1] and value[0] in _MSGPACK_ARRAY_STARTS:
        return image_and_label(msgpack_values.loads(value, where=where), where=where)
    if _looks_like_pyarrow(value):
        raise UnsupportedValueError(
            f"{where}: looks like pyarrow's removed serialize() format, which is not supported (its "
            "reader can run pickle, and pyarrow < 12, the last with serialize, cannot be imported next "
            "to numpy 2); re-export the records with pickle or msgpack (e.g. with pyarrow 11 and numpy 1.26)")
    raise UnsupportedValueError(f"{where}: value is neither a pickle nor msgpack (starts {value[:8].hex(' ')})")


def decode_caffe(value: bytes, *, where: str) -> tuple[bytes | np.ndarray, int]:
    """The (image, label) of a Caffe Datum value (raw datums: RGB HxWxC pixels)."""
    datum = caffe.parse_datum(value, where=where)
    return datum.image(where=where), datum.label


class LegacyLMDBSource:
    """Records of a legacy image LMDB, in write order; see the module docstring.

    Args:
        path: The LMDB directory (``subdir=True``) or file (``subdir=False``).
        kind: One of :data:`KINDS`, or None to detect it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsupportedValueError: ``path`` is not an LMDB, its kind cannot be detected, or it is an
            lmdb-dataset dataset.
    """

    def __init__(self, path: str | os.PathLike, *, kind: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"legacy LMDB {str(self.path)!r} does not exist")
        if not is_lmdb(self.path):
            raise UnsupportedValueError(f"{str(self.path)!r} is not an LMDB (neither a directory holding "
                                        "data.mdb nor an LMDB data file)")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not a legacy LMDB kind; use one of {', '.join(KINDS)}")
        self.classes: list[str] | None = None
        env, self.identity = environments.get(self.path, readahead=True, opener=_open)
        with env.begin() as txn:  # the environment is shared, and closed once no reader of the LMDB uses it
            keys = list(txn.cursor().iternext(keys=True, values=False))
            if fmt.RECORDS_DB in keys and fmt.META_DB in keys:
                raise UnsupportedValueError(f"{str(self.path)!r} is already an lmdb-dataset dataset; "
                                            "read it with LMDBImageDataset, no conversion needed")
            self.keys = ordered_keys(keys)
            first = txn.get(bytes(self.keys[0])) if len(self.keys) else b""
            assert first is not None  # the key was listed by this transaction's cursor
        self.kind = kind or self._detect(set(keys) & BOOKKEEPING_KEYS, first)
        self._decode = decode_caffe if self.kind == "caffe" else decode_datapoint

    def _detect(self, bookkeeping: set[bytes], first: bytes) -> str:
        if bookkeeping == BOOKKEEPING_KEYS:
            return "folder2lmdb"
        if bookkeeping:
            return "tensorpack"
        caffe_keys = len(self.keys) and all(_CAFFE_KEY.match(key) for key in self.keys[:1000])
        if caffe_keys and first[:1] in (b"\x08", b"\x22"):
            return "caffe"
        if first[:1] == b"\x80" or (first[:1] and first[0] in _MSGPACK_ARRAY_STARTS):
            return "tensorpack"
        raise UnsupportedValueError(
            f"cannot tell which tool wrote the LMDB {str(self.path)!r}: its first value (starting "
            f"{first[:8].hex(' ') or 'empty'}) is neither a pickled or msgpack datapoint nor a Caffe Datum, "
            "and it has no __keys__ entry. LMDBs written by tensorpack, folder2lmdb scripts and Caffe are read "
            "(--from lmdb, the default for an LMDB, detects which); if one of them wrote it, name it: "
            f"{', '.join('--from ' + kind for kind in KINDS)} (kind= in Python). An LMDB of another layout "
            "(e.g. written by your own py-lmdb script) cannot be read as such: export its images as an image "
            "folder (SRC/<class>/<image>), a list file or a tar archive, and convert that")

    def count(self) -> int:
        """Number of records (bookkeeping keys excluded)."""
        return len(self.keys)

    def open_environment(self, *, readahead: bool = False) -> lmdb.Environment:
        """This process's read-only environment of the source LMDB, shared with its other readers.

        The caller keeps a reference while it reads and never closes it (it is closed once
        unused). ``readahead`` applies when this call opens it: on for a pass in write order.

        Raises:
            DatasetChangedError: The LMDB was replaced or written since this source listed its keys.
        """
        env, _ = environments.get(self.path, self.identity, readahead=readahead, opener=_open)
        return env

    def decode(self, key: bytes, value: bytes) -> tuple[bytes | np.ndarray, int]:
        """The (image, label) of the value stored under ``key``.

        Raises:
            UnsupportedValueError: The value is malformed or refused (the message names ``key``).
        """
        return self._decode(value, where=f"record {key_name(key)!r}")

    def records(self, start: int = 0) -> Generator[SourceRecord, None, None]:
        """Decode the records from position ``start`` on, in write order; bad values carry their error."""
        with self.open_environment(readahead=True).begin() as txn:
            for key in self.keys[start:]:
                key = bytes(key)
                value = txn.get(key)
                name = key_name(key)
                if value is None:
                    yield SourceRecord(name, None, -1, f"record {name!r} vanished from the LMDB while reading", 0)
                    continue
                try:
                    image, label = self.decode(key, value)
                except UnsupportedValueError as exc:
                    yield SourceRecord(name, None, -1, str(exc), len(value))
                    continue
                yield SourceRecord(name, image, label, "", len(value))
