"""The conversion case: convert_image_folder in a child process, images/s and the memory it holds."""

from __future__ import annotations

import sys

from ..common.harness import MB, Context, Result
from ..common.sampling import run_sampled

CONVERT_SCRIPT = """
import json, sys
from lmdb_dataset import convert_image_folder
status = open("/proc/self/status").read().split("RssAnon:")[1].split()
anon = int(status[0]) * 1024 / 1e6
r = convert_image_folder(sys.argv[1], sys.argv[2], storage="encoded", workers=int(sys.argv[3]),
                         overwrite=True, progress=False)
print(json.dumps({"records": r.num_records, "seconds": r.seconds, "bytes": r.bytes_read, "anon_before": anon}))
"""


def convert_case(ctx: Context) -> Result:
    """Convert the corpus (encoded) in a child process with ``--convert-workers``; images/s and peak RSS."""
    destination = ctx.args.data / "convert-bench.lmdb"
    report, peaks = run_sampled([sys.executable, "-c", CONVERT_SCRIPT, str(ctx.folder), str(destination),
                                 str(ctx.args.convert_workers)])
    return {"value": report["records"] / report["seconds"], "source_mb": report["bytes"] / MB,
            "writer_anon_growth_mb": peaks["writer_peak_anon_mb"] - report["anon_before"], **peaks}
