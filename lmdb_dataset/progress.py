"""Epoch number and mid-epoch resume point, shared by the sampler and the iterable dataset."""

from __future__ import annotations

from typing import Any

import torch


class EpochProgress:
    """The epoch to produce and how many of its samples were already consumed.

    Kept in a shared-memory tensor, so ``set_epoch`` in the training process reaches
    DataLoader workers that outlive an epoch (``persistent_workers=True``), under fork and
    spawn alike. A resume point applies to the epoch it was saved for and is cleared when
    another epoch is set.
    """

    def __init__(self) -> None:
        self._values = torch.zeros(2, dtype=torch.int64).share_memory_()  # [epoch, samples to skip]

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return int(self._values[0])

    @property
    def skip(self) -> int:
        """Samples of the current epoch already consumed (to be skipped)."""
        return int(self._values[1])

    def set_epoch(self, epoch: int) -> None:
        """Switch to ``epoch``; a resume point of another epoch is dropped."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be >= 0")
        if epoch != self.epoch:
            self._values[1] = 0
        self._values[0] = epoch

    def state_dict(self, samples_consumed: int, **identity: Any) -> dict[str, Any]:
        """The resume state after ``samples_consumed`` samples of the current epoch.

        ``identity`` (seed, length, ...) is stored too and checked on load.
        """
        if samples_consumed < 0:
            raise ValueError(f"samples_consumed={samples_consumed} must be >= 0")
        return {"epoch": self.epoch, "samples_consumed": int(samples_consumed) + self.skip, **identity}

    def load_state_dict(self, state: dict[str, Any], **identity: Any) -> None:
        """Restore a :meth:`state_dict`; raises ValueError if it belongs to another configuration."""
        for key, value in identity.items():
            if state.get(key) != value:
                raise ValueError(f"state was saved with {key}={state.get(key)!r}, this object has "
                                 f"{key}={value!r}")
        self._values[0] = int(state["epoch"])
        self._values[1] = int(state["samples_consumed"])


class EpochResumable:
    """Mixin: ``epoch``, ``set_epoch`` and exact-resume ``state_dict``/``load_state_dict``.

    The class sets ``self._progress = EpochProgress()`` and implements ``_identity()``: the
    settings a saved state must match to be loaded.
    """

    _progress: EpochProgress

    def _identity(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def epoch(self) -> int:
        """The epoch whose order is produced."""
        return self._progress.epoch

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (deterministic in ``seed`` and ``epoch``), like ``DistributedSampler``.

        Reaches persistent DataLoader workers too.
        """
        self._progress.set_epoch(epoch)

    def state_dict(self, samples_consumed: int = 0) -> dict[str, Any]:
        """Resume state after the training loop consumed ``samples_consumed`` samples of this epoch.

        Count samples in the loop (``sum(len(batch))``, on this rank): the DataLoader prefetches
        ahead of the loop, so only the loop knows what was consumed.
        """
        return self._progress.state_dict(samples_consumed, **self._identity())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the next iteration yields exactly the rest of that epoch."""
        self._progress.load_state_dict(state, **self._identity())
