"""The four ways of loading the seeds' experiment compares, each in two pipelines.

``raw`` reads each sample's bytes and yields their length (the storage alone, no decode);
``train`` decodes and applies RandomResizedCrop(224) + horizontal flip to a uint8 tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader
from torchvision.transforms import v2

from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset, train_transform

LOADERS = ("imagefolder", "lmdb-random", "lmdb-chunk", "lmdb-iterable")
PIPELINES = ("raw", "train")


def file_length(path: str) -> int:
    """ImageFolder's loader for raw reads: the file's bytes, read and counted."""
    with open(path, "rb") as file:
        return len(file.read())


class RawRecords(LMDBImageDataset):
    """Random access yielding each record's stored length instead of its decoded image."""

    def _sample(self, index: int, value: bytes | memoryview | None) -> tuple[Any, Any]:
        return len(value), 0


class RawStream(LMDBIterableDataset):
    """Cursor reads yielding each record's stored length instead of its decoded image."""

    def _sample(self, index: int, value: bytes | memoryview | None) -> tuple[Any, Any]:
        return len(value), 0


def imagefolder_train_transform() -> v2.Compose:
    """The train pipeline on ImageFolder's PIL images: crop and flip before converting to a tensor."""
    return v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()])


def make_loader(name: str, pipeline: str, root: Path, *, workers: int, batch_size: int,
                seed: int = 0) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """A DataLoader of loader ``name`` in ``pipeline`` over ``root/train`` or ``root/train.lmdb``.

    Constructing it opens the dataset (ImageFolder lists the tree; LMDB reads its metadata).
    """
    raw = pipeline == "raw"
    generator = torch.Generator().manual_seed(seed)
    common = {"batch_size": batch_size, "num_workers": workers, "persistent_workers": False}
    if name == "imagefolder":
        dataset = ImageFolder(os.fspath(root / "train"), loader=file_length if raw else default_loader,
                              transform=None if raw else imagefolder_train_transform())
        return DataLoader(dataset, sampler=RandomSampler(dataset, generator=generator), **common)
    lmdb_path = root / "train.lmdb"
    if name == "lmdb-iterable":
        if raw:
            dataset = RawStream(lmdb_path, batch_size=batch_size, seed=seed)
        else:
            dataset = LMDBIterableDataset(lmdb_path, transform=train_transform(), output="tensor",
                                          batch_size=batch_size, seed=seed)
        return DataLoader(dataset, **common)
    if raw:
        dataset = RawRecords(lmdb_path)
    else:
        dataset = LMDBImageDataset(lmdb_path, transform=train_transform(), output="tensor")
    if name == "lmdb-random":
        sampler = RandomSampler(dataset, generator=generator)
    elif name == "lmdb-chunk":
        sampler = ChunkShuffleSampler(dataset, seed=seed)
    else:
        raise ValueError(f"loader={name!r} is not supported; use one of {', '.join(LOADERS)}")
    return DataLoader(dataset, sampler=sampler, **common)
