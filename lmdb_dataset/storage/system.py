"""The Linux-only calls the readers use, with what they do where the platform lacks them (macOS, BSD).

* :func:`available_cpus`: ``os.sched_getaffinity`` (the CPUs this process may run on, which a
  cluster's cgroup or ``taskset`` limits) where it exists, else ``os.cpu_count()``.
* :func:`fadvise`: ``os.posix_fadvise`` where it exists; elsewhere a no-op. The readers'
  results never depend on it: it only asks the kernel to read ahead (``WILLNEED``), not to
  read ahead around a record (``RANDOM``), or to drop cached pages (``DONTNEED``), so without
  it every reader is correct and only the prefetching of slow storage is lost.
* :func:`can_pread`: whether ``os.pread``/``os.preadv`` exist (not on Windows). Without them
  the readers read every record through LMDB's memory map (``access="mmap"``) and the
  prefetcher only asks, reading nothing through.

The test suite runs every reader and ``LMDBLoader`` with these calls deleted
(``tests/test_platforms.py``). Windows itself is not tested.
"""

from __future__ import annotations

import os


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


def can_pread() -> bool:
    """Whether this platform reads at an offset without moving the file position (``os.pread``, ``os.preadv``)."""
    return hasattr(os, "pread") and hasattr(os, "preadv")
