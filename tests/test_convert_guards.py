"""What a newcomer's first conversions meet: no empty success, a destination inside the source, a class
folder given as the root, ``--resume`` in a job script, an LMDB of an unknown layout."""

from __future__ import annotations

import shutil
import tarfile

import lmdb
import numpy as np
import pytest
from conftest import add_corrupt_image
from legacy_writers import source_images, write_shards
from torchvision.datasets import ImageFolder

from lmdb_dataset import LMDBImageDataset, convert_image_folder
from lmdb_dataset.tools.cli import main
from lmdb_dataset.tools.inspection import summarize


def one_line_error(capsys, command: str = "convert") -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lmdb-dataset {command}: error: "), err
    return lines[0]


def test_every_file_skipped_is_an_error_not_an_empty_dataset(tmp_path, capsys):
    src = tmp_path / "src"
    for folder in ("a", "b"):
        add_corrupt_image(src, folder=folder)
    target = tmp_path / "out.lmdb"
    assert main(["convert", str(src), str(target), "--workers", "0", "--quiet"]) == 2
    capsys.readouterr()
    for _ in range(2):  # the advice after a bad file, followed; and the same once more
        assert main(["convert", str(src), str(target), "--workers", "0", "--quiet", "--resume", "--skip-bad"]) == 2
        error = one_line_error(capsys)
        assert "nothing converted" in error and "every one of the 2 source files was unreadable and skipped" in error
        assert ("a/broken.jpg" in error or "b/broken.jpg" in error) and "--overwrite" in error and "=True" not in error
        assert not summarize(target).info.complete  # readers refuse it: no dataset of 0 records


@pytest.mark.parametrize("layout", ["empty list file", "empty webdataset tar"])
def test_an_empty_source_is_an_error(tmp_path, capsys, layout):
    if layout == "empty list file":
        source = tmp_path / "val.txt"
        source.write_text("")
    else:
        source = tmp_path / "shards.tar"
        tarfile.open(source, "w").close()
    status = main(["convert", str(source), str(tmp_path / "out.lmdb"), "--workers", "0", "--quiet"])
    error = one_line_error(capsys)
    assert status == 2 and "holds no records" in error and "0 records is not written" in error, error


@pytest.mark.parametrize("source", ["image folder", "webdataset shards"])
def test_resume_on_a_missing_destination_starts_the_conversion(image_folder, tmp_path, capsys, source):
    """A job script may always pass --resume: the first run starts, a later one continues or does nothing."""
    src = image_folder()
    if source == "webdataset shards":
        src = tmp_path / "shards"
        write_shards(source_images(image_folder()), src)
    target = tmp_path / "deeper" / "train.lmdb"
    for _ in range(2):
        assert main(["convert", str(src), str(target), "--workers", "0", "--quiet", "--resume"]) == 0
        assert "wrote 29 records" in capsys.readouterr().out
    assert len(LMDBImageDataset(target)) == 29


@pytest.mark.parametrize("where", ["inside", "the source itself", "in a class folder"])
def test_a_destination_inside_the_source_is_refused(image_folder, tmp_path, capsys, where):
    src = shutil.copytree(image_folder(12, special=False), tmp_path / "src")
    target = {"inside": src / "train.lmdb", "the source itself": src,
              "in a class folder": src / "class_000" / "x.lmdb"}[where]
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    assert main(["convert", str(src), str(target), "--workers", "0", "--quiet"]) == 2
    error = one_line_error(capsys)
    assert "is inside the source" in error and "write it outside" in error
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # nothing written
    assert len(ImageFolder(str(src))) == 12


def test_a_dataset_already_written_inside_the_source_is_named(image_folder, converted, tmp_path):
    src = shutil.copytree(image_folder(12, special=False), tmp_path / "src")
    shutil.copytree(converted(), src / "train.lmdb")  # what an older version let through
    with pytest.raises(FileNotFoundError, match=r"class folder\(s\) train\.lmdb.*'.*train\.lmdb' is an LMDB "
                                                r"dataset, not a class folder: move it out of the source tree"):
        convert_image_folder(src, tmp_path / "out.lmdb", progress=False)


def test_a_class_folder_as_source_gets_the_layout_in_the_cli(image_folder, tmp_path, capsys):
    assert main(["convert", str(image_folder(12, special=False) / "class_001"), str(tmp_path / "o.lmdb"),
                 "--quiet"]) == 2
    error = one_line_error(capsys)
    assert "SRC/<class>/<image>" in error and "looks like one class folder" in error


def test_an_lmdb_of_unknown_layout_is_explained_not_sent_round_in_a_circle(image_folder, tmp_path, capsys):
    plain = tmp_path / "plain.lmdb"
    env = lmdb.open(str(plain))
    with env.begin(write=True) as txn:  # what a hand-written py-lmdb script stores: key -> JPEG bytes
        for i, path in enumerate(sorted(image_folder(12, special=False).rglob("*.JPEG"))):
            txn.put(f"{i}".encode(), path.read_bytes())
    env.close()
    for kind in ([], ["--from", "lmdb"]):
        assert main(["convert", str(plain), str(tmp_path / "out.lmdb"), "--quiet", *kind]) == 2
        error = one_line_error(capsys)
        assert "cannot tell which tool wrote the LMDB" in error and "detects which" in error
        assert "An LMDB of another layout" in error and "export its images as an image folder" in error
    assert main(["info", str(plain)]) == 2
    error = one_line_error(capsys, "info")
    assert "not an lmdb_dataset dataset" in error and f"`lmdb-dataset convert {plain} NEW.lmdb`" in error


def test_skip_bad_reports_the_image_folder_indices_it_left_out_and_the_index_shift(image_folder, tmp_path):
    src = shutil.copytree(image_folder(12, special=False), tmp_path / "src")
    bad = [add_corrupt_image(src, folder="class_000", name="a_broken.jpg"), add_corrupt_image(src)]
    folder = ImageFolder(str(src))
    expected = sorted(i for i, (path, _) in enumerate(folder.samples) if path.endswith(tuple(bad)))
    report = convert_image_folder(src, tmp_path / "out.lmdb", skip_bad=True, workers=0, progress=False)
    assert report.skipped_indices == expected and len(expected) == 2
    again = convert_image_folder(src, tmp_path / "out.lmdb", skip_bad=True, resume=True, workers=0, progress=False)
    assert again.skipped_indices == expected  # also when there was nothing left to do
    dataset = LMDBImageDataset(tmp_path / "out.lmdb", output="numpy")
    for i in range(len(dataset)):  # sample i is ImageFolder's i + (skipped indices at or below it)
        j = i
        for skipped in report.skipped_indices:
            j += skipped <= j
        image, label = dataset[i]
        reference, reference_label = folder[j]
        assert label == reference_label and (image == np.asarray(reference)).all()
