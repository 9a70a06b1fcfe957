"""Conversion memory with a slow writer: bounded in-flight work against version 0.1's Pool.imap feeder.

Converts ImageFolder trees of ImageNet-sized photographic JPEGs (one corpus from
``make_photo_folder``, the smaller sizes evenly spread symlinked subsets of it) with
``convert_image_folder`` in a child process, while ``LMDBWriter.add_record`` is deliberately
slowed by a fixed sleep per record (``--writer-delay-ms``, standing in for a slow disk or a
network filesystem), so that the checking workers outrun the writer. Each size is converted
with two feeders, in the same run:

- ``bounded``: the package's ``build_records`` (at most ``workers x MAX_BATCHES_PER_WORKER``
  batches of ``TASKS_PER_BATCH`` source files submitted ahead of the writer, fewer as far as
  the results' bytes need: ``write.parallel.window``);
- ``unbounded-imap``: the feeder of version 0.1, reimplemented in this file as the baseline:
  ``Pool.imap(_build, tasks, chunksize=8)``, which takes every task at once and keeps
  finishing records while the writer lags.

Per conversion it records: peak tasks ahead of the writer (taken from the task iterator and
not yet handed to the writer, counted as tests/test_convert.py does), peak records built and
waiting for the writer (a counter shared with the workers), the converting process's peak
RSS and anonymous RSS (``RssAnon``: its heap, not mapped file pages) and its growth during the
conversion, the workers' peak RSS (psutil, sampled every 50 ms from this process) and
records/s. The verdict compares the two sizes: equal peak in-flight work, and the growth of the
converting process's peak heap between sizes as a share of the source bytes added.

The sizes default to 1,000 and 4,000 images (~110 KB each): both above one 64 MiB writer
commit, so that the writer's own transaction buffer is full at both sizes.

Writes a JSON (default: benchmarks/data/results/conversion/conversion_memory.json, a scratch folder)
and prints its section of RESULTS.md, ``markdown(results)``. ``--out
benchmarks/conversion/conversion_memory.json`` replaces the committed results and re-renders
benchmarks/RESULTS.md.

Example:
    python -m benchmarks.conversion.conversion_memory --sizes 1000 4000 --workers 2 --writer-delay-ms 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmdb_dataset.tools.photo_folders import make_photo_folder
from lmdb_dataset.write import convert as convert_module
from lmdb_dataset.write.parallel import BYTES_IN_FLIGHT, MAX_BATCHES_PER_WORKER, TASKS_PER_BATCH
from lmdb_dataset.write.writer import LMDBWriter

from .. import report
from ..common.corpus import limited_folder
from ..common.harness import MB, child_env
from ..common.sampling import anonymous_rss, run_sampled

FEEDERS = ("bounded", "unbounded-imap")
"""The feeders compared: the package's ``build_records`` and version 0.1's ``Pool.imap``."""
HEAP_GROWTH_LIMIT = 0.05
"""Bounded means: the converting process's peak heap grows by less than this share of the source bytes added."""
CHILD = ("import sys; from benchmarks.conversion import conversion_memory; "
         "conversion_memory.convert_instrumented(sys.argv[1:])")

Task = tuple[str, int, str]
_build = convert_module._build
_built = None
"""Records built by the workers (a ``multiprocessing.Value`` made before the pool forks), in the child."""


def _counted_build(task: Task) -> tuple[bytes | None, int, str]:
    """Worker: the converter's ``_build``, counting the records built."""
    result = _build(task)
    with _built.get_lock():
        _built.value += 1
    return result


def unbounded_build_records(tasks: Iterable[Task], workers: int) -> Iterator[tuple[bytes | None, int, str]]:
    """The baseline, version 0.1's feeder: ``Pool.imap`` with chunks of 8, no limit on work ahead."""
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap(convert_module._build, tasks, chunksize=8)


def convert_instrumented(argv: list[str]) -> None:
    """In the child: convert ``SRC DST FEEDER WORKERS DELAY_MS`` with the writer slowed and the feeder
    counted; prints one JSON line."""
    global _built
    src, dst, feeder, workers, delay_ms = argv[0], argv[1], argv[2], int(argv[3]), float(argv[4])
    _built = multiprocessing.Value("q", 0)
    convert_module._build = _counted_build  # both feeders build each record through it
    feed = {"bounded": convert_module.build_records, "unbounded-imap": unbounded_build_records}[feeder]
    counts = {"taken": 0, "peak_ahead": 0, "peak_waiting": 0}

    def instrumented(tasks: Iterable[Task], workers: int) -> Iterator[tuple[bytes | None, int, str]]:
        def counted() -> Iterator[Task]:
            for task in tasks:
                counts["taken"] += 1
                yield task

        for handed, result in enumerate(feed(counted(), workers), start=1):
            counts["peak_ahead"] = max(counts["peak_ahead"], counts["taken"] - handed)
            counts["peak_waiting"] = max(counts["peak_waiting"], _built.value - handed)
            yield result

    add_record = LMDBWriter.add_record

    def slow_add_record(self, *args, **kwargs):
        time.sleep(delay_ms / 1000)
        return add_record(self, *args, **kwargs)

    convert_module.build_records = instrumented
    LMDBWriter.add_record = slow_add_record
    anon_before = anonymous_rss(os.getpid())
    done = convert_module.convert_image_folder(src, dst, workers=workers, overwrite=True, progress=False)
    print(json.dumps({"records": done.num_records, "seconds": done.seconds, "bytes": done.bytes_read,
                      "anon_before_mb": anon_before, "peak_tasks_ahead": counts["peak_ahead"],
                      "peak_records_waiting": counts["peak_waiting"]}))


def measure(src: Path, dst: Path, feeder: str, workers: int, delay_ms: float) -> dict:
    """One conversion in a child process, its memory sampled from here; the row of the table."""
    child, peaks = run_sampled([sys.executable, "-c", CHILD, str(src), str(dst), feeder, str(workers), str(delay_ms)],
                               env=child_env())
    return {"feeder": feeder, "images": child["records"], "source_mb": round(child["bytes"] / MB, 1),
            "records_per_s": round(child["records"] / child["seconds"], 1),
            "peak_tasks_ahead": child["peak_tasks_ahead"], "peak_records_waiting": child["peak_records_waiting"],
            "parent_peak_rss_mb": round(peaks["writer_peak_rss_mb"], 1),
            "parent_peak_anon_mb": round(peaks["writer_peak_anon_mb"], 1),
            "parent_anon_growth_mb": round(peaks["writer_peak_anon_mb"] - child["anon_before_mb"], 1),
            "worker_peak_rss_mb": round(peaks["worker_peak_rss_mb"], 1)}


def verdicts(results: dict) -> list[str]:
    """One line per feeder: in-flight work and heap growth between the smallest and largest size."""
    lines = []
    for feeder in FEEDERS:
        rows = sorted((row for row in results["rows"] if row["feeder"] == feeder), key=lambda row: row["images"])
        if len(rows) < 2:
            continue
        small, large = rows[0], rows[-1]
        growth = large["parent_peak_anon_mb"] - small["parent_peak_anon_mb"]
        share = growth / max(large["source_mb"] - small["source_mb"], 1e-9)
        within = max(small["peak_tasks_ahead"], large["peak_tasks_ahead"]) <= results["bound_tasks"]
        bounded = within and share < HEAP_GROWTH_LIMIT
        lines.append(
            f"- `{feeder}`: {'independent of the dataset size' if bounded else 'grows with the dataset size'}: "
            f"peak tasks ahead of the writer "
            f"{small['peak_tasks_ahead']} at {small['images']} images and {large['peak_tasks_ahead']} at "
            f"{large['images']} ({'within' if within else 'beyond'} the bound of {results['bound_tasks']}); peak "
            f"records waiting {small['peak_records_waiting']} and {large['peak_records_waiting']}; the converting "
            f"process's peak heap {small['parent_peak_anon_mb']} -> {large['parent_peak_anon_mb']} MB, "
            f"{growth:+.1f} MB for {large['source_mb'] - small['source_mb']:.1f} MB more source ({share:.1%}; "
            f"bounded means peaks within the bound and < {HEAP_GROWTH_LIMIT:.0%}).")
    return lines


def markdown(results: dict) -> str:
    """The section of RESULTS.md for a saved run: settings, the table and the verdicts."""
    lines = ["## Conversion memory with a slow writer", "", *report.provenance_lines(results),
             f"Settings: {results['workers']} workers, writer slowed by {results['writer_delay_ms']} ms per record; "
             f"`bounded` submits at most {results['bound_tasks']} tasks ahead of the writer "
             f"({results['workers']} workers x {results['max_batches_per_worker']} batches x "
             f"{results['tasks_per_batch']} tasks, plus the batch being formed; fewer where that many batches of "
             f"results would exceed {results['bytes_in_flight'] / MB:.0f} MB at their mean size); `unbounded-imap` is "
             "`Pool.imap(chunksize=8)`, the feeder of version 0.1, reimplemented in the benchmark as the baseline. "
             "Tasks ahead = taken from the task iterator, not yet handed to the writer; records waiting = built by "
             "a worker, not yet handed to the writer; parent = the converting (writer) process, heap = its RssAnon, "
             "growth = peak minus before the conversion.", "",
             "| feeder | images | source MB | records/s | peak tasks ahead | peak records waiting | parent peak RSS MB "
             "| parent peak heap MB | parent heap growth MB | worker peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row['feeder']} | {row['images']} | {row['source_mb']} | {row['records_per_s']} | "
              f"{row['peak_tasks_ahead']} | {row['peak_records_waiting']} | {row['parent_peak_rss_mb']} | "
              f"{row['parent_peak_anon_mb']} | {row['parent_anon_growth_mb']} | {row['worker_peak_rss_mb']} |"
              for row in results["rows"]]
    lines += ["", *verdicts(results), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000],
                        help="images per conversion, at least 2 sizes (default 1000 4000)")
    parser.add_argument("--workers", type=int, default=2, help="checking worker processes (default 2)")
    parser.add_argument("--writer-delay-ms", type=float, default=8.0,
                        help="sleep added to every LMDBWriter.add_record, the slow writer (default 8 ms)")
    parser.add_argument("--data", type=Path, default=report.BENCHMARKS / "data" / "conversion_memory",
                        help="where the corpus and the datasets go (default benchmarks/data/conversion_memory)")
    parser.add_argument("--out", type=Path, default=report.SCRATCH / "conversion" / "conversion_memory.json",
                        help="results file (JSON; default benchmarks/data/results/conversion/conversion_memory.json; "
                             "benchmarks/conversion/conversion_memory.json replaces the committed one)")
    args = parser.parse_args(argv)
    if len(set(args.sizes)) < 2 or min(args.sizes) < 1:
        parser.error(f"--sizes {' '.join(map(str, args.sizes))}: give at least 2 different positive sizes")
    if args.workers < 1 or args.writer_delay_ms < 0:
        parser.error(f"--workers {args.workers} must be >= 1 and --writer-delay-ms {args.writer_delay_ms} >= 0")
    corpus = args.data / f"corpus-{max(args.sizes)}"
    if not corpus.exists():
        print(f"generating {max(args.sizes)} ImageNet-sized JPEGs in {corpus} ...", flush=True)
        make_photo_folder(corpus, num_images=max(args.sizes), num_classes=10, size_profile="imagenet",
                          workers=max(1, len(os.sched_getaffinity(0))))
    rows = []
    for size in sorted(args.sizes):
        folder = limited_folder(args.data, corpus, size)
        for feeder in FEEDERS:
            print(f"converting {size} images, {feeder} ...", flush=True)
            rows.append(measure(folder, args.data / "converted.lmdb", feeder, args.workers, args.writer_delay_ms))
    result = {**report.provenance("conversion.conversion_memory", argv), "workers": args.workers,
              "writer_delay_ms": args.writer_delay_ms, "tasks_per_batch": TASKS_PER_BATCH,
              "max_batches_per_worker": MAX_BATCHES_PER_WORKER, "bytes_in_flight": BYTES_IN_FLIGHT,
              "bound_tasks": (args.workers * MAX_BATCHES_PER_WORKER + 1) * TASKS_PER_BATCH, "rows": rows}
    print(markdown(result))
    report.save(result, args.out)
    return result


if __name__ == "__main__":
    main()
