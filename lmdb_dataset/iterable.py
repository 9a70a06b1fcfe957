"""LMDBIterableDataset: sequential cursor reads, sharded across DDP ranks and DataLoader workers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from .dataset import LMDBDatasetBase
from .memory import release_free_heap
from .decoding import Output
from .ordering import (
    buffer_shuffle,
    check_seed,
    consumed_per_worker,
    contiguous_runs,
    epoch_order,
    rank_length,
    rank_share,
    worker_positions,
)
from .progress import EpochProgress, EpochResumable
from .world import World, current_world, resolve_replicas

DEFAULT_CHUNK_SIZE = 256
DEFAULT_BUFFER_SIZE = 512


class LMDBIterableDataset(EpochResumable, LMDBDatasetBase, IterableDataset):
    """Streams an LMDB image dataset with cursor reads, in a chunk-shuffled order.

    Each epoch the records are cut into contiguous chunks whose order is shuffled
    (``seed``, ``epoch``); each DDP rank takes a contiguous slice of that order
    (``DistributedSampler``'s lengths and ``drop_last`` rules, so all ranks yield the same
    number of samples and DDP never waits on a rank that ran dry), and each DataLoader
    worker takes pieces of its rank's slice round-robin. A worker positions an LMDB cursor
    once per contiguous run and walks forward, so the file is read as a few sequential
    streams, and mixes what it reads through a shuffle buffer of ``buffer_size`` records.
    With ``shuffle=False`` records come in index order (and, with ``batch_size`` set, the
    DataLoader yields exactly ``0..N-1`` split across ranks).

    Usage under DDP::

        dataset = LMDBIterableDataset("train.lmdb", transform=t, batch_size=256)
        loader = DataLoader(dataset, batch_size=256, num_workers=8, pin_memory=True)
        for epoch in range(epochs):
            dataset.set_epoch(epoch)
            for images, labels in loader: ...

    Resuming mid-epoch: count the samples the loop consumed and save
    ``dataset.state_dict(samples_consumed=count)`` with the checkpoint; after restarting,
    ``dataset.load_state_dict(state)`` makes the next epoch iteration yield exactly the
    samples not yet consumed. With ``num_workers > 1`` this needs ``batch_size`` (equal to
    the DataLoader's) and the same ``num_workers`` as before.

    Args:
        path: Dataset directory.
        transform: Applied to each image. Defaults to None.
        target_transform: Applied to each label. Defaults to None.
        shuffle: Chunk-shuffle and buffer-shuffle; False streams records in index order.
            Defaults to True.
        chunk_size: Records per chunk. Larger chunks read more sequentially (fewer seeks)
            but mix less. Defaults to 256 (~28 MB of ImageNet JPEGs).
        buffer_size: Records a worker holds to shuffle across the chunks it reads; more
            mixes better but holds ``buffer_size`` encoded images (~110 KB each for ImageNet)
            per worker. Defaults to 512.
        seed: Non-negative seed, identical on every rank. Defaults to 0.
        num_replicas: DDP world size. Defaults to torch.distributed's, else 1.
        rank: This rank. Defaults to torch.distributed's, else 0.
        drop_last: Drop the tail instead of padding so ranks are equal. Defaults to False.
        output: ``"pil"``, ``"tensor"`` or ``"numpy"``, as in :class:`LMDBImageDataset`.
            Defaults to ``"pil"``.
        batch_size: The DataLoader's batch size, if known. Workers then take whole batches,
            which makes the DataLoader's output order a pure function of the arguments
            and exact mid-epoch resume possible with several workers. Defaults to None
            (workers take pieces of ``chunk_size``).
        verify_checksums: Check each record's CRC32. Defaults to True.
    """

    def __init__(self, path: str | os.PathLike, transform: Callable | None = None,
                 target_transform: Callable | None = None, *, shuffle: bool = True,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, buffer_size: int = DEFAULT_BUFFER_SIZE, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False,
                 output: Output = "pil", batch_size: int | None = None, verify_checksums: bool = True) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        if buffer_size < 0:
            raise ValueError(f"buffer_size={buffer_size} must be >= 0")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        check_seed(seed)
        super().__init__(path, transform, target_transform, output=output, verify_checksums=verify_checksums,
                         access="mmap", readahead=True)
        self.shuffle = shuffle
        self.chunk_size = chunk_size
        self.buffer_size = buffer_size
        self.seed = seed
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank)
        self.drop_last = drop_last
        self.batch_size = batch_size
        self._progress = EpochProgress()

    def __len__(self) -> int:
        """Samples this rank yields in the next iteration (its share of an epoch, less any resumed part)."""
        return rank_length(len(self.targets), self.num_replicas, self.drop_last) - self._progress.skip

    def worker_plan(self, world: World) -> tuple[np.ndarray, np.ndarray]:
        """What one worker reads and emits this epoch, skipping a resumed epoch's consumed part.

        Returns:
            ``(reads, emit)``: ``reads`` the record indices the worker's cursor walks, in
            order; ``emit`` the positions into ``reads`` in the order samples are yielded.
        """
        order = epoch_order(len(self.targets), chunk_size=self.chunk_size, seed=self.seed, epoch=self.epoch,
                            shuffle=self.shuffle)
        share = rank_share(order, rank=world.rank, num_replicas=world.num_replicas, drop_last=self.drop_last)
        stream, consumed = self._stream_of(len(share), world)
        reads = share[worker_positions(len(share), piece_size=self.batch_size or self.chunk_size, worker=stream,
                                       num_workers=world.num_workers)]
        emit = buffer_shuffle(len(reads), buffer_size=self.buffer_size if self.shuffle else 0, seed=self.seed,
                              stream=(self.epoch, world.rank, stream))
        return reads, emit[consumed:]

    def _stream_of(self, share_length: int, world: World) -> tuple[int, int]:
        """The stream (rank-share piece set) this worker serves, and how many of its samples were consumed.

        Normally worker ``w`` serves stream ``w``. Resuming mid-epoch, the streams rotate so that
        the DataLoader, which starts again at worker 0, continues exactly where the consumed
        part ended.
        """
        skip = self._progress.skip
        if skip == 0 or world.num_workers == 1:
            return world.worker, skip
        if self.batch_size is None:
            raise ValueError("resuming mid-epoch with several DataLoader workers needs the DataLoader's "
                             "batch size: pass batch_size=... to LMDBIterableDataset")
        lengths = [len(worker_positions(share_length, piece_size=self.batch_size, worker=w,
                                        num_workers=world.num_workers)) for w in range(world.num_workers)]
        consumed, next_worker = consumed_per_worker(lengths, batch_size=self.batch_size, samples_consumed=skip)
        stream = (world.worker + next_worker) % world.num_workers
        return stream, consumed[stream]

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        world = current_world(self.num_replicas, self.rank)
        reads, emit = self.worker_plan(world)
        release_free_heap()  # the plan's N-sized temporaries, kept by malloc otherwise
        if len(emit) == 0:
            return
        first = int(emit.min())
        wanted = np.zeros(len(reads), dtype=bool)
        wanted[emit] = True
        held: dict[int, tuple[int, bytes]] = {}
        records = self.reader.scan(contiguous_runs(reads[first:]))
        next_read = first
        for position in emit.tolist():
            while position not in held:
                index, value = next(records)
                if wanted[next_read]:
                    held[next_read] = (index, bytes(value))
                next_read += 1
            index, value = held.pop(position)
            yield self._sample(index, value)
        records.close()

    def _identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "length": len(self.targets), "chunk_size": self.chunk_size,
                "buffer_size": self.buffer_size, "num_replicas": self.num_replicas, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "batch_size": self.batch_size}
