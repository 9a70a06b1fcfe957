"""What every source reader yields: records in the source's order, with the reason a record is bad."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Generator
from pathlib import Path
from typing import Protocol

import numpy as np

Image = bytes | np.ndarray

_INTEGER = re.compile(r"-?[0-9]+")


@dataclasses.dataclass(frozen=True)
class SourceRecord:
    """One record read from a source.

    Attributes:
        name: The record's key or member name: kept as the record's source path and used
            in every error message about it.
        image: The image file's bytes (kept as-is), or decoded pixels as an HxW / HxWxC
            uint8 array (sources that store pixels); None when the record is bad.
        label: Integer class label, as the source stores it (-1 when the record is bad); the
            converter checks it (:func:`label_problem`).
        error: Why the record is bad (it could not be read or decoded); ``""`` when good.
        size: Bytes read from the source for this record.
    """

    name: str
    image: Image | None
    label: int
    error: str = ""
    size: int = 0


def parse_label(text: str) -> int | None:
    """The integer a label's text spells (ASCII digits, perhaps after a ``-``), or None if it spells none.

    Negative and huge integers are integers: :func:`~lmdb_dataset.storage.format.label_problem` says why
    they cannot be labels.
    Unicode digits (``"\u00b2"``, which ``str.isdigit`` accepts), signs other than a leading ``-``,
    spaces and underscores spell none, nor does a text of more digits than Python converts (4300).
    """
    if not _INTEGER.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        return None


class Source(Protocol):
    """A reader of one kind of source (a legacy LMDB, a tar archive, a list file, an HDF5 file).

    Attributes:
        kind: The ``--from`` name of its kind (e.g. ``"tensorpack"``).
        path: The source path.
        classes: Class names stored in the source, or None when it stores only labels.
    """

    # Read-only members: a reader may store them as plain attributes of narrower types (None, list[str]).
    @property
    def kind(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def classes(self) -> list[str] | None: ...

    def count(self) -> int | None:
        """Number of records, or None when it is only known after reading (streamed tars)."""

    def records(self, start: int = 0) -> Generator[SourceRecord, None, None]:
        """The records from position ``start`` on, in the source's order (a generator: the caller may close it)."""


def read_classes_file(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line: label ``i`` is line ``i`` (blank lines at the end ignored).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file names no class, a class twice, or has a blank line among the names
            (dropping it would shift every later label's name).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file {str(path)!r} does not exist")
    # utf-8-sig: an editor's byte-order mark is no part of the first name; only newlines end a line
    # (str.splitlines also splits at U+2028, form feeds and the like, which would shift the labels).
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").split("\n")]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ValueError(f"classes file {str(path)!r} names no class (expected one name per line)")
    if "" in names:
        raise ValueError(f"classes file {str(path)!r}: line {names.index('') + 1} is blank; line i names label "
                         "i, so every line up to the last name must hold one")
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"classes file {str(path)!r} names class {duplicate!r} twice")
    return names
