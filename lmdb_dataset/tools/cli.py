"""The ``lmdb-dataset`` command line: convert, info, verify, reindex, demo, bench.

Only what a command needs is imported, when it runs: ``--help``, ``--version``, ``convert``,
``info``, ``verify`` and ``reindex`` never import torch. Errors a user can cause (a wrong path, a wrong flag, a
bad source image, an incomplete dataset) end in one line on stderr that names the fix in the
command line's words (flags, not keyword arguments) and exit status 2; never a traceback. Ctrl-C
and SIGTERM end a command with one line and exit status 130.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from .. import __version__
from ..errors import LMDBDatasetError
from ..write.interrupts import (
    INTERRUPT_SIGNALS,
    Terminated,
    interrupt_behind,
    raise_terminated,
    terminate_as_interrupt,
)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _convert(args: argparse.Namespace) -> int:
    from ..sources.detect import detect_kind
    from ..write.convert import convert_image_folder

    if args.source_kind in (None, "auto"):
        args.source_kind = detect_kind(args.src)
    if args.source_kind != "folder":
        if args.order is not None:
            raise ValueError(f"--order applies to image folders; a {args.source_kind} source keeps its own order")
        return _convert_source(args)
    for name in ("classes", "root", "images", "labels"):
        if getattr(args, name):
            raise ValueError(f"--{name} applies to other sources (see --from), not to the image folder {args.src!r}")
    report = convert_image_folder(args.src, args.dst, storage=args.storage or "encoded", workers=args.workers,
                                  order=args.order or "shuffled", seed=args.seed, resume=args.resume,
                                  skip_bad=args.skip_bad, overwrite=args.overwrite, progress=not args.quiet,
                                  max_side=args.max_side, quality=args.quality)
    print(f"wrote {report.num_records} records to {report.path} in {time.perf_counter() - args.started:.1f} s"
          + (f"; skipped {len(report.skipped)} unreadable file(s)" if report.skipped else ""))
    return 0


def _convert_source(args: argparse.Namespace) -> int:
    """``convert --from KIND``: a legacy LMDB, tar archive, list file or HDF5 file."""
    from ..sources.conversion import convert_source

    options = {name: getattr(args, name) for name in ("root", "images", "labels") if getattr(args, name)}
    report = convert_source(args.src, args.dst, kind=args.source_kind, classes=args.classes, storage=args.storage,
                            workers=args.workers, resume=args.resume, skip_bad=args.skip_bad,
                            overwrite=args.overwrite, progress=not args.quiet, max_side=args.max_side,
                            quality=args.quality, **options)
    print(f"wrote {report.num_records} records to {report.path} in {time.perf_counter() - args.started:.1f} s"
          + (f"; skipped {len(report.skipped)} bad record(s)" if report.skipped else ""))
    return 0


def _add_source_arguments(convert: argparse.ArgumentParser) -> None:
    """The ``convert`` options for sources other than an ImageFolder tree (see lmdb_dataset.sources)."""
    from ..sources.detect import KINDS

    group = convert.add_argument_group("other sources", "legacy LMDBs, tar archives, list files, HDF5")
    group.add_argument("--from", dest="source_kind", choices=["auto", "folder", *KINDS], default=None,
                       help="what SRC is (default: detected from its content): folder, an image folder "
                            "SRC/<class>/<image>; lmdb, an LMDB written by tensorpack, a folder2lmdb script or "
                            "Caffe (which one is detected; tensorpack, folder2lmdb, caffe name it); tar, "
                            "ILSVRC2012's tar of class tars; folder-tar, a tar of an image folder; webdataset, "
                            "key.jpg + key.cls shards; list, a list file of 'path label' lines; hdf5")
    group.add_argument("--classes", default=None,
                       help="text file of class names, one a line (label i = line i); for a source that names "
                            "its classes, one line a class renames them")
    group.add_argument("--root", default=None, help="list files: folder the listed paths are relative to")
    group.add_argument("--images", default=None, help="HDF5: name of the images dataset")
    group.add_argument("--labels", default=None, help="HDF5: name of the labels dataset")


def _info(args: argparse.Namespace) -> int:
    from .inspection import summarize

    print("\n".join(summarize(args.path).lines()))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..errors import printable
    from .inspection import verify_dataset

    report = verify_dataset(args.path, decode=args.decode, progress=not args.quiet)
    for record in report.bad:
        print(f"record {record.index}" + (f" ({printable(record.source)})" if record.source else "")
              + f": {record.reason}")
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
              pipeline=args.pipeline, cold=args.cold, batches=args.batches, progress=not args.quiet)
    return 0


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; the smallest allowed is {minimum}")
        return value
    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its messages
    return parse


def _quality(text: str) -> int:
    """An argparse type: a JPEG quality, an integer from 1 to 100."""
    value = _count(1)(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"{value} is too large; a JPEG quality is at most 100")
    return value


_quality.__name__ = "JPEG quality 1-100"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lmdb-dataset`` command."""
    parser = argparse.ArgumentParser(prog="lmdb-dataset", description="Image datasets in LMDB for PyTorch.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser("convert", help="convert an ImageFolder tree (SRC/<class>/<image>), a legacy LMDB, "
                                     "tar, list file or HDF5 file to LMDB")
    convert.add_argument("src", help="ImageFolder root: one sub-directory of images per class (or another "
                                     "source: see --from)")
    convert.add_argument("dst", help="dataset directory to write, e.g. train.lmdb")
    convert.add_argument("--storage", choices=["encoded", "raw"], default=None,
                         help="encoded: original file bytes (default); raw: decoded RGB pixels, no decoding when "
                              "reading, ~7x the size of JPEGs (the default for sources that store pixels)")
    convert.add_argument("--workers", type=_count(0), default=None,
                         help="processes that read and check images (default: the usable cores; 0: this process)")
    convert.add_argument("--order", choices=["shuffled", "folder"], default=None,
                         help="image folders: physical record order, shuffled (seeded; default) or folder (class "
                              "by class); the dataset index is ImageFolder's either way. Other sources keep "
                              "their own order")
    convert.add_argument("--seed", type=int, default=0, help="seed of the shuffled order (default 0)")
    convert.add_argument("--resume", action="store_true",
                         help="continue an interrupted conversion into DST; with nothing at DST yet, start one "
                              "(a job script may always pass it)")
    convert.add_argument("--skip-bad", action="store_true", help="leave unreadable images out and list them")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing dataset at DST")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    shaping = convert.add_argument_group("storage shaping", "opt-in and lossy, like FFCV's max_resolution: "
                                         "smaller stored images read faster and take less disk")
    shaping.add_argument("--max-side", type=_count(1), default=None, metavar="N",
                         help="resize images whose longer side exceeds N pixels to a longer side of exactly N "
                              "(Lanczos, aspect kept; re-encoded as JPEG, or stored as pixels with --storage raw); "
                              "smaller images keep their original bytes (default: every image as given)")
    shaping.add_argument("--quality", type=_quality, default=None, metavar="Q",
                         help="JPEG quality 1-100 of the images --max-side re-encodes (default 90; not with "
                              "--storage raw)")
    _add_source_arguments(convert)
    convert.set_defaults(run=_convert)

    info = commands.add_parser("info", help="show a dataset's size, classes, storage and completeness")
    info.add_argument("path", help="dataset directory (e.g. train.lmdb)")
    info.set_defaults(run=_info)

    verify = commands.add_parser("verify", help="check every record's CRC32 (and with --decode, its image)")
    verify.add_argument("path", help="dataset directory (e.g. train.lmdb)")
    verify.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(run=_verify)

    reindex = commands.add_parser("reindex", help="rebuild the record offset table after the file was "
                                  "copied with compaction or written to")
    reindex.add_argument("path", help="dataset directory (e.g. train.lmdb)")
    reindex.set_defaults(run=_reindex)

    demo = commands.add_parser("demo", help="build a sample dataset from shipped photos, convert, read, time")
    demo.add_argument("--workdir", default=None, help="keep the files here (default: a temporary directory)")
    demo.add_argument("--num-images", type=_count(1), default=512, help="size of the sample dataset (default 512)")
    demo.add_argument("--workers", type=_count(0), default=None,
                      help="DataLoader and conversion workers (default: the usable cores)")
    demo.add_argument("--batch-size", type=_count(1), default=64, help="DataLoader batch size (default 64)")
    demo.set_defaults(run=_demo)

    bench = commands.add_parser("bench", help="measure reading speed of a dataset (images/s, MB/s)")
    bench.add_argument("path", help="dataset directory (e.g. train.lmdb)")
    bench.add_argument("--loader", choices=["random", "chunk", "iterable"], default="random",
                       help="random: LMDBImageDataset shuffled (default); chunk: with ChunkShuffleSampler; "
                            "iterable: LMDBIterableDataset")
    bench.add_argument("--workers", type=_count(0), default=None, help="DataLoader workers (default: the usable cores)")
    bench.add_argument("--batch-size", type=_count(1), default=256, help="DataLoader batch size (default 256)")
    bench.add_argument("--pipeline", choices=["train", "val", "none"], default="train",
                       help="train: RandomResizedCrop+flip (default); val: Resize+CenterCrop; none: read+decode only")
    bench.add_argument("--cold", action="store_true", help="evict the dataset from the page cache first")
    bench.add_argument("--batches", type=_count(1), default=None,
                       help="read at most this many batches (default: one epoch); the first ones are warm-up, "
                            "timed apart")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=_bench)
    return parser


def cli_words(message: str, parser: argparse.ArgumentParser) -> str:
    """Rewrite a library message's Python keyword arguments as the flags of ``parser``'s commands.

    ``resume=True`` becomes ``--resume``, ``seed=3`` ``--seed 3``, ``storage='raw'`` ``--storage raw``,
    ``skip_bad=False`` ``no --skip-bad``;
    a flag already given in parentheses after its keyword is not repeated, and a Python alternative
    in parentheses (``(or convert_image_folder(..., resume=True))``) is dropped. Names that are no
    command's option are left alone.
    """
    message = re.sub(r" \(or [\w.]+\([^()]*\)\)", "", message)
    flags = {action.dest: action.option_strings[0] for command in commands_of(parser).values()
             for action in command._actions if action.option_strings and action.dest != "help"}

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        if value == "True":
            return flags[name]
        if value == "False":
            return f"no {flags[name]}"
        if re.fullmatch(r"'[\w.-]+'", value):  # storage='raw' is --storage raw on a command line
            value = value[1:-1]
        return f"{flags[name]} {value}"

    return re.sub(r"\b([a-z_]+)=([^\s,;:)]+?)(?:\s\(--[\w-]+\))?(?=[\s,;:)]|\.?$|\.\s)", flag, message)


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an error the user caused, or None for a bug (which keeps its traceback)."""
    import lmdb

    if isinstance(exc, (LMDBDatasetError, ValueError)):
        return str(exc)
    if isinstance(exc, lmdb.Error):
        return f"not a readable LMDB database ({exc}); if it is damaged, convert the images again"
    if isinstance(exc, OSError) and exc.filename is not None:
        name = os.fspath(exc.filename)
        hints = {
            FileNotFoundError: f"{name!r} does not exist; check the path",
            FileExistsError: f"{name!r} already exists; choose another path",
            NotADirectoryError: f"{name!r} (or a folder above it) is a file where a directory is needed; "
                                "pass the directory",
            IsADirectoryError: f"{name!r} is a directory where a file is needed",
            PermissionError: f"permission denied on {name!r}; check its permissions or choose another path",
        }
        return next((text for kind, text in hints.items() if isinstance(exc, kind)),
                    f"{name!r}: {exc.strerror or exc}")
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError)):
        return str(exc)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lmdb-dataset`` console script.

    Ctrl-C (SIGINT) and SIGTERM (``kill``, a cluster job's time limit) end any command the
    same way, at any instant: what is under way stops (a conversion commits what it has and
    ends its worker processes), one line on stderr says so (for ``convert``: resume with
    ``--resume``), and the exit status is 130.
    """
    started = time.perf_counter()
    words = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in words if not word.startswith("-")), "")  # named even before parsing ends
    try:
        with terminate_as_interrupt():
            parser = build_parser()
            args, unknown = parser.parse_known_args(argv)
            if unknown:  # said in the command's own usage, not the top level's
                commands_of(parser)[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
            command = args.command
            args.started = started  # the summaries' times are wall times of the whole command
            for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as their bytes
                getattr(stream, "reconfigure", lambda **_: None)(errors="surrogateescape")
            status = args.run(args)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler below
            return status
    except BrokenPipeError:
        # The reader went away (`lmdb-dataset info PATH | head -3`): stop quietly, and point stdout
        # at /dev/null so that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (KeyboardInterrupt, Exception) as exc:
        interrupt = interrupt_behind(exc)  # itself, or one Python re-raised as another error (an import cut short)
        if interrupt is not None:
            how = " (SIGTERM)" if isinstance(interrupt, Terminated) else ""
            advice = "; everything committed is kept: run the same command with --resume to continue" \
                if command == "convert" else ""
            print(f"lmdb-dataset{' ' + command if command else ''}: interrupted{how}{advice}", file=sys.stderr)
            return EXIT_INTERRUPTED
        message = user_error(exc)
        if message is None:
            raise
        print(f"lmdb-dataset {args.command}: error: {cli_words(message, parser)}", file=sys.stderr)
        return EXIT_ERROR


def run() -> NoReturn:
    """The ``lmdb-dataset`` program (and ``python -m lmdb_dataset``): :func:`main`, then exit with its status.

    SIGTERM raises :class:`Terminated` from before :func:`main` starts (not only within its handler
    block), so none of its instants turns a SIGTERM into a plain interrupt. Once the command is
    done, SIGINT and SIGTERM are ignored: a signal then could only cut the interpreter's exit short
    (the finalizers of the conversion's worker pool), with a traceback of its own and nothing left
    to stop.
    """
    signal.signal(signal.SIGTERM, raise_terminated)
    status = main()
    for signum in INTERRUPT_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(status)


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of ``parser`` by name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)
