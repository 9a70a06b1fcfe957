"""LMDBIterableDataset: sequential reads in mixing pools, sharded across DDP ranks and DataLoader workers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .dataset import LMDBDatasetBase
from .decoding import Output
from .memory import release_free_heap
from .mixing import check_class_locality, labels_in_file_order
from .ordering import (ORDER_VERSION, RankOrder, check_seed, consumed_per_worker, rank_length, rank_order,
                       worker_positions)
from .progress import EpochProgress, EpochResumable, check_identity
from .world import Replicas, World, current_world

DEFAULT_CHUNK_SIZE = 64
DEFAULT_POOL_SIZE = 8192


@dataclasses.dataclass
class StreamPosition:
    """Where this process's current pass stands: the stream it serves and the samples it emitted."""

    epoch: int
    stream: int
    start: int
    num_workers: int
    emitted: int = 0


class LMDBIterableDataset(EpochResumable, LMDBDatasetBase, IterableDataset):
    """Streams an LMDB image dataset as a few sequential reads, in a well-mixed order.

    Each epoch the stored records are cut into chunks of ``chunk_size`` neighbours on a grid
    that shifts every epoch, and the chunks are shuffled (``seed``, ``epoch``); each DDP
    rank takes a contiguous slice of that order (``DistributedSampler``'s lengths and
    ``drop_last`` rules, so all ranks yield the same number of samples and DDP never waits
    on a rank that ran dry). Each run of ``pool_size`` records of a rank's slice (about
    ``pool_size / chunk_size`` random chunks) is a mixing pool delivered in a uniformly
    random order (an epoch's first three pools hold 1/8, 1/4 and 1/2 of that, so a cold
    start's first batch waits for a small pool), and the rank's DataLoader workers take
    pieces of that order round-robin. As a pool starts, each worker's background thread
    asks the kernel to read the next pool's chunks into the page cache
    (``posix_fadvise(WILLNEED)``: one sequential read per chunk; as the last pool starts,
    epoch ``epoch + 1``'s first pool), and a worker reads a pool's records once they are
    cached: the records of a pool, read in shuffled order, come from memory (only the first
    pool of a run, or of a resumed epoch, is cold), the file is read as sequential streams,
    yet no shuffle buffer holds images in the workers' memory. The order is exactly
    :class:`ChunkShuffleSampler`'s with the same arguments (with ``batch_size`` set, the
    DataLoader's batches are the sampler's). With ``shuffle=False`` records come in storage
    order (and, with ``batch_size`` set, the DataLoader yields exactly the records
    ``0..N-1`` split across ranks).

    A file stored class by class (neighbouring records of one class) makes every pool, so
    every batch, hold few classes: the constructor warns (:class:`ClassLocalityWarning`).

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
        shuffle: Shuffle chunks and mix them in pools; False streams records in storage order.
            Defaults to True.
        chunk_size: Records per chunk, the unit of sequential reading: one positioning (seek)
            per chunk. Larger chunks read longer streams but more pairs of neighbours meet
            again in a batch the next epoch. Defaults to 64 (~7 MB of ImageNet JPEGs).
        pool_size: Records of a rank mixed together. The excess of pairs meeting again over
            random sampling falls as ``1 / pool_size**2`` (about
            ``chunk_size * N / (2 * pool_size**2)``: 0.6 for ImageNet at the defaults); the page
            cache holds up to two pools per rank (2 x 8192 x ~110 KB = 1.8 GB for ImageNet),
            shared by the rank's workers; nothing is held in the workers' memory.
            Defaults to 8192.
        seed: Non-negative seed, identical on every rank. Defaults to 0.
        num_replicas: DDP world size. Defaults to torch.distributed's when iterating, else 1.
        rank: This rank. Defaults to torch.distributed's when iterating, else 0.
        drop_last: Drop the tail instead of padding so ranks are equal. Defaults to False.
        output: ``"pil"``, ``"tensor"`` or ``"numpy"``, as in :class:`LMDBImageDataset`.
            Defaults to ``"pil"``.
        batch_size: The DataLoader's batch size, if known. Workers then take whole batches,
            which makes the DataLoader's output order a pure function of the arguments
            and exact mid-epoch resume possible with several workers. Defaults to None
            (workers take pieces of ``chunk_size`` positions).
        verify_checksums: Check each record's CRC32. Defaults to True.
    """

    def __init__(self, path: str | os.PathLike, transform: Callable | None = None,
                 target_transform: Callable | None = None, *, shuffle: bool = True,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, pool_size: int = DEFAULT_POOL_SIZE, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False,
                 output: Output = "pil", batch_size: int | None = None, verify_checksums: bool = True) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        if pool_size < 1:
            raise ValueError(f"pool_size={pool_size} must be >= 1")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        check_seed(seed)
        super().__init__(path, transform, target_transform, output=output, verify_checksums=verify_checksums,
                         access="pread", readahead=False)
        self.shuffle = shuffle
        self.chunk_size = chunk_size
        self.pool_size = pool_size
        self.seed = seed
        self._replicas = Replicas(num_replicas, rank)
        self.drop_last = drop_last
        self.batch_size = batch_size
        self._progress = EpochProgress()
        if shuffle:
            check_class_locality(labels_in_file_order(self), chunk_size=chunk_size, pool_size=pool_size,
                                 reader=type(self).__name__)
        self._resume: StreamPosition | None = None  # a worker's own position, loaded in this process
        self._position: StreamPosition | None = None  # this process's current pass

    _PROCESS_LOCAL = {"_resume": None, "_position": None}

    def __len__(self) -> int:
        """Samples this rank yields in the next iteration (its share of an epoch, less any resumed part)."""
        return rank_length(len(self.targets), self.num_replicas, self.drop_last) - self._progress.skip

    def worker_plan(self, world: World) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """What one worker reads this epoch, skipping a resumed epoch's consumed part.

        Returns:
            ``(records, pools, runs)``: ``records`` (int64, shape ``(k,)``) the stored records
            the worker yields, in order; ``pools`` (int64, shape ``(k,)``) the mixing pool of
            each; ``runs[q]`` the contiguous record runs ``[start, stop)`` of the rank's pool
            ``q`` (int64 ``(runs, 2)``), in the order they are prefetched.
        """
        plan = self._rank_order(world, self.epoch)
        stream, consumed = self._stream_of(len(plan.order), world)
        positions = worker_positions(len(plan.order), piece_size=self.batch_size or self.chunk_size, worker=stream,
                                     num_workers=world.num_workers)[consumed:]
        return plan.order[positions], plan.pool_of(positions), plan.runs()

    def _rank_order(self, world: World, epoch: int) -> RankOrder:
        return rank_order(len(self.targets), chunk_size=self.chunk_size, pool_size=self.pool_size, seed=self.seed,
                          epoch=epoch, rank=world.rank, num_replicas=world.num_replicas, drop_last=self.drop_last,
                          shuffle=self.shuffle)

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
        records, pools, runs = self._regrouped_plan(world, saved_workers) if regrouped else self.worker_plan(world)
        # The next epoch's first pool, requested as the last pool starts, by one worker per rank: the
        # last, whose first batch the DataLoader takes last.
        following = (self._rank_order(world, self.epoch + 1).pool_runs(0)
                     if world.worker == world.num_workers - 1 else None)
        release_free_heap()  # the plans' N-sized temporaries, kept by malloc otherwise
        if not regrouped:
            stream, start = self._stream_of(rank_length(len(self.targets), world.num_replicas, self.drop_last),
                                            world)
            position = StreamPosition(self.epoch, stream, start, world.num_workers)
        self._progress.start_pass(world, in_worker=get_worker_info() is not None, regrouped=regrouped)
        self._resume = None
        self._position = position
        samples = self._read(records, pools, runs, following)
        return samples if position is None else self._counted(position, samples)

    def _regrouped_plan(self, world: World, saved_workers: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Resuming with another ``num_workers`` than the resume point was saved with.

        The rest of the epoch is what each of the ``saved_workers`` streams had left; this
        worker serves the saved streams ``worker, worker + num_workers, ...`` one after the
        other. Exactly the unconsumed samples, in another order than an uninterrupted run.
        Returns what :meth:`worker_plan` returns.
        """
        plans = [self.worker_plan(dataclasses.replace(world, worker=old, num_workers=saved_workers))
                 for old in range(world.worker, saved_workers, world.num_workers)]
        if not plans:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), []
        return (np.concatenate([records for records, _, _ in plans]),
                np.concatenate([pools for _, pools, _ in plans]), plans[0][2])

    @staticmethod
    def _counted(position: StreamPosition, samples: Iterator[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        for sample in samples:
            position.emitted += 1
            yield sample

    def _read(self, records: np.ndarray, pools: np.ndarray, runs: list[np.ndarray],
              following: np.ndarray | None) -> Iterator[tuple[Any, Any]]:
        """Yield the samples of ``records`` in order, each pool's records once the pool is cached.

        As each pool starts, the next pool is requested (:meth:`prefetch`: read by this
        process's prefetch thread after the pools requested before, this worker reading
        through only its own records of it); a pool's records are read once its request is
        done, so a slow disk serves them as sequential chunk reads, not as random reads. As
        the last pool starts, the runs ``following`` (the next epoch's first pool, planned
        with this epoch so that no worker builds an epoch's order, and holds its temporaries,
        at the end of this one; None in all workers but one) are requested.
        """
        if len(records) == 0:
            return
        starts = np.flatnonzero(np.diff(pools, prepend=-1)).tolist()
        stops = [*starts[1:], len(records)]
        own = {int(pools[start]): records[start:stop] for start, stop in zip(starts, stops)}
        requests: dict[int, Any] = {}

        def request(pool: int, wait: bool = False) -> None:
            requests[pool] = self.prefetch(runs[pool], records=own.get(pool, records[:0]), wait=wait)

        request(int(pools[0]), wait=True)
        for start, stop in zip(starts, stops):
            pool = int(pools[start])
            for skipped in range(max(requests) + 1, pool + 1):  # pools without records of this worker
                request(skipped)
            if requests[pool] is not None:
                requests[pool].wait()
            if pool + 1 < len(runs):
                request(pool + 1)
            elif following is not None:  # the last pool: ask for the next epoch's first (each worker
                self.prefetch(following, records=[])  # waits for its own records of it then)
            for index, value in self.reader.values(records[start:stop].tolist()):
                yield self._sample(index, value)

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
        return {"order_version": ORDER_VERSION, "seed": self.seed, "length": len(self.targets),
                "chunk_size": self.chunk_size, "pool_size": self.pool_size, "num_replicas": self.num_replicas,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "batch_size": self.batch_size}
