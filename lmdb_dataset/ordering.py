"""The epoch order maths: pure functions of integers returning numpy index arrays.

One epoch's order over records ``0..n-1``:

1. :func:`epoch_order` cuts ``0..n-1`` into contiguous chunks of ``chunk_size`` records and
   permutes the chunks with a generator seeded by ``(seed, epoch)``; optionally it also
   shuffles the records inside each chunk (the sampler does; reads still stay in one chunk).
2. :func:`rank_share` pads (by repeating from the start) or truncates that order to a
   multiple of ``num_replicas``, exactly like ``torch.utils.data.DistributedSampler``, and
   hands each rank a *contiguous* slice, so every rank reads whole chunks.
3. :func:`worker_positions` splits a rank's slice among DataLoader workers in pieces of
   ``piece_size`` positions, dealt round-robin.
4. :func:`buffer_shuffle` is the shuffle buffer a worker applies to the records it reads.
5. :func:`consumed_per_worker` replays the DataLoader's round-robin over worker batches to
   tell how many samples each worker had delivered after the training loop consumed ``k``.

Nothing here touches files, torch or global random state; the same arguments give the
same arrays on every run and machine (NumPy's PCG64 via ``default_rng``).
"""

from __future__ import annotations

import math

import numpy as np


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


def check_seed(seed: int) -> None:
    """Raise ValueError unless ``seed`` is a non-negative integer."""
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")


def epoch_order(n: int, *, chunk_size: int, seed: int, epoch: int, shuffle: bool,
                shuffle_within_chunks: bool = False) -> np.ndarray:
    """Record indices of one epoch: shuffled contiguous chunks (int64, shape ``(n,)``).

    Args:
        n: Number of records.
        chunk_size: Records per chunk (the last chunk may be shorter).
        seed: Non-negative seed; with ``epoch`` it seeds the chunk permutation.
        epoch: Epoch number (non-negative).
        shuffle: False returns ``0..n-1`` unchanged.
        shuffle_within_chunks: Also permute the records inside each chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    if not shuffle or n == 0:
        return np.arange(n, dtype=np.int64)
    num_chunks = math.ceil(n / chunk_size)
    chunks = _rng(seed, epoch, 0).permutation(num_chunks)
    lengths = np.minimum(chunk_size, n - chunks * chunk_size)
    segment = np.repeat(np.arange(num_chunks), lengths)
    segment_start = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    order = chunks[segment] * chunk_size + (np.arange(n) - segment_start[segment])
    if shuffle_within_chunks:
        keys = _rng(seed, epoch, 1).random(n)
        order = order[np.lexsort((keys, segment))]
    return order.astype(np.int64)


def rank_length(n: int, num_replicas: int, drop_last: bool) -> int:
    """Samples each rank gets per epoch, as ``DistributedSampler.num_samples``."""
    if drop_last and n % num_replicas:
        return max(0, math.ceil((n - num_replicas) / num_replicas))
    return math.ceil(n / num_replicas)


def rank_share(order: np.ndarray, *, rank: int, num_replicas: int, drop_last: bool) -> np.ndarray:
    """This rank's contiguous slice of ``order``, padded or truncated like DistributedSampler.

    Without ``drop_last`` the order is padded to a multiple of ``num_replicas`` by repeating
    it from the start; with it, the tail is dropped. Every rank gets
    :func:`rank_length` indices; across ranks each index appears exactly once when
    ``num_replicas`` divides ``len(order)``.
    """
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
    per_rank = rank_length(len(order), num_replicas, drop_last)
    total = per_rank * num_replicas
    if total > len(order):
        order = np.resize(order, total)  # np.resize repeats from the start
    return order[rank * per_rank:(rank + 1) * per_rank]


def worker_positions(length: int, *, piece_size: int, worker: int, num_workers: int) -> np.ndarray:
    """Positions of a rank's slice that a worker handles: pieces dealt round-robin."""
    if piece_size < 1:
        raise ValueError(f"piece_size={piece_size} must be >= 1")
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise ValueError(f"worker={worker} must be in [0, num_workers={num_workers})")
    positions = np.arange(length, dtype=np.int64)
    return positions[(positions // piece_size) % num_workers == worker]


def buffer_shuffle(length: int, *, buffer_size: int, seed: int, stream: tuple[int, ...]) -> np.ndarray:
    """The emission order of a shuffle buffer over a stream of ``length`` items.

    Items enter in order 0, 1, 2, ...; once ``buffer_size`` are held, each new item replaces
    a uniformly chosen held item, which is emitted; at the end the rest leave in random
    order. Returns the input positions in emission order (a permutation of
    ``range(length)``): every output is at most ``buffer_size - 1`` positions ahead of the
    input, so a reader needs to hold at most ``buffer_size`` items.

    Args:
        length: Items in the stream.
        buffer_size: Items held; 0 or 1 means no shuffling.
        seed: Non-negative seed.
        stream: Further words that make the stream's generator unique (epoch, rank, worker).
    """
    if buffer_size <= 1 or length <= 1:
        return np.arange(length, dtype=np.int64)
    rng = _rng(seed, *stream, 2)
    held = list(range(min(buffer_size, length)))
    out = []
    picks = rng.integers(0, len(held), size=max(0, length - len(held))).tolist()
    for incoming, pick in zip(range(len(held), length), picks):
        out.append(held[pick])
        held[pick] = incoming
    out.extend(np.asarray(held)[rng.permutation(len(held))].tolist())
    return np.asarray(out, dtype=np.int64)


def consumed_per_worker(worker_lengths: list[int], *, batch_size: int,
                        samples_consumed: int) -> tuple[list[int], int]:
    """Where each worker stood when the training loop had consumed ``samples_consumed`` samples.

    Replays ``torch.utils.data.DataLoader`` over an IterableDataset: worker ``w`` batches its
    own stream into ``batch_size`` pieces (its last one may be short), and the loader takes
    one batch from each worker in turn, skipping exhausted workers.

    Returns:
        ``(consumed, next_worker)``: samples each worker had delivered, and the worker whose
        batch the loader would have taken next (a fresh loader starts at worker 0, so a
        resumed epoch rotates streams by ``next_worker`` to continue in the same order).

    Raises:
        ValueError: ``samples_consumed`` does not fall on a batch boundary, or exceeds the total.
    """
    consumed = [0] * len(worker_lengths)
    remaining = samples_consumed
    next_worker = 0
    rounds = max((math.ceil(n / batch_size) for n in worker_lengths), default=0)
    for _ in range(rounds):
        for worker, length in enumerate(worker_lengths):
            if remaining == 0:
                return consumed, next_worker
            batch = min(batch_size, length - consumed[worker])
            if batch <= 0:
                continue
            if batch > remaining:
                raise ValueError(f"samples_consumed={samples_consumed} is not at a batch boundary "
                                 f"(batch_size={batch_size})")
            consumed[worker] += batch
            remaining -= batch
            next_worker = (worker + 1) % len(worker_lengths)
    if remaining:
        raise ValueError(f"samples_consumed={samples_consumed} exceeds the {sum(worker_lengths)} samples "
                         "of the epoch")
    return consumed, next_worker


def contiguous_runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Split a sequence into maximal runs of consecutive increasing indices, as ``[start, stop)``."""
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [len(indices)]))
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops)]
