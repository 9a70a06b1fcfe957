"""``lmdb-dataset bench``: measure how fast a dataset feeds a DataLoader.

A DataLoader's first batches say little about its speed: the first one waits for the workers to
start and open the file, and the ones the workers prefetched meanwhile then arrive at once. So the
time to the first batch is reported apart, the first ``workers * prefetch_factor`` batches are
warm-up, and the steady-state figure comes only from the batches after them, and only when there
are at least :data:`MIN_STEADY_BATCHES` of those; otherwise the report says the dataset is too
small for one and gives the end-to-end rate, start-up included.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..decode.transforms import NormalizeBatch, train_transform, val_transform
from ..read.dataset import LMDBImageDataset
from ..read.iterable import LMDBIterableDataset
from ..read.sampler import ChunkShuffleSampler
from ..storage.environment import data_file
from ..storage.pagecache import evict_from_page_cache, resident_fraction
from ..storage.system import available_cpus

PREFETCH_FACTOR = 2
"""Batches each DataLoader worker loads ahead (the DataLoader's ``prefetch_factor``)."""

MIN_STEADY_BATCHES = 10
"""Batches after the warm-up needed for a steady-state figure."""


def warmup_batches(workers: int, prefetch_factor: int = PREFETCH_FACTOR) -> int:
    """Batches left out of the steady-state figure: the first one and those prefetched with it."""
    return max(1, workers * prefetch_factor)


@dataclasses.dataclass(frozen=True)
class BenchTiming:
    """Timings of one read through a DataLoader.

    Attributes:
        batch_done_s: Seconds from the start to the end of each batch (read and normalised).
        batch_images: Images in each batch.
        warmup: Batches treated as warm-up (see :func:`warmup_batches`).
        min_steady: Batches after the warm-up needed for a steady-state figure.
        epoch_batches: Batches in one epoch (more than were read when ``--batches`` cut the
            run short). Defaults to unknown.
    """

    batch_done_s: Sequence[float]
    batch_images: Sequence[int]
    warmup: int
    min_steady: int = MIN_STEADY_BATCHES
    epoch_batches: int | None = None

    @property
    def images(self) -> int:
        """Images read in all."""
        return sum(self.batch_images)

    @property
    def first_batch_s(self) -> float:
        """Seconds until the first batch was ready: worker start-up, file opening, first reads."""
        return self.batch_done_s[0] if self.batch_done_s else 0.0

    @property
    def end_to_end_images_per_s(self) -> float:
        """Images per second over the whole run, start-up included."""
        return self.images / self.batch_done_s[-1] if self.batch_done_s else 0.0

    @property
    def steady_batches(self) -> int:
        """Batches measured for the steady state (0 when there are too few for a figure)."""
        measured = len(self.batch_done_s) - self.warmup
        return measured if measured >= self.min_steady else 0

    @property
    def steady_images_per_s(self) -> float | None:
        """Images per second over the batches after the warm-up, or None if there are too few."""
        if not self.steady_batches:
            return None
        seconds = self.batch_done_s[-1] - self.batch_done_s[self.warmup - 1]
        return sum(self.batch_images[self.warmup:]) / max(seconds, 1e-9)


def decoded_shape(image: torch.Tensor) -> torch.Tensor:
    """The ``none`` pipeline's transform: keep only the decoded image's shape (so batches collate)."""
    return torch.tensor(image.shape)


def pipeline_transform(pipeline: str):
    """The uint8 transform of a pipeline name: ``train``, ``val`` or ``none`` (decode only)."""
    return {"train": train_transform(), "val": val_transform(), "none": decoded_shape}[pipeline]


def run_bench(path: str | os.PathLike, *, loader: str = "random", workers: int | None = None, batch_size: int = 256,
              pipeline: str = "train", cold: bool = False, batches: int | None = None,
              progress: bool = True) -> dict[str, float | None]:
    """Read a dataset through a DataLoader and print the time to the first batch and the steady speed.

    Args:
        path: Dataset directory.
        loader: ``random`` (LMDBImageDataset, shuffled), ``chunk`` (with ChunkShuffleSampler)
            or ``iterable`` (LMDBIterableDataset). Defaults to ``random``.
        workers: DataLoader workers. Defaults to the usable cores.
        batch_size: Defaults to 256.
        pipeline: ``train``, ``val`` or ``none``. Defaults to ``train``.
        cold: Evict the data file from the page cache first. Defaults to False.
        batches: Read at most this many batches (at least 1). Defaults to a whole epoch. For a
            steady-state figure, read at least ``workers * 2 + 10`` batches.
        progress: Show a progress bar. Defaults to True.

    Returns:
        ``images_per_s`` (steady state; None when too few batches were read), ``mb_per_s``
        (stored bytes, steady state; None likewise), ``first_batch_s``, ``end_to_end_images_per_s``
        (start-up included), ``images``, ``warmup_batches`` and ``steady_batches``.

    Raises:
        ValueError: ``batches`` or ``batch_size`` is below 1, ``workers`` below 0, or the dataset
            holds 0 records.
    """
    workers = available_cpus() if workers is None else workers
    if batches is not None and batches < 1:
        raise ValueError(f"batches={batches} must be at least 1 (or None for one epoch)")
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size={batch_size} must be at least 1 and workers={workers} at least 0")
    file = data_file(path)
    if cold:
        evict_from_page_cache(file)
        print(f"evicted {file}: {resident_fraction(file):.1%} of it left in the page cache")
    transform = pipeline_transform(pipeline)
    options: dict[str, Any] = dict(batch_size=batch_size, num_workers=workers, pin_memory=False,
                                   prefetch_factor=PREFETCH_FACTOR if workers else None)
    if loader == "iterable":
        dataset = LMDBIterableDataset(path, transform=transform, output="tensor", batch_size=batch_size)
    else:
        dataset = LMDBImageDataset(path, transform=transform, output="tensor")
    if not len(dataset.targets):
        raise ValueError(f"{os.fspath(path)!r} holds 0 records: there is nothing to read")
    if loader == "iterable":
        data_loader = DataLoader(dataset, **options)
    else:
        sampler = ChunkShuffleSampler(dataset) if loader == "chunk" else None
        data_loader = DataLoader(dataset, sampler=sampler, shuffle=sampler is None, **options)
    normalize = NormalizeBatch() if pipeline != "none" else None
    mean_record = Path(file).stat().st_size / max(len(dataset.targets), 1)
    total = min(len(data_loader), batches) if batches else len(data_loader)
    print(f"bench {loader}/{pipeline}: {total} batches of up to {batch_size} (one epoch is {len(data_loader)}), "
          f"{workers} workers")
    done: list[float] = []
    sizes: list[int] = []
    started = time.perf_counter()
    with tqdm(total=total, unit="batch", desc=f"bench {loader}/{pipeline}", disable=not progress) as bar:
        for batch, _ in data_loader:
            if normalize is not None:
                batch = normalize(batch)
            done.append(time.perf_counter() - started)
            sizes.append(len(batch))
            bar.update()
            if len(done) >= total:
                break
    timing = BenchTiming(done, sizes, warmup=warmup_batches(workers), epoch_batches=len(data_loader))
    print("\n".join(report_lines(timing, mean_record)))
    steady = timing.steady_images_per_s
    return {"images_per_s": steady, "mb_per_s": None if steady is None else steady * mean_record / 1e6,
            "first_batch_s": timing.first_batch_s, "end_to_end_images_per_s": timing.end_to_end_images_per_s,
            "images": timing.images, "warmup_batches": timing.warmup, "steady_batches": timing.steady_batches}


def report_lines(timing: BenchTiming, mean_record_bytes: float) -> list[str]:
    """What ``bench`` prints about a run, every figure from ``timing``."""
    lines = [f"{timing.images} images in {len(timing.batch_done_s)} batches, "
             f"{timing.batch_done_s[-1] if timing.batch_done_s else 0:.1f} s",
             f"time to first batch: {timing.first_batch_s:.2f} s (worker start-up, file opening, first reads)"]
    steady = timing.steady_images_per_s
    if steady is None:
        lines.append(f"steady state: not measured: {len(timing.batch_done_s)} batches read, it takes "
                     f"{timing.warmup} warm-up + {timing.min_steady} measured batches; "
                     + too_few_batches_advice(timing))
    else:
        lines.append(f"steady state: {steady:.0f} images/s ({steady * mean_record_bytes / 1e6:.1f} MB/s of stored "
                     f"data) over {timing.steady_batches} batches after {timing.warmup} warm-up batches")
    lines.append(f"end to end, start-up included: {timing.end_to_end_images_per_s:.0f} images/s")
    return lines


def too_few_batches_advice(timing: BenchTiming) -> str:
    """What to change when a run read too few batches for a steady-state figure, naming the cause.

    The warm-up is ``--workers`` x 2 prefetched batches: with many workers on a small dataset it
    is the warm-up, not the batch size, that eats the epoch.
    """
    read, needed = len(timing.batch_done_s), timing.warmup + timing.min_steady
    if timing.epoch_batches is not None and timing.epoch_batches > read:
        return f"--batches {read} stopped the run early: pass --batches {needed} or more (or leave it out)"
    images = sum(timing.batch_images)
    cures = []
    if timing.warmup > 1 and read > timing.min_steady:
        most = (read - timing.min_steady) // PREFETCH_FACTOR
        cures.append(f"--workers {most} or fewer (the warm-up is the {PREFETCH_FACTOR} batches each worker "
                     f"prefetches: {timing.warmup} here, for {read} batches read)")
    elif timing.warmup > 1:
        cures.append(f"fewer --workers (their {timing.warmup} prefetched batches are warm-up)")
    if images >= needed:
        cures.append(f"--batch-size {images // needed} or less")
    cures.append("a larger dataset")
    return "the dataset is too small for a steady-state figure: use " + ", or ".join(cures)
