"""The seeds' experiment through the device models: ImageFolder against LMDB, cold, side by side.

    python -m benchmarks.slow_storage.experiment /tmp/slow/corpus --workers 4 8 16 --repeats 3

SOURCE holds ``train/`` (an ImageFolder, e.g. from ``python -m benchmarks.common.make_corpus``) and
``train.lmdb`` (its conversion). Every case runs on a fresh cold mount (see ``mount.py``):
it opens the dataset, starts a DataLoader and reads ``--samples`` samples. The model
``local`` reads SOURCE itself with every file in the page cache: the machine's ceiling
without storage. With ``--repeats N`` every case runs N times, in N rounds of all the cases
(a round's cases of one worker count run back to back, so a ratio pairs runs made under the
same conditions); the report gives each case's median and range. Results go to
``benchmarks/slow_storage/results.json`` (runs already there for other cases are kept; each
run records its sample count) with their plot ``results.png``; ``report.py`` renders them as
a section of ``benchmarks/RESULTS.md``
(``python -m benchmarks.report benchmarks/loaders/results.json --out benchmarks``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from .loaders import LOADERS, PIPELINES, make_loader
from .models import layout
from .mount import mounted
from .report import plot
from .validate import validate

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"


@contextlib.contextmanager
def served(source: Path, model: str, *, rtt_ms: float) -> Iterator[Path]:
    """``source`` through ``model`` on a cold mount, or (``local``) itself with every file read once, warm."""
    if model != "local":
        with mounted(source, model, rtt_ms=rtt_ms) as root:
            yield root
        return
    for path, size in layout(os.fspath(source)):
        if size:
            with open(os.path.join(source, path.lstrip("/")), "rb") as file:
                while file.read(1 << 20):
                    pass
    yield source


PASSTHROUGH = "benchmarks.slow_storage.passthrough"


class CpuClock:
    """CPU time spent since it was started, by the whole machine and by this process's passthrough server."""

    def __init__(self) -> None:
        self.server = next((child for child in psutil.Process().children()
                            if PASSTHROUGH in " ".join(child.cmdline())), None)
        self.wall, self.machine, self.served = time.perf_counter(), self._machine(), self._served()

    def _machine(self) -> float:
        times = psutil.cpu_times()
        return sum(getattr(times, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq", "steal"))

    def _served(self) -> float:
        return 0.0 if self.server is None else sum(self.server.cpu_times()[:4])

    def cores(self) -> tuple[float, float | None]:
        """Cores busy on average since the start: the machine's, and the passthrough's (None without one)."""
        wall = max(time.perf_counter() - self.wall, 1e-9)
        machine = (self._machine() - self.machine) / wall
        return machine, None if self.server is None else (self._served() - self.served) / wall


def run_case(source: Path, model: str, loader: str, pipeline: str, *, workers: int, batch_size: int,
             samples: int, rtt_ms: float, round_: int = 0) -> dict[str, Any]:
    """One run: serve (see :func:`served`), open, read ``samples`` samples, unmount.

    Returns:
        ``open_s`` (constructing the dataset and loader), ``first_batch_s`` (from before the
        open to the first batch), ``samples_per_s`` and ``mb_per_s`` after the first batch
        (``mb_per_s`` counts stored bytes; raw pipeline only), ``load_1min`` before the run,
        ``round``: which of the ``--repeats`` rounds it belongs to, and the cores busy after the
        first batch: ``cores_busy`` (the machine's, out of its CPU count) and ``server_cores``
        (the FUSE passthrough's; None for ``local``).
    """
    load = os.getloadavg()[0]
    with served(source, model, rtt_ms=rtt_ms) as root:
        started = time.perf_counter()
        data = make_loader(loader, pipeline, root, workers=workers, batch_size=batch_size)
        opened = time.perf_counter()
        count = stored = first_count = first_stored = 0
        first = None
        iterator = iter(data)
        for images, _ in iterator:
            count += len(images)
            if pipeline == "raw":
                stored += int(images.sum())
            if first is None:
                first, first_count, first_stored = time.perf_counter(), count, stored
                clock = CpuClock()
            if count >= samples:
                break
        finished = time.perf_counter()
        cores_busy, server_cores = clock.cores()
        del iterator, data  # stop the workers before unmounting
    steady = max(finished - first, 1e-9)
    return {"model": model, "loader": loader, "pipeline": pipeline, "workers": workers, "batch_size": batch_size,
            "samples": count, "open_s": opened - started, "first_batch_s": first - started,
            "samples_per_s": (count - first_count) / steady,
            "mb_per_s": (stored - first_stored) / 1e6 / steady if pipeline == "raw" else None,
            "load_1min": load, "round": round_, "cores_busy": cores_busy, "server_cores": server_cores}


def loader_samples(text: str) -> tuple[str, int]:
    """Parse ``LOADER=N`` (``--samples-for``)."""
    loader, _, count = text.partition("=")
    if loader not in LOADERS or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOADER=N with LOADER one of {', '.join(LOADERS)}")
    return loader, int(count)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="directory holding train/ and train.lmdb")
    parser.add_argument("--models", nargs="+", choices=("hdd", "nfs", "local"), default=["hdd", "nfs"])
    parser.add_argument("--loaders", nargs="+", choices=LOADERS, default=list(LOADERS))
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--workers", nargs="+", type=int, default=[4, 8, 16], help="DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    parser.add_argument("--samples", type=int, default=1024, help="samples read per case (default: %(default)s)")
    parser.add_argument("--samples-for", action="append", default=[], metavar="LOADER=N", type=loader_samples,
                        help="samples read by one loader's cases instead, e.g. lmdb-chunk=26000 to read the "
                             "sequential readers' steady state past their first pools (repeatable)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of every case, for a median and range per case (default: %(default)s)")
    parser.add_argument("--rtt-ms", type=float, default=0.5, help="nfs round trip in ms (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Validate each model, run every case ``--repeats`` times, write (or add to) the results file."""
    args = parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: expected at least 1")
    results: dict[str, Any] = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "python": platform.python_version(), "load_1min_start": os.getloadavg()[0]},
        "settings": {"batch_size": args.batch_size, "rtt_ms": args.rtt_ms},
        "validation": {}, "runs": []}
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        if previous["settings"] != results["settings"]:
            raise ValueError(f"{args.out} holds runs with settings {previous['settings']}, not "
                             f"{results['settings']}: pass another --out")
        results = previous
        rerun = {(model, workers, pipeline, loader) for model in args.models for workers in args.workers
                 for pipeline in args.pipelines for loader in args.loaders}
        results["runs"] = [run for run in results["runs"]
                           if (run["model"], run["workers"], run["pipeline"], run["loader"]) not in rerun]
    for model in args.models:
        if model != "local":
            results["validation"][model] = validate(args.source, "train.lmdb/data.mdb", model, rtt_ms=args.rtt_ms)
            print(model, {k: round(v, 1) for k, v in results["validation"][model].items()}, flush=True)
        for round_, workers, pipeline, loader in itertools.product(range(args.repeats), args.workers,
                                                                   args.pipelines, args.loaders):
            run = run_case(args.source, model, loader, pipeline, workers=workers, batch_size=args.batch_size,
                           rtt_ms=args.rtt_ms, samples=dict(args.samples_for).get(loader, args.samples),
                           round_=round_)
            results["runs"].append(run)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}, flush=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    results["machine"]["load_1min_end"] = os.getloadavg()[0]
    command = " ".join(["python -m benchmarks.slow_storage.experiment", *(argv or sys.argv[1:])])
    earlier = results.get("commands", [results["command"]] if "command" in results else [])
    results["commands"] = [*earlier, command]  # the runs kept come from the earlier ones
    results.pop("command", None)
    results["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results["runs"], args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
