"""Microbenchmark of a device model through the mounted passthrough: random 4 KB IOPS, sequential MB/s.

    python -m benchmarks.slow_storage.validate SOURCE_DIR FILE_IN_IT --model hdd

prints what the mount delivers next to the model's nominal numbers, with the load average
(the delays are sleeps: a busy machine wakes the serving threads late).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lmdb_dataset.errors import LMDBDatasetError
from lmdb_dataset.storage.environment import load_metadata

from .models import SERVING_THREADS, HddModel, NfsModel, layout
from .mount import mounted
from .report import validation_table

PAGE = 4096
SEQUENTIAL_CHUNK = 1 << 20
DEEP = 4 * SERVING_THREADS
"""Requests in flight for the deep-queue test: more than the mount serves at once."""


def random_reads(path: Path, *, count: int, threads: int, seed: int = 0) -> float:
    """Random page-aligned 4 KB reads/s of ``path`` with ``threads`` requests in flight (readahead off)."""
    size = os.path.getsize(path)
    offsets = np.random.default_rng(seed).integers(0, size // PAGE, count) * PAGE
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda offset: os.pread(fd, PAGE, int(offset)), offsets))
        return count / (time.perf_counter() - started)
    finally:
        os.close(fd)


def sequential_read(path: Path, *, limit: int) -> float:
    """MB/s reading the first ``limit`` bytes of ``path`` front to back in 1 MB reads."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        started, done = time.perf_counter(), 0
        while done < limit:
            chunk = os.pread(fd, SEQUENTIAL_CHUNK, done)
            if not chunk:
                break
            done += len(chunk)
        return done / 1e6 / (time.perf_counter() - started)
    finally:
        os.close(fd)


def mean_record_bytes(data_file: Path) -> float | None:
    """The mean stored size of the records of the dataset ``data_file`` belongs to (None: not one with offsets)."""
    try:
        spans = load_metadata(data_file.parent).spans
    except LMDBDatasetError:
        return None
    return None if spans is None or len(spans) == 0 else float(spans[:, 1].mean())


def validate(source: Path, relative: str, model: str, *, rtt_ms: float = 0.5, count: int = 200,
             sequential_bytes: int = 200_000_000) -> dict[str, float]:
    """Measure ``model`` on the file ``source/relative``, each test on a fresh cold mount.

    For ``hdd`` also the elevator's gain from a deep queue, measured and simulated
    (:meth:`HddModel.scattered_reads_per_s` with the :data:`SERVING_THREADS` requests the mount
    queues at most): random 4 KB reads with :data:`DEEP` in flight, the simulated rate of the
    same, and the simulated rate of the dataset's records (``relative`` is the ``data.mdb`` of a
    dataset, if it is one), which bounds random access in ``report.ceiling``.

    Returns:
        Measured ``random_4k_iops`` (1 in flight), ``random_4k_iops_16`` (16 in flight),
        ``sequential_mb_s``, the nominal ``nominal_random_4k_iops`` / ``nominal_sequential_mb_s``,
        ``load_1min`` (the 1-minute load average before the tests); for ``hdd``
        ``random_4k_iops_deep`` (``deep_in_flight`` in flight), ``simulated_random_4k_iops_deep``
        (``serving_threads`` queued), and, when ``relative`` is a dataset's data file,
        ``record_bytes`` (its mean record) and ``simulated_records_per_s``.
    """
    nominal_model = HddModel(layout(os.fspath(source))) if model == "hdd" else NfsModel(rtt=rtt_ms / 1e3)
    result = {f"nominal_{key}": value for key, value in nominal_model.nominal().items()}
    result["load_1min"] = os.getloadavg()[0]
    with mounted(source, model, rtt_ms=rtt_ms) as mountpoint:
        result["random_4k_iops"] = random_reads(mountpoint / relative, count=count, threads=1)
    with mounted(source, model, rtt_ms=rtt_ms) as mountpoint:
        result["random_4k_iops_16"] = random_reads(mountpoint / relative, count=count * 4, threads=16)
    if isinstance(nominal_model, HddModel):
        path = "/" + Path(relative).as_posix()
        with mounted(source, model, rtt_ms=rtt_ms) as mountpoint:
            result["random_4k_iops_deep"] = random_reads(mountpoint / relative, count=count * 8, threads=DEEP)
        result["deep_in_flight"], result["serving_threads"] = DEEP, SERVING_THREADS
        result["simulated_random_4k_iops_deep"] = nominal_model.scattered_reads_per_s(path, PAGE,
                                                                                      queued=SERVING_THREADS)
        record_bytes = mean_record_bytes(source / relative)
        if record_bytes is not None:
            result["record_bytes"] = record_bytes
            result["simulated_records_per_s"] = nominal_model.scattered_reads_per_s(
                path, round(record_bytes), queued=SERVING_THREADS)
    with mounted(source, model, rtt_ms=rtt_ms) as mountpoint:
        result["sequential_mb_s"] = sequential_read(mountpoint / relative, limit=sequential_bytes)
    return result


def main(argv: list[str] | None = None) -> None:
    """Validate the models named on the command line and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="directory to serve")
    parser.add_argument("file", help="a large file in it, relative to SOURCE")
    parser.add_argument("--model", choices=("hdd", "nfs"), nargs="+", default=["hdd", "nfs"])
    parser.add_argument("--rtt-ms", type=float, default=0.5, help="nfs round trip in ms (default: %(default)s)")
    args = parser.parse_args(argv)
    results = {model: validate(args.source, args.file, model, rtt_ms=args.rtt_ms) for model in args.model}
    print(validation_table(results))


if __name__ == "__main__":
    main()
