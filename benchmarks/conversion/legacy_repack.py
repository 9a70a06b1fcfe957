"""Re-packing a legacy LMDB of JPEG bytes: how close `convert --from` runs to reading the source.

Builds (once, cached in --workdir) an ImageFolder corpus of ImageNet-sized photographic JPEGs
and a legacy LMDB of it in tensorpack's layout (``LMDBSerializer``: 8-digit keys, values
``pickle.dumps([np.uint8 array of the file bytes, label], protocol=-1)``, ``__keys__``; or
msgpack-numpy with ``--format msgpack``). Then, in interleaved rounds, it times:

- ``read``: a plain sequential cursor read of every value (the floor: what any re-packer pays);
- ``read+parse``: the same plus the safe decoder (``safe_pickle`` / ``msgpack_values``), no image check;
- ``read+parse+check``: plus the decode check every conversion makes (``check_decodes``), in this
  one process: the per-core floor of a conversion;
- ``convert wN``: ``convert_source`` with N checking processes, into a fresh dataset
  (parse, decode check, build records, crash-safe commits, finalise).

Writes a JSON (default: benchmarks/data/results/conversion/legacy_repack.json, or
legacy_repack_cold.json with --cold, a scratch folder) and prints its section of RESULTS.md, ``markdown(results)``: a
table of records/s, source MB/s and each case's time relative to ``read``. With --cold the
source file is evicted from the page cache before every case. ``--out
benchmarks/conversion/legacy_repack.json`` (``legacy_repack_cold.json``) replaces the committed results and
re-renders benchmarks/RESULTS.md.

Example:
    python -m benchmarks.conversion.legacy_repack --num-images 1000 --workers 1 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import numpy as np

from lmdb_dataset.decode.image import check_decodes
from lmdb_dataset.sources import msgpack_values, safe_pickle
from lmdb_dataset.sources.conversion import convert_source
from lmdb_dataset.sources.legacy_lmdb import decode_datapoint
from lmdb_dataset.storage.pagecache import evict_from_page_cache
from lmdb_dataset.tools.photo_folders import make_photo_folder
from lmdb_dataset.write.convert import image_folder_samples

from .. import report


def build_source(corpus: Path, target: Path, fmt: str) -> None:
    """Write the corpus as tensorpack's LMDBSerializer does (single file + -lock)."""
    import msgpack
    import msgpack_numpy

    def dumps(value) -> bytes:
        if fmt == "msgpack":
            return msgpack.packb(value, default=msgpack_numpy.encode, use_bin_type=True)
        return pickle.dumps(value, protocol=-1)

    _, samples = image_folder_samples(corpus)
    env = lmdb.open(str(target), subdir=False, map_size=1 << 34, meminit=False, map_async=True)
    with env.begin(write=True) as txn:
        for index, (path, label) in enumerate(samples):
            data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
            txn.put(f"{index:08}".encode(), dumps([data, label]))
        txn.put(b"__keys__", dumps([f"{k:08}".encode() for k in range(len(samples))]))
    env.sync()
    env.close()


def read_all(source: Path, decode: Callable[[bytes], object] | None) -> tuple[int, int]:
    """Sequential cursor read of every record value (optionally decoded); returns (records, bytes)."""
    env = lmdb.open(str(source), subdir=False, readonly=True, lock=False)
    records = size = 0
    with env.begin() as txn:
        for key, value in txn.cursor():
            if key == b"__keys__":
                continue
            if decode is not None:
                decode(value)
            records += 1
            size += len(value)
    env.close()
    return records, size


def markdown(results: dict) -> str:
    """The section of RESULTS.md for a saved run: source, settings and the table of cases."""
    cases, source = results["cases"], results["source"]
    baseline = statistics.median(cases["read"]["seconds"])
    lines = ["## Re-packing a legacy LMDB" + (" (cold page cache)" if results["cold"] else ""), "",
             *report.provenance_lines(results),
             f"Source: {source['records']} records, {source['bytes'] / 1e6:.1f} MB, tensorpack layout, "
             f"{source['format']} values; "
             + ("evicted from the page cache before each case" if results["cold"] else "warm page cache")
             + f"; {results['rounds']} interleaved rounds.", "",
             f"| case | records/s | source MB/s | time vs read | seconds (median of {results['rounds']}) |",
             "|---|---:|---:|---:|---:|"]
    for name, case in cases.items():
        median = statistics.median(case["seconds"])
        lines.append(f"| {name} | {case['records'] / median:,.0f} | {case['bytes'] / median / 1e6:,.1f} | "
                     f"{median / baseline:.1f}x | {median:.2f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/data/legacy"),
                        help="where the corpus, the legacy LMDB and the outputs go (default benchmarks/data/legacy)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="an ImageFolder root to use instead of generating one")
    parser.add_argument("--num-images", type=int, default=1000, help="images to generate (default 1000)")
    parser.add_argument("--format", choices=["pickle", "msgpack"], default="pickle",
                        help="value serialisation of the legacy LMDB (default pickle, tensorpack >= 0.9.9)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="convert cases (default 1 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--cold", action="store_true", help="evict the source from the page cache before each case")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (JSON; default benchmarks/data/results/conversion/legacy_repack.json, "
                             "legacy_repack_cold.json with --cold; benchmarks/conversion/legacy_repack.json "
                             "replaces the committed one)")
    args = parser.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus or args.workdir / f"corpus-{args.num_images}"
    if args.corpus is None and not corpus.exists():
        print(f"generating {args.num_images} ImageNet-sized JPEGs in {corpus} ...", flush=True)
        make_photo_folder(corpus, num_images=args.num_images, num_classes=10, size_profile="imagenet",
                          workers=max(1, len(os.sched_getaffinity(0))))
    source = args.workdir / f"tensorpack-{args.format}-{corpus.name}.lmdb"
    if not source.exists():
        print(f"writing the legacy LMDB {source} ...", flush=True)
        build_source(corpus, source, args.format)
    decode = safe_pickle.loads if args.format == "pickle" else msgpack_values.loads
    target = args.workdir / "repacked.lmdb"

    def convert(workers: int) -> Callable[[], tuple[int, int]]:
        def run() -> tuple[int, int]:
            report = convert_source(source, target, workers=workers, overwrite=True, progress=False)
            return report.num_records, report.bytes_read
        return run

    cases: dict[str, Callable[[], tuple[int, int]]] = {
        "read": lambda: read_all(source, None),
        "read+parse": lambda: read_all(source, decode),
        "read+parse+check": lambda: read_all(source, lambda value: check_decodes(decode_datapoint(value, where="")[0])),
        **{f"convert w{w}": convert(w) for w in args.workers},
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    volume: dict[str, tuple[int, int]] = {}
    for round_index in range(args.rounds):
        for name, case in cases.items():
            if args.cold:
                evict_from_page_cache(source)
            started = time.perf_counter()
            volume[name] = case()
            seconds[name].append(time.perf_counter() - started)
            print(f"round {round_index + 1}: {name}: {seconds[name][-1]:.2f} s", flush=True)
    shutil.rmtree(target, ignore_errors=True)

    records, size = volume["read"]
    results = {**report.provenance("conversion.legacy_repack", argv),
               "source": {"records": records, "bytes": size, "format": args.format}, "cold": args.cold,
               "rounds": args.rounds,
               "cases": {name: {"records": volume[name][0], "bytes": volume[name][1], "seconds": times}
                         for name, times in seconds.items()}}
    print("\n" + markdown(results))
    name = f"legacy_repack{'_cold' if args.cold else ''}.json"
    report.save(results, args.out or report.SCRATCH / "conversion" / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
