"""The epoch order maths: pure functions of integers returning numpy index arrays.

One epoch's order over records ``0..n-1``:

1. :func:`epoch_order` cuts ``0..n-1`` into contiguous chunks of ``chunk_size`` records on a
   grid whose offset changes every epoch (:func:`chunk_bounds`), and permutes the chunks
   with a generator seeded by ``(seed, epoch)``.
2. :func:`rank_share` pads (by repeating from the start) or truncates that order to a
   multiple of ``num_replicas``, exactly like ``torch.utils.data.DistributedSampler``, and
   hands each rank a *contiguous* slice, so every rank reads whole chunks.
3. :func:`worker_positions` splits a rank's slice among DataLoader workers in pieces of
   ``piece_size`` positions, dealt round-robin.
4. :func:`pool_starts` groups a rank's share into mixing pools of about ``pool_size``
   records (whole chunk pieces; an epoch's first pools ramp up to that size) and
   :func:`pool_shuffle` permutes records within each pool; :func:`rank_order` composes
   1, 2 and 4 into a :class:`RankOrder`.
5. :func:`rest_of_epoch` gives a rank what is left of an epoch after passes that stopped
   part-way (a resume, perhaps with another number of ranks): every rank's unconsumed
   part, re-dealt over the ranks of the new pass with 2.'s rules, each record in its pool.
   Workers then split a rank's records as in 3., so a resumed pass is dealt like a fresh one.

Nothing here touches files, torch or global random state; the same arguments give the
same arrays on every run and machine (NumPy's PCG64 via ``default_rng``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

ORDER_VERSION = 2
"""Changes whenever the same arguments start giving another order (2: ramped first pools), so
that a resume state saved under another order is refused rather than resumed wrongly."""


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


DEFAULT_CHUNK_SIZE = 64
"""Records per chunk unless a reader is told otherwise: one positioning per 64 records (~7 MB of ImageNet)."""

DEFAULT_POOL_SIZE = 8192
"""Records per mixing pool unless a reader is told otherwise (~900 MB of ImageNet in the page cache)."""


def check_at_least(minimum: int, /, **counts: int | None) -> None:
    """Raise for the first of ``counts`` (``num_workers=...``) that is not an integer >= ``minimum``, naming it.

    None passes.

    Raises:
        TypeError: Not an integer (a str, a float, a bool).
        ValueError: Below ``minimum``.
    """
    for name, count in counts.items():
        if count is None:
            continue
        if isinstance(count, bool) or not isinstance(count, numbers.Integral):
            raise TypeError(f"{name}={count!r} must be an integer")
        if count < minimum:
            raise ValueError(f"{name}={count} must be >= {minimum}")


def check_positive(**sizes: int | None) -> None:
    """:func:`check_at_least` 1: sizes (``chunk_size=...``) are integers >= 1."""
    check_at_least(1, **sizes)


def chunk_bounds(n: int, *, chunk_size: int, seed: int, epoch: int) -> np.ndarray:
    """Where this epoch's chunks begin and end (int64, shape ``(num_chunks + 1,)``, from 0 to ``n``).

    The grid of ``chunk_size`` records is shifted by an offset in ``[0, chunk_size)`` drawn
    from ``(seed, epoch)``: chunks ``[0, offset)``, ``[offset, offset + chunk_size)``, ...,
    so the first and last chunks may be shorter. Records that shared a chunk in one epoch
    share it in the next only if no shifted boundary falls between them (for two records
    of a chunk, about 2/3 of the time), so chunk composition changes from epoch to epoch
    while every chunk is still one contiguous run.
    """
    check_positive(chunk_size=chunk_size)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    offset = int(_rng(seed, epoch, 3).integers(chunk_size)) if n > chunk_size else 0
    inner = np.arange(offset or chunk_size, n, chunk_size, dtype=np.int64)
    return np.concatenate(([0], inner, [n])).astype(np.int64)


def epoch_order(n: int, *, chunk_size: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Record indices of one epoch: this epoch's chunks in a shuffled order (int64, shape ``(n,)``).

    Args:
        n: Number of records.
        chunk_size: Records per chunk (see :func:`chunk_bounds`: the grid shifts every epoch).
        seed: Non-negative seed; with ``epoch`` it seeds the grid offset and the chunk permutation.
        epoch: Epoch number (non-negative).
        shuffle: False returns ``0..n-1`` unchanged.
    """
    check_positive(chunk_size=chunk_size)
    if not shuffle or n == 0:
        return np.arange(n, dtype=np.int64)
    bounds = chunk_bounds(n, chunk_size=chunk_size, seed=seed, epoch=epoch)
    chunks = _rng(seed, epoch, 0).permutation(len(bounds) - 1)
    lengths = np.diff(bounds)[chunks]
    segment = np.repeat(np.arange(len(chunks)), lengths)
    segment_start = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return (bounds[chunks][segment] + (np.arange(n) - segment_start[segment])).astype(np.int64)


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


RAMP_STEPS = 3
"""An epoch's first pools hold ``pool_size / 2**3``, ``/ 2**2`` and ``/ 2`` records, then ``pool_size`` each."""


def pool_targets(length: int, pool_size: int) -> np.ndarray:
    """Where a rank's pools should begin, before rounding to chunk starts (int64, increasing, in ``(0, length)``).

    The first :data:`RAMP_STEPS` pools of an epoch ramp up (``pool_size // 8``, ``// 4``,
    ``// 2`` records; sizes that round to 0 are left out), then every pool holds
    ``pool_size``. A batch is a random draw from its whole pool, so the first batch of a
    cold read waits for the first pool to be read: the ramp makes that ~113 MB of ImageNet
    (0.8 s at 150 MB/s) instead of ~900 MB, and each pool is read while the previous,
    half its size, is consumed. A share of at most ``pool_size`` records is one pool (a
    full shuffle of it), without a ramp.
    """
    check_positive(pool_size=pool_size)
    if length <= pool_size:
        return np.zeros(0, dtype=np.int64)
    ramp = np.cumsum([size for size in (pool_size >> step for step in range(RAMP_STEPS, 0, -1)) if size],
                     dtype=np.int64)
    steady = np.arange(int(ramp[-1]) + pool_size if len(ramp) else pool_size, length, pool_size, dtype=np.int64)
    return np.concatenate((ramp[ramp < length], steady)).astype(np.int64)


def pool_starts(reads: np.ndarray, *, chunk_starts: np.ndarray, pool_size: int) -> np.ndarray:
    """Where a rank's mixing pools begin: int64 positions, shape ``(num_pools + 1,)``, ending with ``len(reads)``.

    A pool begins at the first chunk start at or after each of :func:`pool_targets`, so a
    pool holds whole chunk pieces (its target size give or take less than a chunk; the
    first pools of an epoch ramp up to ``pool_size``) and each chunk piece is read in one go.

    Args:
        reads: A rank's records in storage-read order (its share of :func:`epoch_order`).
        chunk_starts: The first record of every chunk of the epoch (``chunk_bounds(...)[:-1]``).
        pool_size: Records per pool once the ramp is over (>= 1).
    """
    targets = pool_targets(len(reads), pool_size)
    starts = np.union1d([0], np.flatnonzero(np.isin(reads, chunk_starts))) if len(reads) else np.zeros(0, np.int64)
    wanted = np.searchsorted(starts, targets)
    cuts = np.unique(starts[wanted[wanted < len(starts)]])
    return np.concatenate(([0], cuts[cuts > 0], [len(reads)])).astype(np.int64)


def pool_shuffle(starts: np.ndarray, *, seed: int, stream: tuple[int, ...]) -> np.ndarray:
    """Positions ``0..starts[-1]-1`` permuted uniformly at random within each pool (int64).

    Args:
        starts: Pool boundaries from :func:`pool_starts`: pool ``q`` is ``[starts[q], starts[q+1])``.
        seed: Non-negative seed.
        stream: Further words that make the generator unique (epoch, rank).
    """
    length = int(starts[-1])
    keys = _rng(seed, *stream, 2).random(length)
    # Each pool's positions in the order of their keys: what a lexsort by (pool, key) gives, a pool at
    # a time (4x faster at 1.28M records: no sort across pools).
    order = np.empty(length, dtype=np.int64)
    for first, stop in zip(starts[:-1].tolist(), starts[1:].tolist()):
        order[first:stop] = np.argsort(keys[first:stop], kind="stable") + first
    return order


@dataclasses.dataclass(frozen=True)
class RankOrder:
    """One rank's records for one epoch (see :func:`rank_order`).

    Attributes:
        order: The records in delivery order, int64 shape ``(k,)``.
        reads: The same records pool by pool in storage order (chunk pieces one after
            another), int64 shape ``(k,)``; ``order[a:b]`` is a permutation of ``reads[a:b]``
            for each pool ``[a, b)``.
        starts: Pool boundaries, int64 shape ``(num_pools + 1,)``, from 0 to ``k``.
    """

    order: np.ndarray
    reads: np.ndarray
    starts: np.ndarray

    def pool_of(self, positions: np.ndarray) -> np.ndarray:
        """The pool of each position (int64, same shape)."""
        return np.searchsorted(self.starts, positions, side="right").astype(np.int64) - 1

    def pool_runs(self, pool: int) -> np.ndarray:
        """Pool ``pool``'s contiguous record runs ``[start, stop)`` in read order (int64 ``(runs, 2)``).

        One positioning each.
        """
        return contiguous_runs(self.reads[self.starts[pool]:self.starts[pool + 1]])

    def runs(self) -> list[np.ndarray]:
        """Every pool's :meth:`pool_runs`, one array per pool."""
        return [self.pool_runs(pool) for pool in range(len(self.starts) - 1)]


def rank_order(n: int, *, chunk_size: int, pool_size: int, seed: int, epoch: int, rank: int, num_replicas: int,
               drop_last: bool, shuffle: bool) -> RankOrder:
    """One rank's records for one epoch, in the order to deliver them and in the order to read them.

    :func:`epoch_order` (this epoch's shifted chunks, shuffled), then :func:`rank_share`
    (``DistributedSampler``'s lengths and padding), then :func:`pool_shuffle` over the
    rank's share: about ``pool_size`` records of whole chunk pieces (about
    ``pool_size / chunk_size`` randomly drawn chunks; the epoch's first pools ramp up, see
    :func:`pool_targets`) form a mixing pool whose records are delivered in a uniformly
    random order. A reader asks the kernel to read each pool's
    chunks sequentially into the page cache (one positioning per chunk) and then reads its
    records in delivery order. Without ``shuffle`` the delivery order is the storage order
    (pools then only pace the prefetching).

    Returns:
        The :class:`RankOrder`; its arrays have ``rank_length(n, num_replicas, drop_last)`` items.
    """
    order = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=epoch, shuffle=shuffle)
    chunk_starts = (chunk_bounds(n, chunk_size=chunk_size, seed=seed, epoch=epoch)[:-1] if shuffle
                    else np.arange(0, n, chunk_size))
    return _rank_order_from(order, chunk_starts, pool_size=pool_size, seed=seed, epoch=epoch, rank=rank,
                       num_replicas=num_replicas, drop_last=drop_last, shuffle=shuffle)


def _rank_order_from(order: np.ndarray, chunk_starts: np.ndarray, *, pool_size: int, seed: int, epoch: int,
                     rank: int, num_replicas: int, drop_last: bool, shuffle: bool) -> RankOrder:
    """:func:`rank_order` of one rank from the epoch's order and chunk starts (computed once for all ranks)."""
    reads = rank_share(order, rank=rank, num_replicas=num_replicas, drop_last=drop_last)
    starts = pool_starts(reads, chunk_starts=chunk_starts, pool_size=pool_size)
    if not shuffle:
        return RankOrder(reads, reads, starts)
    return RankOrder(reads[pool_shuffle(starts, seed=seed, stream=(epoch, rank))], reads, starts)


Hop = tuple[int, int]
"""One step of a resumed epoch: ``(samples_consumed, num_replicas)``, the samples each of the
``num_replicas`` ranks of a pass had consumed (ranks step in lockstep) when it stopped."""


def _all_rank_orders(n: int, *, num_replicas: int, **order: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's :func:`rank_order` delivery order, concatenated rank after rank, and a pool id per position.

    Returns:
        ``(records, pools)``, int64 arrays of ``num_replicas * rank_length(n, ...)`` items:
        the epoch as ``DistributedSampler`` pads it, rank by rank; ``pools`` numbers each
        rank's pools apart (rank ``r``'s pool ``q`` is ``r * n + q``).
    """
    chunk_size, seed, epoch, shuffle = order["chunk_size"], order["seed"], order["epoch"], order["shuffle"]
    epoch_records = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=epoch, shuffle=shuffle)
    chunk_starts = (chunk_bounds(n, chunk_size=chunk_size, seed=seed, epoch=epoch)[:-1] if shuffle
                    else np.arange(0, n, chunk_size))
    plans = [_rank_order_from(epoch_records, chunk_starts, pool_size=order["pool_size"], seed=seed, epoch=epoch,
                              rank=rank, num_replicas=num_replicas, drop_last=order["drop_last"], shuffle=shuffle)
             for rank in range(num_replicas)]
    pools = [plan.pool_of(np.arange(len(plan.order))) + rank * max(n, 1) for rank, plan in enumerate(plans)]
    return np.concatenate([plan.order for plan in plans]), np.concatenate(pools)


def rest_length(n: int, *, hops: Sequence[Hop], num_replicas: int, drop_last: bool) -> int:
    """Samples each of ``num_replicas`` ranks gets of an epoch after ``hops`` (see :func:`rest_of_epoch`).

    Pure arithmetic (no arrays): ``rank_length(n, ...)`` without hops.

    Raises:
        ValueError: A hop consumed more than its pass held, or a world size is below 1.
    """
    worlds = [world for _, world in hops] + [num_replicas]
    check_positive(num_replicas=worlds[0])
    length = rank_length(n, worlds[0], drop_last)
    for (consumed, world), following in zip(hops, worlds[1:]):
        if not 0 <= consumed <= length:
            raise ValueError(f"samples_consumed={consumed} is not within the {length} samples per rank of that "
                             f"pass (num_replicas={world})")
        check_positive(num_replicas=following)
        length = rank_length(world * (length - consumed), following, drop_last)
    return length


def rest_of_epoch(n: int, *, chunk_size: int, pool_size: int, seed: int, epoch: int, rank: int, num_replicas: int,
                  drop_last: bool, shuffle: bool, hops: Sequence[Hop] = ()) -> RankOrder:
    """One rank's records for what is left of an epoch: the rest, re-dealt over the ranks of this pass.

    Without ``hops`` this is :func:`rank_order`. Each hop ``(k, w)`` says that a pass of
    ``w`` ranks stopped after each rank had consumed ``k`` samples. The rest of that pass is
    every rank's unconsumed part, rank after rank (rank 0's rest, then rank 1's, ...): it is
    dealt over the next pass's ranks like ``DistributedSampler`` deals an epoch (padded by
    repeating from its start, or with ``drop_last`` truncated, to a multiple of the world
    size; a contiguous slice per rank), and each rank keeps the mixing pools its records
    came from, in the same order. With the world unchanged, rank ``r`` gets exactly the
    tail of its own uninterrupted order; with another world (an elastic restart) the ranks
    share exactly the samples not yet consumed.

    Args:
        n: Number of records.
        chunk_size, pool_size, seed, epoch, drop_last, shuffle: As for :func:`rank_order`.
        rank: This rank, in ``[0, num_replicas)``.
        num_replicas: Ranks of this pass.
        hops: The passes this epoch already ran, oldest first (:data:`Hop`).

    Returns:
        A :class:`RankOrder` of :func:`rest_length` items. Its pools are the pools the
        records came from (those of a rest wrapped round by padding are pools of their own);
        ``reads`` lists each pool's records in storage order.
    """
    options: dict[str, Any] = {"chunk_size": chunk_size, "pool_size": pool_size, "seed": seed, "epoch": epoch,
                               "drop_last": drop_last, "shuffle": shuffle}
    if not hops:
        return rank_order(n, rank=rank, num_replicas=num_replicas, **options)
    length = rest_length(n, hops=hops, num_replicas=num_replicas, drop_last=drop_last)  # checks the hops
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
    records, pools = _all_rank_orders(n, num_replicas=hops[0][1], **options)
    for (consumed, world), following in zip(hops, [*(world for _, world in hops[1:]), num_replicas]):
        # Every rank's unconsumed part, rank after rank, dealt like DistributedSampler deals an epoch.
        records, pools = (column.reshape(world, -1)[:, consumed:].ravel() for column in (records, pools))
        total = rank_length(len(records), following, drop_last) * following
        laps = np.arange(total) // max(len(records), 1)  # padding repeats the rest: its repeats are pools of their own
        records, pools = np.resize(records, total), np.resize(pools, total) + laps * (pools.max(initial=0) + 1)
    records, pools = records[rank * length:(rank + 1) * length], pools[rank * length:(rank + 1) * length]
    first = np.diff(pools, prepend=-1) != 0  # where a pool begins
    reads = records[np.lexsort((records, np.cumsum(first)))]
    return RankOrder(records, reads, np.append(np.flatnonzero(first), length).astype(np.int64))


def worker_positions(length: int, *, piece_size: int, worker: int, num_workers: int) -> np.ndarray:
    """Positions of a rank's slice that a worker handles: pieces dealt round-robin."""
    if piece_size < 1:
        raise ValueError(f"piece_size={piece_size} must be >= 1")
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise ValueError(f"worker={worker} must be in [0, num_workers={num_workers})")
    positions = np.arange(length, dtype=np.int64)
    return positions[(positions // piece_size) % num_workers == worker]


def contiguous_runs(indices: np.ndarray) -> np.ndarray:
    """Split a sequence into maximal runs of consecutive increasing indices.

    Returns:
        int64 array of shape ``(runs, 2)``: row ``[start, stop)`` per run, in sequence order
        (an array, not Python tuples: a DataLoader worker holds its rank's runs all epoch).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    firsts = np.concatenate(([0], breaks))
    lasts = np.concatenate((breaks, [len(indices)])) - 1
    return np.stack((indices[firsts], indices[lasts] + 1), axis=1)
