"""Conversion under faults: a full disk, file names that are not UTF-8."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import add_corrupt_image
from test_convert import logical_content

from lmdb_dataset import LMDBImageDataset, convert_image_folder
from lmdb_dataset.storage.environment import environments
from lmdb_dataset.tools.cli import main
from lmdb_dataset.tools.inspection import summarize
from lmdb_dataset.tools.photo_folders import make_photo_folder
from lmdb_dataset.write import writer


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (skipped where mounting is not permitted, e.g. without root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # lazy: a failed test may hold files open


def test_convert_disk_full_leaves_a_resumable_dataset_and_one_clear_line(image_folder, small_disk, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.setitem(writer.LMDBWriter.__init__.__kwdefaults__, "commit_records", 4)
    src, target = image_folder(24), small_disk / "train.lmdb"
    assert main(["convert", str(src), str(target), "--storage", "raw", "--workers", "0", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(target) in error and "no space left on the device" in error
    assert "--resume" in error and "resume=True" not in error and "Traceback" not in error
    assert 0 < summarize(target).info.num_records < 29 and not summarize(target).info.complete
    with open(small_disk / "filler", "wb", buffering=0) as filler:  # the disk full: starting anew is an error too
        with pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 4096)
    assert main(["convert", str(src), str(small_disk / "other.lmdb"), "--workers", "0", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "other.lmdb" in error and "No space left on device" in error
    assert list((small_disk / "other.lmdb").iterdir()) == []  # the same command works once there is space
    environments.release(target)
    moved = shutil.move(target, tmp_path / "train.lmdb")  # to a larger disk
    convert_image_folder(src, moved, storage="raw", workers=0, resume=True, progress=False)
    convert_image_folder(src, tmp_path / "whole", storage="raw", workers=0, progress=False)
    assert logical_content(moved) == logical_content(tmp_path / "whole")


def test_a_full_disk_refuses_a_new_dataset_without_posix_fallocate(image_folder, small_disk, monkeypatch, capsys):
    """macOS has no posix_fallocate: the lock file's zeros are written instead, and a full disk is still one line."""
    monkeypatch.delattr(os, "posix_fallocate")
    with open(small_disk / "filler", "wb", buffering=0) as filler:
        with pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 4096)
    assert main(["convert", str(image_folder(24)), str(small_disk / "new.lmdb"), "--workers", "0", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "new.lmdb" in error and "No space left on device" in error
    assert list((small_disk / "new.lmdb").iterdir()) == []


def test_convert_cli_prints_file_and_class_names_that_are_not_utf8(tmp_path):
    root = os.fsencode(tmp_path / "src")
    make_photo_folder(tmp_path / "src", num_images=6, num_classes=2, size_profile="small")
    os.rename(os.path.join(root, b"class_001"), os.path.join(root, b"caf\xe9"))
    os.rename(os.path.join(root, b"caf\xe9", b"class_001_000003.JPEG"), os.path.join(root, b"caf\xe9", b"\xff.jpg"))
    add_corrupt_image(tmp_path / "src", folder=os.fsdecode(b"caf\xe9"), name=os.fsdecode(b"bad\xfe.jpg"))
    dst = os.path.join(os.fsencode(tmp_path), b"out.lmdb")
    result = subprocess.run([sys.executable, "-m", "lmdb_dataset", "convert", root, dst, "--skip-bad",
                             "--workers", "0"], capture_output=True,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert result.returncode == 0, result.stderr
    assert b"bad\\xfe.jpg" in result.stdout and b"wrote 6 records" in result.stdout
    info = subprocess.run([sys.executable, "-m", "lmdb_dataset", "info", dst], capture_output=True,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert info.returncode == 0 and b"(caf\\xe9, class_000)" in info.stdout, info.stderr  # undecodable bytes as \\xNN
    ds = LMDBImageDataset(os.fsdecode(dst))
    assert {os.fsencode(ds.source_path(i)) for i in range(len(ds))} >= {b"caf\xe9/\xff.jpg"}
    assert ds.classes == ["caf\udce9", "class_000"]


def test_convert_cli_interrupted_or_refused_speaks_flags(image_folder, tmp_path, monkeypatch, capsys):
    target = tmp_path / "train.lmdb"
    added = writer.LMDBWriter.add_record

    def interrupt_after_first(self, *args, **kwargs):
        if self.num_records:
            raise KeyboardInterrupt
        return added(self, *args, **kwargs)

    monkeypatch.setattr(writer.LMDBWriter, "add_record", interrupt_after_first)
    assert main(["convert", str(image_folder()), str(target), "--workers", "0", "--quiet"]) == 130
    assert "interrupted; everything committed is kept: run the same command with --resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["convert", str(image_folder()), str(target), "--workers", "0", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "--overwrite" in error and "--resume" in error and "=True" not in error
    assert main(["convert", str(image_folder()), str(target), "--workers", "0", "--quiet", "--resume"]) == 0
    assert summarize(target).info.complete and summarize(target).info.num_records == 29
