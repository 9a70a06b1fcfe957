"""The Linux-only calls the readers and the writer use, with what they do where the platform lacks them (macOS, BSD).

* :func:`available_cpus`: ``os.sched_getaffinity`` (the CPUs this process may run on, which a
  cluster's cgroup or ``taskset`` limits) where it exists, else ``os.cpu_count()``.
* :func:`fadvise`: ``os.posix_fadvise`` where it exists; elsewhere a no-op. The readers'
  results never depend on it: it only asks the kernel to read ahead (``WILLNEED``), not to
  read ahead around a record (``RANDOM``), or to drop cached pages (``DONTNEED``), so without
  it every reader is correct and only the prefetching of slow storage is lost.
* :func:`can_pread`: whether ``os.pread``/``os.preadv`` exist (not on Windows). Without them
  the readers read every record through LMDB's memory map (``access="mmap"``) and the
  prefetcher only asks, reading nothing through.
* :func:`read_at`: ``os.pread`` where it exists; elsewhere a seek and reads on the descriptor
  (for descriptors one caller owns: it moves their position).
* :func:`allocate`: ``os.posix_fallocate`` where it exists (not on macOS); elsewhere the file is
  extended by writing zeros, which allocates its blocks as well: a full disk fails the call.
* :func:`try_lock`, :func:`release_lock`, :func:`lock_held`: ``fcntl.flock`` advisory locks, which
  the kernel drops when the process holding them dies (a killed conversion stays resumable at
  once). A descriptor locked here is closed in every child forked afterwards
  (``os.register_at_fork``): a worker process forked by a writer, which would otherwise share
  its lock, never keeps the dataset locked after the writer died. Where ``fcntl`` is missing
  (Windows) nothing is locked: every lock is taken at once and none is ever seen held, so two
  writers of one dataset are not kept apart there.
* :class:`PageResidency`: which pages of a file are in the page cache (``mincore`` over a
  read-only map of the file, through the C library); where either call is missing, no page
  counts as cached, and the prefetcher reads everything through as before.

The test suite converts a dataset and runs every reader and ``LMDBLoader`` with these calls
deleted (``tests/test_platforms.py``). Windows itself is not tested.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
import time

import numpy as np

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_RETRY_S = 0.2
"""How long :func:`try_lock` retries a lock held elsewhere: a reader's :func:`lock_held` holds it for a moment."""
_held_locks: set[int] = set()
"""The descriptors this process locked with :func:`try_lock` and has not released."""


def available_cpus() -> int:
    """CPUs this process may run on (at least 1)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return len(affinity(0))
    return os.cpu_count() or 1


def fadvise(fd: int, offset: int, length: int, advice: str) -> None:
    """``os.posix_fadvise(fd, offset, length, os.POSIX_FADV_<advice>)``, or nothing where the OS has no such call.

    Args:
        advice: ``"WILLNEED"``, ``"RANDOM"`` or ``"DONTNEED"``.
    """
    call = getattr(os, "posix_fadvise", None)
    if call is not None:
        call(fd, offset, length, getattr(os, f"POSIX_FADV_{advice}"))


def allocate(fd: int, size: int) -> None:
    """Give the open file ``fd`` at least ``size`` bytes of allocated disk blocks, from its current end.

    ``os.posix_fallocate`` where it exists; elsewhere zeros are written from the file's end to
    ``size``. Either way a disk without room raises ``OSError`` (``ENOSPC``) here, instead of a
    later write through a memory map killing the process with ``SIGBUS``.
    """
    call = getattr(os, "posix_fallocate", None)
    if call is not None:
        call(fd, 0, size)
        return
    end = os.lseek(fd, 0, os.SEEK_END)
    while end < size:
        end += os.write(fd, bytes(size - end))


def read_at(fd: int, length: int, offset: int) -> bytes:
    """``os.pread(fd, length, offset)``; where it is missing, a seek and reads (moving ``fd``'s position).

    Fewer than ``length`` bytes only at the end of the file, as ``pread``.
    """
    call = getattr(os, "pread", None)
    if call is not None:
        return call(fd, length, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    parts = []
    while length > 0 and (part := os.read(fd, length)):
        parts.append(part)
        length -= len(part)
    return b"".join(parts)


def can_pread() -> bool:
    """Whether this platform reads at an offset without moving the file position (``os.pread``, ``os.preadv``)."""
    return hasattr(os, "pread") and hasattr(os, "preadv")


def try_lock(fd: int) -> bool:
    """Take an exclusive advisory lock on the open file ``fd`` (``flock``), without waiting for its holder.

    The lock belongs to ``fd``'s open file description: another ``open`` of the same file, in this
    process or another, cannot take it until :func:`release_lock` (or the holder's death). A lock held
    only for a moment (a reader's :func:`lock_held`) is retried for :data:`LOCK_RETRY_S`. Where
    ``fcntl`` is missing (Windows) nothing is locked and the answer is True.

    Returns:
        True once locked; False if another open file description holds a lock on the file.
    """
    if fcntl is None:
        return True
    deadline = time.monotonic() + LOCK_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
            continue
        _held_locks.add(fd)
        return True


def release_lock(fd: int) -> None:
    """Close ``fd``, which drops the lock :func:`try_lock` took on it (nothing if a fork already closed it here)."""
    if fd in _held_locks or fcntl is None:
        _held_locks.discard(fd)
        os.close(fd)


def _close_inherited_locks() -> None:
    """In a forked child: close the locked descriptors inherited from the parent.

    ``flock`` locks are shared by every descriptor of one open file description, fork's copies
    included, and held until the last is closed: a child that outlived its parent would keep the
    file locked. Closing (never ``LOCK_UN``, which would unlock the parent too) lets it go.
    """
    for fd in _held_locks:
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def lock_held(path: str | os.PathLike) -> bool:
    """Whether another process (or open file) holds the lock :func:`try_lock` takes on the file ``path``.

    Probes with a shared, non-blocking ``flock`` on a read-only descriptor, released at once, so
    read-only files and filesystems work. False where it cannot tell: no such file, one that
    cannot be opened, no ``fcntl`` (Windows).
    """
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # drops the probe's own lock, if it took one
    return False


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library with ``mmap``/``munmap``/``mincore`` typed, once per process; None without them."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None
    if libc is None or not all(hasattr(libc, call) for call in ("mmap", "munmap", "mincore")):
        return None
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


class PageResidency:
    """Which byte ranges of an open file are entirely in the page cache, without reading them.

    Maps the file read-only once (address space only: no page is read by the map) and asks
    ``mincore`` about the pages of each range. A prefetcher that must make sure a range is
    cached reads through only the ranges that are not: on a warm cache that saves copying every
    record's bytes once more (0.07 ms of CPU an ImageNet image in the process that prefetches).
    Where ``mmap``/``mincore`` are missing or fail, every range counts as not cached.

    Args:
        fd: An open descriptor of the file, kept open by the caller until :meth:`close`; its size is
            taken at the first question (the readers' files do not grow).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._size = -1  # not mapped yet: the first question maps the file
        self._address: int | None = None
        self._libc: ctypes.CDLL | None = None

    def _map(self) -> None:
        self._libc = _libc()
        self._size = os.fstat(self._fd).st_size
        if self._libc is not None and self._size > 0:
            address = self._libc.mmap(None, self._size, mmap.PROT_READ, mmap.MAP_SHARED, self._fd, 0)
            if address not in (None, ctypes.c_void_p(-1).value):
                self._address = address

    def cached(self, offset: int, length: int) -> bool:
        """Whether every page of ``[offset, offset + length)`` is in the page cache."""
        if self._size < 0:
            self._map()
        if self._address is None or self._libc is None or length <= 0 or offset + length > self._size:
            return False
        first = offset - offset % mmap.PAGESIZE
        pages = (offset + length - first + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vector = np.empty(pages, dtype=np.uint8)
        if self._libc.mincore(self._address + first, offset + length - first, vector.ctypes.data) != 0:
            return False
        return bool((vector & 1).all())

    def close(self) -> None:
        """Unmap the file; later questions all answer False (idempotent)."""
        if self._address is not None and self._libc is not None:
            self._libc.munmap(self._address, self._size)
        self._address, self._size = None, 0
