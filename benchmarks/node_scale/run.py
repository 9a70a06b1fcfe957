"""Node scale: 8 simulated DDP ranks, each its own DataLoader over one dataset, against one rank with all the workers.

    python -m benchmarks.node_scale.run --data /tmp/scale1m/data.lmdb
    python -m benchmarks.node_scale.run --quick          # seconds: a tiny dataset, 2 ranks x 1 worker

Every rank is a process of one process tree (started by ``fork`` from this one) that builds
its own DataLoader with an explicit ``num_replicas``/``rank`` (no process group), waits at a
barrier so that all ranks start together, and reads ``--batches`` batches. Readers:
``map-random`` (:class:`LMDBImageDataset` + :class:`ChunkShuffleSampler` with ``chunk_size=1``),
``map-chunk`` (the sampler's defaults) and ``iterable`` (:class:`LMDBIterableDataset`);
pipelines: ``raw`` (``output="numpy"``: read and decode, no transform) and ``train``
(``output="tensor"`` + :func:`lmdb_dataset.train_transform`). Each (reader, pipeline) runs as
``R`` ranks x ``W`` workers and as 1 rank x ``R*W`` workers (the same total of workers and of
samples), in interleaved rounds on a warm page cache; the ratio of their aggregate steady
rates is taken within a round.

Measured per configuration: the aggregate steady rate (samples/s over the window in which
every rank has had a batch from each of its workers and none has finished), the time from
the barrier to each rank's first batch, at the end (all ranks done, iterators alive) the
USS, PSS and USS less the pages of the mapped data file of every process, its open file
descriptors and threads, and the prefetcher's time per pool: ``storage.prefetching.advise`` (the
``posix_fadvise`` calls), ``SharedAsk.asked_elsewhere`` (a worker waiting for its rank's
asker), ``storage.prefetching.read_through`` (``pread`` until the pool is cached) and
``Prefetcher.request`` calls, wrapped in every process (forked ones). Also, once per reader:
a cold start (data file evicted; the page-cache resident fraction after the run) and ``R``
ranks x ``--big-workers`` workers (memory, descriptors, threads, costs per pool), and, per start
method (fork, spawn, forkserver), the private memory of ``--memory-workers`` workers of one rank
of ``R``, beside the same workers over a dataset that reads nothing (``bare``: the floor).

Writes a JSON (default ``benchmarks/data/results/node_scale.json``, a scratch folder) and
prints the section of RESULTS.md that :func:`benchmarks.node_scale.report.markdown` renders;
``--out benchmarks/node_scale/results.json`` replaces the committed results and re-renders
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch
from torch.utils.data import DataLoader

from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset, train_transform
from lmdb_dataset.storage import prefetching
from lmdb_dataset.storage.environment import DATA_FILE
from lmdb_dataset.storage.pagecache import resident_fraction

from ..slow_storage.scale import build, cold, memory_mb
from . import report

READERS = ("map-random", "map-chunk", "iterable")
PIPELINES = ("raw", "train")
START_METHODS = ("fork", "spawn", "forkserver", "forkserver-preload")
"""DataLoader start methods of the memory runs; ``forkserver-preload``: a forkserver that imported torch and
lmdb_dataset first (``multiprocessing.set_forkserver_preload``), so its workers share those pages."""
MIB = 1 << 20
BENCHMARKS = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Config:
    """One measured layout: ``ranks`` processes, each a DataLoader of ``workers`` workers."""

    reader: str
    pipeline: str
    ranks: int
    workers: int
    replicas: int
    seconds: float
    batch_size: int
    start_method: str = "fork"
    cold: bool = False

    @property
    def name(self) -> str:
        tail = f"/{self.start_method}" if self.start_method != "fork" else ""
        return f"{self.pipeline}/{self.reader}/{self.ranks}x{self.workers}{'/cold' if self.cold else ''}{tail}"


# ---- the prefetcher's probes, installed in every process -----------------------------------------------

_PROBE: dict[str, Any] = {"pid": None, "dir": None, "stats": {}}


def _save_probe() -> None:
    """Replace this process's counts file whole (a process may be ended while it writes; threads write too)."""
    path = Path(_PROBE["dir"]) / f"{os.getpid()}.json"
    partial = path.with_suffix(f".{threading.get_ident()}.tmp")
    partial.write_text(json.dumps(_PROBE["stats"]))
    os.replace(partial, path)


def _probe_stats() -> dict[str, list[float]]:
    if _PROBE["pid"] != os.getpid():  # a fresh process (fork copies the parent's counts): start from zero
        _PROBE["pid"], _PROBE["stats"] = os.getpid(), {}
    return _PROBE["stats"]


def _timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            entry = _probe_stats().setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - started
            _save_probe()
    wrapper.probed = True  # type: ignore[attr-defined]
    return wrapper


def install_probes(directory: str) -> None:
    """Wrap the prefetcher's system calls and waits in this process and its forked children.

    Each process writes its counts, ``{name: [calls, seconds]}``, to ``directory/PID.json``.
    """
    _PROBE["dir"] = directory
    if getattr(prefetching.advise, "probed", False):
        return
    prefetching.advise = _timed("advise", prefetching.advise)
    prefetching.read_through = _timed("read_through", prefetching.read_through)
    prefetching.SharedAsk.asked_elsewhere = _timed("asked_elsewhere", prefetching.SharedAsk.asked_elsewhere)
    prefetching.Prefetcher.request = _timed("request", prefetching.Prefetcher.request)


# ---- one rank ------------------------------------------------------------------------------------------

class BareDataset(torch.utils.data.Dataset):
    """The same number of samples as nothing: index -> index (what a worker costs before any dataset)."""

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> int:
        return index


def make_loader(path: Path, config: Config, rank: int) -> DataLoader:
    """Rank ``rank``'s DataLoader of ``config`` (explicit ``num_replicas``/``rank``, no process group)."""
    train = config.pipeline == "train"
    kwargs: dict[str, Any] = {"transform": train_transform() if train else None,
                              "output": "tensor" if train else "numpy"}
    loader_args: dict[str, Any] = {"batch_size": config.batch_size, "num_workers": config.workers}
    if config.workers:  # forked workers inherit the probes; spawned ones are left bare (their memory is measured)
        context = multiprocessing.get_context(config.start_method.removesuffix("-preload"))
        if config.start_method.endswith("-preload"):
            context.set_forkserver_preload(["torch", "lmdb_dataset"])
        loader_args["multiprocessing_context"] = context
    if config.reader == "bare":  # the floor: a worker of the same start method that reads nothing from LMDB
        return DataLoader(BareDataset(), **loader_args)
    if config.reader == "iterable":
        dataset = LMDBIterableDataset(path, num_replicas=config.replicas, rank=rank, batch_size=config.batch_size,
                                      **kwargs)
        return DataLoader(dataset, **loader_args)
    dataset = LMDBImageDataset(path, **kwargs)
    chunk = {"chunk_size": 1} if config.reader == "map-random" else {}
    sampler = ChunkShuffleSampler(dataset, num_replicas=config.replicas, rank=rank, **chunk)
    return DataLoader(dataset, sampler=sampler, **loader_args)


def rank_main(path: Path, config: Config, rank: int, start: Any, done: Any, probes: str, out: str) -> None:
    """A rank: build its loader, wait for every rank, read for ``config.seconds``, report, wait to be sampled."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores: on purpose
    install_probes(probes)
    loader = make_loader(path, config, rank)
    try:
        start.wait()
    except threading.BrokenBarrierError:  # the parent gave up
        return
    released = time.monotonic()
    deadline = released + config.seconds
    iterator = iter(loader)
    stamps = []
    for batch in iterator:
        stamps.append(time.monotonic())
        del batch
        if stamps[-1] >= deadline:
            break
    workers = [worker.pid for worker in getattr(iterator, "_workers", [])]
    Path(out).write_text(json.dumps({"rank": rank, "pid": os.getpid(), "workers": workers, "released": released,
                                     "deadline": deadline, "stamps": stamps}))
    with contextlib.suppress(threading.BrokenBarrierError):
        done.wait()  # the parent samples every process now, the workers still alive
        done.wait()


# ---- the parent ----------------------------------------------------------------------------------------

def process_sample(process: psutil.Process, data_file: Path) -> dict[str, float]:
    """Memory (MiB), descriptors and threads of one process."""
    full = process.memory_full_info()
    _, private_mb = memory_mb(process, data_file)
    return {"uss_mib": full.uss / MIB, "pss_mib": full.pss / MIB, "private_mib": private_mb * 1e6 / MIB,
            "fds": process.num_fds(), "threads": process.num_threads()}


def steady_rate(ranks: list[dict[str, Any]], workers: int, batch_size: int) -> tuple[float, float]:
    """Samples/s over the window in which every rank had a batch of each worker, up to the deadline; its length.

    A rank's batch ``workers - 1`` is the first by which each of its workers delivered one
    (batches come from the workers in turn). ``(0, 0)`` when some rank had no such batch
    before the deadline.
    """
    if any(len(rank["stamps"]) < workers for rank in ranks):
        return 0.0, 0.0
    begin = max(rank["stamps"][workers - 1] for rank in ranks)
    end = min(rank["deadline"] for rank in ranks)
    if end <= begin:
        return 0.0, 0.0
    batches = sum(begin < stamp <= end for rank in ranks for stamp in rank["stamps"])
    return batches * batch_size / (end - begin), end - begin


def measure(path: Path, config: Config) -> dict[str, Any]:
    """Run ``config`` once: its ranks, their timings, every process's sample and the prefetch probes."""
    data_file = path / DATA_FILE
    if config.cold:
        cold(path)
    before = resident_fraction(data_file)
    context = multiprocessing.get_context("fork")
    start, done = context.Barrier(config.ranks + 1), context.Barrier(config.ranks + 1)
    with tempfile.TemporaryDirectory(prefix="node-scale-") as scratch:
        probes = os.path.join(scratch, "probes")
        os.mkdir(probes)
        outs = [os.path.join(scratch, f"rank{rank}.json") for rank in range(config.ranks)]
        children = [context.Process(target=rank_main, args=(path, config, rank, start, done, probes, outs[rank]))
                    for rank in range(config.ranks)]
        for child in children:
            child.start()
        try:
            start.wait(timeout=300)
            done.wait(timeout=300)
            ranks = [json.loads(Path(out).read_text()) for out in outs]
            samples: dict[str, list[dict[str, float]]] = {"rank": [], "worker": []}
            for rank in ranks:
                for role, pids in (("rank", [rank["pid"]]), ("worker", rank["workers"])):
                    for pid in pids:
                        with contextlib.suppress(psutil.NoSuchProcess):  # a worker whose data ran out has ended
                            samples[role].append(process_sample(psutil.Process(pid), data_file))
            after = resident_fraction(data_file)
            done.wait(timeout=300)
        finally:
            start.abort()
            done.abort()
            for child in children:
                child.join(timeout=60)
                if child.is_alive():
                    child.terminate()
        probed = {int(name.stem): json.loads(name.read_text()) for name in Path(probes).glob("*.json")}
    rate, window = steady_rate(ranks, config.workers or 1, config.batch_size)
    counted = [sum(stamp <= rank["deadline"] for stamp in rank["stamps"]) for rank in ranks]
    pools = []
    for rank in ranks:  # the prefetcher's counts of each rank: its main process and its workers
        members = [probed.get(pid, {}) for pid in [rank["pid"], *rank["workers"]]]
        pools.append({name: [sum(member.get(name, [0, 0.0])[i] for member in members) for i in (0, 1)]
                      for name in ("advise", "asked_elsewhere", "read_through", "request")}
                     | {"pools": max((member.get("request", [0])[0] for member in members), default=0)})
    return {"config": dataclasses.asdict(config), "rate": rate, "window_s": window,
            "whole_rate": sum(counted) * config.batch_size / config.seconds,
            "first_batch_s": [rank["stamps"][0] - rank["released"] for rank in ranks],
            "batches": counted, "resident_before": before, "resident_after": after,
            "data_file_mib": os.path.getsize(data_file) / MIB, "prefetch": pools,
            "processes": {role: summary(rows) for role, rows in samples.items()}}


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Count, then sum, median and max of each measure over processes of one role."""
    result: dict[str, Any] = {"count": len(rows)}
    for key in (rows[0] if rows else {}):
        values = [row[key] for row in rows]
        result[key] = {"sum": sum(values), "median": statistics.median(values), "max": max(values)}
    return result


# ---- the plan ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Plan:
    """What to run."""

    ranks: int
    workers: int
    big_workers: int
    memory_workers: int
    seconds: dict[str, float]
    batch_size: dict[str, int]
    rounds: int
    readers: tuple[str, ...]
    pipelines: tuple[str, ...]
    start_methods: tuple[str, ...]

    def pair(self, reader: str, pipeline: str) -> tuple[Config, Config]:
        """``ranks x workers`` and ``1 x ranks*workers``, for the same time."""
        seconds, size = self.seconds[pipeline], self.batch_size[pipeline]
        return (Config(reader, pipeline, self.ranks, self.workers, self.ranks, seconds, size),
                Config(reader, pipeline, 1, self.ranks * self.workers, 1, seconds, size))

    def once(self) -> list[Config]:
        """The configurations run once: cold start, ``ranks x big_workers``, start methods."""
        seconds, size = self.seconds["raw"], self.batch_size["raw"]
        configs = [Config(reader, "raw", self.ranks, self.workers, self.ranks, seconds, size, cold=True)
                   for reader in self.readers]
        configs += [Config(reader, "raw", self.ranks, self.big_workers, self.ranks, seconds, size)
                    for reader in self.readers if self.big_workers]
        configs += [Config(reader, "raw", 1, self.memory_workers, self.ranks, seconds / 2, size, start_method=method)
                    for method in self.start_methods for reader in (*self.readers, "bare")]
        return configs


FULL = {"ranks": 8, "workers": 8, "big_workers": 32, "memory_workers": 4, "rounds": 2,
        "raw_seconds": 15, "raw_batch_size": 256, "train_seconds": 15, "train_batch_size": 32}
QUICK = {"ranks": 2, "workers": 1, "big_workers": 0, "memory_workers": 1, "rounds": 1,
         "raw_seconds": 1, "raw_batch_size": 16, "train_seconds": 1, "train_batch_size": 4}
QUICK_RECORDS = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``--quick`` sets the defaults that are not given)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Defaults (full / --quick): " + ", ".join(
                                         f"{key} {FULL[key]} / {QUICK[key]}" for key in FULL))
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset directory (default: /tmp/scale1m/data.lmdb; with --quick a "
                             f"{QUICK_RECORDS}-record one built in a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="the smallest configuration, in seconds (for the tests)")
    parser.add_argument("--readers", nargs="+", choices=READERS, default=list(READERS))
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--start-methods", nargs="+", choices=START_METHODS, default=None,
                        help="of the memory runs (default: fork, spawn, forkserver; fork with --quick)")
    for key in FULL:
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=None)
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "data" / "results" / "node_scale.json",
                        help="results file (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.start_methods is None:
        args.start_methods = ["fork"] if args.quick else list(START_METHODS[:3])
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def machine() -> dict[str, Any]:
    """Cores, memory and CPU model of this machine (the bench extras' versions are not needed here)."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")
    return {"cores": len(os.sched_getaffinity(0)), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "cpu": model, "python": sys.version.split()[0], "torch": torch.__version__}


def main(argv: list[str] | None = None) -> None:
    """Run the plan in interleaved rounds, then the single runs; print the section and write the JSON."""
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="node-scale-data-") as scratch:
        path = args.data
        if path is None and args.quick:
            path = Path(scratch) / "data.lmdb"
            build(path, QUICK_RECORDS)
        path = path or Path("/tmp/scale1m/data.lmdb")
        plan = Plan(args.ranks, args.workers, args.big_workers, args.memory_workers,
                    {"raw": args.raw_seconds, "train": args.train_seconds},
                    {"raw": args.raw_batch_size, "train": args.train_batch_size}, args.rounds,
                    tuple(args.readers), tuple(args.pipelines), tuple(args.start_methods))
        with open(path / DATA_FILE, "rb") as data:  # warm: the interleaved rounds compare layouts, not the disk
            while data.read(64 << 20):
                pass
        records = len(LMDBImageDataset(path))
        started = time.monotonic()
        runs: list[dict[str, Any]] = []
        for round_ in range(plan.rounds):
            for reader in plan.readers:
                for pipeline in plan.pipelines:
                    for config in plan.pair(reader, pipeline):
                        run = measure(path, config) | {"round": round_}
                        runs.append(run)
                        print(f"round {round_} {config.name:28s} {run['rate']:9.0f} samples/s  first batch "
                              f"{max(run['first_batch_s']):.2f} s", flush=True)
        for config in plan.once():
            run = measure(path, config) | {"round": 0}
            runs.append(run)
            print(f"once     {config.name:28s} {run['rate']:9.0f} samples/s  first batch "
                  f"{max(run['first_batch_s']):.2f} s", flush=True)
    results = {"command": " ".join(["python -m benchmarks.node_scale.run", *given]),
               "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": machine(),
               "load_1min": os.getloadavg()[0], "records": records, "data": os.fspath(path),
               "plan": dataclasses.asdict(plan), "wall_s": time.monotonic() - started, "runs": runs}
    print(report.markdown(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.resolve().parent == (BENCHMARKS / "node_scale").resolve():
        from ..report import save

        save(results, args.out)
    else:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
