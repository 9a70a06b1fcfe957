"""ChunkShuffleSampler: a near-sequential shuffled order for map-style datasets."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

from .ordering import check_seed, epoch_order, rank_length, rank_share
from .progress import EpochProgress, EpochResumable
from .world import Replicas, World

DEFAULT_CHUNK_SIZE = 256


class ChunkShuffleSampler(EpochResumable, DistributedSampler):
    """Shuffles contiguous chunks of records, and records within each chunk.

    Reads stay inside one chunk (``chunk_size`` neighbouring records, ~28 MB of ImageNet
    JPEGs at the default) at a time, so a spinning disk or network filesystem streams
    instead of seeking, while the training loop sees a shuffled order. It replaces
    ``RandomSampler`` / ``DistributedSampler`` in a DataLoader over :class:`LMDBImageDataset`
    (or any map-style dataset whose neighbouring indices are stored together).

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
    consumed (stock DataLoader), or plain ``state_dict()``, the indices the iterator yielded
    (what torchdata's ``StatefulDataLoader`` expects). After ``load_state_dict`` the next
    pass yields exactly the rest of that epoch; later passes are whole.

    Tip: if the dataset was written class by class (``convert`` without ``--shuffle``), a
    chunk holds few classes; convert with ``--shuffle`` or keep ``chunk_size`` small.

    Args:
        data_source: The dataset (its length is used; kept as ``dataset``, as in ``DistributedSampler``).
        chunk_size: Records per chunk. Larger means longer sequential reads but less mixing
            across the dataset within a stretch of batches. Defaults to 256.
        shuffle: Shuffle at all; False yields ``0..N-1`` (split across ranks). Defaults to True.
        seed: Non-negative seed, identical on every rank. Defaults to 0.
        num_replicas: DDP world size. Defaults to torch.distributed's when iterating, else 1.
            Pass 1 to yield the whole epoch on every process (for a framework that splits
            batches across processes itself, e.g. Accelerate's ``prepare``).
        rank: This rank. Defaults to torch.distributed's when iterating, else 0.
        drop_last: Drop the tail instead of padding so ranks are equal. Defaults to False.
    """

    def __init__(self, data_source: Sized, *, chunk_size: int = DEFAULT_CHUNK_SIZE, shuffle: bool = True,
                 seed: int = 0, num_replicas: int | None = None, rank: int | None = None,
                 drop_last: bool = False) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        check_seed(seed)
        self.dataset = data_source
        self.length = len(data_source)
        self.chunk_size = chunk_size
        self.shuffle = shuffle
        self.seed = seed
        self._replicas = Replicas(num_replicas, rank)
        self.drop_last = drop_last
        self._progress = EpochProgress()
        self._yielded = 0  # indices the current pass's iterator yielded

    _PROCESS_LOCAL = {"_yielded": 0}

    @property
    def num_samples(self) -> int:
        """Indices per rank and epoch (``DistributedSampler.num_samples``)."""
        return rank_length(self.length, self.num_replicas, self.drop_last)

    @property
    def total_size(self) -> int:
        """Indices per epoch over all ranks, padding included (``DistributedSampler.total_size``)."""
        return self.num_samples * self.num_replicas

    def epoch_indices(self) -> np.ndarray:
        """This rank's full index order for the current epoch."""
        order = epoch_order(self.length, chunk_size=self.chunk_size, seed=self.seed, epoch=self.epoch,
                            shuffle=self.shuffle, shuffle_within_chunks=True)
        return rank_share(order, rank=self.rank, num_replicas=self.num_replicas, drop_last=self.drop_last)

    def __iter__(self) -> Iterator[int]:
        start = self._progress.skip_for(0)
        self._progress.start_pass(World(), in_worker=False)
        self._yielded = 0
        for index in self.epoch_indices()[start:].tolist():
            self._yielded += 1
            yield index

    def __len__(self) -> int:
        """Indices the next iteration yields (fewer than ``num_samples`` when resuming mid-epoch)."""
        return self.num_samples - self._progress.skip

    def _own_state(self) -> dict[str, Any]:
        return self._progress.state_dict(self._yielded, **self._identity())

    def _identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "length": self.length, "chunk_size": self.chunk_size,
                "num_replicas": self.num_replicas, "shuffle": self.shuffle, "drop_last": self.drop_last}
