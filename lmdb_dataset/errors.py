"""Exceptions raised by lmdb_dataset.

Every error names the dataset path and, where one is involved, the record index,
and says what to do about it. All derive from :class:`LMDBDatasetError`, so one
``except`` clause catches them; the ones that mean "not found" or "bad value" also
derive from the matching built-in (``FileNotFoundError``, ``ValueError``, and
``ImportError`` for a missing optional dependency) so generic handlers keep working.
:func:`printable` makes the file names that messages quote safe to print.
"""

from __future__ import annotations


class LMDBDatasetError(Exception):
    """Base class of every error raised by lmdb_dataset."""


class DatasetNotFoundError(LMDBDatasetError, FileNotFoundError):
    """The dataset path does not exist."""


class NotADatasetError(LMDBDatasetError, ValueError):
    """The path exists but holds no lmdb_dataset dataset (or one of an unknown format version)."""


class IncompleteDatasetError(LMDBDatasetError):
    """The dataset's conversion did not finish; readers refuse it until it is resumed."""


class DatasetChangedError(LMDBDatasetError):
    """The dataset file was replaced (re-converted) or written after this dataset object read its metadata."""


class CorruptDatasetError(LMDBDatasetError):
    """The data file as a whole is damaged (e.g. truncated): no record can be trusted."""


class CorruptRecordError(LMDBDatasetError):
    """A record's checksum does not match, its header is malformed, or its image does not decode.

    ``path`` and ``index`` name the dataset and record. Raised in a DataLoader worker, it is
    re-raised in the main process as the same class (torch rebuilds it from its message
    alone; the message names both).
    """

    def __init__(self, message: str, *, path: str = "", index: int = -1) -> None:
        super().__init__(message)
        self.path = path
        self.index = index


class RecordReadError(CorruptRecordError):
    """Reading a record's bytes failed: an I/O error (EIO) or a short read of a truncated file."""


class StaleOffsetsWarning(UserWarning):
    """The record offset table does not belong to the data file; records are read through LMDB instead.

    Correct but slower on cold storage. Rebuild the table with ``lmdb-dataset reindex PATH``
    (:func:`lmdb_dataset.reindex`).
    """


class SourceImageError(LMDBDatasetError):
    """A source file given to the converter is not a readable image."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


def printable(text: str) -> str:
    """``text`` safe to print on any terminal: undecodable bytes of a file name (surrogate escapes) as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
