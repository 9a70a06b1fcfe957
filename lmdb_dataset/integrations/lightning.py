"""PyTorch Lightning: advance the epoch of iterable datasets, which Lightning leaves alone.

Lightning calls ``set_epoch`` on a DataLoader's sampler every epoch (and keeps a
:class:`~lmdb_dataset.ChunkShuffleSampler`, a ``DistributedSampler``, instead of wrapping it),
but never on the dataset, so an :class:`~lmdb_dataset.LMDBIterableDataset` would repeat its
first epoch's order. Add the callback::

    trainer = Trainer(..., callbacks=[SetEpochCallback()])
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import CombinedLoader


class SetEpochCallback(Callback):
    """Calls ``dataset.set_epoch(trainer.current_epoch)`` on every training dataset that has it.

    Runs at the start of each training epoch, where Lightning sets its samplers' epochs, so
    the dataset's order changes every epoch and follows ``current_epoch`` when training
    resumes. Datasets without ``set_epoch`` (map-style ones) are left alone.
    """

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for loader in CombinedLoader(trainer.train_dataloader).flattened:
            set_epoch: Any = getattr(getattr(loader, "dataset", None), "set_epoch", None)
            if callable(set_epoch):
                set_epoch(trainer.current_epoch)
