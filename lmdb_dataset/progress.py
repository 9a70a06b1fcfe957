"""Epoch number, resume points and copy semantics, shared by the sampler and the iterable dataset.

Two ways to resume mid-epoch, both exact:

* **The training loop counts** (stock ``DataLoader``): ``state_dict(samples_consumed=k)``
  with the ``k`` samples the loop consumed this epoch on this rank; loading it sets a
  *resume point* that the next pass over the data starts from (every DataLoader worker of
  that pass takes its part of it), and later passes are whole again.
* **torchdata's ``StatefulDataLoader``** calls ``state_dict()`` without arguments: a sampler
  then reports the indices its iterator yielded, and an iterable dataset called inside a
  DataLoader worker reports that worker's own position, which ``load_state_dict`` restores in
  that worker only (torchdata pairs the states with its prefetching itself).
"""

from __future__ import annotations

from typing import Any

import torch

from .world import Replicas, World

MAX_WORKERS = 1024
"""DataLoader workers per rank that can take part of a resume point."""


def _shared_value(index: int, kind: type, doc: str) -> property:
    """A read-only property: element ``index`` of the shared values, as ``kind``."""
    return property(lambda self: kind(self._values[index]), doc=doc)


class EpochProgress:
    """The epoch to produce and a pending resume point, in shared memory.

    Kept in shared-memory tensors, so ``set_epoch`` or ``load_state_dict`` in the training
    process reach DataLoader workers that outlive an epoch (``persistent_workers=True``),
    under fork and spawn alike. A resume point applies to the next pass only: each worker
    slot marks when it began a pass from it, and the point is cleared once all workers of
    that pass have. Setting another epoch drops it. ``copy.deepcopy`` gives an independent
    progress in fresh shared memory.
    """

    def __init__(self) -> None:
        # [epoch, skip, base, workers_iterated, pass_workers, regrouped]: the properties below
        self._values = torch.zeros(6, dtype=torch.int64).share_memory_()
        self._started = torch.zeros(MAX_WORKERS, dtype=torch.uint8).share_memory_()

    def __deepcopy__(self, memo: dict[int, Any]) -> EpochProgress:
        clone = EpochProgress()
        clone._values.copy_(self._values)
        clone._started.copy_(self._started)
        return clone

    epoch = _shared_value(0, int, "The current epoch.")
    skip = _shared_value(1, int, "Samples of the current epoch the next pass skips (a pending resume point).")
    base = _shared_value(2, int, "Samples of the current epoch consumed before the current (resumed) pass began.")
    workers_iterated = _shared_value(3, bool, "Whether DataLoader workers began a pass since the epoch or resume "
                                              "point was set.")
    pass_workers = _shared_value(4, int, "Workers per rank of the current pass, or of the pass a loaded resume "
                                         "point came from (0: unknown).")
    regrouped = _shared_value(5, bool, "Whether the current pass resumed a point saved with another number of "
                                       "DataLoader workers.")

    def set_epoch(self, epoch: int) -> None:
        """Switch to ``epoch``; a resume point of another epoch is dropped."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        if epoch != self.epoch:
            self._reset(epoch, 0, 0)

    def _reset(self, epoch: int, point: int, workers: int) -> None:
        self._started.zero_()
        self._values.copy_(torch.tensor([epoch, point, point, 0, workers, 0], dtype=torch.int64))

    def skip_for(self, worker: int) -> int:
        """Samples of the resume point worker slot ``worker`` has yet to skip (0 once it began a pass)."""
        skip = self.skip
        if skip == 0:
            return 0
        if worker >= MAX_WORKERS:
            raise ValueError(f"DataLoader worker {worker}: resuming mid-epoch supports at most {MAX_WORKERS} "
                             "workers per rank")
        return 0 if self._started[worker] else skip

    def start_pass(self, world: World, *, in_worker: bool, regrouped: bool = False) -> None:
        """Record that ``world.worker`` begins a pass: its part of a pending resume point is used up.

        ``regrouped``: the pass resumes a point saved with another number of workers (which stays
        recorded, so that every worker of the pass sees it).
        """
        if self.skip_for(world.worker):
            self._started[world.worker] = 1
            if bool(self._started[:world.num_workers].all()):
                self._values[1] = 0
        else:  # a pass after the resumed one: whole, counted from the epoch's start
            self._values[1] = 0
            self._values[2] = 0
        if in_worker:
            self._values[3] = 1
        if regrouped:
            self._values[5] = 1
        else:
            self._values[4] = world.num_workers
            self._values[5] = 0

    def state_dict(self, samples_consumed: int, **identity: Any) -> dict[str, Any]:
        """The resume state after ``samples_consumed`` samples of the current pass.

        ``identity`` (seed, length, ...) is stored too and checked on load.
        """
        if samples_consumed < 0:
            raise ValueError(f"samples_consumed={samples_consumed} must be >= 0")
        return {"epoch": self.epoch, "samples_consumed": int(samples_consumed) + self.base, **identity}

    def load_state_dict(self, state: dict[str, Any], **identity: Any) -> None:
        """Restore a :meth:`state_dict`; raises ValueError if it belongs to another configuration."""
        check_identity(state, identity)
        if int(state["samples_consumed"]) < 0:
            raise ValueError(f"samples_consumed={state['samples_consumed']} in the state must be >= 0")
        self._reset(int(state["epoch"]), int(state["samples_consumed"]), int(state.get("num_workers", 0)))


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


class EpochResumable:
    """Mixin: epoch, DDP world, exact-resume state and copy semantics of the sampler and the iterable.

    The class sets ``self._progress = EpochProgress()`` and ``self._replicas = Replicas(...)``
    and implements ``_identity()`` (the settings a saved state must match to be loaded) and
    ``_own_state()`` (the state of what this process's own iteration has produced).
    Attributes named in ``_PROCESS_LOCAL`` describe this process's iteration and are reset
    in pickles and copies.
    """

    _progress: EpochProgress
    _replicas: Replicas
    _PROCESS_LOCAL: dict[str, Any] = {}

    def _identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def _own_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _loop_state(self, samples_consumed: int) -> dict[str, Any]:
        """The state after the training loop consumed ``samples_consumed`` samples of the current pass."""
        return self._progress.state_dict(samples_consumed, **self._identity())

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

        Reaches persistent DataLoader workers too.
        """
        if epoch != self.epoch:
            self.__dict__.update(self._PROCESS_LOCAL)
        self._progress.set_epoch(epoch)

    def state_dict(self, samples_consumed: int | None = None) -> dict[str, Any]:
        """Resume state, for a checkpoint.

        Args:
            samples_consumed: The samples of this epoch the training loop consumed on this rank
                (count them in the loop, ``sum(len(batch))``: the DataLoader prefetches ahead of
                the loop, so only the loop knows). None (torchdata's ``StatefulDataLoader``
                protocol): what this object's own iteration produced in this process.
        """
        if samples_consumed is None:
            return self._own_state()
        return self._loop_state(samples_consumed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the next pass yields exactly the rest of that epoch."""
        self._progress.load_state_dict(state, **self._identity())
        self.__dict__.update(self._PROCESS_LOCAL)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # type: ignore[misc]
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
