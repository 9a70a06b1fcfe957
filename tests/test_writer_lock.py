"""One writer per dataset: the advisory lock a writer holds on its lock file, and what readers say meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lmdb_dataset import IncompleteDatasetError, LMDBDatasetError, LMDBImageDataset, LMDBWriter
from lmdb_dataset.storage import environment
from lmdb_dataset.storage.environment import environments
from lmdb_dataset.tools.inspection import verify_dataset

BUSY = "another writer holds"
JPEG = (Path(__file__).parents[1] / "lmdb_dataset" / "photos" / "coffee.jpg").read_bytes()

HOLDER = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from lmdb_dataset import LMDBWriter
    from lmdb_dataset.write import parallel

    def sleep_in_worker(pid_file):
        with open(pid_file + ".tmp", "w") as out:
            out.write(str(os.getpid()))
        os.rename(pid_file + ".tmp", pid_file)
        time.sleep(60)

    if __name__ == "__main__":
        multiprocessing.set_start_method("fork")
        parallel.PARENT_CHECK_S = 600  # the worker outlives its killed parent (for this test's seconds)
        dst, worker_pid_file = sys.argv[1], sys.argv[2]
        writer = LMDBWriter(dst, resume=os.path.exists(os.path.join(dst, "data.mdb")))
        writer.add(open(sys.argv[3], "rb").read(), 0)
        writer.commit()
        print("ready", flush=True)
        if worker_pid_file:
            next(parallel.ordered_map(sleep_in_worker, [worker_pid_file], 1))
        time.sleep(60)
""")


def _hold(dst: Path, worker_pid_file: Path | None = None) -> subprocess.Popen:
    """A process that writes one record to ``dst`` and keeps its writer open (and, if asked, a forked worker)."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(dst), str(worker_pid_file or ""),
                              str(Path(__file__).parents[1] / "lmdb_dataset" / "photos" / "coffee.jpg")],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def _kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(10)


def test_a_second_writer_in_the_same_process_fails_at_once_and_changes_nothing(tmp_path):
    path = tmp_path / "ds.lmdb"
    first = LMDBWriter(path)
    first.add(JPEG, 0)
    first.commit()
    for options in ({"resume": True}, {"overwrite": True}, {}):
        with pytest.raises(LMDBDatasetError, match=BUSY) as caught:
            LMDBWriter(path, **options)
        assert "resume=True" in str(caught.value) and "\n" not in str(caught.value)
    first.add(JPEG, 1)
    first.close()
    assert [label for _, label in LMDBImageDataset(path, output="numpy")] == [0, 1]
    environments.release(path)
    with LMDBWriter(path, overwrite=True) as again:  # a closed writer let its lock go
        again.add(JPEG, 2)
    assert [label for _, label in LMDBImageDataset(path, output="numpy")] == [2]


def test_a_writer_that_fails_to_start_lets_its_lock_go(tmp_path):
    path = tmp_path / "ds.lmdb"
    with LMDBWriter(path) as writer:
        writer.add(JPEG, 0)
    with pytest.raises(LMDBDatasetError, match="already complete"):
        LMDBWriter(path, resume=True)
    with LMDBWriter(path, overwrite=True) as writer:
        writer.add(JPEG, 0)


def test_a_writer_in_another_process_holds_the_dataset_until_killed_then_it_resumes_at_once(tmp_path):
    path = tmp_path / "ds.lmdb"
    child = _hold(path)
    try:
        with pytest.raises(LMDBDatasetError, match=BUSY):
            LMDBWriter(path, resume=True)
        with pytest.raises(IncompleteDatasetError, match="a conversion is still writing it") as caught:
            LMDBImageDataset(path)
        assert "--resume" not in str(caught.value)
        assert any("still writing" in problem for problem in verify_dataset(path, progress=False).problems)
    finally:
        _kill(child)
    with pytest.raises(IncompleteDatasetError, match="stopped after 1 records"):
        LMDBImageDataset(path)
    with LMDBWriter(path, resume=True) as writer:  # no wait: the kernel dropped the dead writer's lock
        writer.add(JPEG, 1)
    assert [label for _, label in LMDBImageDataset(path, output="numpy")] == [0, 1]


def test_the_command_line_says_so_in_one_line_with_status_2(image_folder, tmp_path):
    path = tmp_path / "ds.lmdb"
    child = _hold(path)
    try:
        result = subprocess.run([sys.executable, "-m", "lmdb_dataset", "convert", str(image_folder()), str(path),
                                 "--resume", "--quiet"], capture_output=True, text=True, timeout=120)
    finally:
        _kill(child)
    assert result.returncode == 2
    assert result.stderr == (f"lmdb-dataset convert: error: {BUSY} {str(path)!r} (a conversion still running, in this "
                             "process or another?); wait for it to finish, or stop it and run again with --resume\n")


def test_a_forked_worker_that_outlives_its_killed_writer_does_not_keep_the_dataset_locked(tmp_path):
    path, worker_pid_file = tmp_path / "ds.lmdb", tmp_path / "worker.pid"
    child = _hold(path, worker_pid_file)
    worker = None
    try:
        deadline = time.monotonic() + 30
        while not worker_pid_file.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        worker = int(worker_pid_file.read_text())
        _kill(child)
        os.kill(worker, 0)  # still alive, sleeping in its task
        with LMDBWriter(path, resume=True) as writer:
            writer.add(JPEG, 1)
    finally:
        _kill(child)
        if worker is not None:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert len(LMDBImageDataset(path)) == 2


def test_readers_of_complete_datasets_never_probe_the_lock(converted, monkeypatch):
    def probed(path):
        raise AssertionError(f"lock probed: {path}")

    monkeypatch.setattr(environment, "lock_held", probed)
    path = converted()
    environments.release(path)
    assert len(LMDBImageDataset(path)) > 0
    assert verify_dataset(path, progress=False).ok


def test_an_incomplete_dataset_on_a_read_only_mount_keeps_its_message(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    source, mounted = tmp_path / "ds.lmdb", tmp_path / "ro"
    with pytest.raises(RuntimeError):
        with LMDBWriter(source) as writer:
            writer.add(JPEG, 0)
            raise RuntimeError
    mounted.mkdir()
    done = subprocess.run(["mount", "--bind", str(source), str(mounted)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount is not permitted here: {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True)
        with pytest.raises(IncompleteDatasetError, match="stopped after 1 records"):
            LMDBImageDataset(mounted)
        child = _hold(source)  # resumes it: its lock is seen through the read-only mount
        try:
            with pytest.raises(IncompleteDatasetError, match="a conversion is still writing it"):
                LMDBImageDataset(mounted)
        finally:
            _kill(child)
    finally:
        environments.release(mounted)
        subprocess.run(["umount", "--lazy", str(mounted)], check=True)
