"""The ``lmdb-dataset`` command line: convert, info, verify, demo, bench."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import LMDBDatasetError


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert_image_folder

    report = convert_image_folder(args.src, args.dst, storage=args.storage, workers=args.workers,
                                  shuffle=args.shuffle, seed=args.seed, resume=args.resume, skip_bad=args.skip_bad,
                                  overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {report.num_records} records to {report.path} in {report.seconds:.1f} s"
          + (f"; skipped {len(report.skipped)} unreadable file(s)" if report.skipped else ""))
    return 0


def _info(args: argparse.Namespace) -> int:
    from .inspection import summarize

    print("\n".join(summarize(args.path).lines()))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .inspection import verify_dataset

    report = verify_dataset(args.path, decode=args.decode, progress=not args.quiet)
    for record in report.bad:
        print(f"record {record.index}: {record.reason}")
    for problem in report.problems:
        print(f"problem: {problem}")
    if report.bad:
        print(f"{len(report.bad)} bad record(s)")
    else:
        print(f"every record checked is OK, but the dataset has {len(report.problems)} problem(s)"
              if report.problems else "all records OK")
    return 0 if report.ok else 1


def _reindex(args: argparse.Namespace) -> int:
    from .inspection import reindex

    print(f"indexed {reindex(args.path)} records of {args.path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.workdir, num_images=args.num_images, workers=args.workers, batch_size=args.batch_size)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(args.path, loader=args.loader, workers=args.workers, batch_size=args.batch_size,
              pipeline=args.pipeline, cold=args.cold, batches=args.batches)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lmdb-dataset`` command."""
    parser = argparse.ArgumentParser(prog="lmdb-dataset", description="Image datasets in LMDB for PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert an ImageFolder tree (SRC/<class>/<image>) to LMDB")
    convert.add_argument("src", help="ImageFolder root")
    convert.add_argument("dst", help="dataset directory to write, e.g. train.lmdb")
    convert.add_argument("--storage", choices=["encoded", "raw"], default="encoded",
                         help="encoded: original file bytes (default); raw: decoded RGB pixels")
    convert.add_argument("--workers", type=int, default=None, help="reader/checker processes (default: cores)")
    convert.add_argument("--shuffle", action="store_true", help="write records in a seeded random order")
    convert.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    convert.add_argument("--resume", action="store_true", help="continue an interrupted conversion")
    convert.add_argument("--skip-bad", action="store_true", help="leave unreadable images out and list them")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing dataset at DST")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.set_defaults(run=_convert)

    info = commands.add_parser("info", help="show a dataset's size, classes, storage and completeness")
    info.add_argument("path")
    info.set_defaults(run=_info)

    verify = commands.add_parser("verify", help="check every record's CRC32 (and with --decode, its image)")
    verify.add_argument("path")
    verify.add_argument("--decode", action="store_true", help="also decode every image")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(run=_verify)

    reindex = commands.add_parser("reindex", help="rebuild the record offset table after the file was "
                                  "copied with compaction or written to")
    reindex.add_argument("path")
    reindex.set_defaults(run=_reindex)

    demo = commands.add_parser("demo", help="build a sample dataset from shipped photos, convert, read, time")
    demo.add_argument("--workdir", default=None, help="keep the files here (default: a temporary directory)")
    demo.add_argument("--num-images", type=int, default=512)
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--batch-size", type=int, default=64)
    demo.set_defaults(run=_demo)

    bench = commands.add_parser("bench", help="measure reading speed of a dataset (images/s, MB/s)")
    bench.add_argument("path")
    bench.add_argument("--loader", choices=["random", "chunk", "iterable"], default="random",
                       help="random: LMDBImageDataset shuffled; chunk: with ChunkShuffleSampler; iterable")
    bench.add_argument("--workers", type=int, default=None)
    bench.add_argument("--batch-size", type=int, default=256)
    bench.add_argument("--pipeline", choices=["train", "val", "none"], default="train",
                       help="train: RandomResizedCrop+flip; val: Resize+CenterCrop; none: read+decode only")
    bench.add_argument("--cold", action="store_true", help="evict the dataset from the page cache first")
    bench.add_argument("--batches", type=int, default=None, help="stop after this many batches (default: an epoch)")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lmdb-dataset`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (LMDBDatasetError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"lmdb-dataset {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmdb-dataset {args.command}: interrupted", file=sys.stderr)
        return 130
