"""Converting legacy image LMDBs (tensorpack, folder2lmdb, Caffe) written by their real writers."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from legacy_writers import (
    RunsCommand,
    caffe_datum,
    ilsvrc_train_tar,
    poison,
    source_images,
    stored_payloads,
    write_caffe,
    write_folder2lmdb,
    write_tensorpack,
)
from support import PROPERTY

from lmdb_dataset import LMDBDatasetError, LMDBImageDataset, SourceImageError
from lmdb_dataset.decode.image import decode_image
from lmdb_dataset.sources.conversion import convert_source
from lmdb_dataset.sources.errors import MissingDependencyError
from lmdb_dataset.sources.legacy_lmdb import LegacyLMDBSource, ordered_keys
from lmdb_dataset.tools.inspection import summarize, verify_dataset


@pytest.fixture(scope="module")
def images(image_folder) -> Path:
    """14 images: JPEGs of varied sizes, grayscale, CMYK, progressive, a PNG, a 1x1."""
    return image_folder(9, special=True)


@pytest.fixture(scope="module")
def tensorpack_lmdb(images, tmp_path_factory):
    """Factory: ``tensorpack_lmdb(serializer="pickle", mode="jpeg", layout="file")`` -> an LMDB written by
    tensorpack's LMDBSerializer (each written once per module: conversion only reads it)."""
    cache: dict[tuple[str, str, str], Path] = {}

    def build(serializer: str = "pickle", mode: str = "jpeg", layout: str = "file") -> Path:
        key = (serializer, mode, layout)
        if key not in cache:
            target = tmp_path_factory.mktemp("tensorpack") / "tp.lmdb"
            if layout == "directory":
                target.mkdir()  # LMDBSerializer.save writes subdir=True into an existing directory
            cache[key] = write_tensorpack(images, target, serializer=serializer, mode=mode)
        return cache[key]

    return build


def assert_kept(dataset_path: Path, images: Path, *, classes: list[str] | None = None) -> None:
    """Every source image kept byte for byte, in source order, with its label."""
    expected = source_images(images)
    dataset = LMDBImageDataset(dataset_path)
    assert stored_payloads(dataset_path) == [data for _, data, _ in expected]
    assert dataset.targets.tolist() == [label for _, _, label in expected]
    assert dataset.classes == (classes or ["0", "1", "2"])
    assert verify_dataset(dataset_path, decode=True, progress=False).ok


@pytest.mark.parametrize("layout, serializer", [("file", "pickle"), ("file", "msgpack"), ("directory", "pickle")])
def test_tensorpack_lmdb_converts_with_original_bytes(images, tensorpack_lmdb, tmp_path, serializer: str,
                                                     layout: str) -> None:
    target = tensorpack_lmdb(serializer=serializer, layout=layout)
    assert (layout == "file") == target.with_name("tp.lmdb-lock").exists()
    source = LegacyLMDBSource(target)
    assert source.kind == "tensorpack" and source.count() == 14
    report = convert_source(target, tmp_path / "out", workers=0, progress=False)
    assert report.num_records == 14 and report.skipped == []
    assert_kept(tmp_path / "out", images)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_folder2lmdb_converts_in_integer_key_order(images, tmp_path, protocol: int) -> None:
    """14 unpadded keys: a cursor walks 0, 1, 10, 11, ...; records must come out 0, 1, 2, ..."""
    write_folder2lmdb(images, tmp_path / "f2l.lmdb", protocol=protocol)
    assert LegacyLMDBSource(tmp_path / "f2l.lmdb").kind == "folder2lmdb"
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nfish\n")
    convert_source(tmp_path / "f2l.lmdb", tmp_path / "out", classes=classes, workers=1, progress=False)
    assert_kept(tmp_path / "out", images, classes=["cat", "dog", "fish"])
    assert LMDBImageDataset(tmp_path / "out").source_path(10).endswith("10")


def test_caffe_encoded_lmdb_keeps_file_bytes(images, tmp_path) -> None:
    write_caffe(images, tmp_path / "caffe", encoded=True)
    assert LegacyLMDBSource(tmp_path / "caffe").kind == "caffe"
    convert_source(tmp_path / "caffe", tmp_path / "out", workers=0, progress=False)
    assert_kept(tmp_path / "out", images)


@pytest.mark.parametrize("kind, write", [
    ("caffe", lambda images, target: write_caffe(images, target, encoded=False)),
    ("tensorpack", None),
], ids=["caffe-raw-bgr", "cjsg-numpy-chw"])
def test_pixel_lmdbs_become_raw_datasets_with_the_same_pixels(images, tensorpack_lmdb, tmp_path, kind: str,
                                                               write) -> None:
    source = write(images, tmp_path / "pixels") if write else tensorpack_lmdb(mode="numpy")
    convert_source(source, tmp_path / "out", kind=kind, workers=0, progress=False)
    dataset = LMDBImageDataset(tmp_path / "out", output="numpy")
    assert dataset.storage == "raw" and len(dataset) == 14
    for index, (_, data, label) in enumerate(source_images(images)):
        pixels, target = dataset[index]
        np.testing.assert_array_equal(pixels, decode_image(data))
        assert target == label
    with pytest.raises(ValueError, match=r"stores decoded pixels, not image files.*pass storage='raw'"):
        convert_source(source, tmp_path / "encoded", kind=kind, storage="encoded", workers=0, progress=False)
    assert not (tmp_path / "encoded").exists()  # refused before anything is written


def test_a_pickle_that_runs_a_command_stops_conversion_naming_the_key(images, tmp_path) -> None:
    source = write_folder2lmdb(images, tmp_path / "f2l.lmdb", protocol=4)
    marker = tmp_path / "pwned"
    poison(source, b"5", pickle.dumps((b"\xff\xd8", RunsCommand(str(marker))), protocol=4))
    with pytest.raises(SourceImageError, match=r"record '5': pickle asks for global posix.system") as caught:
        convert_source(source, tmp_path / "out", workers=0, progress=False)
    assert caught.value.source == "5" and not marker.exists()
    report = convert_source(source, tmp_path / "out", workers=0, progress=False, resume=True, skip_bad=True)
    assert report.converted == 9 and [s["path"] for s in report.skipped] == ["5"] and not marker.exists()
    assert "record '5': pickle asks" in report.skipped[0]["error"]  # named as the report names it, not b'5'
    expected = [data for index, (_, data, _) in enumerate(source_images(images)) if index != 5]
    assert stored_payloads(tmp_path / "out") == expected


def test_skip_bad_leaves_out_undecodable_and_refused_records(images, tmp_path) -> None:
    source = write_caffe(images, tmp_path / "caffe", encoded=True)
    poison(source, b"00000003_" + b"x" * 3, b"\x35\x00\x00\x80\x3f")  # float_data
    truncated = source_images(images)[0][1][:300]
    poison(source, b"00000100_cut.jpg", caffe_datum(label=1, data=truncated))
    report = convert_source(source, tmp_path / "out", skip_bad=True, workers=0, progress=False)
    assert report.num_records == 14
    assert [s["path"] for s in report.skipped] == ["00000003_xxx", "00000100_cut.jpg"]
    assert "float_data" in report.skipped[0]["error"]


@pytest.mark.parametrize("fixture", ["pyarrow11-folder2lmdb-value.bin", "pyarrow11-tensorpack-value.bin"])
def test_pyarrow_serialized_values_are_refused_with_the_reason(images, tmp_path, fixture: str) -> None:
    source = write_folder2lmdb(images, tmp_path / "f2l.lmdb", protocol=4)
    poison(source, b"0", (Path(__file__).parent / "data" / fixture).read_bytes())
    with pytest.raises(SourceImageError, match=r"record '0': looks like pyarrow's removed serialize\(\) format"):
        convert_source(source, tmp_path / "out", workers=0, progress=False)


def test_labels_beyond_the_classes_file_name_the_record(images, tmp_path) -> None:
    source = write_folder2lmdb(images, tmp_path / "f2l.lmdb", protocol=4)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(SourceImageError, match=r"record '\d+': label 2 has no class name"):
        convert_source(source, tmp_path / "out", classes=tmp_path / "classes.txt", workers=0, progress=False)


def test_our_own_datasets_and_unknown_lmdbs_are_refused_clearly(converted, tmp_path) -> None:
    with pytest.raises(ValueError, match="already an lmdb-dataset dataset"):
        LegacyLMDBSource(converted(num_images=9))
    unknown = tmp_path / "unknown"
    poison(unknown, b"a", b"hello")
    with pytest.raises(ValueError, match="cannot tell which tool.*--from"):
        LegacyLMDBSource(unknown)


def test_key_order_follows_the_writers_numbering() -> None:
    keys = sorted([str(i).encode() for i in range(12)] + [b"__keys__", b"__len__"])
    assert ordered_keys(keys).tolist() == [str(i).encode() for i in range(12)]
    caffe = [b"00000002_b.jpg", b"00000010_a.jpg", b"99999999_y.jpg", b"100000000_z.jpg"]
    assert ordered_keys(sorted(caffe)).tolist() == caffe
    assert ordered_keys([b"a", b"b2", b"c"]).tolist() == [b"a", b"b2", b"c"]


@pytest.mark.parametrize("kind", [None, "tensorpack"], ids=["detected", "from-tensorpack"])
def test_cli_converts_a_single_file_tensorpack_lmdb(images, tensorpack_lmdb, tmp_path, capsys, kind) -> None:
    from lmdb_dataset.tools.cli import main

    argv = ["convert", str(tensorpack_lmdb()), str(tmp_path / "out"), "--workers", "1", "--quiet"]
    assert main(argv + (["--from", kind] if kind else [])) == 0
    assert "wrote 14 records" in capsys.readouterr().out
    assert_kept(tmp_path / "out", images)


def test_cli_names_the_refused_record_and_the_fix(images, tmp_path, capsys) -> None:
    from lmdb_dataset.tools.cli import main

    source = write_folder2lmdb(images, tmp_path / "f2l.lmdb", protocol=2)
    poison(source, b"12", pickle.dumps((b"\xff\xd8", RunsCommand(str(tmp_path / "pwned"))), protocol=2))
    assert main(["convert", str(source), str(tmp_path / "out"), "--workers", "0", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "record '12': pickle asks for global posix.system" in error and "--skip-bad" in error
    assert not (tmp_path / "pwned").exists()


KILLER = """
import os, signal, sys
from lmdb_dataset.write import writer
from lmdb_dataset.sources.conversion import convert_source
from lmdb_dataset.sources.errors import MissingDependencyError
writer.LMDBWriter.__init__.__kwdefaults__["commit_records"] = 4
add = writer.LMDBWriter.add_record
die_at = int(sys.argv[3])  # SIGKILL when adding this (1-based) record: no cleanup runs
writer.LMDBWriter.add_record = lambda self, *args, **kwargs: (
    os.kill(os.getpid(), signal.SIGKILL) if self.num_records + 1 == die_at else add(self, *args, **kwargs))
convert_source(sys.argv[1], sys.argv[2], workers=2, skip_bad=True, progress=False)
"""


def dataset_content(path: Path) -> tuple:
    dataset = LMDBImageDataset(path)
    return (stored_payloads(path), dataset.targets.tolist(), [dataset.source_path(i) for i in range(len(dataset))],
            dataset.classes, summarize(path).info.skipped)


@pytest.mark.parametrize("kind, kill_after", [("folder2lmdb", 2), ("folder2lmdb", 7), ("tar", 6), ("tar", 13)])
def test_killed_conversion_resumes_to_the_same_dataset_as_an_uninterrupted_run(images, tmp_path, kind, kill_after):
    if kind == "tar":
        source = tmp_path / "train.tar"
        ilsvrc_train_tar(source_images(images), source, ["class_001", "class_000", "class_002"])
    else:
        source = write_folder2lmdb(images, tmp_path / "f2l.lmdb", protocol=5)
        poison(source, b"3", pickle.dumps((b"\xff\xd8", RunsCommand(str(tmp_path / "pwned"))), protocol=5))
    package = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run([sys.executable, "-c", KILLER, str(source), str(tmp_path / "killed"), str(kill_after)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": package})
    assert result.returncode == -signal.SIGKILL, result.stderr
    committed = summarize(tmp_path / "killed").info
    assert not committed.complete and committed.num_records == 4 * ((kill_after - 1) // 4)
    convert_source(source, tmp_path / "killed", workers=2, skip_bad=True, resume=True, progress=False)
    convert_source(source, tmp_path / "whole", workers=0, skip_bad=True, progress=False)
    assert dataset_content(tmp_path / "killed") == dataset_content(tmp_path / "whole")
    assert not (tmp_path / "pwned").exists()


def test_resume_refuses_a_changed_source(images, tmp_path) -> None:
    source = write_folder2lmdb(images, tmp_path / "f2l.lmdb", protocol=4)
    poison(source, b"5", b"not a pickle")
    with pytest.raises(SourceImageError, match=r"record '5'.*--resume.*--skip-bad"):
        convert_source(source, tmp_path / "out", workers=0, progress=False)
    poison(source, b"5", pickle.dumps((source_images(images)[5][1], 0), protocol=4))
    with pytest.raises(LMDBDatasetError, match="source_files.*the source changed"):
        convert_source(source, tmp_path / "out", workers=0, progress=False, resume=True)


def test_a_missing_optional_package_stops_even_with_skip_bad(tensorpack_lmdb, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)  # as if the msgpack extra were not installed
    with pytest.raises(MissingDependencyError, match=r'pip install "lmdb-dataset\[msgpack\]"'):
        convert_source(tensorpack_lmdb(serializer="msgpack"), tmp_path / "out", skip_bad=True, workers=0,
                       progress=False)


@PROPERTY
@given(numbers=st.sets(st.integers(0, 10**9), max_size=50), padded=st.booleans())
def test_property_numeric_keys_come_out_in_number_order(numbers: set[int], padded: bool) -> None:
    keys = [(f"{n:08}" if padded else str(n)).encode() for n in numbers]
    cursor_order = sorted(keys + [b"__keys__"])  # an LMDB cursor walks keys in byte order
    assert ordered_keys(cursor_order).tolist() == sorted(keys, key=int)
