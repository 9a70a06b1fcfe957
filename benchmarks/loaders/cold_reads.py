"""Cold-cache raw reads, no decoding: random records/s and near-sequential MB/s against the disk's own bandwidth."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import numpy as np

from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset
from lmdb_dataset.order.world import World
from lmdb_dataset.storage.environment import data_file, environments

from ..common.harness import MB, Case, Context, Result, evict
from .decode_cases import read_file


def random_batches(count: int, limit: int, seed: int, batch_size: int) -> list[np.ndarray]:
    """``limit`` random indices out of ``count``, in batches of ``batch_size``."""
    order = np.random.default_rng(seed).permutation(count)[:limit]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def read_lmdb_batches(dataset: LMDBImageDataset, batches: Iterable[np.ndarray]) -> tuple[int, int]:
    """Read record values batch by batch, sorted within a batch as ``__getitems__`` does; (records, bytes)."""
    records = size = 0
    for batch in batches:
        for _, value in dataset.reader.values(sorted(batch.tolist())):
            size += len(bytes(value))  # bytes() touches every page of an mmap view
            records += 1
    return records, size


def cold_raw_case(name: str, reader: Callable[[Context], tuple[Callable[[], tuple[int, int]], list[str]]],
                  unit: str) -> Case:
    """A cold-cache read case: evict the files, then time ``reader``'s work (records/s or MB/s)."""
    def run(ctx: Context) -> Result:
        environments.release(ctx.lmdb["encoded"])
        work, files = reader(ctx)
        state = evict(files)
        started = time.perf_counter()
        records, size = work()
        seconds = time.perf_counter() - started
        environments.release(ctx.lmdb["encoded"])
        value = records / seconds if unit == "records/s" else size / seconds / MB
        return {"value": value, "records": records, "mb_per_s": size / seconds / MB, **state}
    return Case(name, unit, run, lambda c: 5.0)


def lmdb_random_reader(access: str) -> Callable[[Context], tuple[Callable[[], tuple[int, int]], list[str]]]:
    """Random-order raw record reads through ``LMDBImageDataset.reader``."""
    def reader(ctx: Context) -> tuple[Callable[[], tuple[int, int]], list[str]]:
        dataset = LMDBImageDataset(ctx.lmdb["encoded"], access=access)
        batches = random_batches(len(dataset), ctx.args.cold_records, 1, ctx.args.batch_size)
        return (lambda: read_lmdb_batches(dataset, batches)), [str(data_file(dataset.path))]
    return reader


def imagefolder_reader(ctx: Context) -> tuple[Callable[[], tuple[int, int]], list[str]]:
    """Random-order open+read of ImageFolder files."""
    files = ctx.files
    batches = random_batches(len(files), ctx.args.cold_records, 1, ctx.args.batch_size)
    chosen = [files[i] for batch in batches for i in batch]

    def work() -> tuple[int, int]:
        return len(chosen), sum(len(read_file(path)) for path in chosen)
    return work, files


def sampler_batches(sampler: ChunkShuffleSampler, batch_size: int) -> Iterable[np.ndarray]:
    """The sampler's indices in batches, drawn lazily (iterating it prefetches its pools as a DataLoader would)."""
    indices = iter(sampler)
    while len(batch := np.fromiter((i for _, i in zip(range(batch_size), indices)), dtype=np.int64)):
        yield batch


def chunk_reader(ctx: Context) -> tuple[Callable[[], tuple[int, int]], list[str]]:
    """ChunkShuffleSampler order, batch by batch through ``storage.reader.values`` (pread), pools prefetched."""
    dataset = LMDBImageDataset(ctx.lmdb["encoded"])
    sampler = ChunkShuffleSampler(dataset)
    batches = sampler_batches(sampler, ctx.args.batch_size)
    return (lambda: read_lmdb_batches(dataset, batches)), [str(data_file(dataset.path))]


def iterable_reader(ctx: Context) -> tuple[Callable[[], tuple[int, int]], list[str]]:
    """LMDBIterableDataset's plan for one worker: pools prefetched as chunk runs, records read in its order."""
    dataset = LMDBIterableDataset(ctx.lmdb["encoded"], batch_size=ctx.args.batch_size)
    records, pools, runs = dataset.worker_plan(World())

    def work() -> tuple[int, int]:  # as LMDBIterableDataset.__iter__, less the next epoch's lookahead
        count = size = 0
        dataset.prefetch(runs[0])
        for pool in range(len(runs)):
            if pool + 1 < len(runs):
                dataset.prefetch(runs[pool + 1])
            for _, value in dataset.reader.values(records[pools == pool].tolist()):
                size += len(bytes(value))
                count += 1
        return count, size
    return work, [str(data_file(dataset.path))]


def sequential_reader(ctx: Context) -> tuple[Callable[[], tuple[int, int]], list[str]]:
    """The disk's sequential bandwidth: data.mdb read front to back in 8 MB reads."""
    path = str(data_file(ctx.lmdb["encoded"]))

    def work() -> tuple[int, int]:
        size = 0
        buffer = bytearray(8 << 20)
        with open(path, "rb", buffering=0) as file:
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while count := file.readinto(buffer):
                size += count
        return 1, size
    return work, [path]


def cold_read_cases() -> list[Case]:
    """Cold raw reads: random records/s (3a) and sequential-ish MB/s (3b)."""
    return [cold_raw_case("cold-read/random/lmdb-pread", lmdb_random_reader("pread"), "records/s"),
            cold_raw_case("cold-read/random/lmdb-mmap", lmdb_random_reader("mmap"), "records/s"),
            cold_raw_case("cold-read/random/imagefolder", imagefolder_reader, "records/s"),
            cold_raw_case("cold-read/seq/disk-sequential", sequential_reader, "MB/s"),
            cold_raw_case("cold-read/seq/lmdb-chunk", chunk_reader, "MB/s"),
            cold_raw_case("cold-read/seq/lmdb-iterable", iterable_reader, "MB/s")]


# --------------------------------------------------------------------------- conversion
