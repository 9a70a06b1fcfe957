"""Epoch number, resume points and copy semantics, shared by the sampler and the iterable dataset.

A resume state says which epoch was running and what of it was consumed, as a list of
:data:`order.maths.Hop`: ``(samples each rank had consumed, ranks of that pass)``. Loading it
makes the next pass yield exactly the rest of that epoch, re-dealt over the ranks and
DataLoader workers of the new run (:func:`order.maths.rest_of_epoch`): with the same world
the uninterrupted order goes on, with another world (an elastic restart) the new ranks
share exactly the samples not yet consumed. One mechanism covers both, and any number of
workers before and after.

Two ways to take a state mid-epoch, both exact:

* **The training loop counts** (stock ``DataLoader``): ``state_dict(samples_consumed=k)``
  with the ``k`` samples the loop consumed in the current pass on this rank.
* **torchdata's ``StatefulDataLoader``** calls ``state_dict()`` without arguments: a sampler
  then reports the indices its iterator yielded, and an iterable dataset called inside a
  DataLoader worker reports that worker's own position, which ``load_state_dict`` restores in
  that worker only (torchdata pairs the states with its prefetching itself).

The epoch that runs is the one set last: ``load_state_dict`` sets the state's epoch (the
next one if the state's epoch was complete, leaving nothing pending) and ``set_epoch`` of
another epoch drops a pending resume point, so either order of the two calls resumes right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

from .maths import ORDER_VERSION, Hop, RankOrder, check_at_least, check_positive, rest_length, rest_of_epoch
from .world import Replicas, World

MAX_WORKERS = 1024
"""DataLoader workers per rank that can take part of a resume point."""

MAX_HOPS = 64
"""Passes of one epoch a resume state can describe (a world change within an epoch adds one)."""

# The shared values: five numbers, from _HOPS on the hops of a loaded resume point, from _STARTED on a flag per
# DataLoader worker slot (whether it began a pass from that resume point).
_EPOCH, _PENDING, _BASE, _WORKERS_ITERATED, _SCATTERED, _HOPS = range(6)
_STARTED = _HOPS + 2 * MAX_HOPS


def compose(hops: Sequence[Hop], consumed: int, num_replicas: int) -> tuple[Hop, ...]:
    """``hops`` followed by a pass of ``num_replicas`` ranks that consumed ``consumed`` each, in shortest form.

    A pass that consumed nothing is left out; two passes in a row over the same world are
    one (the second deals each rank exactly the tail of its first share).

    Raises:
        ValueError: A count is below 0 or a world size below 1.
    """
    result = [(int(k), int(w)) for k, w in [*hops, (consumed, num_replicas)]]
    if any(k < 0 or w < 1 for k, w in result):
        raise ValueError(f"resume state with passes {result} ([samples_consumed, num_replicas] each): counts must "
                         "be >= 0 and world sizes >= 1")
    result = [hop for hop in result if hop[0]]
    if consumed and len(result) > 1 and result[-1][1] == result[-2][1]:  # the new pass continues the last
        result[-2:] = [(result[-2][0] + result[-1][0], result[-1][1])]
    return tuple(result)


class EpochProgress:
    """The epoch to produce, a pending resume point and the current pass's start, in shared memory.

    Kept in one shared-memory tensor, so ``set_epoch`` or ``load_state_dict`` in the training
    process reach DataLoader workers that outlive an epoch (``persistent_workers=True``),
    under fork, spawn and forkserver alike. A resume point applies to the next pass only:
    each worker slot marks when it began a pass from it, and the point is cleared once all
    workers of that pass have. Setting another epoch drops it. ``copy.deepcopy`` gives an
    independent progress in fresh shared memory.
    """

    def __init__(self) -> None:
        self._shared = torch.zeros(_STARTED + MAX_WORKERS, dtype=torch.int64).share_memory_()

    def __deepcopy__(self, memo: dict[int, Any]) -> EpochProgress:
        clone = EpochProgress()
        clone._shared.copy_(self._shared)
        return clone

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return int(self._shared[_EPOCH])

    def _hops(self, count: int) -> tuple[Hop, ...]:
        """The first ``count`` hops of the loaded resume point."""
        return tuple((k, w) for k, w in self._shared[_HOPS:_HOPS + 2 * count].view(-1, 2).tolist())

    @property
    def pending(self) -> tuple[Hop, ...]:
        """The resume point the next pass starts from (empty: a whole epoch)."""
        return self._hops(int(self._shared[_PENDING]))

    @property
    def base(self) -> tuple[Hop, ...]:
        """What the current pass (or, before it starts, a loaded resume point) began from."""
        return self._hops(int(self._shared[_BASE]))

    @property
    def workers_iterated(self) -> bool:
        """Whether DataLoader workers began a pass since the epoch or resume point was set."""
        return bool(self._shared[_WORKERS_ITERATED])

    @property
    def scattered(self) -> int:
        """DataLoader workers of the current pass whose pieces were not whole DataLoader batches (0: none), so
        that its batches do not come in the rank's order and the loop's count of consumed samples is no
        position in it."""
        return int(self._shared[_SCATTERED])

    def set_epoch(self, epoch: int) -> None:
        """Switch to ``epoch``; a resume point of another epoch is dropped."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        if epoch != self.epoch:
            self.resume(epoch, ())

    def resume(self, epoch: int, hops: Sequence[Hop]) -> None:
        """Make the next pass yield epoch ``epoch`` less what ``hops`` consumed (all of it without hops)."""
        if len(hops) > MAX_HOPS:
            raise ValueError(f"the state describes {len(hops)} passes of one epoch; at most {MAX_HOPS} are kept")
        values = [epoch, len(hops), len(hops), 0, 0, *(value for hop in hops for value in hop)]
        self._shared.copy_(torch.tensor(values + [0] * (len(self._shared) - len(values)), dtype=torch.int64))

    def begin_pass(self, world: World, *, in_worker: bool) -> tuple[Hop, ...]:
        """Record that ``world.worker`` begins a pass; return the hops it starts from.

        The pending resume point for the first pass each worker slot begins after it was set
        (it is cleared once every worker of the pass took it), nothing for later passes.
        """
        if world.worker >= MAX_WORKERS:
            raise ValueError(f"DataLoader worker {world.worker}: at most {MAX_WORKERS} workers per rank are supported")
        hops, slot = self.pending, _STARTED + world.worker
        if hops and not self._shared[slot]:
            self._shared[slot] = 1
            if bool(self._shared[_STARTED:_STARTED + world.num_workers].all()):
                self._shared[_PENDING] = 0
        else:  # a later pass: a whole epoch
            hops = ()
            self._shared[_BASE] = 0
        self._shared[_WORKERS_ITERATED] |= int(in_worker)
        self._shared[_SCATTERED] = 0
        return hops

    def record_order(self, num_workers: int, in_order: bool) -> None:
        """Record whether the current pass's ``num_workers`` workers were dealt whole DataLoader batches
        (:attr:`scattered`)."""
        self._shared[_SCATTERED] = 0 if in_order or num_workers <= 1 else num_workers


@dataclasses.dataclass
class StreamPosition:
    """Where this process's current pass stands: the pass, the stream of it this process serves, and its progress.

    The fields are a DataLoader worker's own resume state (``state_dict()`` in a worker), less the order's settings.

    Attributes:
        epoch: The pass's epoch.
        resumed_from: What of the epoch was consumed before the pass began (:data:`order.maths.Hop`).
        num_replicas: Ranks of the pass.
        stream: The worker slot whose share of the rank's records this process yields (0 for a sampler).
        stream_position: Samples of the stream yielded so far (by this process, and before it by the
            one whose state it resumed).
        num_workers: DataLoader workers of the pass (1 for a sampler).
        piece_size: Positions per piece dealt to workers (the DataLoader's batch size); None until
            the first sample is fetched (and for a sampler).
    """

    epoch: int
    resumed_from: tuple[Hop, ...]
    num_replicas: int
    stream: int
    stream_position: int
    num_workers: int
    piece_size: int | None = None


class EpochResumable:
    """Mixin: epoch, DDP world, length, exact and elastic resume state, and copy semantics of both readers.

    The class calls :meth:`_set_order` (the order settings ``chunk_size``, ``pool_size``,
    ``seed``, ``shuffle``, ``drop_last``, the world, a fresh progress), implements
    ``_record_count()`` (records in the order) and begins each pass with :meth:`_begin_pass`.
    Attributes named in ``_PROCESS_LOCAL`` describe this process's iteration and are reset in
    pickles and copies.
    """

    _progress: EpochProgress
    _replicas: Replicas
    _position: StreamPosition | None  # this process's current pass
    _PROCESS_LOCAL: dict[str, Any] = {"_position": None}
    chunk_size: int
    pool_size: int
    seed: int
    shuffle: bool
    drop_last: bool

    def _set_order(self, *, chunk_size: int, pool_size: int, shuffle: bool, seed: int, num_replicas: int | None,
                   rank: int | None, drop_last: bool) -> None:
        """Check and keep the order settings, the DDP world asked for, and a fresh epoch progress."""
        check_positive(chunk_size=chunk_size, pool_size=pool_size)
        check_at_least(0, seed=seed)
        self.chunk_size = chunk_size
        self.pool_size = pool_size
        self.shuffle = shuffle
        self.seed = seed
        self._replicas = Replicas(num_replicas, rank)
        self.drop_last = drop_last
        self._progress = EpochProgress()
        self.__dict__.update(self._PROCESS_LOCAL)

    def _record_count(self) -> int:
        raise NotImplementedError

    def _begin_pass(self, world: World) -> StreamPosition:
        """Begin this process's pass as ``world``: the rest of a loaded resume point if it is the first, else a
        whole epoch."""
        hops = self._progress.begin_pass(world, in_worker=get_worker_info() is not None)
        self._position = StreamPosition(self.epoch, hops, world.num_replicas, world.worker, 0, world.num_workers)
        return self._position

    def _own_state(self) -> dict[str, Any]:
        """The state of what this process's own iteration produced: a DataLoader worker's own position, or (in
        the loop's process) the samples it yielded of its pass."""
        position = self._position
        if get_worker_info() is not None and position is not None:
            return {**dataclasses.asdict(position), "resumed_from": [list(hop) for hop in position.resumed_from],
                    **self._identity()}
        if self._progress.workers_iterated:
            raise ValueError("DataLoader workers read ahead of the training loop, so the dataset cannot tell "
                             "which samples were consumed: pass state_dict(samples_consumed=<samples the loop "
                             "consumed this epoch>), or use torchdata's StatefulDataLoader, which asks each "
                             "worker for its own position")
        if position is None:
            return self._loop_state(0)
        return self._loop_state(position.stream_position, base=position.resumed_from)

    def _identity(self) -> dict[str, Any]:
        """The settings that define the epoch order: a saved state must match them to be loaded."""
        return {"order_version": ORDER_VERSION, "seed": self.seed, "length": self._record_count(),
                "chunk_size": self.chunk_size, "pool_size": self.pool_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def _pass_order(self, hops: Sequence[Hop], *, epoch: int | None = None, rank: int | None = None,
                    num_replicas: int | None = None) -> RankOrder:
        """This rank's records for a pass of ``epoch`` (default: the current one) that starts from ``hops``."""
        return rest_of_epoch(self._record_count(), chunk_size=self.chunk_size, pool_size=self.pool_size,
                             seed=self.seed, epoch=self.epoch if epoch is None else epoch,
                             rank=self.rank if rank is None else rank,
                             num_replicas=self.num_replicas if num_replicas is None else num_replicas,
                             drop_last=self.drop_last, shuffle=self.shuffle, hops=hops)

    def _pass_length(self, hops: Sequence[Hop]) -> int:
        return rest_length(self._record_count(), hops=hops, num_replicas=self.num_replicas, drop_last=self.drop_last)

    @property
    def epoch_progress(self) -> EpochProgress:
        """The shared epoch and resume point (what per-epoch state in DataLoader workers follows)."""
        return self._progress

    @property
    def pass_length(self) -> int:
        """Samples this rank's current pass holds (before a pass begins, the next one): a whole epoch's share, or
        the share of the rest of a resumed one. ``state_dict(samples_consumed=pass_length)`` says the epoch is done."""
        return self._pass_length(self._progress.base)

    def __len__(self) -> int:
        """Samples this rank yields in the next pass: its share of the epoch, or of the rest of a resumed one."""
        return self._pass_length(self._progress.pending)

    def _loop_state(self, samples_consumed: int, *, base: Sequence[Hop] | None = None) -> dict[str, Any]:
        """The state after ``samples_consumed`` samples of the current pass (which began from ``base``)."""
        base = self._progress.base if base is None else base
        length = self._pass_length(base)
        if not 0 <= samples_consumed <= length:
            raise ValueError(f"samples_consumed={samples_consumed} must be within the {length} samples this rank's "
                             "pass holds")
        if self._progress.scattered and 0 < samples_consumed < length:
            raise ValueError(f"the pass was read by {self._progress.scattered} DataLoader workers in pieces of "
                             f"chunk_size={self.chunk_size} (the DataLoader's batch size could not be seen), so the "
                             "samples the loop consumed are not a position in the rank's order: pass "
                             f"batch_size=<the DataLoader's> to {type(self).__name__}, or use torchdata's "
                             "StatefulDataLoader")
        *earlier, (consumed, world) = compose(base, samples_consumed, self.num_replicas) or ((0, self.num_replicas),)
        return {"epoch": self.epoch, "samples_consumed": consumed, "num_replicas": world,
                "resumed_from": [list(hop) for hop in earlier], **self._identity()}

    @property
    def num_replicas(self) -> int:
        """DDP world size: the one given, else torch.distributed's at the time of asking."""
        return self._replicas.resolve()[0]

    @property
    def rank(self) -> int:
        """DDP rank: the one given, else torch.distributed's at the time of asking."""
        return self._replicas.resolve()[1]

    @property
    def epoch(self) -> int:
        """The epoch whose order is produced."""
        return self._progress.epoch

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (deterministic in ``seed`` and ``epoch``), like ``DistributedSampler``.

        Reaches persistent DataLoader workers too. A resume point of another epoch is dropped.
        """
        if epoch != self.epoch:
            self.__dict__.update(self._PROCESS_LOCAL)
        self._progress.set_epoch(epoch)

    def state_dict(self, samples_consumed: int | None = None) -> dict[str, Any]:
        """Resume state, for a checkpoint.

        Args:
            samples_consumed: The samples of the current pass the training loop consumed on this
                rank (count them in the loop, ``sum(len(batch))``: the DataLoader prefetches
                ahead of the loop, so only the loop knows). None (torchdata's
                ``StatefulDataLoader`` protocol): what this object's own iteration produced in
                this process.

        Returns:
            A dict of plain ints, bools and lists: ``epoch``, ``samples_consumed`` (per rank, in
            the pass of ``num_replicas`` ranks), ``resumed_from`` (earlier passes of the epoch, as
            ``[samples_consumed, num_replicas]``) and the order's settings.
        """
        return self._own_state() if samples_consumed is None else self._loop_state(samples_consumed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, saved with this world size or another: the next pass yields the rest.

        Loading sets the state's epoch; if that epoch was complete, the next one, with nothing
        pending. The rest of a part-consumed epoch is re-dealt over this object's ranks
        (``num_replicas``) and workers: with the world of the state the order is the
        uninterrupted one; with another, each unconsumed sample comes once (plus
        ``DistributedSampler``'s padding, or less its ``drop_last`` truncation, of that rest).

        Raises:
            ValueError: The state belongs to another dataset length, seed or order setting (the
                message names it) or to another release's order.
        """
        check_identity(state, self._identity())
        epoch, hops = int(state["epoch"]), hops_of(state)
        if rest_length(self._record_count(), hops=hops, num_replicas=1, drop_last=self.drop_last) == 0:
            epoch, hops = epoch + 1, ()  # the epoch was complete: nothing of it is pending
        self._progress.resume(epoch, hops)
        self.__dict__.update(self._PROCESS_LOCAL)

    def __getstate__(self) -> dict[str, Any]:
        parent = getattr(super(), "__getstate__", None)  # object.__getstate__ exists from Python 3.11
        state = dict(parent() if parent is not None else self.__dict__)
        state["_replicas"] = self._replicas.pinned()  # spawned workers have no process group
        state.update(self._PROCESS_LOCAL)
        return state

    def __copy__(self) -> Any:
        """A shallow copy with its own epoch and resume point (a copy sharing them would move both)."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.__dict__.update(self._PROCESS_LOCAL)
        clone._progress = self._progress.__deepcopy__({})
        return clone


def hops_of(state: dict[str, Any]) -> tuple[Hop, ...]:
    """The passes a saved state says were consumed, shortest form (:func:`compose`)."""
    try:
        *earlier, last = [(int(k), int(w)) for k, w in [*state.get("resumed_from", []),
                                                         (state["samples_consumed"], state["num_replicas"])]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a resume state of lmdb_dataset: {exc!r}") from None
    return compose(earlier, *last)


def check_identity(state: dict[str, Any], identity: dict[str, Any]) -> None:
    """Raise ValueError naming the first setting in which ``state`` differs from ``identity``."""
    if state.get("order_version") != identity.get("order_version"):
        raise ValueError(f"state was saved under epoch order version {state.get('order_version')!r} (another "
                         "lmdb-dataset release), this one orders epochs by version "
                         f"{identity.get('order_version')!r}: its mid-epoch position cannot be resumed exactly; "
                         "restart that epoch instead (set_epoch(state['epoch']))")
    for key, value in identity.items():
        if state.get(key) != value:
            raise ValueError(f"state was saved with {key}={state.get(key)!r}, this object has {key}={value!r}")
