"""Any Unix: conversion, every reader and LMDBLoader run end to end where Linux-only calls are missing.

macOS has none of ``os.posix_fadvise``, ``os.sched_getaffinity``, ``os.posix_fallocate`` and
``os.fdatasync``, and starts worker processes with ``spawn``; Windows has no
``os.pread``/``os.preadv`` either. A child interpreter deletes all six at start-up (a
``sitecustomize`` on its path, so that spawned workers lose them too), converts an image
folder with two spawned workers, and reads the result with each reader, two spawned workers,
and ``LMDBLoader`` with its default worker count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmdb_dataset.storage.system import allocate, read_at

SITE = """
import os
for name in ("posix_fadvise", "sched_getaffinity", "posix_fallocate", "fdatasync", "pread", "preadv"):
    if hasattr(os, name):
        delattr(os, name)
"""

MISSING = ("posix_fadvise", "sched_getaffinity", "posix_fallocate", "fdatasync", "pread", "preadv")

SCRIPT = """
import multiprocessing, os, sys
from collections import Counter
from torch.utils.data import DataLoader
from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset, LMDBLoader, convert_image_folder

MISSING = {missing!r}


def check_worker(_):
    assert not any(hasattr(os, name) for name in MISSING)


def channels(image):
    return image.shape[0]


def labels_of(loader):
    return Counter(int(label) for _, labels in loader for label in labels)


if __name__ == "__main__":
    check_worker(None)
    multiprocessing.set_start_method("spawn")  # macOS's default, for the converter's workers too
    source, path = sys.argv[1], sys.argv[2]
    report = convert_image_folder(source, path, workers=2, progress=False)
    assert report.num_records == report.converted == {images}, report
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
def test_conversion_readers_and_loader_run_without_linux_only_calls_under_spawn(image_folder, tmp_path):
    source = image_folder(27, special=True)
    (tmp_path / "sitecustomize.py").write_text(SITE)
    script = tmp_path / "job.py"
    images = sum(1 for path in source.rglob("*") if path.is_file())
    script.write_text(textwrap.dedent(SCRIPT).replace("{missing!r}", repr(MISSING)).replace("{images}", str(images)))
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root), *sys.path])}
    result = subprocess.run([sys.executable, str(script), str(source), str(tmp_path / "data.lmdb")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("native", [True, False], ids=["posix_fallocate", "zeros written"])
def test_allocate_extends_a_file_and_keeps_its_bytes_with_or_without_posix_fallocate(tmp_path, monkeypatch, native):
    if not native:
        monkeypatch.delattr(os, "posix_fallocate", raising=False)
    path = tmp_path / "lock"
    path.write_bytes(b"head")
    fd = os.open(path, os.O_RDWR)
    try:
        allocate(fd, 20000)
        allocate(fd, 100)  # never shrinks
    finally:
        os.close(fd)
    assert path.read_bytes() == b"head" + bytes(20000 - 4)
    assert os.stat(path).st_blocks * 512 >= 20000  # blocks allocated, not a sparse hole


@pytest.mark.parametrize("native", [True, False], ids=["pread", "seek and read"])
def test_read_at_reads_a_span_with_or_without_pread(tmp_path, monkeypatch, native):
    if not native:
        monkeypatch.delattr(os, "pread", raising=False)
    path = tmp_path / "data"
    path.write_bytes(bytes(range(256)) * 40)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_at(fd, 300, 1000) == (bytes(range(256)) * 40)[1000:1300]
        assert read_at(fd, 300, 10200) == (bytes(range(256)) * 40)[10200:]  # short at the end, as pread
    finally:
        os.close(fd)


def test_without_fcntl_writers_take_no_lock_and_readers_see_none(tmp_path, monkeypatch):
    from lmdb_dataset import LMDBImageDataset, LMDBWriter
    from lmdb_dataset.storage import system

    monkeypatch.setattr(system, "fcntl", None)  # Windows: two writers are not kept apart there
    jpeg = (Path(system.__file__).parents[1] / "photos" / "coffee.jpg").read_bytes()
    with LMDBWriter(tmp_path / "ds.lmdb") as writer:
        writer.add(jpeg, 0)
        assert not system.lock_held(tmp_path / "ds.lmdb" / "writer.lock")
        import fcntl
        probe = os.open(tmp_path / "ds.lmdb" / "writer.lock", os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nothing was locked
        finally:
            os.close(probe)
    assert len(LMDBImageDataset(tmp_path / "ds.lmdb")) == 1
