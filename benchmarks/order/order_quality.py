"""Order quality of random sampling, ChunkShuffleSampler and LMDBIterableDataset, as numbers.

For each reader it builds the batches every DDP rank sees over two epochs (and, for the
iterable, what each DataLoader worker yields and how the DataLoader interleaves them) from
the package's own ordering functions: no images are read. It scores them with
:func:`lmdb_dataset.order_quality.order_quality`: distinct classes per batch, total-variation
distance between a batch's label histogram and the dataset's, repeat co-occurrence (pairs
sharing a batch in epoch 0 that share one again in epoch 1) and seeks per 1000 records.

Layouts:

* ``shuffled``: a class-sorted source converted with defaults (records stored in a seeded
  shuffled order; the map-style index stays ImageFolder's).
* ``class-sorted``: the records stored class by class (the failure the default prevents).
* ``corpus``: a real converted dataset given with ``--corpus`` (its labels and storage order).

Targets (default settings, ``shuffled`` layout): distinct classes >= 0.9x random's, TV
distance <= 1.2x random's, repeat co-occurrence <= 2x random's, at most 1 seek per chunk.

Writes a JSON (default: benchmarks/data/results/order/order_quality.json, a scratch folder);
``markdown(results)`` renders its section of RESULTS.md. ``--output benchmarks/order/order_quality.json``
(or ``order_quality_corpus.json`` for ``--corpus`` runs) replaces the committed results and
re-renders benchmarks/RESULTS.md.

Example:
    python -m benchmarks.order.order_quality --output benchmarks/order/order_quality.json
    python -m benchmarks.order.order_quality --corpus /tmp/corpus.lmdb --ranks 2 --workers 2 --batch-size 32
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys

import numpy as np

from lmdb_dataset.order.maths import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_POOL_SIZE,
    chunk_bounds,
    rank_length,
    rank_order,
    worker_positions,
)
from lmdb_dataset.order.quality import order_quality, seeks

from .. import report

TARGETS = {"distinct_classes": (">=", 0.9), "tv_distance": ("<=", 1.2), "repeat_cooccurrence": ("<=", 2.0)}


def batches_of(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def random_epoch(n: int, record_of_sample: np.ndarray, *, ranks: int, batch_size: int, seed: int,
                 epoch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """DistributedSampler(shuffle=True) batches of every rank, and each batch's reads in file order."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = rank_length(n, ranks, False)
    order = np.resize(order, per_rank * ranks)
    batches = [b for r in range(ranks) for b in batches_of(order[r::ranks], batch_size)]
    return batches, [np.sort(record_of_sample[b]) for b in batches]


def sequential_epoch(n: int, file_order: np.ndarray, *, ranks: int, workers: int, batch_size: int, chunk_size: int,
                     pool_size: int, seed: int, epoch: int, iterable: bool) -> tuple[list[np.ndarray],
                                                                                      list[np.ndarray]]:
    """Batches of every rank for the sampler (or the iterable, with its DataLoader workers), and each
    rank's prefetch stream (pool by pool, one seek per run)."""
    batches, reads = [], []
    for rank in range(ranks):
        plan = rank_order(n, chunk_size=chunk_size, pool_size=pool_size, seed=seed, epoch=epoch, rank=rank,
                          num_replicas=ranks, drop_last=False, shuffle=True)
        # Each pool's runs are prefetched in turn: one positioning per run.
        reads.extend(np.arange(a, b) for pool in plan.runs() for a, b in pool)
        order = plan.order
        samples = file_order[order]
        if not iterable:
            batches.extend(batches_of(samples, batch_size))
            continue
        # LMDBIterableDataset(batch_size=None): worker w takes pieces of chunk_size positions
        # round-robin; the DataLoader batches each worker's stream and takes one batch per worker in turn.
        queues = [batches_of(samples[worker_positions(len(order), piece_size=chunk_size, worker=w,
                                                      num_workers=workers)], batch_size) for w in range(workers)]
        for round_ in range(max(len(q) for q in queues)):
            batches.extend(q[round_] for q in queues if round_ < len(q))
    return batches, reads


def evaluate(labels: np.ndarray, file_order: np.ndarray, *, ranks: int, workers: int, batch_size: int,
             chunk_size: int, pool_size: int, seed: int) -> dict[str, dict[str, float]]:
    n = len(labels)
    record_of_sample = np.empty(n, dtype=np.int64)
    record_of_sample[file_order] = np.arange(n)
    rows = {}
    for reader in ("random", "chunk sampler", "iterable"):
        epochs, reads, chunks = [], [], 0
        for epoch in (0, 1):
            chunks += len(chunk_bounds(n, chunk_size=chunk_size, seed=seed, epoch=epoch)) - 1
            if reader == "random":
                batches, stream = random_epoch(n, record_of_sample, ranks=ranks, batch_size=batch_size, seed=seed,
                                               epoch=epoch)
            else:
                batches, stream = sequential_epoch(n, file_order, ranks=ranks, workers=workers,
                                                   batch_size=batch_size, chunk_size=chunk_size,
                                                   pool_size=pool_size, seed=seed, epoch=epoch,
                                                   iterable=reader == "iterable")
            epochs.append(batches)
            reads.extend(stream)
        quality = order_quality(epochs, labels, reads=reads)
        rows[reader] = {**vars(quality),
                        "seeks_per_chunk": seeks(reads)[0] / chunks if reader != "random" else float("nan")}
    return rows


def verdicts(rows: dict[str, dict[str, float]], *, ranks: int, chunks_per_epoch: int) -> dict[str, dict[str, bool]]:
    base = rows["random"]
    out = {}
    for reader in ("chunk sampler", "iterable"):
        row = rows[reader]
        checks = {}
        for key, (sense, factor) in TARGETS.items():
            ratio = row[key] / base[key]
            checks[key] = ratio >= factor if sense == ">=" else ratio <= factor
        # A chunk split between two ranks is read in two pieces: at most ranks - 1 per epoch.
        checks["seeks_per_chunk"] = row["seeks_per_chunk"] <= 1.0 + (ranks - 1) / chunks_per_epoch
        out[reader] = checks
    return out


def missed(row: dict[str, float], base: dict[str, float], checks: dict[str, bool]) -> list[str]:
    """The missed targets of a reader, each with its measured value against the target."""
    out = []
    for key, ok in checks.items():
        if ok:
            continue
        if key in TARGETS:
            sense, factor = TARGETS[key]
            out.append(f"{key} {row[key] / base[key]:.2f}x (target {sense} {factor}x)")
        else:
            out.append(f"{key} {row[key]:.4f}")
    return out


def table(name: str, rows: dict[str, dict[str, float]], checks: dict[str, dict[str, bool]]) -> str:
    """A layout's table: each reader's order quality, ratios to random's and verdicts."""
    base = rows["random"]
    lines = [f"### {name}", "",
             "| reader | distinct classes / batch | TV distance | repeat co-occurrence | seeks / 1000 records "
             "| seeks / chunk | targets |",
             "|---|---|---|---|---|---|---|"]
    for reader, row in rows.items():
        if reader == "random":
            ratios = ["", "", ""]
            verdict = "baseline"
        else:
            ratios = [f" ({row[k] / base[k]:.2f}x)" for k in TARGETS]
            misses = missed(row, base, checks[reader])
            verdict = "all met" if not misses else "missed: " + "; ".join(misses)
        spc = "" if math.isnan(row["seeks_per_chunk"]) else f"{row['seeks_per_chunk']:.4f}"
        lines.append(f"| {reader} | {row['distinct_classes']:.1f}{ratios[0]} | {row['tv_distance']:.3f}{ratios[1]} "
                     f"| {row['repeat_cooccurrence']:.2e}{ratios[2]} | {row['seeks_per_1000']:.1f} | {spc} "
                     f"| {verdict} |")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The section of RESULTS.md for a saved run (synthetic layouts, or converted datasets)."""
    settings = results["settings"]
    corpus = any(name.startswith("corpus ") for name in results["layouts"])
    lines = ["## Order quality" + (" of converted datasets" if corpus else ""), "",
             *report.provenance_lines(results),
             f"Settings: ranks {settings['ranks']}, DataLoader workers per rank {settings['workers']}, batch "
             f"{settings['batch_size']}, chunk_size {settings['chunk_size']}, pool_size {settings['pool_size']}, "
             f"seed {settings['seed']}; epochs 0 and 1.", "",
             "Targets against random's: " + ", ".join(f"{k} {sense} {factor}x" for k, (sense, factor)
                                                       in TARGETS.items())
             + ", seeks_per_chunk <= 1 + (ranks - 1) / chunks per epoch.", ""]
    for name, layout in results["layouts"].items():
        classes = f", {layout['classes']} classes" if "classes" in layout else ""
        lines += [table(f"{name}: {layout['records']:,} records{classes}", layout["rows"], layout["targets_met"]), ""]
    return "\n".join(lines)


def corpus_layout(path: str) -> tuple[np.ndarray, np.ndarray]:
    from lmdb_dataset import LMDBImageDataset

    dataset = LMDBImageDataset(path)
    file_order = getattr(dataset, "file_order", None)
    labels = np.asarray(dataset.targets, dtype=np.int64)
    return labels, np.arange(len(labels)) if file_order is None else np.asarray(file_order, dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--classes", type=int, default=1000, help="synthetic classes (default 1000)")
    parser.add_argument("--per-class", type=int, default=1281, help="synthetic records per class (default 1281)")
    parser.add_argument("--ranks", type=int, default=8, help="DDP ranks (default 8)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers per rank (default 8)")
    parser.add_argument("--batch-size", type=int, default=256, help="per-rank batch size (default 256)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                        help=f"chunk_size of both readers (default {DEFAULT_CHUNK_SIZE})")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE,
                        help=f"pool_size of both readers (default {DEFAULT_POOL_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of readers and of the shuffled layout")
    parser.add_argument("--corpus", action="append", default=[],
                        help="a converted dataset to score instead of synthetic labels (repeatable)")
    parser.add_argument("--output", type=pathlib.Path, default=report.SCRATCH / "order" / "order_quality.json",
                        help="results file (JSON; default benchmarks/data/results/order/order_quality.json; "
                             "benchmarks/order/order_quality.json replaces the committed one)")
    args = parser.parse_args(argv)
    options = {"ranks": args.ranks, "workers": args.workers, "batch_size": args.batch_size,
               "chunk_size": args.chunk_size, "pool_size": args.pool_size, "seed": args.seed}
    layouts = {}
    if args.corpus:
        for path in args.corpus:
            layouts[f"corpus {path}"] = corpus_layout(path)
    else:
        labels = np.repeat(np.arange(args.classes), args.per_class)  # a class-sorted source (ImageFolder order)
        n = len(labels)
        layouts["shuffled (default conversion)"] = (labels, np.random.default_rng(args.seed).permutation(n))
        layouts["class-sorted layout"] = (labels, np.arange(n))
    results = {**report.provenance("order.order_quality", argv), "settings": options, "layouts": {}}
    for name, (labels, file_order) in layouts.items():
        rows = evaluate(labels, file_order, **options)
        chunks = len(chunk_bounds(len(labels), chunk_size=args.chunk_size, seed=args.seed, epoch=0)) - 1
        checks = verdicts(rows, ranks=args.ranks, chunks_per_epoch=chunks)
        title = (f"{name}: {len(labels):,} records, {labels.max() + 1} classes, {args.ranks} ranks x "
                 f"{args.workers} workers, batch {args.batch_size}, chunk_size {args.chunk_size}, "
                 f"pool_size {args.pool_size}")
        print(table(title, rows, checks), end="\n\n", flush=True)
        results["layouts"][name] = {"records": len(labels), "classes": int(labels.max()) + 1, "rows": rows,
                                    "targets_met": checks}
    report.save(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
