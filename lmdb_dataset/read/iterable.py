"""LMDBIterableDataset: sequential reads in mixing pools, sharded across DDP ranks and DataLoader workers."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset
from torch.utils.data._utils.fetch import _IterableDatasetFetcher

from ..decode.image import Output
from ..order.draws import draw_seed
from ..order.maths import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_POOL_SIZE,
    check_at_least,
    check_positive,
    worker_positions,
)
from ..order.quality import check_class_locality, labels_in_file_order
from ..order.resume import EpochResumable, StreamPosition, check_identity
from ..order.world import World, current_world
from ..storage.prefetching import SharedAsk
from .bad_records import OnError
from .dataset import LMDBDatasetBase
from .process_memory import release_free_heap


def pool_key(epoch: int, pool: int, runs: np.ndarray) -> int:
    """A pool request's identity, the same in every worker of a rank: its epoch, index and runs (non-negative)."""
    shape = (int(runs[0, 0]), int(runs[-1, 1]), len(runs), int(runs.sum())) if len(runs) else (0, 0, 0, 0)
    return draw_seed(epoch, pool, *shape) >> 2


def loader_batch_size(frame: types.FrameType | None) -> int | None:
    """The batch size of the ``DataLoader`` fetching from a generator, from the frame that called its ``next``.

    torch's iterable-dataset fetcher (used by ``DataLoader`` and torchdata's
    ``StatefulDataLoader``, in workers and in the main process) asks for one batch of
    ``len(possibly_batched_index)`` samples per fetch, or, without automatic batching
    (``batch_size=None``), one sample (1 here). None when the caller is anything else.
    """
    if frame is None or frame.f_code.co_name != "fetch":
        return None
    fetcher = frame.f_locals.get("self")
    if not isinstance(fetcher, _IterableDatasetFetcher):
        return None
    return len(frame.f_locals["possibly_batched_index"]) if fetcher.auto_collation else 1


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
    pieces of that order round-robin. As a pool starts, the background thread of one worker
    per rank asks the kernel to read the next pool's chunks into the page cache
    (``posix_fadvise(WILLNEED)``: one sequential read per chunk; as the last pool starts,
    epoch ``epoch + 1``'s first pool), and every worker reads its records of a pool once
    they are cached: the records of a pool, read in shuffled order, come from memory (only the first
    pool of a run, or of a resumed epoch, is cold), the file is read as sequential streams,
    yet no shuffle buffer holds images in the workers' memory.

    Workers are dealt whole batches of the rank's order in turn (the batch size is seen
    when the DataLoader fetches the first one, or given as ``batch_size``), so the
    DataLoader's batches come in exactly :class:`ChunkShuffleSampler`'s order with the same
    arguments, only the rank's last batch is short (``len(loader)`` is exact, and
    ``drop_last`` drops at most one batch per rank), and the samples the loop consumed are a
    position in that order. With ``shuffle=False`` records come in storage order: the
    DataLoader yields exactly the records ``0..N-1`` split across ranks.

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
    consumed, in the uninterrupted order, with any ``num_workers`` and batch size (later
    passes are whole). A state saved by any rank also loads into another world size (an
    elastic restart): the rest of the epoch is re-dealt over the new ranks, each sample
    once (:func:`order.maths.rest_of_epoch`).

    Resuming mid-epoch, torchdata's ``StatefulDataLoader``: nothing to count. Its
    ``state_dict()`` asks each worker for its own position (``state_dict()`` without
    arguments, called in a worker) and restores each worker from its own, with the same
    ``num_workers``, world and batch size. To resume in another world or with another
    ``num_workers``, load the loader's whole state into the dataset instead
    (``dataset.load_state_dict(loader.state_dict())``): its workers' positions merge into
    the rank's. A state taken after an epoch's last batch resumes at the next epoch,
    whichever order ``set_epoch`` and ``load_state_dict`` are called in.

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
        batch_size: The DataLoader's batch size. Workers are dealt whole batches of it; one
            that differs from the batch size the DataLoader fetches raises ValueError at
            iteration. Defaults to None: the batch size the DataLoader fetches (seen from
            torch's fetcher, also in torchdata's ``StatefulDataLoader``; without automatic
            batching, one sample), or for a reader that is not a DataLoader, pieces of
            ``chunk_size`` positions (then several workers' output order is not the rank's
            order, and the loop's count cannot be saved mid-epoch).
        verify_checksums: Check each record's CRC32. Defaults to True.
        on_error: ``"raise"`` or ``"skip"`` a bad record, as in :class:`LMDBImageDataset`
            (a skipped record's replacement is read on its own, out of the pools). Defaults to ``"raise"``.
    """

    def __init__(self, path: str | os.PathLike, transform: Callable | None = None,
                 target_transform: Callable | None = None, *, shuffle: bool = True,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, pool_size: int = DEFAULT_POOL_SIZE, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False,
                 output: Output = "pil", batch_size: int | None = None, verify_checksums: bool = True,
                 on_error: OnError = "raise") -> None:
        check_positive(chunk_size=chunk_size, pool_size=pool_size, batch_size=batch_size)
        check_at_least(0, seed=seed)
        super().__init__(path, transform, target_transform, output=output, verify_checksums=verify_checksums,
                         access="pread", readahead=False, on_error=on_error)
        self._set_order(chunk_size=chunk_size, pool_size=pool_size, shuffle=shuffle, seed=seed,
                        num_replicas=num_replicas, rank=rank, drop_last=drop_last)
        self.batch_size = batch_size
        self._asks = torch.full((64,), -1, dtype=torch.int64).share_memory_()  # pools the rank's asker asked for
        if shuffle:
            check_class_locality(labels_in_file_order(self), chunk_size=chunk_size, pool_size=pool_size,
                                 reader=type(self).__name__)

    _resume: StreamPosition | None  # a worker's own position, loaded in this process
    _PROCESS_LOCAL = {**EpochResumable._PROCESS_LOCAL, "_resume": None}

    def _record_count(self) -> int:
        return len(self.targets)

    def worker_plan(self, world: World, *, piece_size: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                    list[np.ndarray]]:
        """What one worker reads in the next pass (the rest of the epoch after a loaded resume point).

        Args:
            world: The worker's rank and slot.
            piece_size: Positions per piece dealt to workers. Defaults to ``batch_size``, else ``chunk_size``.

        Returns:
            ``(records, pools, runs)``: ``records`` (int64, shape ``(k,)``) the stored records
            the worker yields, in order; ``pools`` (int64, shape ``(k,)``) the mixing pool of
            each; ``runs[q]`` the contiguous record runs ``[start, stop)`` of the rank's pool
            ``q`` (int64 ``(runs, 2)``), in the order they are prefetched.
        """
        position = StreamPosition(self.epoch, self._progress.pending, world.num_replicas, world.worker, 0,
                                  world.num_workers, piece_size or self.batch_size or self.chunk_size)
        return self._worker_share(position, world.rank)

    def _worker_share(self, position: StreamPosition, rank: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        plan = self._pass_order(position.resumed_from, epoch=position.epoch, rank=rank,
                                num_replicas=position.num_replicas)
        assert position.piece_size is not None
        positions = worker_positions(len(plan.order), piece_size=position.piece_size, worker=position.stream,
                                     num_workers=position.num_workers)[position.stream_position:]
        return plan.order[positions], plan.pool_of(positions), plan.runs()

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        """Begins the pass at once (so a state asked for before the first sample is this pass's start).

        The records are planned at the first fetch, when the DataLoader's batch size can be seen.
        """
        world = current_world(self.num_replicas, self.rank)
        resume, self._resume = self._resume, None
        position = self._begin_pass(world)
        # A worker's own state (StatefulDataLoader) resumes its stream; older states are of epochs the run moved past.
        if resume is not None and resume.epoch >= self.epoch:
            saved = (resume.epoch, resume.num_workers, resume.num_replicas)
            now = (self.epoch, world.num_workers, world.num_replicas)
            if saved != now:
                raise ValueError(f"this worker's state was saved at (epoch, num_workers, num_replicas) = {saved}, the "
                                 f"DataLoader is now at {now}: a DataLoader worker's own state resumes only its "
                                 f"epoch (call set_epoch({resume.epoch}) first) in the same world; load the "
                                 "StatefulDataLoader's whole state into the dataset (dataset.load_state_dict("
                                 "loader_state)) to resume elsewhere")
            self._position = position = resume
        return self._stream(position, world)

    def _piece_size(self, fetching: int | None, position: StreamPosition) -> int:
        """Positions per piece dealt to the workers: the batch size the DataLoader fetches, if it can be seen."""
        if fetching is not None and self.batch_size is not None and fetching != self.batch_size:
            raise ValueError(f"LMDBIterableDataset(batch_size={self.batch_size}) is read by a DataLoader with "
                             f"batch_size={fetching}: give both the same batch size (or leave the dataset's unset)")
        piece = fetching or self.batch_size or self.chunk_size
        if position.piece_size is not None and position.piece_size != piece:
            raise ValueError(f"this worker's state was saved with batch_size={position.piece_size}, the DataLoader "
                             f"now fetches batches of {piece}: resume a worker's own state with the same batch size")
        self._progress.record_order(position.num_workers, fetching is not None or self.batch_size is not None)
        return piece

    def _stream(self, position: StreamPosition, world: World) -> Iterator[tuple[Any, Any]]:
        """Yield the position's stream, planned at the first fetch (pieces of the batch size seen there)."""
        position.piece_size = self._piece_size(loader_batch_size(sys._getframe(1)), position)
        records, pools, runs = self._worker_share(position, world.rank)
        # The next epoch's first pool, requested as the last pool starts, by one worker per rank: the
        # last, whose first batch the DataLoader takes last.
        following = (self._pass_order((), epoch=position.epoch + 1, rank=world.rank,
                                      num_replicas=world.num_replicas).pool_runs(0)
                     if world.worker == world.num_workers - 1 else None)
        release_free_heap()  # the plans' N-sized temporaries, kept by malloc otherwise
        asker = world.worker == 0 if world.num_workers > 1 else None  # one process per rank asks for a pool
        for sample in self._read(records, pools, runs, following, epoch=position.epoch, asker=asker):
            position.stream_position += 1
            yield sample

    def _read(self, records: np.ndarray, pools: np.ndarray, runs: list[np.ndarray], following: np.ndarray | None,
              *, epoch: int, asker: bool | None) -> Iterator[tuple[Any, Any]]:
        """Yield the samples of ``records`` in order, each pool's records once the pool is cached.

        As each pool starts, the next pool is requested (:meth:`prefetch`: read by this
        process's prefetch thread after the pools requested before, this worker reading
        through only its own records of it); a pool's records are read once its request is
        done, so a slow disk serves them as sequential chunk reads, not as random reads. Of a
        rank's workers only the ``asker`` asks the kernel for a pool; the others wait until it
        has (:class:`storage.prefetching.SharedAsk`; ``asker`` None: a rank of one process). As the last
        pool starts, the runs ``following`` (the next epoch's first pool, planned with this
        epoch so that no worker builds an epoch's order, and holds its temporaries, at the end
        of this one; None in all workers but one) are requested.
        """
        if len(records) == 0:
            return
        starts = np.flatnonzero(np.diff(pools, prepend=-1)).tolist()
        stops = [*starts[1:], len(records)]
        own = {int(pools[start]): records[start:stop] for start, stop in zip(starts, stops)}
        requests: dict[int, Any] = {}

        def request(pool: int, wait: bool = False) -> None:
            shared = None if asker is None else SharedAsk(self._asks, pool % len(self._asks),
                                                          pool_key(epoch, pool, runs[pool]), asker)
            requests[pool] = self.prefetch(runs[pool], records=own.get(pool, records[:0]), wait=wait, shared=shared)

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
            yield from self._read_samples(records[start:stop].tolist())
        if asker:  # the pools after this worker's last records, which the rank's other workers wait for
            for pool in range(max(requests) + 1, len(runs)):
                request(pool)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the next pass yields exactly the rest of that epoch.

        A worker's own state (from ``state_dict()`` inside a DataLoader worker, as torchdata's
        ``StatefulDataLoader`` saves them) resumes that worker only, in the same world and with
        the same ``num_workers`` and batch size, if the dataset is set to its epoch (a state of
        an earlier epoch is one the run has moved past). A ``StatefulDataLoader``'s whole state
        (``loader.state_dict()``) merges its workers' states into the rank's: it then loads into
        any world and ``num_workers``, like a state the loop counted.
        """
        state = merged_worker_state(state)
        if "stream" not in state:
            super().load_state_dict(state)
            return
        check_identity(state, self._identity())
        saved = {field.name: state[field.name] for field in dataclasses.fields(StreamPosition)}
        self._resume = StreamPosition(**{**saved, "resumed_from": tuple(map(tuple, saved["resumed_from"]))})


def merged_worker_state(state: dict[str, Any]) -> dict[str, Any]:
    """One rank's resume state from a torchdata ``StatefulDataLoader.state_dict()``: its workers' own states merged.

    The workers were dealt whole batches in turn and the loader took one from each in turn,
    so what they had delivered when the states were taken is a prefix of the pass: its
    length is the sum of their positions (a worker yet to deliver its first batch adds none).
    Without workers the loader's state holds the dataset's own, which is returned; any other
    state is returned as it is.

    Raises:
        ValueError: The states are not all of one pass, or the pass's pieces were not batches.
    """
    snapshot = state.get("_snapshot")
    if not isinstance(snapshot, dict) or "_worker_snapshots" not in snapshot:
        inner = state.get("dataset_state")  # num_workers=0: the dataset's own state, from the loop's process
        return inner if isinstance(inner, dict) else state
    states = [worker["dataset_state"] for worker in snapshot["_worker_snapshots"].values()]
    if not states or any(state is None or "stream" not in state for state in states):
        raise ValueError("the loader state holds no worker states of LMDBIterableDataset")
    passes = {(state["epoch"], tuple(map(tuple, state["resumed_from"])), state["num_replicas"], state["num_workers"])
              for state in states}
    pieces = {state["piece_size"] for state in states if state["stream_position"]}  # None: yet to deliver
    if len(passes) > 1 or len(states) != states[0]["num_workers"] or len(pieces) > 1 or None in pieces:
        raise ValueError("the worker states are not of one pass of one rank's DataLoader")
    own = ("stream", "stream_position", "num_workers", "piece_size")
    return {**{key: value for key, value in states[0].items() if key not in own},
            "samples_consumed": sum(int(state["stream_position"]) for state in states)}
