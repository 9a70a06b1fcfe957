"""``lmdb-dataset bench``: measure how fast a dataset feeds a DataLoader, and page-cache control."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .dataset import LMDBImageDataset
from .environment import data_file
from .iterable import LMDBIterableDataset
from .pagecache import evict_from_page_cache, resident_fraction
from .sampler import ChunkShuffleSampler
from .transforms import NormalizeBatch, train_transform, val_transform


def decoded_shape(image: torch.Tensor) -> torch.Tensor:
    """The ``none`` pipeline's transform: keep only the decoded image's shape (so batches collate)."""
    return torch.tensor(image.shape)


def pipeline_transform(pipeline: str):
    """The uint8 transform of a pipeline name: ``train``, ``val`` or ``none`` (decode only)."""
    return {"train": train_transform(), "val": val_transform(), "none": decoded_shape}[pipeline]


def run_bench(path: str | os.PathLike, *, loader: str = "random", workers: int | None = None, batch_size: int = 256,
              pipeline: str = "train", cold: bool = False, batches: int | None = None) -> dict[str, float]:
    """Read a dataset through a DataLoader and print images/s and MB/s.

    Args:
        path: Dataset directory.
        loader: ``random`` (LMDBImageDataset, shuffled), ``chunk`` (with ChunkShuffleSampler)
            or ``iterable`` (LMDBIterableDataset). Defaults to ``random``.
        workers: DataLoader workers. Defaults to the usable cores.
        batch_size: Defaults to 256.
        pipeline: ``train``, ``val`` or ``none``. Defaults to ``train``.
        cold: Evict the data file from the page cache first. Defaults to False.
        batches: Stop after this many batches. Defaults to a whole epoch.

    Returns:
        ``images_per_s``, ``mb_per_s`` (stored bytes read), ``first_batch_s`` and ``images``.
    """
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    file = data_file(path)
    if cold:
        evict_from_page_cache(file)
        print(f"evicted {file}: {resident_fraction(file):.1%} of it left in the page cache")
    transform = pipeline_transform(pipeline)
    options = dict(batch_size=batch_size, num_workers=workers, pin_memory=False)
    if loader == "iterable":
        dataset = LMDBIterableDataset(path, transform=transform, output="tensor", batch_size=batch_size)
        data_loader = DataLoader(dataset, **options)
    else:
        dataset = LMDBImageDataset(path, transform=transform, output="tensor")
        sampler = ChunkShuffleSampler(dataset) if loader == "chunk" else None
        data_loader = DataLoader(dataset, sampler=sampler, shuffle=sampler is None, **options)
    normalize = NormalizeBatch() if pipeline != "none" else None
    mean_record = Path(file).stat().st_size / max(len(dataset.targets), 1)
    total = min(len(data_loader), batches) if batches else len(data_loader)
    started = time.perf_counter()
    first_batch = 0.0
    images = 0
    with tqdm(total=total, unit="batch", desc=f"bench {loader}/{pipeline}") as bar:
        for step, (batch, _) in enumerate(data_loader):
            if normalize is not None:
                batch = normalize(batch)
            images += len(batch)
            if step == 0:
                first_batch = time.perf_counter() - started
                steady_start, steady_images = time.perf_counter(), images
            bar.update()
            if step + 1 >= total:
                break
    elapsed = time.perf_counter() - started
    steady = (images - steady_images) / max(time.perf_counter() - steady_start, 1e-9) if total > 1 else images / elapsed
    result = {"images_per_s": steady, "mb_per_s": steady * mean_record / 1e6, "first_batch_s": first_batch,
              "images": images}
    print(f"{images} images in {elapsed:.1f} s: first batch after {first_batch:.2f} s, then "
          f"{steady:.0f} images/s ({result['mb_per_s']:.1f} MB/s of stored data)")
    return result
