"""LMDBIterableDataset: sequential cursor reads, sharded across DDP ranks and DataLoader workers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .dataset import LMDBDatasetBase
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
from .progress import EpochProgress, EpochResumable, check_identity
from .world import Replicas, World, current_world

DEFAULT_CHUNK_SIZE = 256
DEFAULT_BUFFER_SIZE = 512


@dataclasses.dataclass
class StreamPosition:
    """Where this process's current pass stands: the stream it serves and the samples it emitted."""

    epoch: int
    stream: int
    start: int
    num_workers: int
    emitted: int = 0


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

    Resuming mid-epoch, stock DataLoader: count the samples the loop consumed and save
    ``dataset.state_dict(samples_consumed=count)`` with the checkpoint; after restarting,
    ``dataset.load_state_dict(state)`` makes the next pass yield exactly the samples not yet
    consumed (later passes are whole). With ``num_workers > 1`` this needs ``batch_size``
    (equal to the DataLoader's). Resuming with another ``num_workers`` is exact too; that
    one pass then comes in another order than an uninterrupted run would have.

    Resuming mid-epoch, torchdata's ``StatefulDataLoader``: nothing to count. Its
    ``state_dict()`` asks each worker for its own position (``state_dict()`` without
    arguments, called in a worker) and restores each worker from its own; any
    ``num_workers`` (the same before and after) and ``batch_size`` work.

    Unless given, ``num_replicas`` and ``rank`` are read from torch.distributed when
    iteration starts (spawned workers get the parent's), so the dataset may be built before
    the process group exists. Frameworks that do not call ``set_epoch`` on datasets need a
    hook: :class:`lmdb_dataset.integrations.lightning.SetEpochCallback` for Lightning.

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
        num_replicas: DDP world size. Defaults to torch.distributed's when iterating, else 1.
        rank: This rank. Defaults to torch.distributed's when iterating, else 0.
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
        self._replicas = Replicas(num_replicas, rank)
        self.drop_last = drop_last
        self.batch_size = batch_size
        self._progress = EpochProgress()
        self._resume: StreamPosition | None = None  # a worker's own position, loaded in this process
        self._position: StreamPosition | None = None  # this process's current pass

    _PROCESS_LOCAL = {"_resume": None, "_position": None}

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
        if self._resume is not None:
            if self._resume.num_workers != world.num_workers:
                raise ValueError(f"this worker's state was saved with num_workers={self._resume.num_workers}, "
                                 f"the DataLoader now has num_workers={world.num_workers}")
            return self._resume.stream, self._resume.start
        skip = self._progress.skip_for(world.worker)
        saved_workers = self._progress.pass_workers
        if skip and saved_workers and saved_workers != world.num_workers:
            raise ValueError(f"the resume point was saved from a DataLoader with num_workers={saved_workers} "
                             f"(0 counts as 1), this pass has {world.num_workers}: resume with the same "
                             "num_workers")
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
        """Plans the pass at once (so a state asked for before the first sample is this pass's start)."""
        world = current_world(self.num_replicas, self.rank)
        saved_workers = self._progress.pass_workers
        position: StreamPosition | None = None
        regrouped = bool(self._resume is None and self._progress.skip_for(world.worker) and saved_workers
                         and saved_workers != world.num_workers)
        if regrouped:
            reads, emit = self._regrouped_plan(world, saved_workers)
        else:
            stream, start = self._stream_of(rank_length(len(self.targets), world.num_replicas, self.drop_last),
                                            world)
            reads, emit = self.worker_plan(world)
            position = StreamPosition(self.epoch, stream, start, world.num_workers)
        self._progress.start_pass(world, in_worker=get_worker_info() is not None, regrouped=regrouped)
        self._resume = None
        self._position = position
        samples = self._read(reads, emit)
        return samples if position is None else self._counted(position, samples)

    def _regrouped_plan(self, world: World, saved_workers: int) -> tuple[np.ndarray, np.ndarray]:
        """Resuming with another ``num_workers`` than the resume point was saved with.

        The rest of the epoch is what each of the ``saved_workers`` streams had left; this
        worker serves the saved streams ``worker, worker + num_workers, ...`` one after the
        other. Exactly the unconsumed samples, in another order than an uninterrupted run.
        """
        plans = [self.worker_plan(dataclasses.replace(world, worker=old, num_workers=saved_workers))
                 for old in range(world.worker, saved_workers, world.num_workers)]
        if not plans:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        offsets = np.cumsum([0] + [len(reads) for reads, _ in plans[:-1]])
        return (np.concatenate([reads for reads, _ in plans]),
                np.concatenate([emit + offset for (_, emit), offset in zip(plans, offsets)]))

    @staticmethod
    def _counted(position: StreamPosition, samples: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        for sample in samples:
            position.emitted += 1
            yield sample

    def _read(self, reads: np.ndarray, emit: np.ndarray) -> Iterator[tuple[Any, Any]]:
        """Walk the cursor over ``reads`` and yield the samples at positions ``emit``, in that order."""
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

    def _loop_state(self, samples_consumed: int) -> dict[str, Any]:
        progress = self._progress
        remaining = rank_length(len(self.targets), self.num_replicas, self.drop_last) - progress.base
        if progress.regrouped and 0 < samples_consumed < remaining:
            raise ValueError(f"this pass resumed a state saved with num_workers={progress.pass_workers} using "
                             "another num_workers, so it runs in another order: a state within it cannot be "
                             f"saved (save at the epoch's end, or resume with num_workers={progress.pass_workers})")
        return {**super()._loop_state(samples_consumed), "num_workers": progress.pass_workers}

    def _own_state(self) -> dict[str, Any]:
        position = self._position
        if get_worker_info() is not None and position is not None:
            return {"epoch": position.epoch, "stream": position.stream, "stream_position": position.start +
                    position.emitted, "num_workers": position.num_workers, **self._identity()}
        if self._progress.workers_iterated:
            raise ValueError("DataLoader workers read ahead of the training loop, so the dataset cannot tell "
                             "which samples were consumed: pass state_dict(samples_consumed=<samples the loop "
                             "consumed this epoch>), or use torchdata's StatefulDataLoader, which asks each "
                             "worker for its own position")
        if position is not None:  # iterated in this process, without workers: what it yielded is what was consumed
            return {"epoch": position.epoch, "samples_consumed": position.start + position.emitted,
                    "num_workers": 1, **self._identity()}
        return self._loop_state(0)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the next pass yields exactly the rest of that epoch.

        A worker's own state (from ``state_dict()`` inside a DataLoader worker, as torchdata's
        ``StatefulDataLoader`` saves them) resumes that worker only.
        """
        if "stream" not in state:
            super().load_state_dict(state)
            return
        check_identity(state, self._identity())
        self._progress.set_epoch(int(state["epoch"]))
        self._resume = StreamPosition(int(state["epoch"]), int(state["stream"]), int(state["stream_position"]),
                                      int(state["num_workers"]))

    def _identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "length": len(self.targets), "chunk_size": self.chunk_size,
                "buffer_size": self.buffer_size, "num_replicas": self.num_replicas, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "batch_size": self.batch_size}
