"""Asking the kernel to read byte ranges of the data file into the page cache, now or in the background.

``posix_fadvise(WILLNEED)`` queues reads and returns, but only while the device's request
queue has room (a block device's ``nr_requests``, FUSE's ``max_background``): asked for a
whole mixing pool (~900 MB of ImageNet) on a disk that reads 150 MB/s, it holds its caller for
about the time the pool takes to read. And requests queued together are served in address
order, not in the order asked: the next pool's requests, queued while the current pool is
still being read, delay the current pool's until both are read. :class:`Prefetcher` therefore
reads pools from one background thread per process, one after the other: it requests a
pool, reads it through (returning when it is cached), then goes on to the next, so a pool's
prefetch never stalls the DataLoader's main loop or a worker's decoding, and the pool being
consumed is never queued behind the next. :func:`advise` is the synchronous request, for a
batch the caller is about to read anyway.

The iterable dataset's DataLoader workers all read from the same pool (each its own records
of it). Asked for by 8 processes at once, the kernel's reads of a pool came out fragmented on
the modelled spinning disk: in 7 of 15 whole-epoch runs the prefetch threads spent seconds
reading 4-32 KB pieces at scattered offsets (~2 MB/s), the epoch's rate falling from ~1,310
to 749-1,137 samples/s; with one process asking at a time, 0 of 10
(``benchmarks/slow_storage/NOTES.md``, 2026-11-22). So one process per rank asks the kernel
for a pool and marks it asked (:class:`SharedAsk`, in shared memory); the rank's other
workers wait for the mark (at most :data:`ASK_TIMEOUT_S`), ask for nothing, and read through
only their own records: one request per pool per rank, whatever the number of workers and however
late the asker, and no lock between ranks, which read different pools.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .system import PageResidency, can_pread, fadvise

PREFETCH_GAP = 1 << 20
"""Record spans closer than this many bytes are requested from the kernel as one range: on a
spinning disk reading 1 MB more costs less than the seek it saves (~8 ms is ~1.2 MB at 150 MB/s),
and DataLoader workers reading records of the same chunk then request it once, sequentially."""
PREFETCH_PIECE = 128 << 10
"""Bytes per ``posix_fadvise(WILLNEED)`` call: Linux reads at most the device's readahead size
(128 KB by default) per call and silently ignores the rest of a longer range."""
READ_THROUGH_PIECE = 1 << 20
"""Bytes per ``pread`` when waiting for requested spans to be cached (:func:`read_through`)."""
READ_THROUGH_GAP = 64 << 10
"""Spans closer than this are read through as one range: neighbouring records (a page header
apart), not the records of other DataLoader workers in between (each reads its own)."""


def coalesce(spans: Sequence[Sequence[int]] | np.ndarray, *, gap: int) -> list[tuple[int, int]]:
    """Merge ``(offset, length)`` byte spans into sorted ranges, joining spans less than ``gap`` bytes apart.

    Vectorised (a pool's spans are a numpy ``(n, 2)`` array): no Python object per span.
    """
    table = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if len(table) == 0:
        return []
    table = table[np.argsort(table[:, 0], kind="stable")]
    starts, ends = table[:, 0], table[:, 0] + table[:, 1]
    reach = np.maximum.accumulate(ends)  # the end of the range each span would join
    first = np.concatenate(([True], starts[1:] - reach[:-1] >= gap))
    heads = np.flatnonzero(first)
    range_starts, range_ends = starts[heads], np.maximum.reduceat(ends, heads)
    return list(zip(range_starts.tolist(), (range_ends - range_starts).tolist()))


def advise(fd: int, spans: Sequence[Sequence[int]] | np.ndarray) -> None:
    """Ask the kernel to start reading these ``(offset, length)`` spans of ``fd`` (``WILLNEED``).

    Spans less than :data:`PREFETCH_GAP` apart are requested as one range, in
    :data:`PREFETCH_PIECE` calls. About 5 us a call when the pages are already cached.
    """
    for offset, length in coalesce(spans, gap=PREFETCH_GAP):
        for piece in range(offset, offset + length, PREFETCH_PIECE):
            fadvise(fd, piece, min(PREFETCH_PIECE, offset + length - piece), "WILLNEED")


ASK_TIMEOUT_S = 10.0
"""How long a worker waits for its rank's asker to ask for a pool before reading its own records
of the pool without the asker's request (it never asks for the pool itself: reading is correct
either way, and the pool's requests stay one per rank however many processes are starved)."""


@dataclasses.dataclass(frozen=True)
class SharedAsk:
    """One pool request shared by a rank's processes: one of them asks the kernel, the others only wait for it.

    Attributes:
        marks: A small shared int64 tensor of the rank: each slot holds the key of the pool asked
            for last in it.
        slot: This pool's slot (its index modulo ``len(marks)``: the pools in flight, a few
            consecutive ones, never share a slot).
        key: The pool's identity (its epoch, index and runs; non-negative), the same in every process.
        asker: Whether this process asks (and marks); the others only wait.
    """

    marks: Any
    slot: int
    key: int
    asker: bool

    def asked_elsewhere(self) -> bool:
        """For a process that does not ask: wait until the asker asked for the pool (True), or time out (False).

        Either way the process does not ask for the pool itself.
        """
        if self.asker:
            return False
        deadline = time.monotonic() + ASK_TIMEOUT_S
        while int(self.marks[self.slot]) != self.key:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def mark(self) -> None:
        """For the asker: record that the pool was asked for."""
        if self.asker:
            self.marks[self.slot] = self.key


def read_through(fd: int, spans: Sequence[Sequence[int]] | np.ndarray, scratch: memoryview,
                 residency: PageResidency | None = None) -> None:
    """Read these spans of ``fd`` (in storage order) and discard the bytes: returns once they are cached.

    After :func:`advise` of the same spans this waits for the reads already queued rather
    than requesting the pages again. Spans less than :data:`READ_THROUGH_GAP` apart are read
    as one range, into the writable buffer ``scratch`` a piece at a time; with ``residency``
    (a :class:`PageResidency` of ``fd``), a range already cached is not read.

    Raises:
        OSError: A read failed.
    """
    if not can_pread():
        return  # asked for, not waited on
    for offset, length in coalesce(spans, gap=READ_THROUGH_GAP):
        if residency is not None and residency.cached(offset, length):
            continue
        end = offset + length
        while offset < end:
            got = os.preadv(fd, [scratch[:min(len(scratch), end - offset)]], offset)
            if got <= 0:
                return
            offset += got


class Prefetcher:
    """Reads requested spans of one open file into the page cache from a background thread, one request after another.

    Each request is asked of the kernel (:func:`advise`; by one process of those sharing it:
    :class:`SharedAsk`) and its spans to read are then read through (:func:`read_through`)
    before the next request is asked, so requests complete in
    the order made and a caller can wait for one. The thread starts on the first request,
    works on its own duplicate of ``fd`` (so the owner may close its descriptor at any time)
    and ends at :meth:`close`. A request that fails (an I/O error) ends quietly, and the thread
    goes on to the next: reading the record itself raises the error that names it. Belongs to
    the process that created it (a reader re-creates its prefetcher after a fork).

    Args:
        fd: An open descriptor of the file.
    """

    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)
        self._jobs: queue.SimpleQueue[tuple[np.ndarray, np.ndarray, threading.Event, SharedAsk | None] | None] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def request(self, spans: Sequence[Sequence[int]] | np.ndarray, *,
                read: Sequence[Sequence[int]] | np.ndarray | None = None, wait: bool = False,
                shared: SharedAsk | None = None) -> threading.Event:
        """Queue these ``(offset, length)`` spans to be read into the page cache after the requests queued before.

        Args:
            spans: Byte spans of the file to ask the kernel for.
            read: The spans to read through before the request counts as done (the ones this
                process will read, when others read the rest). Defaults to ``spans``.
            wait: Return only once the request is done.
            shared: When other processes read the same spans: who asks the kernel for them.
                Defaults to this process asking.

        Returns:
            An event set when the request is done (or was dropped by :meth:`close`).
        """
        if self._closed:
            raise ValueError("this prefetcher is closed")
        done = threading.Event()
        wanted = np.array(spans, dtype=np.int64).reshape(-1, 2)  # a copy: the caller may reuse its arrays
        self._jobs.put((wanted, wanted if read is None else np.array(read, dtype=np.int64).reshape(-1, 2), done,
                        shared))
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="lmdb-dataset prefetch", daemon=True)
            self._thread.start()
        if wait:
            done.wait()
        return done

    def _serve(self) -> None:
        scratch = memoryview(bytearray(READ_THROUGH_PIECE))
        residency = PageResidency(self._fd)
        while (job := self._jobs.get()) is not None:
            spans, read, done, shared = job
            try:
                if not self._closed:
                    if shared is None or shared.asker:
                        advise(self._fd, spans)
                        if shared is not None:
                            shared.mark()
                    else:
                        shared.asked_elsewhere()  # read after the asker's request, or without it if late
                    read_through(self._fd, read, scratch, residency)
            except Exception:
                pass  # and reading the records themselves raises their errors
            finally:
                done.set()
        residency.close()
        os.close(self._fd)

    def abandon(self) -> None:
        """In a child process after a fork: close this process's copy of the descriptor (the thread is the parent's)."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def close(self) -> None:
        """Drop the requests not yet made and end the thread (it closes its descriptor when it ends)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            os.close(self._fd)
        else:
            self._jobs.put(None)
