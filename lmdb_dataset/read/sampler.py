"""ChunkShuffleSampler: a near-sequential shuffled order for map-style datasets."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

from ..order.maths import DEFAULT_CHUNK_SIZE, DEFAULT_POOL_SIZE, RankOrder, rank_length
from ..order.quality import check_class_locality, labels_in_file_order
from ..order.resume import EpochResumable
from ..order.world import World


# torch declares DistributedSampler's epoch, num_replicas, rank, num_samples and total_size as plain attributes
# set in its __init__ (never called here); this sampler derives them, as read-only properties.
class ChunkShuffleSampler(EpochResumable, DistributedSampler):  # type: ignore[override]
    """Shuffled batches read as a few sequential streams: random chunks, mixed in page-cache pools.

    Each epoch the records (in storage order) are cut into chunks of ``chunk_size``
    neighbours on a grid that shifts every epoch, the chunks are shuffled, and each run of
    ``pool_size`` records of a rank's share (about ``pool_size / chunk_size`` random chunks)
    forms a mixing pool whose records are yielded in a uniformly random order (an epoch's
    first three pools hold 1/8, 1/4 and 1/2 of that, so a cold start's first batch waits
    for a small pool). When the
    dataset can prefetch (:class:`LMDBImageDataset`), the sampler asks the kernel to read
    the next pool's chunks into the page cache as the current pool starts (and, as the last
    pool starts, the first pool of epoch ``epoch + 1``): one sequential read per chunk,
    after which the DataLoader workers' random reads inside the pool hit memory. Only the
    first pool of a run (or of a resumed epoch) is read cold. It replaces ``RandomSampler`` /
    ``DistributedSampler`` in a DataLoader over :class:`LMDBImageDataset` (or any map-style
    dataset with ``file_order``, or whose neighbouring indices are stored together).

    On a file written in the default shuffled order, batches hold as many classes as random
    sampling's and pairs of samples meet again in a batch the next epoch about
    ``1 + chunk_size * N / (2 * pool_size**2)`` times as often as under random sampling
    (1.6-1.8x measured for ImageNet at the defaults; see benchmarks/RESULTS.md "Order quality"). On a file
    stored class by class a chunk holds one class, so the sampler warns
    (:class:`ClassLocalityWarning`).

    Under DDP each rank takes a contiguous slice of the epoch order; the slice lengths and
    the ``drop_last`` padding/truncation are those of ``DistributedSampler``, so every rank
    runs the same number of steps and, when the world size divides the dataset length, each
    index appears exactly once per epoch across ranks. Call :meth:`set_epoch` every epoch.

    It is a ``torch.utils.data.DistributedSampler`` (same ``num_replicas``, ``rank``,
    ``num_samples``, ``total_size``, ``set_epoch`` and ``drop_last``), so frameworks that
    special-case one (PyTorch Lightning) keep it instead of re-sharding. Unless given,
    ``num_replicas`` and ``rank`` are read from torch.distributed when iteration starts, so
    the sampler may be built before the process group exists.

    Resuming mid-epoch: ``state_dict(samples_consumed=k)`` with the ``k`` samples the loop
    consumed in the current pass (stock DataLoader), or plain ``state_dict()``, the indices
    the iterator yielded (what torchdata's ``StatefulDataLoader`` expects). After
    ``load_state_dict`` the next pass yields exactly the rest of that epoch; later passes are
    whole. A state saved by any rank loads on any world size (an elastic restart): the rest
    of the epoch is re-dealt over the new ranks, each unconsumed index once
    (:func:`order.maths.rest_of_epoch`). A state taken after an epoch's last batch resumes at
    the next epoch, whichever order ``set_epoch`` and ``load_state_dict`` are called in.

    Args:
        data_source: The dataset (kept as ``dataset``, as in ``DistributedSampler``): its length;
            its ``file_order`` (the sample each stored record holds) and ``targets`` if it has
            them, for the storage order and the class-locality check; its
            ``prefetch(runs, wait=...)`` if it has one (see :meth:`LMDBImageDataset.prefetch`).
        chunk_size: Records per chunk, the unit of sequential reading: one positioning
            (seek) per chunk. Larger means longer sequential reads (on a spinning disk a
            64-record chunk of ImageNet, ~7 MB, reads in ~50 ms after a ~10 ms seek) but
            more pairs of neighbours that meet again the next epoch. Defaults to 64.
        pool_size: Records mixed together: a batch is a random draw from a pool. The
            repeat co-occurrence excess over random sampling falls as ``1 / pool_size**2``;
            the page cache holds up to two pools per rank (the current one and the
            prefetched next one: 2 x 8192 x ~110 KB = 1.8 GB for ImageNet at the default).
            A pool of at least the rank's share is a full shuffle of it. Defaults to 8192.
        shuffle: Shuffle at all; False yields the samples in storage order (``0..N-1`` for a
            dataset without ``file_order``), split across ranks. Defaults to True.
        seed: Non-negative seed, identical on every rank. Defaults to 0.
        num_replicas: DDP world size. Defaults to torch.distributed's when iterating, else 1.
            Pass 1 to yield the whole epoch on every process (for a framework that splits
            batches across processes itself, e.g. Accelerate's ``prepare``).
        rank: This rank. Defaults to torch.distributed's when iterating, else 0.
        drop_last: Drop the tail instead of padding so ranks are equal. Defaults to False.
    """

    def __init__(self, data_source: Sized, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 pool_size: int = DEFAULT_POOL_SIZE, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False) -> None:
        self._set_order(chunk_size=chunk_size, pool_size=pool_size, shuffle=shuffle, seed=seed,
                        num_replicas=num_replicas, rank=rank, drop_last=drop_last)
        self.dataset = data_source  # type: ignore[assignment]  # torch says Dataset; any Sized works (len only)
        self.length = len(data_source)
        self.file_order: np.ndarray | None = getattr(data_source, "file_order", None)
        if shuffle:
            check_class_locality(labels_in_file_order(data_source), chunk_size=chunk_size, pool_size=pool_size,
                                 reader=type(self).__name__)

    def _record_count(self) -> int:
        return self.length

    @property
    def num_samples(self) -> int:  # type: ignore[override]  # a property over DistributedSampler's attribute
        """Indices per rank and epoch (``DistributedSampler.num_samples``)."""
        return rank_length(self.length, self.num_replicas, self.drop_last)

    @property
    def total_size(self) -> int:  # type: ignore[override]  # a property over DistributedSampler's attribute
        """Indices per epoch over all ranks, padding included (``DistributedSampler.total_size``)."""
        return self.num_samples * self.num_replicas

    def _samples(self, records: np.ndarray) -> np.ndarray:
        return records if self.file_order is None else self.file_order[records]

    def epoch_indices(self) -> np.ndarray:
        """This rank's full index order for the current epoch (int64, shape ``(num_samples,)``)."""
        return self._samples(self._pass_order(()).order)

    def __iter__(self) -> Iterator[int]:
        position = self._begin_pass(World(self.rank, self.num_replicas))
        for index in self._indices(self._pass_order(position.resumed_from)):
            position.stream_position += 1
            yield index

    def _indices(self, plan: RankOrder) -> Iterator[int]:
        """The pass's indices, prefetching pools when the dataset can."""
        prefetch = getattr(self.dataset, "prefetch", None)
        if prefetch is None or not self.shuffle:
            return iter(self._samples(plan.order).tolist())
        return self._prefetching(plan, prefetch)

    def _prefetching(self, plan: RankOrder, prefetch: Callable[..., Any]) -> Iterator[int]:
        """Yield the pass's indices, prefetching pools one ahead.

        The first pool is read before anything else is requested (``prefetch(runs,
        wait=True)``). As pool ``q`` starts, pool ``q + 1``'s runs are requested (as the last
        pool starts, the first pool of epoch ``epoch + 1``'s, so that only a run's first pool
        starts cold), and pool ``q``'s indices are yielded once its own request is done (when
        ``prefetch`` returns something to ``wait()`` on): DataLoader workers then read its
        records from the page cache, not at random from a slow device while it is read.
        """
        indices, runs = self._samples(plan.order), plan.runs()
        if runs:
            prefetch(runs[0], wait=True)
        pending = None
        for pool in range(len(runs)):
            if pending is not None:
                pending.wait()
            if pool + 1 < len(runs):
                pending = prefetch(runs[pool + 1])
            else:  # the last pool: the next epoch's first
                prefetch(self._pass_order((), epoch=self.epoch + 1).pool_runs(0))
            yield from indices[plan.starts[pool]:plan.starts[pool + 1]].tolist()
