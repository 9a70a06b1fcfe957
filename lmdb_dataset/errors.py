"""Exceptions raised by lmdb_dataset.

Every error names the dataset path and, where one is involved, the record index,
and says what to do about it. All derive from :class:`LMDBDatasetError`, so one
``except`` clause catches them; the ones that mean "not found" or "bad value" also
derive from the matching built-in (``FileNotFoundError``, ``IndexError``,
``ValueError``) so generic handlers keep working.
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
    """The dataset file was replaced on disk after this dataset object read its metadata."""


class CorruptRecordError(LMDBDatasetError):
    """A record's checksum does not match, its header is malformed, or its image does not decode."""

    def __init__(self, message: str, *, path: str, index: int) -> None:
        super().__init__(message)
        self.path = path
        self.index = index


class SourceImageError(LMDBDatasetError):
    """A source file given to the converter is not a readable image."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source
