"""Page-cache control for cold-cache measurements: evict a file, and tell how much of it is cached."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

from .system import fadvise

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]


def evict_from_page_cache(path: str | os.PathLike) -> None:
    """Drop a file's pages from the OS page cache (``posix_fadvise(DONTNEED)``), after syncing it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        getattr(os, "fdatasync", os.fsync)(fd)  # macOS has no fdatasync
        fadvise(fd, 0, 0, "DONTNEED")
    finally:
        os.close(fd)


def resident_fraction(path: str | os.PathLike) -> float:
    """Fraction of a file's pages in the page cache (``mincore``), to show an eviction worked."""
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            if _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
        finally:
            _libc.munmap(ctypes.c_void_p(address), ctypes.c_size_t(size))
    finally:
        os.close(fd)
    return sum(v & 1 for v in bytes(vector)) / pages
