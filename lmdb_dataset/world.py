"""Where this process stands: its DDP rank and world size, and its DataLoader worker slot."""

from __future__ import annotations

import dataclasses

import torch.distributed as dist
from torch.utils.data import get_worker_info


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


def resolve_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``, defaulting to the torch.distributed world, else ``(1, 0)``.

    Raises:
        ValueError: ``rank`` is outside ``[0, num_replicas)``.
    """
    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas}) and num_replicas >= 1")
    return num_replicas, rank


def current_world(num_replicas: int, rank: int) -> World:
    """The :class:`World` of the calling process (inside a DataLoader worker or not)."""
    info = get_worker_info()
    if info is None:
        return World(rank, num_replicas)
    return World(rank, num_replicas, info.id, info.num_workers)
