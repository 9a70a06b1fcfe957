"""The conversion case: convert_image_folder in a child process, images/s and the memory it holds."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psutil
from harness import MB, Context, Result

CONVERT_SCRIPT = """
import json, sys
from lmdb_dataset import convert_image_folder
status = open("/proc/self/status").read().split("RssAnon:")[1].split()
anon = int(status[0]) * 1024 / 1e6
r = convert_image_folder(sys.argv[1], sys.argv[2], storage="encoded", workers=int(sys.argv[3]),
                         overwrite=True, progress=False)
print(json.dumps({"records": r.num_records, "seconds": r.seconds, "bytes": r.bytes_read, "anon_before": anon}))
"""


def anonymous_rss(pid: int) -> float:
    """Resident anonymous memory (``RssAnon``, MB) of a process: its heap, not mapped file pages."""
    with open(f"/proc/{pid}/status") as file:
        line = next(line for line in file if line.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024 / MB


def sample_peak_rss(process: subprocess.Popen, peaks: dict[str, float]) -> None:
    """Record peak RSS and RssAnon (MB) of a process (the writer) and of its children (workers) until it ends."""
    try:
        writer = psutil.Process(process.pid)
        while process.poll() is None:
            peaks["writer_peak_rss_mb"] = max(peaks["writer_peak_rss_mb"], writer.memory_info().rss / MB)
            peaks["writer_peak_anon_mb"] = max(peaks["writer_peak_anon_mb"], anonymous_rss(process.pid))
            for child in writer.children():
                peaks["worker_peak_rss_mb"] = max(peaks["worker_peak_rss_mb"], child.memory_info().rss / MB)
            time.sleep(0.05)
    except (psutil.Error, OSError, StopIteration):
        pass


def run_sampled(command: list[str]) -> tuple[dict, dict[str, float]]:
    """Run a conversion ``command`` that prints a JSON line last; that JSON and the peaks of
    :func:`sample_peak_rss` (MB: ``writer_peak_rss_mb``, ``writer_peak_anon_mb``, ``worker_peak_rss_mb``)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peaks = {"writer_peak_rss_mb": 0.0, "writer_peak_anon_mb": 0.0, "worker_peak_rss_mb": 0.0}
    sampler = threading.Thread(target=sample_peak_rss, args=(process, peaks))
    sampler.start()
    output, _ = process.communicate()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"conversion failed with exit status {process.returncode}")
    return json.loads(output.strip().splitlines()[-1]), peaks


def convert_case(ctx: Context) -> Result:
    """Convert the corpus (encoded) in a child process with ``--convert-workers``; images/s and peak RSS."""
    destination = ctx.args.data / "convert-bench.lmdb"
    report, peaks = run_sampled([sys.executable, "-c", CONVERT_SCRIPT, str(ctx.folder), str(destination),
                                 str(ctx.args.convert_workers)])
    return {"value": report["records"] / report["seconds"], "source_mb": report["bytes"] / MB,
            "writer_anon_growth_mb": peaks["writer_peak_anon_mb"] - report["anon_before"], **peaks}


# --------------------------------------------------------------------------- memory
