"""Benchmark suite: lmdb_dataset against ImageFolder and peer loaders, side by side.

Every selected case runs once per round and rounds are interleaved (A, B, C, A, B, C, ...),
so slow drift of a shared machine hits all cases alike; ratios are computed within a round
and reported as median [min, max]. Writes RESULTS.md, loaders/results.json and loaders/results.png
into the report folder --out (default: DATA/results, a scratch folder; pass --out benchmarks/ to
replace the committed results on purpose). See benchmarks/README.md for set-up, sizes, times and
what each row means.

The stages live in their own modules: common/corpus.py (the data), decode_cases.py,
dataloader_cases.py, cold_reads.py, conversion.py, memory.py (the cases), common/peer_setup.py (the
peers), targets.py and report.py (the verdicts and RESULTS.md); common/harness.py runs the rounds.

Example:
    python -m benchmarks.loaders.run --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[1]
BENCH_EXTRAS = ("psutil", "matplotlib", "skimage")
FULL = {"corpus_images": 10_000, "rounds": 3, "batch_size": 256, "batches": 24, "ceiling_files": 500,
        "cold_records": 3000}
QUICK = {"corpus_images": 1200, "rounds": 1, "batch_size": 64, "batches": 12, "ceiling_files": 200,
         "cold_records": 1000}
"""Defaults of a full run and of ``--quick`` (an option given on the command line wins over both)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (no optional dependency needed, so ``--help`` always works)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Needs the bench extras: pip install -e \".[bench]\" "
        "(peers: bash benchmarks/install_peers.sh).")
    full, quick = (", ".join(f"{k.replace('_', '-')} {v}" for k, v in d.items()) for d in (FULL, QUICK))
    parser.add_argument("--quick", action="store_true",
                        help=f"a small run of a few minutes (defaults: {quick}) instead of the full suite ({full})")
    parser.add_argument("--data", type=Path, default=BENCHMARKS / "data",
                        help="folder for the generated corpus, conversions and peer formats (default: "
                             "benchmarks/data, ignored by git)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder for RESULTS.md, loaders/results.json, loaders/results.png "
                             "(default: DATA/results; benchmarks/ replaces the committed results)")
    parser.add_argument("--corpus", type=Path, help="an ImageFolder root to measure instead of the generated corpus")
    parser.add_argument("--corpus-images", type=int, help="images of the generated corpus")
    parser.add_argument("--limit-images", type=int, help="use this many images of the corpus, spread evenly")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    parser.add_argument("--only", nargs="+", metavar="PATTERN",
                        help="run the cases whose name matches a glob or contains a substring, e.g. 'decode/*'")
    parser.add_argument("--list", action="store_true", help="list the case names and exit")
    parser.add_argument("--batch-size", type=int, help="DataLoader batch size")
    parser.add_argument("--batches", type=int, help="steady-state batches timed per DataLoader case")
    parser.add_argument("--ceiling-files", type=int, help="files of the per-core decode loops")
    parser.add_argument("--cold-records", type=int, help="records of the cold random-read cases")
    parser.add_argument("--convert-workers", type=int, default=2, help="workers of the conversion case (default 2)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.data = args.data.resolve()
    args.out = args.out or args.data / "results"
    return args


def missing_extras() -> list[str]:
    """The ``bench`` extras that are not installed."""
    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ValueError:  # in sys.modules as None: blocked
            return False
    return [name for name in BENCH_EXTRAS if not installed(name)]


def all_cases(peers: list[str]) -> list:
    """Every case, in round order."""
    from ..common.harness import Case
    from .cold_reads import cold_read_cases
    from .conversion import convert_case
    from .dataloader_cases import COLD_PATHS, LoaderSpec, loader_case, warm_loader_specs
    from .decode_cases import decode_cases
    from .memory import memory_case

    cases = decode_cases()
    cases += [loader_case(spec) for spec in warm_loader_specs(peers)]
    cases += cold_read_cases()
    cases += [loader_case(spec, cold=True) for spec in COLD_PATHS]
    cases.append(Case("convert/encoded", "img/s", convert_case, lambda c: 6.0 + c.args.images_in_corpus / 500.0))
    cases += [memory_case(LoaderSpec("lmdb-random")), memory_case(LoaderSpec("imagefolder-simplejpeg"))]
    return cases


def prepare(args: argparse.Namespace, cases: list) -> tuple[Any, dict[str, float]]:
    """Corpus, subset, conversions and peers the selected cases need; and the datasets' sizes in MB."""
    from torchvision.datasets import ImageFolder

    from ..common.corpus import converted, default_corpus, disk_mb, limited_folder
    from ..common.harness import Context
    from ..common.peer_setup import prepared_peers

    folder = limited_folder(args.data, args.corpus or default_corpus(args.data, args.corpus_images),
                            args.limit_images)
    files = [path for path, _ in ImageFolder(str(folder)).samples]
    args.images_in_corpus = len(files)
    needs_lmdb = any("lmdb" in case.name or case.name.startswith("cold-read") for case in cases)
    storages = [s for s in ("encoded", "raw")
                if needs_lmdb and (s == "encoded" or any("-raw" in c.name for c in cases))]
    lmdb = {storage: converted(args.data, folder, files, storage) for storage in storages}
    wanted = {case.name.split("peer:")[1].split("/")[0] for case in cases if "peer:" in case.name}
    ctx = Context(folder, lmdb, args)
    ctx.peers, args.unavailable_peers = prepared_peers(args.data, folder, files, wanted)
    return ctx, {storage: disk_mb(path) for storage, path in lmdb.items()}


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write the report."""
    args = parse_args(argv)
    missing = missing_extras()
    if missing:
        print(f"benchmarks.loaders.run: missing {', '.join(missing)}: install the bench extras with "
              "pip install -e \".[bench]\" (from the repository root)", file=sys.stderr)
        return 2
    import torch

    from ..common.harness import CORES, MB, run_rounds, select
    from ..common.peer_setup import peer_names
    from ..report import command, machine, write
    from .targets import targets

    torch.set_num_threads(1)  # the main process normalises batches on one core, like a worker
    cases = select(all_cases(peer_names()), args.only)
    if args.list or not cases:
        print("\n".join(case.name for case in all_cases(peer_names())))
        return 0 if args.list else 2
    started = time.perf_counter()
    ctx, storage_mb = prepare(args, cases)
    cases = [case for case in cases if "peer:" not in case.name or case.name.split("peer:")[1].split("/")[0]
             in ctx.peers]
    estimate = sum(case.cost(ctx) * (1 if case.once else args.rounds) for case in cases)
    print(f"{len(cases)} cases x {args.rounds} round(s) on {args.images_in_corpus} images: "
          f"estimated {estimate / 60:.1f} min", flush=True)
    results = run_rounds(cases, ctx, args.rounds)
    found = targets(results, args)
    meta = {"command": command("loaders.run", argv), "machine": machine(CORES),
            "corpus": str(ctx.folder), "images": args.images_in_corpus,
            "corpus_mb": sum(Path(p).stat().st_size for p in ctx.files) / MB, "storage_mb": storage_mb,
            "rounds": args.rounds, "batch_size": args.batch_size, "batches": args.batches,
            "wall_s": time.perf_counter() - started, "unavailable_peers": args.unavailable_peers}
    write({"meta": meta, "cases": {c.name: {"unit": c.unit, "rounds": results[c.name]} for c in cases},
           "targets": [{"goal": t.goal, "measured": t.measured, "series": t.series, "threshold": t.threshold,
                        "at_least": t.at_least, "passed": t.passed, "gap": t.gap()} for t in found]}, args.out)
    print((args.out / "RESULTS.md").read_text())
    print(f"wrote RESULTS.md, loaders/results.json and loaders/results.png into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
