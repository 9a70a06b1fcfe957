"""Augmentation draws keyed by sample: ``(seed, epoch, record)`` seeds the random crop and flip of a record.

``torch.utils.data.DataLoader`` seeds each worker's RNG from one base seed drawn in the main
process, so under DDP, where every rank seeds alike, the workers of all ranks draw the same
numbers in the same sequence: each global batch repeats one rank's augmentation draws
``world_size`` times over. :class:`LMDBLoader` draws each sample's crop and flip from a
generator seeded by ``(seed, epoch, record)`` instead (:class:`RecordDraws`): two ranks
never share draws (they read different records), an epoch never repeats the last one's,
and a run is reproducible from ``seed`` whatever the number of ranks or workers, across a
resume too (a record gets the same crop in a resumed epoch as in the uninterrupted one).
A record that ``DistributedSampler``'s padding delivers twice in an epoch gets the same
draws both times.
"""

from __future__ import annotations

from typing import Any

import torch

from .resume import EpochProgress

_MASK = (1 << 64) - 1


def _mix(value: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers that scatters neighbouring inputs."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def draw_seed(*words: int) -> int:
    """A 64-bit seed from non-negative integers (``seed, epoch, record``), different for each tuple in practice."""
    value = 0
    for word in words:
        value = _mix(value ^ (int(word) & _MASK))
    return value


class RecordDraws:
    """The random generator of each sample's augmentation: seeded by ``(seed, epoch, record)``.

    Args:
        seed: The run's seed.
        progress: The reader's epoch (shared memory: reaches DataLoader workers, persistent or not).
    """

    def __init__(self, seed: int, progress: EpochProgress) -> None:
        self.seed = seed
        self.progress = progress
        self._generator: torch.Generator | None = None  # one per process, re-seeded per sample

    def generator(self, record: int) -> torch.Generator:
        """This process's generator, seeded for ``record`` in the current epoch."""
        if self._generator is None:
            self._generator = torch.Generator()
        self._generator.manual_seed(draw_seed(self.seed, self.progress.epoch, record))
        return self._generator

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_generator": None}
