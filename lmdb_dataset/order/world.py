"""Where this process stands: its DDP rank and world size, and its DataLoader worker slot."""

from __future__ import annotations

import dataclasses
import warnings

import torch.distributed as dist
from torch.utils.data import get_worker_info

from .maths import check_at_least


@dataclasses.dataclass(frozen=True)
class World:
    """A reader's place among DDP ranks and DataLoader workers.

    Attributes:
        rank: This process's DDP rank.
        num_replicas: Number of DDP ranks.
        worker: DataLoader worker id (0 in the main process).
        num_workers: DataLoader workers of this rank (1 in the main process).
    """

    rank: int = 0
    num_replicas: int = 1
    worker: int = 0
    num_workers: int = 1


def distributed_world() -> tuple[int, int] | None:
    """``(world_size, rank)`` of the initialised default process group, else None."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return None


@dataclasses.dataclass(frozen=True)
class Replicas:
    """The DDP world size and rank a reader shards for, resolved each time they are needed.

    ``None`` means "take torch.distributed's": resolving then reads the process group that
    exists *when iteration starts*, so a dataset or sampler built before the process group
    (a Lightning ``DataModule.__init__``, a script that builds data first) still shards
    correctly. Spawned DataLoader workers have no process group; they use ``inherited``, the
    world the parent process saw when it pickled the reader for them.

    Attributes:
        num_replicas: Explicit world size, or None.
        rank: Explicit rank, or None.
        inherited: ``(world_size, rank)`` seen by the process that pickled this object.
    """

    num_replicas: int | None = None
    rank: int | None = None
    inherited: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_at_least(1, num_replicas=self.num_replicas)
        check_at_least(0, rank=self.rank)
        if self.num_replicas is not None and self.rank is not None and self.rank >= self.num_replicas:
            raise ValueError(f"rank={self.rank} must be in [0, num_replicas={self.num_replicas})")

    def resolve(self) -> tuple[int, int]:
        """``(num_replicas, rank)``: explicit values, else the process group's, else the inherited, else (1, 0).

        Warns when explicit values (other than ``num_replicas=1``, "the whole dataset on this
        process") differ from the process group's.

        Raises:
            ValueError: The resolved ``rank`` is outside ``[0, num_replicas)``.
        """
        seen = distributed_world() or self.inherited
        num_replicas = self.num_replicas if self.num_replicas is not None else (seen[0] if seen else 1)
        if self.rank is not None:
            rank = self.rank
        else:  # num_replicas=1 alone means the whole dataset, on any rank
            rank = seen[1] if seen and num_replicas != 1 else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        explicit = self.num_replicas is not None or self.rank is not None
        if explicit and seen is not None and num_replicas != 1 and (num_replicas, rank) != seen:
            warnings.warn(f"sharding for num_replicas={num_replicas}, rank={rank} as given, but this process "
                          f"is rank {seen[1]} of a process group of {seen[0]}; leave num_replicas and rank "
                          "unset to follow the process group", stacklevel=3)
        return num_replicas, rank

    def pinned(self) -> Replicas:
        """A copy that remembers the current process group's world for processes without one."""
        return dataclasses.replace(self, inherited=distributed_world() or self.inherited)


def current_world(num_replicas: int, rank: int) -> World:
    """The :class:`World` of the calling process (inside a DataLoader worker or not)."""
    info = get_worker_info()
    if info is None:
        return World(rank, num_replicas)
    return World(rank, num_replicas, info.id, info.num_workers)
