"""Keeping DataLoader workers' private memory small: freed heap and inherited objects.

Building an epoch's plan allocates temporary arrays proportional to the dataset (~40 MB for
1.28M records). glibc keeps freed blocks below its (dynamically raised) mmap threshold in the
process's heap, so each DataLoader worker would go on holding them as private memory for the
whole epoch; ``malloc_trim(0)`` returns them.

A forked DataLoader worker shares the parent's Python objects page by page until it writes
to one. CPython's cyclic garbage collector writes to every container it examines, so the
worker's first full collection copies every page holding the parent's lists, dicts and
functions: 1.4 MB per bare worker of ``benchmarks/slow_storage/scale.py``, 104 MB per worker
of the test suite's process (``tests/test_memory.py``); whatever large Python structures a
training script holds are copied into every worker. Freezing what a worker
inherited keeps the collector off those objects (the pattern the ``gc.freeze`` documentation
gives for fork without exec); objects the worker creates are collected as usual.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

from torch.utils.data import get_worker_info

_libc_name = ctypes.util.find_library("c")
_malloc_trim = getattr(ctypes.CDLL(_libc_name), "malloc_trim", None) if _libc_name else None


def release_free_heap() -> None:
    """Return the heap's free memory to the OS (glibc ``malloc_trim(0)``); a no-op on other C libraries."""
    if _malloc_trim is not None:
        _malloc_trim(0)


_frozen_in: int | None = None


def freeze_inherited_objects() -> None:
    """In a DataLoader worker, move every object that exists now out of the collector's reach (once per process).

    Called when a worker first reads; a no-op in any other process (freezing there would
    keep the main process's garbage cycles alive).
    """
    global _frozen_in
    if _frozen_in != os.getpid() and get_worker_info() is not None:
        gc.freeze()
        _frozen_in = os.getpid()
