"""A conversion in a child process, its peak memory sampled from the parent (the main suite's conversion
case and the conversion-memory benchmark)."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import psutil

from .harness import MB


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


def run_sampled(command: list[str], env: dict[str, str] | None = None) -> tuple[dict, dict[str, float]]:
    """Run a conversion ``command`` (in ``env``, default this process's) that prints a JSON line last;
    that JSON and the peaks of :func:`sample_peak_rss` (MB: ``writer_peak_rss_mb``, ``writer_peak_anon_mb``,
    ``worker_peak_rss_mb``)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    peaks = {"writer_peak_rss_mb": 0.0, "writer_peak_anon_mb": 0.0, "worker_peak_rss_mb": 0.0}
    sampler = threading.Thread(target=sample_peak_rss, args=(process, peaks))
    sampler.start()
    output, _ = process.communicate()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"conversion failed with exit status {process.returncode}")
    return json.loads(output.strip().splitlines()[-1]), peaks
