"""The lmdb-dataset command line."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from lmdb_dataset import LMDBImageDataset
from lmdb_dataset.cli import main


def test_convert_info_verify_round_trip(image_folder, tmp_path, capsys):
    target = tmp_path / "train.lmdb"
    assert main(["convert", str(image_folder()), str(target), "--workers", "2", "--order", "folder", "--quiet"]) == 0
    assert "wrote 29 records" in capsys.readouterr().out
    assert main(["info", str(target)]) == 0
    info = capsys.readouterr().out
    assert "records:   29" in info and "complete:  yes" in info and "classes:   3" in info
    assert main(["verify", str(target), "--decode", "--quiet"]) == 0
    assert "all records OK" in capsys.readouterr().out


def test_verify_lists_bad_records_and_exits_nonzero(converted, tmp_path, capsys):
    path = shutil.copytree(converted(), tmp_path / "copy.lmdb")
    offset, _ = LMDBImageDataset(path)._meta.spans[6]
    with open(path / "data.mdb", "r+b") as f:
        f.seek(int(offset) + 100)
        f.write(b"\x00\x01\x02\x03")
    assert main(["verify", str(path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "record 6: CRC32 mismatch" in out and "1 bad record(s)" in out


def test_convert_bad_file_exits_2_naming_it_and_skip_bad_succeeds(image_folder, tmp_path, capsys):
    src = image_folder(12, special=False, corrupt=True)
    assert main(["convert", str(src), str(tmp_path / "a"), "--quiet", "--workers", "0"]) == 2
    assert "class_001/broken.jpg" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "a"), "--resume", "--skip-bad", "--quiet"]) == 0
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "a")]) == 0
    assert "skipped:   1" in capsys.readouterr().out


def test_info_on_incomplete_and_missing_datasets(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_dash_m_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "lmdb_dataset", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for command in ("convert", "info", "verify", "demo", "bench"):
        assert command in result.stdout


@pytest.mark.parametrize("loader", ["random", "chunk", "iterable"])
def test_bench_reads_the_dataset(converted, capsys, loader):
    assert main(["bench", str(converted()), "--loader", loader, "--workers", "1", "--batch-size", "8",
                 "--pipeline", "val", "--cold"]) == 0
    out = capsys.readouterr().out
    assert "evicted" in out and "images/s" in out


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--num-images", "48", "--workers", "1",
                 "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "equal torchvision's ImageFolder on sampled records: yes" in out
    assert out.count("x, 48 images)") == 3
