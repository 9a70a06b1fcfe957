"""Giving freed heap memory back to the operating system.

Building an epoch's plan allocates temporary arrays proportional to the dataset (~40 MB for
1.28M records). glibc keeps freed blocks below its (dynamically raised) mmap threshold in the
process's heap, so each DataLoader worker would go on holding them as private memory for the
whole epoch; ``malloc_trim(0)`` returns them.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_libc_name = ctypes.util.find_library("c")
_malloc_trim = getattr(ctypes.CDLL(_libc_name), "malloc_trim", None) if _libc_name else None


def release_free_heap() -> None:
    """Return the heap's free memory to the OS (glibc ``malloc_trim(0)``); a no-op on other C libraries."""
    if _malloc_trim is not None:
        _malloc_trim(0)
