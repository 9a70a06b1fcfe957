"""Any Unix: every reader and LMDBLoader run end to end where Linux-only calls are missing (macOS, BSD).

macOS has neither ``os.posix_fadvise`` nor ``os.sched_getaffinity``, and starts DataLoader
workers with ``spawn``; Windows has no ``os.pread``/``os.preadv`` either. A child interpreter
deletes all four at start-up (a ``sitecustomize`` on its path, so that spawned workers lose
them too) and reads a dataset with each reader, two spawned workers, and ``LMDBLoader`` with
its default worker count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SITE = """
import os
for name in ("posix_fadvise", "sched_getaffinity", "pread", "preadv"):
    if hasattr(os, name):
        delattr(os, name)
"""

SCRIPT = """
import os, sys
from collections import Counter
from torch.utils.data import DataLoader
from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset, LMDBLoader


def check_worker(_):
    assert not any(hasattr(os, name) for name in ("posix_fadvise", "sched_getaffinity", "pread", "preadv"))


def channels(image):
    return image.shape[0]


def labels_of(loader):
    return Counter(int(label) for _, labels in loader for label in labels)


if __name__ == "__main__":
    check_worker(None)
    path = sys.argv[1]
    dataset = LMDBImageDataset(path, output="tensor", transform=channels)
    assert dataset.reader.access == "mmap"  # no pread: records are read through LMDB's map
    expected = Counter(int(t) for t in dataset.targets)
    spawn = {"num_workers": 2, "multiprocessing_context": "spawn", "worker_init_fn": check_worker}
    sampler = ChunkShuffleSampler(dataset, chunk_size=4, pool_size=8)
    assert labels_of(DataLoader(dataset, batch_size=4, sampler=sampler, **spawn)) == expected
    stream = LMDBIterableDataset(path, output="tensor", transform=channels, chunk_size=4, pool_size=8)
    assert labels_of(DataLoader(stream, batch_size=4, **spawn)) == expected
    for reader in ("random", "chunk", "iterable"):
        loader = LMDBLoader(path, reader=reader, batch_size=4, size=16, train=True, drop_last=False,
                            multiprocessing_context="spawn")
        assert loader.dataloader.num_workers == min(8, os.cpu_count())
        assert labels_of(loader) == expected, reader
    print("ok")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="simulates macOS on Linux")
def test_readers_and_loader_run_without_fadvise_and_sched_getaffinity_under_spawn(dataset_path, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITE)
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root), *sys.path])}
    result = subprocess.run([sys.executable, str(script), str(dataset_path)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
