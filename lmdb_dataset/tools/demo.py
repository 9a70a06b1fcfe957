"""``lmdb-dataset demo``: build a sample dataset, convert it, train-read it, report speeds."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as v1
from torchvision.datasets import ImageFolder

from ..decode.transforms import IMAGENET_MEAN, IMAGENET_STD, NormalizeBatch, train_transform
from ..read.dataset import LMDBImageDataset
from ..read.iterable import LMDBIterableDataset
from ..read.sampler import ChunkShuffleSampler
from ..storage.system import available_cpus
from ..write.convert import convert_image_folder
from .photo_folders import make_photo_folder


def _images_per_second(loader: Iterable, prepare: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, int]:
    started, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(prepare(images))
    return count / (time.perf_counter() - started), count


def run_demo(workdir: str | os.PathLike | None = None, *, num_images: int = 512, workers: int | None = None,
             batch_size: int = 64) -> None:
    """Build ``num_images`` photographic JPEGs, convert them, read them back and print speeds.

    Args:
        workdir: Where to build; a temporary directory (deleted afterwards) by default.
        num_images: Size of the sample ImageFolder. Defaults to 512.
        workers: DataLoader and conversion workers. Defaults to the usable cores.
        batch_size: DataLoader batch size. Defaults to 64.
    """
    workers = available_cpus() if workers is None else workers
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="lmdb-dataset-demo-") as tmp:
            return run_demo(tmp, num_images=num_images, workers=workers, batch_size=batch_size)
    root = Path(workdir)
    source, target = root / "images", root / "train.lmdb"
    print(f"1. Building a sample ImageFolder of {num_images} photographic JPEGs in {source}")
    make_photo_folder(source, num_images=num_images, num_classes=min(6, num_images), workers=max(workers, 1),
                      progress=True, size_profile="imagenet")
    print(f"2. Converting it to {target}")
    report = convert_image_folder(source, target, workers=workers, overwrite=True)
    print(f"   {report.num_records} records, {report.bytes_read / 1e6:.1f} MB read in {report.seconds:.1f} s "
          f"({report.num_records / report.seconds:.0f} images/s)")

    reference = ImageFolder(str(source))
    lmdb_view = LMDBImageDataset(target)
    same = all(np.array_equal(np.asarray(lmdb_view[i][0]), np.asarray(reference[i][0])) and
               lmdb_view[i][1] == reference[i][1] for i in range(0, len(reference), 37))
    print(f"3. Pixels and labels equal torchvision's ImageFolder on sampled records: {'yes' if same else 'NO'}")

    print(f"4. Reading one epoch with DataLoader(batch_size={batch_size}, num_workers={workers}), "
          "train augmentation (RandomResizedCrop 224 + flip); worker start-up included:")
    loader_options: dict[str, Any] = dict(batch_size=batch_size, num_workers=workers, persistent_workers=False)
    classic = v1.Compose([v1.RandomResizedCrop(224), v1.RandomHorizontalFlip(), v1.ToTensor(),
                          v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    normalize = NormalizeBatch()
    fast = LMDBImageDataset(target, transform=train_transform(), output="tensor")
    runs: list[tuple[str, DataLoader, Callable[[torch.Tensor], torch.Tensor]]] = [
        ("ImageFolder + Pillow, float transforms (baseline)",
         DataLoader(ImageFolder(str(source), transform=classic), shuffle=True, **loader_options), lambda x: x),
        ("LMDBImageDataset + ChunkShuffleSampler, uint8 + NormalizeBatch",
         DataLoader(fast, sampler=ChunkShuffleSampler(fast), **loader_options), normalize),
        ("LMDBIterableDataset, uint8 + NormalizeBatch",
         DataLoader(LMDBIterableDataset(target, transform=train_transform(), output="tensor",
                                        batch_size=batch_size), **loader_options), normalize),
    ]
    baseline = None
    for name, loader, prepare in runs:
        rate, count = _images_per_second(loader, prepare)
        baseline = baseline or rate
        print(f"   {name:66s} {rate:7.0f} images/s  ({rate / baseline:.2f}x, {count} images)")
    print("Done. Measure your own dataset with `lmdb-dataset bench PATH`; full benchmarks: benchmarks/RESULTS.md")
