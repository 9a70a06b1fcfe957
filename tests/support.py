"""Helpers shared by the test modules: record identities, a DataLoader model, strategies."""

from __future__ import annotations

import zlib

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

PROPERTY = settings(max_examples=50, deadline=None)

sizes = st.integers(0, 3000)
chunk_sizes = st.integers(1, 300)
seeds = st.integers(0, 2**32 - 1)
epochs = st.integers(0, 1000)
replicas = st.integers(1, 5)
workers = st.integers(1, 4)


def pixel_checksum(image: np.ndarray) -> int:
    """A record's identity from its decoded pixels (module level: picklable for spawn workers)."""
    image = np.ascontiguousarray(image)
    return zlib.crc32(image.tobytes() + repr(image.shape).encode())


def dataloader_batches(streams: list[list[int]], batch_size: int) -> list[tuple[int, list[int]]]:
    """``(worker, batch)`` in the order torch's DataLoader yields an IterableDataset's worker batches.

    Written independently of ``ordering.consumed_per_worker``: each worker batches its own
    stream (the last batch may be short); the loader takes one batch from each worker in
    turn, starting at worker 0, and skips workers whose stream is exhausted.
    """
    queues = [[list(s[i:i + batch_size]) for i in range(0, len(s), batch_size)] for s in streams]
    taken = [0] * len(queues)
    out = []
    while any(taken[w] < len(q) for w, q in enumerate(queues)):
        for w, queue in enumerate(queues):
            if taken[w] < len(queue):
                out.append((w, queue[taken[w]]))
                taken[w] += 1
    return out


def records_of(loader, checksums) -> tuple[list[int], list[int]]:
    indices, labels = [], []
    for images, targets in loader:
        indices.extend(checksums[int(c)] for c in images)
        labels.extend(int(t) for t in targets)
    return indices, labels
