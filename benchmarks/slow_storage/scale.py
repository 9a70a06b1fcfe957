"""ImageNet scale without ImageNet: what a 1.28M-record dataset costs to open, plan, hold and start.

    python -m benchmarks.slow_storage.scale /tmp/slow/scale --records 1281167

Builds (once) a synthetic dataset of ``--records`` tiny JPEGs (8x8 px, 1,000 classes) with
:class:`LMDBWriter`, measuring the writer's peak memory, then measures on a cold page cache:
the time to open each dataset class, the time to build one epoch's plan for every
(DDP rank, DataLoader worker) of 8 ranks x 8 workers, the USS of 8 persistent DataLoader
workers at the first and last batch of two whole epochs (with and without the pages of the
memory-mapped data file), and the first-batch latency with 8 workers. Results go to ``--out`` (default
``benchmarks/slow_storage/scale.json``, a section of ``benchmarks/RESULTS.md``) and are printed.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image
from torch.utils.data import DataLoader

from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset, LMDBWriter
from lmdb_dataset.order.world import World
from lmdb_dataset.storage.environment import DATA_FILE, environments
from lmdb_dataset.storage.pagecache import evict_from_page_cache

IMAGENET_RECORDS = 1_281_167
CLASSES = 1000
RANKS = 8
WORKERS = 8
BATCH = 256
MB = 1e6


def tiny_jpegs(count: int = 64, *, seed: int = 0) -> list[bytes]:
    """``count`` distinct 8x8 JPEGs of random colours."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def build(path: Path, records: int) -> None:
    """Write ``records`` tiny JPEGs to a new dataset at ``path`` (``i % 1000`` is record i's label)."""
    images = tiny_jpegs()
    classes = [f"n{c:08d}" for c in range(CLASSES)]
    with LMDBWriter(path, classes=classes, source="synthetic 8x8 JPEGs", commit_records=65536,
                    commit_bytes=256 << 20) as writer:
        for i in range(records):
            writer.add(images[i % len(images)], i % CLASSES)


def build_measured(path: Path, records: int) -> dict[str, float]:
    """Run :func:`build` (into ``path``, named ``train.lmdb``) in a child process.

    Returns its wall time, its peak USS and peak USS without the mapped data file (see
    :func:`memory_mb`; sampled every 0.2 s, the child's imports of torch and numpy included),
    and ``build_private_growth_mb``: the latter less the USS before building.
    """
    command = [sys.executable, "-m", "benchmarks.slow_storage.scale", os.fspath(path.parent), "--records", str(records),
               "--build-only"]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE)
    peak_uss = peak_private = 0.0
    process = psutil.Process(child.pid)
    while child.poll() is None:
        try:
            uss, private = memory_mb(process, path / DATA_FILE)
        except psutil.NoSuchProcess:
            break
        peak_uss, peak_private = max(peak_uss, uss), max(peak_private, private)
        time.sleep(0.2)
    if child.returncode != 0:
        raise RuntimeError(f"building {path} failed (exit status {child.returncode})")
    start_uss = json.loads(child.stdout.read())["uss_before_build"] / MB
    return {"build_s": time.perf_counter() - started, "build_peak_uss_mb": peak_uss,
            "build_peak_private_mb": peak_private, "build_private_growth_mb": peak_private - start_uss,
            "data_file_mb": os.path.getsize(path / DATA_FILE) / MB}


def cold(path: Path) -> None:
    """Close this process's environment of ``path`` and evict the dataset's files."""
    environments.release(path)
    for name in os.listdir(path):
        evict_from_page_cache(path / name)


def open_seconds(path: Path) -> dict[str, float]:
    """Seconds to construct each dataset class on a cold cache."""
    result = {}
    for name, cls in (("open_map_s", LMDBImageDataset), ("open_iterable_s", LMDBIterableDataset)):
        cold(path)
        started = time.perf_counter()
        cls(path)
        result[name] = time.perf_counter() - started
    return result


def plan_seconds(path: Path) -> dict[str, float]:
    """Seconds to build one epoch's plan, for each of RANKS x WORKERS (iterable) and each rank (sampler)."""
    iterable_times, sampler_times = [], []
    dataset = LMDBImageDataset(path)
    for rank in range(RANKS):
        stream = LMDBIterableDataset(path, num_replicas=RANKS, rank=rank, batch_size=BATCH)
        for worker in range(WORKERS):
            started = time.perf_counter()
            stream.worker_plan(World(rank=rank, num_replicas=RANKS, worker=worker, num_workers=WORKERS))
            iterable_times.append(time.perf_counter() - started)
        sampler = ChunkShuffleSampler(dataset, num_replicas=RANKS, rank=rank)
        started = time.perf_counter()
        sampler.epoch_indices()
        sampler_times.append(time.perf_counter() - started)
    return {"plan_iterable_max_s": max(iterable_times), "plan_iterable_median_s": statistics.median(iterable_times),
            "plan_sampler_max_s": max(sampler_times), "plan_sampler_median_s": statistics.median(sampler_times)}


def memory_mb(process: psutil.Process, data_file: Path) -> tuple[float, float]:
    """``(USS, USS less the pages of data_file it maps)`` of ``process``, in MB.

    Pages of a memory-mapped file that only one process maps count in its USS although they
    are page cache (reclaimable, and shared with any later reader of the file): the second
    number leaves the dataset's own map out, so what remains is the process's private memory.
    """
    mapped = sum(region.private_clean + region.private_dirty for region in process.memory_maps()
                 if region.path == os.fspath(data_file))
    uss = process.memory_full_info().uss
    return uss / MB, (uss - mapped) / MB


def worker_memory(iterator: Any, data_file: Path) -> list[tuple[float, float]]:
    """:func:`memory_mb` of each live DataLoader worker of ``iterator``."""
    return [memory_mb(psutil.Process(worker.pid), data_file) for worker in iterator._workers]


def first_batch_and_memory(path: Path, kind: str) -> dict[str, float]:
    """First-batch latency (cold) with WORKERS persistent workers, and their memory over two whole epochs.

    Memory is taken at the first and the last batch of each epoch, per worker. The growth
    over an epoch is the second epoch's (first to last batch, the worst worker), as in the
    main benchmark's memory stage; the first epoch's, which includes the workers' warm-up,
    is reported beside it. Both for the USS and for the USS without the mapped data file.
    """
    cold(path)
    started = time.perf_counter()
    if kind == "iterable":
        loader = DataLoader(LMDBIterableDataset(path, output="numpy", batch_size=BATCH), batch_size=BATCH,
                            num_workers=WORKERS, persistent_workers=True)
    else:
        dataset = LMDBImageDataset(path, output="numpy")
        sampler = ChunkShuffleSampler(dataset) if kind == "chunk" else None
        loader = DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS, sampler=sampler,
                            shuffle=sampler is None, persistent_workers=True)
    result: dict[str, float] = {}
    points = []
    for epoch in range(2):
        iterator = iter(loader)
        next(iterator)
        if epoch == 0:
            result[f"{kind}_first_batch_s"] = time.perf_counter() - started
        points.append(worker_memory(iterator, path / DATA_FILE))
        for _ in iterator:
            pass
        points.append(worker_memory(iterator, path / DATA_FILE))  # persistent workers: alive after the last batch
    del iterator, loader
    for column, name in ((0, "uss"), (1, "private")):
        start1, end1, start2, end2 = ([worker[column] for worker in point] for point in points)
        result[f"{kind}_{name}_first_mb"] = statistics.median(start1)
        result[f"{kind}_{name}_last_mb"] = statistics.median(end2)
        result[f"{kind}_{name}_growth_first_epoch_max"] = max((b - a) / a for a, b in zip(start1, end1))
        result[f"{kind}_{name}_growth_max"] = max((b - a) / a for a, b in zip(start2, end2))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="scratch folder (the dataset is built in FOLDER/train.lmdb)")
    parser.add_argument("--records", type=int, default=IMAGENET_RECORDS, help="(default: %(default)s)")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="+", choices=("open", "plan", "memory"), default=[],
                        help="measurements to leave out (their previous results in --out stay)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "scale.json",
                        help="results file (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build if needed, measure, print and write (or update) the results file."""
    args = parse_args(argv)
    path = args.folder / "train.lmdb"
    if args.build_only:
        print(json.dumps({"uss_before_build": psutil.Process().memory_full_info().uss}), flush=True)
        build(path, args.records)
        return
    results_file = args.out
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.exists() else {}
    if not (path / DATA_FILE).exists():
        args.folder.mkdir(parents=True, exist_ok=True)
        results.update(build_measured(path, args.records))
    results.update({"records": args.records, "load_1min": os.getloadavg()[0],
                    "command": " ".join(["python -m benchmarks.slow_storage.scale", *(argv or sys.argv[1:])]),
                    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")})
    if "open" not in args.skip:
        results.update(open_seconds(path))
    if "plan" not in args.skip:
        results.update(plan_seconds(path))
    if "memory" not in args.skip:
        for kind in ("map", "chunk", "iterable"):
            results.update(first_batch_and_memory(path, kind))
    results_file.write_text(json.dumps(results, indent=1) + "\n")
    for key, value in results.items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")


if __name__ == "__main__":
    main()
