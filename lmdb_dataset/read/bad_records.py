"""What a reader does with a record it cannot use: raise (the default), or skip it for a fixed replacement.

On a three-day, 64-GPU run one unreadable record (bit rot, a bad sector, an image that no
longer decodes) should not end the job. With ``on_error="skip"`` a record that fails its
CRC32 check, cannot be read (EIO, a short read) or does not decode is replaced by another
record chosen by :func:`replacement_candidates`: a pure function of the bad record's index,
so every rank, every DataLoader worker layout and every resume picks the same replacement,
and epoch lengths and DDP step counts never change. Nothing is skipped silently: each bad
record is reported once per dataset object (a :class:`BadRecordWarning` naming the record,
its source file and the reason, from whichever process met it first) and counted in shared
memory, so :attr:`BadRecords.report` in the training process sees what every worker met.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..errors import CorruptRecordError, RecordReadError
from ..order.draws import draw_seed

OnError = Literal["raise", "skip"]
ON_ERROR = ("raise", "skip")
MAX_REPLACEMENT_TRIES = 16
"""Candidates tried for one bad record before giving up (each is itself a random record)."""

REASONS = ("", "unreadable", "damaged", "undecodable")
"""Reason codes kept per record: 0 no error, then read failure, failed check, failed decode."""

MAX_SLOTS = 1025
"""Counters of replaced samples: the main process and up to 1,024 DataLoader workers each write their own."""

T = TypeVar("T")


class BadRecordWarning(UserWarning):
    """A record was skipped (``on_error="skip"``) and replaced by another; the message names it and why."""


def check_on_error(on_error: str) -> None:
    """Raise ValueError unless ``on_error`` is ``"raise"`` or ``"skip"``."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r} is not supported; use one of {', '.join(map(repr, ON_ERROR))}")


def replacement_candidates(record: int, count: int) -> Iterator[int]:
    """The records that stand in for bad record ``record`` of ``count``, in the order they are tried.

    A pure function of ``(record, count)``: never ``record`` itself, spread over the whole
    dataset (a bad stretch of the file is not replaced by its neighbours).
    """
    if count < 2:
        return
    for attempt in range(MAX_REPLACEMENT_TRIES):
        yield (record + 1 + draw_seed(record, attempt) % (count - 1)) % count


def reason_of(error: CorruptRecordError) -> str:
    """``"unreadable"``, ``"undecodable"`` or ``"damaged"``: what went wrong with a record."""
    if isinstance(error, RecordReadError):
        return "unreadable"
    return "undecodable" if "does not decode" in str(error) else "damaged"


@dataclasses.dataclass(frozen=True)
class SkipReport:
    """The bad records a dataset met (``on_error="skip"``), over all its processes so far.

    Attributes:
        records: Bad record indices, increasing (a record of the file, as errors name it).
        reasons: ``"unreadable"``, ``"damaged"`` or ``"undecodable"``, one per record.
        replaced: Samples delivered in place of a bad record (a record met in two epochs counts twice).
    """

    records: tuple[int, ...]
    reasons: tuple[str, ...]
    replaced: int

    def __len__(self) -> int:
        return len(self.records)


class BadRecords:
    """The ``on_error`` policy of one dataset object, with its shared record of what was skipped.

    Args:
        on_error: ``"raise"`` or ``"skip"``.
        count: Records in the dataset.
    """

    def __init__(self, on_error: OnError, count: int) -> None:
        check_on_error(on_error)
        self.on_error = on_error
        self.count = count
        # Allocated only when skipping: one byte per record (1.3 MB for ImageNet), shared by workers.
        skipping = on_error == "skip"
        self._reasons = torch.zeros(count if skipping else 0, dtype=torch.uint8).share_memory_()
        self._replaced = torch.zeros(MAX_SLOTS if skipping else 0, dtype=torch.int64).share_memory_()

    def replace(self, record: int, error: CorruptRecordError, read: Callable[[int], T]) -> T:
        """What to deliver for bad ``record``: raise ``error``, or the first candidate that ``read`` can read.

        Raises:
            CorruptRecordError: ``on_error="raise"``; or every candidate was bad too.
        """
        if self.on_error == "raise":
            raise error
        self._note(record, error)
        for candidate in replacement_candidates(record, self.count):
            try:
                sample = read(candidate)
            except CorruptRecordError as other:
                self._note(candidate, other)
                continue
            info = get_worker_info()
            self._replaced[0 if info is None else 1 + info.id % (MAX_SLOTS - 1)] += 1
            return sample
        raise CorruptRecordError(f"{error}. With on_error='skip', {MAX_REPLACEMENT_TRIES} replacements for it were "
                                 "bad too: the file is badly damaged; run `lmdb-dataset verify`",
                                 path=error.path, index=record) from error

    def _note(self, record: int, error: CorruptRecordError) -> None:
        if self._reasons[record]:
            return  # reported already, by this process or another
        self._reasons[record] = REASONS.index(reason_of(error))
        warnings.warn(f"on_error='skip': {error} It is replaced, here and wherever it is drawn, by a fixed other "
                      "record; dataset.skipped lists every record skipped", BadRecordWarning, stacklevel=4)

    @property
    def report(self) -> SkipReport:
        """What was skipped so far, by every process sharing this object."""
        records = np.flatnonzero(self._reasons.numpy())
        return SkipReport(tuple(records.tolist()), tuple(REASONS[int(self._reasons[r])] for r in records),
                          int(self._replaced.sum()) if len(self._replaced) else 0)
