"""Helpers shared by the test modules: record identities, a DataLoader model, strategies."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st

PROPERTY = settings(max_examples=50, deadline=None)

sizes = st.integers(0, 3000)
chunk_sizes = st.integers(1, 300)
seeds = st.integers(0, 2**32 - 1)
epochs = st.integers(0, 1000)
replicas = st.integers(1, 5)
workers = st.integers(1, 4)


def pixel_checksum(image: np.ndarray) -> int:
    """A record's identity from its decoded pixels (module level: picklable for spawn workers)."""
    image = np.ascontiguousarray(image)
    return zlib.crc32(image.tobytes() + repr(image.shape).encode())


def dataloader_batches(streams: list[list[int]], batch_size: int) -> list[tuple[int, list[int]]]:
    """``(worker, batch)`` in the order torch's DataLoader yields an IterableDataset's worker batches.

    Written independently of the package: each worker batches its own
    stream (the last batch may be short); the loader takes one batch from each worker in
    turn, starting at worker 0, and skips workers whose stream is exhausted.
    """
    queues = [[list(s[i:i + batch_size]) for i in range(0, len(s), batch_size)] for s in streams]
    taken = [0] * len(queues)
    out = []
    while any(taken[w] < len(q) for w, q in enumerate(queues)):
        for w, queue in enumerate(queues):
            if taken[w] < len(queue):
                out.append((w, queue[taken[w]]))
                taken[w] += 1
    return out


def records_of(loader, checksums) -> tuple[list[int], list[int]]:
    indices, labels = [], []
    for images, targets in loader:
        indices.extend(checksums[int(c)] for c in images)
        labels.extend(int(t) for t in targets)
    return indices, labels


def run_ranks(target: Callable, args_of: Callable[[int], tuple], world_size: int, out_dir: Path,
              deadline_s: float) -> list[dict]:
    """Run ``target(*args_of(rank))`` in one spawned process per rank and return each rank's JSON result.

    Each rank writes ``out_dir/rank{r}.json`` (or ``rank{r}.error`` with its traceback). A rank
    still running after ``deadline_s`` is killed and the test fails as a hang, with the tracebacks.
    """
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=args_of(rank)) for rank in range(world_size)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + deadline_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for rank in hung:
        processes[rank].kill()
        processes[rank].join(10)
    errors = "\n".join(p.read_text() for p in sorted(out_dir.glob("rank*.error")))
    if hung:
        pytest.fail(f"ranks {hung} still running after {deadline_s}s (a hang)\n{errors}")
    codes = [process.exitcode for process in processes]
    if codes != [0] * world_size:
        pytest.fail(f"ranks exited with {codes}\n{errors}")
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(world_size)]


def failing_pread(monkeypatch, bad_offset: int, failure: str) -> None:
    """Make ``os.pread`` fail (``failure`` "eio") or come back short ("short") for one span's offset."""
    real = os.pread

    def pread(fd, length, offset):
        if offset != bad_offset:
            return real(fd, length, offset)
        if failure == "eio":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, length, offset)[:length // 2]

    monkeypatch.setattr(os, "pread", pread)


def gloo_rank(rank: int, world_size: int, init_file: str, out_dir: str, body: Callable[[], dict],
              timeout_s: float) -> None:
    """One rank process of :func:`run_ranks`: join a gloo group, run ``body``, write its result (or traceback)."""
    try:
        import datetime

        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        result = body()
        dist.barrier()
        dist.destroy_process_group()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    except BaseException:
        Path(out_dir, f"rank{rank}.error").write_text(traceback.format_exc())
        raise SystemExit(1) from None
