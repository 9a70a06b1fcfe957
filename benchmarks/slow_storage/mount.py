"""Mount a directory through a device model for one cold run, and unmount it afterwards."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from lmdb_dataset.storage.pagecache import evict_from_page_cache

REPOSITORY = Path(__file__).resolve().parents[2]
MOUNT_TIMEOUT = 30.0
QUEUE_DEPTH = 64
"""Asynchronous (readahead) requests the kernel keeps queued on the mount, like a disk queue's
``nr_requests``; FUSE's default of 12 would throttle readahead far below any block device's."""
FUSECTL = Path("/sys/fs/fuse/connections")


def set_queue_depth(mountpoint: Path, depth: int) -> None:
    """Let ``depth`` background requests queue on the FUSE connection behind ``mountpoint``."""
    connection = FUSECTL / str(os.minor(os.stat(mountpoint).st_dev))
    if not connection.is_dir():
        raise RuntimeError(f"{connection} is missing: mount the FUSE control filesystem "
                           "(benchmarks/slow_storage/setup.sh does: mount -t fusectl none /sys/fs/fuse/connections)")
    for name in ("max_background", "congestion_threshold"):
        (connection / name).write_text(f"{depth}\n")


def evict_tree(root: str | os.PathLike) -> int:
    """Drop every file under ``root`` from the page cache; return how many files there were."""
    count = 0
    for directory, _, filenames in os.walk(root):
        for name in filenames:
            evict_from_page_cache(os.path.join(directory, name))
            count += 1
    return count


@contextlib.contextmanager
def mounted(source: str | os.PathLike, model: str, *, rtt_ms: float = 0.5,
            trace: str | os.PathLike | None = None) -> Iterator[Path]:
    """Serve ``source`` through ``model`` at a fresh mount point, cold, for the ``with`` block.

    The backing files are evicted from the page cache first, and the mount is new, so
    nothing of the mounted view is cached either: every run starts cold. The connection's
    queue depth is raised to :data:`QUEUE_DEPTH`.

    Args:
        source: Directory to serve.
        model: ``"hdd"`` or ``"nfs"`` (see ``models.py``).
        rtt_ms: The nfs model's round trip in milliseconds. Defaults to 0.5.
        trace: File to log every read request to (see ``passthrough.py --trace``). Defaults to None.

    Yields:
        The mount point (a new directory next to ``source``).
    """
    evict_tree(source)
    mountpoint = Path(tempfile.mkdtemp(prefix=f"{Path(source).name}-{model}-", dir=Path(source).parent))
    command = [sys.executable, "-m", "benchmarks.slow_storage.passthrough", os.fspath(source),
               os.fspath(mountpoint), "--model", model, "--rtt-ms", str(rtt_ms)]
    if trace is not None:
        command += ["--trace", os.fspath(trace)]
    server = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.fspath(REPOSITORY)})
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mountpoint):
            if server.poll() is not None or time.monotonic() > deadline:
                why = server.stderr.read().decode(errors="replace") if server.poll() is not None else "timed out"
                raise RuntimeError(f"the {model} passthrough did not mount {source} on {mountpoint}: {why}")
            time.sleep(0.05)
        set_queue_depth(mountpoint, QUEUE_DEPTH)
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            # Lazy: a memory map still held by a finishing process must not keep the server alive.
            subprocess.run(["fusermount3", "-u", "-z", os.fspath(mountpoint)], check=False)
        try:
            server.wait(timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        os.rmdir(mountpoint)
