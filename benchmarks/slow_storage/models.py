"""Device models: the time a read request takes on a spinning disk or a network filesystem.

A model is a clock that requests reserve time on. :meth:`DeviceModel.read` and
:meth:`DeviceModel.metadata` return the ``time.monotonic()`` instant at which the request
completes; the FUSE passthrough sleeps until then before answering, so queueing between
concurrent requests (one actuator, one network link) is modelled exactly, whatever order
the serving threads wake up in.

``hdd`` (:class:`HddModel`): one actuator, requests served one at a time. Requests waiting
while it is busy are served in elevator order (C-LOOK: the nearest at or after the head
position, wrapping to the lowest address), as Linux's I/O schedulers and a drive's command
queue do; this also keeps the order in which the passthrough's threads happen to pick up
concurrent requests from the kernel from mattering. At most :data:`SERVING_THREADS` requests
wait (the passthrough's threads); :meth:`HddModel.scattered_reads_per_s` simulates how fast
records at random offsets are read with that many always waiting. The served tree
(:func:`layout`) is laid out on the platter as one extent per file, in sorted path order, after
an inode table of 256 bytes per path, and the layout spans the full stroke. A
request that starts where the previous one ended, or up to one revolution's worth of bytes
further on, only waits for those bytes to pass under the head; any other request pays a
seek, ``track_to_track + (full_stroke - track_to_track) * sqrt(distance / span)``, plus half
a revolution of rotational latency, then transfers at ``transfer_rate``. With the defaults
(1 ms, 12 ms, 7,200 rpm, 150 MB/s) a uniformly random request costs about 1 + 11 * 8/15 +
4.17 = 11.0 ms. The first lookup/getattr/readdir of a path during a mount reads its inode:
a request of 256 bytes at the inode table (the OS keeps inodes cached afterwards, so later
lookups and opens are free).

``nfs`` (:class:`NfsModel`): requests proceed in parallel; each costs one round trip
(``rtt``, 0.5 ms by default) plus its bytes' time on a shared link of ``bandwidth`` bytes/s
(1 GB/s by default). The first lookup of a path costs one round trip, and so does every
open (close-to-open consistency makes NFS clients revalidate attributes on open). Listing a
directory costs one round trip per :data:`READDIRPLUS_ENTRIES` entries and brings their
attributes (NFSv3 READDIRPLUS), so looking up a listed entry is free afterwards.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import threading
import time
from collections.abc import Sequence

READDIRPLUS_ENTRIES = 128
"""Directory entries (with attributes) per READDIRPLUS reply in the nfs model: ~32 KB replies."""
INODE_BYTES = 256
"""Bytes of inode table per path in the hdd layout."""
ALIGNMENT = 4096
"""Each file's extent starts on a 4 KB boundary in the hdd layout."""
TRANSFER_RATE = 150e6
"""The hdd model's media rate, bytes/s."""
TRACK_TO_TRACK = 1e-3
"""The hdd model's shortest seek, s."""
FULL_STROKE = 12e-3
"""The hdd model's longest seek, s."""
RPM = 7200
"""The hdd model's spindle speed."""
SERVING_THREADS = 64
"""Requests the passthrough (``passthrough.py``) serves at once (libfuse's ``max_threads``), so the
most a device model ever has queued: as many as a SATA disk's scheduler queue holds (``nr_requests``,
2 x its 32 NCQ tags). Further requests wait in the kernel, unseen by the elevator."""


def layout(source: str) -> list[tuple[str, int]]:
    """Every path under ``source`` as ``("/relative/path", size)``, directories first, in sorted walk order."""
    entries = [("/", 0)]
    for directory, dirnames, filenames in os.walk(source):
        dirnames.sort()
        relative = os.path.relpath(directory, source)
        prefix = "" if relative == "." else "/" + relative.replace(os.sep, "/")
        for name in dirnames:
            entries.append((f"{prefix}/{name}", 0))
        for name in sorted(filenames):
            entries.append((f"{prefix}/{name}", os.path.getsize(os.path.join(directory, name))))
    return entries


class DeviceModel:
    """Base of the device models: a clock shared by every request, and per-mount caches."""

    name = "device"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: set[str] = set()

    def first_touch(self, path: str) -> bool:
        """True the first time ``path``'s metadata is needed during this mount (then it is cached)."""
        with self._lock:
            if path in self._known:
                return False
            self._known.add(path)
            return True

    def read(self, path: str, offset: int, size: int) -> float:
        """Reserve a read of ``size`` bytes at ``offset`` of ``path``; return its completion instant."""
        raise NotImplementedError

    def metadata(self, path: str) -> float:
        """Reserve a lookup/getattr/readdir of ``path``; return its completion instant."""
        raise NotImplementedError

    def open(self, path: str) -> float:
        """Reserve the work of opening ``path``; return its completion instant."""
        return time.monotonic()

    def listing(self, path: str, entries: Sequence[str]) -> float:
        """Reserve the listing of directory ``path`` holding ``entries`` (their paths).

        Returns its completion instant.
        """
        return self.metadata(path)

    def describe(self) -> str:
        """One line naming the model and its parameters."""
        raise NotImplementedError

    def nominal(self) -> dict[str, float]:
        """The model's nominal random 4 KB IOPS (one request in flight) and sequential MB/s."""
        raise NotImplementedError


class HddModel(DeviceModel):
    """One spinning disk: see the module docstring.

    Args:
        paths: Every path served (relative, ``/``-rooted), with its size in bytes, in the
            order they lie on the platter.
        transfer_rate: Sustained media rate in bytes/s. Defaults to 150e6.
        track_to_track: Shortest seek in seconds. Defaults to 1e-3.
        full_stroke: Longest seek in seconds. Defaults to 12e-3.
        rpm: Spindle speed. Defaults to 7200.
    """

    name = "hdd"

    def __init__(self, paths: Sequence[tuple[str, int]], *, transfer_rate: float = TRANSFER_RATE,
                 track_to_track: float = TRACK_TO_TRACK, full_stroke: float = FULL_STROKE, rpm: float = RPM) -> None:
        super().__init__()
        self.transfer_rate = transfer_rate
        self.track_to_track = track_to_track
        self.full_stroke = full_stroke
        self.revolution = 60.0 / rpm
        self.revolution_bytes = int(transfer_rate * self.revolution)
        self.inode_of: dict[str, int] = {}
        self.base_of: dict[str, int] = {}
        self.size_of: dict[str, int] = dict(paths)
        address = _align(INODE_BYTES * len(paths))
        for number, (path, size) in enumerate(paths):
            self.inode_of[path] = INODE_BYTES * number
            self.base_of[path] = address
            address = _align(address + size)
        self.span = max(address, 1)
        self._head = 0
        self._free_at = 0.0
        self._queue: list[tuple[int, float]] = []
        self._turn = threading.Condition(self._lock)
        self.seeks = 0

    def cost(self, head: int, address: int, size: int) -> float:
        """Seconds the actuator takes to serve ``size`` bytes at ``address`` with the head at ``head``."""
        gap = address - head
        if 0 <= gap < self.revolution_bytes:
            return (gap + size) / self.transfer_rate
        return (self.track_to_track + (self.full_stroke - self.track_to_track) * math.sqrt(abs(gap) / self.span)
                + self.revolution / 2 + size / self.transfer_rate)

    def service_time(self, address: int, size: int) -> float:
        """Seconds the actuator is busy serving ``size`` bytes at ``address`` from its current position."""
        if not 0 <= address - self._head < self.revolution_bytes:
            self.seeks += 1
        return self.cost(self._head, address, size)

    def scattered_reads_per_s(self, path: str, size: int, *, queued: int, reads: int = 20_000,
                              seed: int = 0) -> float:
        """Reads/s of ``size`` bytes at uniformly random offsets of ``path`` with ``queued`` requests always waiting.

        Simulated with the model's arithmetic (no clock, no threads, the model's own state
        untouched): C-LOOK serves the waiting request nearest at or after the head, and each
        one served is replaced by a new random one. A deeper queue means shorter seeks, so
        this is the most a reader of randomly sampled records gets from a device that holds
        at most ``queued`` requests.
        """
        base = self.base_of[path]
        limit = base + max(1, self.size_of[path] - size)
        draw = random.Random(seed).randrange
        waiting = sorted(draw(base, limit) for _ in range(queued))
        head, busy = base, 0.0
        for _ in range(reads):
            address = waiting.pop(bisect.bisect_left(waiting, head) % len(waiting))
            busy += self.cost(head, address, size)
            head = address + size
            bisect.insort(waiting, draw(base, limit))
        return reads / busy

    def _serve(self, address: int, size: int) -> float:
        ticket = (address, time.monotonic())
        with self._turn:
            self._queue.append(ticket)
            while True:
                idle_in = self._free_at - time.monotonic()
                if idle_in <= 0 and self._next() is ticket:
                    break
                self._turn.wait(timeout=idle_in if idle_in > 0 else None)
            self._queue.remove(ticket)
            # A queued request starts the instant the actuator frees (or on arrival if it was idle).
            start = max(ticket[1], self._free_at)
            self._free_at = start + self.service_time(address, size)
            self._head = address + size
            self._turn.notify_all()
            return self._free_at

    def _next(self) -> tuple[int, float]:
        """The queued request C-LOOK serves next: the lowest address at or after the head, else the lowest."""
        return min(self._queue, key=lambda ticket: (ticket[0] < self._head, ticket[0]))

    def read(self, path: str, offset: int, size: int) -> float:
        return self._serve(self.base_of[path] + offset, size)

    def metadata(self, path: str) -> float:
        if path not in self.inode_of or not self.first_touch(path):
            return time.monotonic()
        return self._serve(self.inode_of[path], INODE_BYTES)

    def describe(self) -> str:
        return (f"hdd: one actuator, C-LOOK elevator; seek {self.track_to_track * 1e3:g}-{self.full_stroke * 1e3:g} ms "
                f"(sqrt of distance over a {self.span / 1e6:.0f} MB layout) + "
                f"{self.revolution / 2 * 1e3:.2f} ms rotation; {self.transfer_rate / 1e6:g} MB/s; "
                "inode read on first lookup of each path")

    def nominal(self) -> dict[str, float]:
        # Mean of sqrt(|x - y|) for x, y uniform on [0, 1] is 8/15.
        random_seconds = (self.track_to_track + (self.full_stroke - self.track_to_track) * 8 / 15
                          + self.revolution / 2 + 4096 / self.transfer_rate)
        return {"random_4k_iops": 1 / random_seconds, "sequential_mb_s": self.transfer_rate / 1e6}


class NfsModel(DeviceModel):
    """A network filesystem: see the module docstring.

    Args:
        rtt: Round-trip time of every request in seconds. Defaults to 0.5e-3.
        bandwidth: Link bandwidth in bytes/s, shared by all requests. Defaults to 1e9.
    """

    name = "nfs"

    def __init__(self, *, rtt: float = 0.5e-3, bandwidth: float = 1e9) -> None:
        super().__init__()
        self.rtt = rtt
        self.bandwidth = bandwidth
        self._link_free_at = 0.0

    def read(self, path: str, offset: int, size: int) -> float:
        with self._lock:
            start = max(time.monotonic(), self._link_free_at)
            self._link_free_at = start + size / self.bandwidth
            return self._link_free_at + self.rtt

    def metadata(self, path: str) -> float:
        return time.monotonic() + (self.rtt if self.first_touch(path) else 0.0)

    def open(self, path: str) -> float:
        return time.monotonic() + self.rtt

    def listing(self, path: str, entries: Sequence[str]) -> float:
        with self._lock:
            self._known.update(entries)
        replies = max(1, math.ceil(len(entries) / READDIRPLUS_ENTRIES))
        return self.metadata(path) + replies * self.rtt

    def describe(self) -> str:
        return f"nfs: {self.rtt * 1e3:g} ms round trip per request, parallel; {self.bandwidth / 1e9:g} GB/s shared link"

    def nominal(self) -> dict[str, float]:
        return {"random_4k_iops": 1 / (self.rtt + 4096 / self.bandwidth), "sequential_mb_s": self.bandwidth / 1e6}


def _align(address: int) -> int:
    return -(-address // ALIGNMENT) * ALIGNMENT
