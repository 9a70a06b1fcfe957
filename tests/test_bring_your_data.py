"""The README's "Bring your data" commands, run as written on small sources built by real writers."""

from __future__ import annotations

import re
import shlex
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from legacy_writers import ilsvrc_train_tar, source_images, write_caffe, write_shards, write_tensorpack

from lmdb_dataset import LMDBImageDataset
from lmdb_dataset.tools.cli import main
from lmdb_dataset.tools.inspection import verify_dataset

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[str]:
    """The ``lmdb-dataset convert`` lines of the README's "Bring your data" section."""
    section = README.read_text().split("## Bring your data", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("lmdb-dataset convert")]


def build_sources(folder: Path, cwd: Path) -> None:
    """Every source the README names, in ``cwd``."""
    images = source_images(folder)
    write_tensorpack(folder, cwd / "ILSVRC-train.lmdb")
    (cwd / "classes.txt").write_text("tench\ngoldfish\nshark\n")
    write_caffe(folder, cwd / "caffe_train_lmdb", encoded=False)
    ilsvrc_train_tar(images, cwd / "ILSVRC2012_img_train.tar", ["class_000", "class_001", "class_002"])
    with tarfile.open(cwd / "train.tar", "w") as archive:
        archive.add(folder, arcname="train")
    (cwd / "val_images").symlink_to(folder)
    (cwd / "val.txt").write_text("".join(f"{path} {label}\n" for path, _, label in images))
    write_shards(images, cwd / "shards")
    with h5py.File(cwd / "train.h5", "w") as file:
        jpegs = file.create_dataset("jpegs", (len(images),), dtype=h5py.vlen_dtype(np.uint8))
        for row, (_, data, _) in enumerate(images):
            jpegs[row] = np.frombuffer(data, dtype=np.uint8)
        file["targets"] = [label for _, _, label in images]


def test_readme_bring_your_data_commands_run(image_folder, tmp_path, monkeypatch, capsys) -> None:
    folder = image_folder(9, special=True)
    build_sources(folder, tmp_path)
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert len(commands) == 7
    labels = [label for _, _, label in source_images(folder)]
    for command in commands:
        argv = shlex.split(command)[1:] + ["--workers", "1", "--quiet"]
        assert main(argv) == 0, (command, capsys.readouterr().err)
        target = tmp_path / argv[2]
        assert verify_dataset(target, decode=True, progress=False).ok, command
        dataset = LMDBImageDataset(target)
        assert sorted(dataset.targets.tolist()) == sorted(labels) and len(dataset) == 14, command
    assert LMDBImageDataset(tmp_path / "train.lmdb").classes == ["tench", "goldfish", "shark"]
    assert LMDBImageDataset(tmp_path / "caffe.lmdb").storage == "raw"
    assert LMDBImageDataset(tmp_path / "train-from-tar.lmdb").classes == ["class_000", "class_001", "class_002"]
    assert LMDBImageDataset(tmp_path / "train-folder-tar.lmdb").targets.tolist() == labels  # ImageFolder's order


@pytest.mark.parametrize("argv, message", [
    (["--from", "hdf5", "--root", "x"], "root do not apply to hdf5 sources (they take images, labels)"),
    (["--from", "tensorpack"], "is not an LMDB"),
    (["--from", "folder", "--classes", "c.txt"], "--classes applies to other sources (see --from), not to the image"),
])
def test_cli_source_errors_are_clear(tmp_path, capsys, argv, message) -> None:
    (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    assert main(["convert", str(tmp_path / "x.h5"), str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["auto", "folder"])
def test_cli_from_auto_or_folder_converts_an_image_folder(image_folder, tmp_path, kind: str) -> None:
    folder = image_folder(9, special=True)
    assert main(["convert", str(folder), str(tmp_path / "out"), "--from", kind, "--workers", "0", "--quiet"]) == 0
    assert LMDBImageDataset(tmp_path / "out").classes == ["class_000", "class_001", "class_002"]
