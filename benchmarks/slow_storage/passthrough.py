"""A read-only FUSE passthrough that serves a directory through a device model.

Run it in the foreground (``mount.py`` does this for the benchmarks)::

    python -m benchmarks.slow_storage.passthrough SOURCE MOUNTPOINT --model hdd

Every read, and the metadata work the model charges for, sleeps until the model says the
request completes (see ``models.py``). The kernel's page cache of the mounted view behaves
as a disk's or an NFS client's: a fresh mount starts with nothing cached, and the mount has
``kernel_cache``, so what was read stays cached when another process opens the file (without
it FUSE drops a file's cached pages on every open, and a DataLoader worker opening the dataset
would throw away what the main process had prefetched; the served files are read-only and never
change during a mount). Memory maps (LMDB's) work as on any filesystem. Directory entries and
attributes are cached by the kernel for the life of the mount, as a local filesystem's inode
cache would.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import threading
import time
from typing import TextIO

import mfusepy

from .models import SERVING_THREADS, DeviceModel, HddModel, NfsModel, layout

ATTRIBUTE_SECONDS = 3600
"""How long the kernel may cache lookups and attributes (one mount = one cold run)."""


def make_model(name: str, source: str, *, rtt: float) -> DeviceModel:
    """The device model called ``name`` (``"hdd"`` or ``"nfs"``) for the tree at ``source``."""
    if name == "hdd":
        return HddModel(layout(source))
    if name == "nfs":
        return NfsModel(rtt=rtt)
    raise ValueError(f"model={name!r} is not supported; use hdd or nfs")


def wait_until(instant: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``instant``."""
    delay = instant - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class ModelledPassthrough(mfusepy.Operations):
    """Read-only view of ``source`` whose requests take the time ``model`` says."""

    use_ns = True

    def __init__(self, source: str, model: DeviceModel, *, trace: TextIO | None = None) -> None:
        self.source = source
        self.model = model
        self.trace = trace
        self._trace_lock = threading.Lock()

    def _real(self, path: str) -> str:
        return os.path.join(self.source, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        try:
            st = os.lstat(self._real(path))
        except FileNotFoundError:
            raise mfusepy.FuseOSError(errno.ENOENT) from None
        wait_until(self.model.metadata(path))
        mode = st.st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        return {"st_mode": mode, "st_nlink": st.st_nlink, "st_size": st.st_size, "st_uid": st.st_uid,
                "st_gid": st.st_gid, "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
                "st_ctime": st.st_ctime_ns, "st_ino": st.st_ino}

    def readdir(self, path: str, fh: int) -> list[str]:
        names = sorted(os.listdir(self._real(path)))
        wait_until(self.model.listing(path, [f"{path.rstrip('/')}/{name}" for name in names]))
        return [".", "..", *names]

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise mfusepy.FuseOSError(errno.EROFS)
        fd = os.open(self._real(path), os.O_RDONLY)
        wait_until(self.model.open(path))
        return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        data = os.pread(fh, size, offset)
        if data:
            arrived = time.monotonic()
            done = self.model.read(path, offset, len(data))
            wait_until(done)
            if self.trace is not None:
                with self._trace_lock:
                    pid = mfusepy.fuse_get_context()[2]
                    self.trace.write(f"{arrived:.6f} {done:.6f} {pid} {path} {offset} {len(data)}\n")
                    self.trace.flush()
        return data

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.source)
        return {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                  "f_files", "f_ffree", "f_favail", "f_namemax")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Serve SOURCE read-only at MOUNTPOINT through a device model.")
    parser.add_argument("source", help="directory to serve")
    parser.add_argument("mountpoint", help="empty directory to mount on")
    parser.add_argument("--model", choices=("hdd", "nfs"), required=True, help="device model")
    parser.add_argument("--rtt-ms", type=float, default=0.5, help="nfs round trip in ms (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=SERVING_THREADS,
                        help="most FUSE threads serving requests at once (default: %(default)s)")
    parser.add_argument("--trace", type=argparse.FileType("w"), default=None,
                        help="write one line per read: arrival, completion, pid, path, offset, size")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Mount and serve until unmounted (``fusermount3 -u MOUNTPOINT``)."""
    args = parse_args(argv)
    source = os.path.abspath(args.source)
    model = make_model(args.model, source, rtt=args.rtt_ms / 1e3)
    print(model.describe(), flush=True)
    mfusepy.FUSE(ModelledPassthrough(source, model, trace=args.trace), args.mountpoint, foreground=True, ro=True,
                 fsname=f"slow-{args.model}", entry_timeout=ATTRIBUTE_SECONDS, attr_timeout=ATTRIBUTE_SECONDS,
                 negative_timeout=ATTRIBUTE_SECONDS, max_threads=args.threads, max_idle_threads=args.threads,
                 kernel_cache=True)


if __name__ == "__main__":
    main()
