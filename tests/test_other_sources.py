"""Converting list files, tar archives (ILSVRC2012 tar of tars, webdataset shards) and HDF5 files."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from legacy_writers import ilsvrc_train_tar, source_images, stored_payloads, tar_bytes, write_shards
from support import PROPERTY

from lmdb_dataset import LMDBImageDataset, SourceImageError
from lmdb_dataset.decode.image import decode_image
from lmdb_dataset.sources.conversion import convert_source
from lmdb_dataset.sources.detect import detect_kind, open_source
from lmdb_dataset.sources.listfile import HEADER_FIELDS, read_list


@pytest.fixture(scope="module")
def images(image_folder) -> list[tuple[str, bytes, int]]:
    """14 (relative path, bytes, label): JPEGs, grayscale, CMYK, progressive, PNG, 1x1; 3 classes."""
    return source_images(image_folder(9, special=True))


@pytest.fixture(scope="module")
def root(image_folder) -> Path:
    return image_folder(9, special=True)


def convert(source: Path, target: Path, **options) -> LMDBImageDataset:
    convert_source(source, target, workers=0, progress=False, **options)
    return LMDBImageDataset(target)


def test_list_file_keeps_line_order_and_integer_labels(root, images, tmp_path) -> None:
    reordered = images[::-1]
    listing = tmp_path / "val.txt"  # Caffe/ImageNet style: "path label", space separated
    listing.write_text("".join(f"{path} {label}\n" for path, _, label in reordered))
    assert detect_kind(listing) == "list"
    dataset = convert(listing, tmp_path / "out", root=root)
    assert stored_payloads(tmp_path / "out") == [data for _, data, _ in reordered]
    assert dataset.targets.tolist() == [label for _, _, label in reordered]
    assert dataset.source_path(0).endswith(reordered[0][0])


def test_list_file_with_header_and_class_names(root, images, tmp_path) -> None:
    listing = tmp_path / "labels.csv"
    names = {0: "zebra", 1: "ant", 2: "moth"}
    listing.write_text("path,label\n" + "".join(f"{path},{names[label]}\n" for path, _, label in images))
    dataset = convert(listing, tmp_path / "out", root=root)
    assert dataset.classes == ["ant", "moth", "zebra"]
    assert [dataset.classes[t] for t in dataset.targets] == [names[label] for _, _, label in images]


def test_list_file_missing_image_names_the_line_entry(root, images, tmp_path) -> None:
    listing = tmp_path / "val.tsv"
    listing.write_text("".join(f"{path}\t{label}\n" for path, _, label in images[:3]) + "gone/x.jpg\t1\n")
    with pytest.raises(SourceImageError, match=r"gone/x.jpg: cannot read .*--skip-bad"):
        convert(listing, tmp_path / "out", root=root)
    report = convert_source(listing, tmp_path / "out", root=root, resume=True, skip_bad=True, workers=0, progress=False)
    assert report.num_records == 3 and [s["path"] for s in report.skipped] == ["gone/x.jpg"]


def test_list_file_refuses_mixed_labels_and_bad_lines(tmp_path) -> None:
    (tmp_path / "mixed.txt").write_text("a.jpg 1\nb.jpg cat\n")
    with pytest.raises(ValueError, match="mix integers"):
        open_source(tmp_path / "mixed.txt", root=tmp_path)
    (tmp_path / "bad.txt").write_text("a.jpg 1\nnolabel\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected 'path,label'"):
        open_source(tmp_path / "bad.txt")


def test_ilsvrc_tar_of_tars_streams_with_sorted_class_labels(images, tmp_path) -> None:
    archive = tmp_path / "ILSVRC2012_img_train.tar"
    expected = ilsvrc_train_tar(images, archive, ["class_002", "class_000", "class_001"])
    assert detect_kind(archive) == "tar"
    dataset = convert(archive, tmp_path / "out")
    assert dataset.classes == ["class_000", "class_001", "class_002"]
    assert stored_payloads(tmp_path / "out") == [data for _, data, _ in expected]
    assert dataset.targets.tolist() == [label for _, _, label in expected]
    assert dataset.source_path(0) == f"class_002/{expected[0][0]}"


def test_tar_with_a_corrupt_image_stops_then_resumes_with_skip_bad(images, tmp_path) -> None:
    corrupt = [*images[:4], ("class_000/cut.jpg", images[0][1][:300], 0), *images[4:]]
    archive = tmp_path / "train.tar"
    expected = ilsvrc_train_tar(corrupt, archive, ["class_000", "class_001", "class_002"])
    with pytest.raises(SourceImageError, match=r"record 'class_000/cut.jpg'"):
        convert(archive, tmp_path / "out")
    report = convert_source(archive, tmp_path / "out", resume=True, skip_bad=True, workers=1, progress=False)
    assert [s["path"] for s in report.skipped] == ["class_000/cut.jpg"]
    assert stored_payloads(tmp_path / "out") == [data for name, data, _ in expected if name != "cut.jpg"]


def test_webdataset_shards_convert_in_shard_order(images, tmp_path) -> None:
    write_shards(images, tmp_path / "shards")
    assert detect_kind(tmp_path / "shards") == "webdataset"
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    dataset = convert(tmp_path / "shards", tmp_path / "out", classes=tmp_path / "classes.txt")
    assert stored_payloads(tmp_path / "out") == [data for _, data, _ in images]
    assert dataset.targets.tolist() == [label for _, _, label in images] and dataset.classes == ["a", "b", "c"]
    assert dataset.source_path(5) == "shard-00001.tar/sample000005"


def test_webdataset_sample_without_label_is_named(images, tmp_path) -> None:
    members = [("k1.jpg", images[0][1]), ("k1.cls", b"0"), ("k2.jpg", images[1][1])]
    (tmp_path / "one.tar").write_bytes(tar_bytes(members))
    with pytest.raises(SourceImageError, match=r"one.tar/k2: expected one image and a .cls label, found jpg"):
        convert(tmp_path / "one.tar", tmp_path / "out", kind="webdataset")


def test_hdf5_of_encoded_bytes_is_detected(images, tmp_path) -> None:
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as file:
        data = file.create_dataset("jpegs", (len(images),), dtype=h5py.vlen_dtype(np.uint8))
        for row, (_, image, _) in enumerate(images):
            data[row] = np.frombuffer(image, dtype=np.uint8)
        file["targets"] = np.array([label for _, _, label in images], dtype=np.int16)
        file["sizes"] = np.arange(len(images))  # another integer column: "targets" wins by its name
        file["targets"].attrs["classes"] = ["x", "y", "z"]
    assert detect_kind(path) == "hdf5"
    dataset = convert(path, tmp_path / "out")
    assert stored_payloads(tmp_path / "out") == [data for _, data, _ in images]
    assert dataset.targets.tolist() == [label for _, _, label in images] and dataset.classes == ["x", "y", "z"]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_hdf5_of_pixels_becomes_raw(images, tmp_path, layout: str) -> None:
    pixels = np.stack([decode_image(data)[:20, :20] for _, data, _ in images if len(data) > 800])
    path = tmp_path / "pixels.h5"
    with h5py.File(path, "w") as file:
        file["x"] = pixels if layout == "NHWC" else pixels.transpose(0, 3, 1, 2)
        file["k"] = np.arange(len(pixels)) % 3
        file["n"] = np.arange(len(pixels))
    with pytest.raises(ValueError, match=r"which dataset holds the labels \(candidates: k, n\).*--labels"):
        open_source(path)
    dataset = convert(path, tmp_path / "out", labels="k")
    numpy_view = LMDBImageDataset(tmp_path / "out", output="numpy")
    assert dataset.storage == "raw" and dataset.targets.tolist() == (np.arange(len(pixels)) % 3).tolist()
    np.testing.assert_array_equal(np.stack([numpy_view[i][0] for i in range(len(pixels))]), pixels)


def test_hdf5_negative_label_is_a_bad_record(images, tmp_path) -> None:
    path = tmp_path / "neg.h5"
    with h5py.File(path, "w") as file:
        file["images"] = np.zeros((2, 4, 4, 3), np.uint8)
        file["labels"] = np.array([0, -3])
    with pytest.raises(SourceImageError, match=r"record 'images\[1\]': label -3 is negative"):
        convert(path, tmp_path / "out")


def test_hdf5_of_opaque_rows_keeps_each_rows_bytes(images, tmp_path) -> None:
    """Opaque (np.void) rows have one fixed size: shorter files are zero-padded, which decoders ignore."""
    width = max(len(data) for _, data, _ in images)
    rows = np.array([np.void(data.ljust(width, b"\0")) for _, data, _ in images])
    path = tmp_path / "opaque.h5"
    with h5py.File(path, "w") as file:
        file["images"] = rows
        file["labels"] = [label for _, _, label in images]
    convert(path, tmp_path / "out")
    assert stored_payloads(tmp_path / "out") == [data.ljust(width, b"\0") for _, data, _ in images]


path_names = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00\x1c\x1d\x1e\x85\u2028\u2029\x0b\x0c"),
                     min_size=1, max_size=20).filter(lambda p: p == p.strip() and not p.startswith("#"))


@PROPERTY
@given(rows=st.lists(st.tuples(path_names, st.integers(0, 10**6)), min_size=1, max_size=8),
       separator=st.sampled_from([",", "\t", " "]))
def test_property_list_files_read_back_what_was_written(tmp_path_factory, rows, separator: str) -> None:
    assume(rows[0][0].lower() not in HEADER_FIELDS)
    if separator == "\t":
        assume(all("\t" not in p and "," not in p for p, _ in rows))
    if separator == " ":
        assume(all("\t" not in p and "," not in p for p, _ in rows))
    listing = tmp_path_factory.mktemp("list") / "list.txt"
    with open(listing, "w", newline="", encoding="utf-8") as file:
        if separator == ",":
            csv.writer(file, lineterminator="\n").writerows(rows)
        else:
            file.writelines(f"{path}{separator}{label}\n" for path, label in rows)
    entries, classes = read_list(listing)
    assert classes is None and entries == [(path, str(label)) for path, label in rows]


def test_gzipped_webdataset_shards_stream_too(images, tmp_path) -> None:
    write_shards(images, tmp_path / "plain")
    (tmp_path / "gz").mkdir()
    for shard in sorted((tmp_path / "plain").iterdir()):
        (tmp_path / "gz" / (shard.name + ".gz")).write_bytes(gzip.compress(shard.read_bytes()))
    assert detect_kind(tmp_path / "gz") == "webdataset"
    convert(tmp_path / "gz", tmp_path / "out")
    assert stored_payloads(tmp_path / "out") == [data for _, data, _ in images]
