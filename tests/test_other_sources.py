"""Converting list files, tar archives (ILSVRC2012 tar of tars, a tar of an image folder, webdataset shards), HDF5."""

from __future__ import annotations

import csv
import gzip
import io
import os
import tarfile
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from legacy_writers import ilsvrc_train_tar, source_images, stored_payloads, tar_bytes, write_shards
from support import PROPERTY
from torchvision.datasets import ImageFolder

from lmdb_dataset import LMDBDatasetError, LMDBImageDataset, SourceImageError
from lmdb_dataset.decode.image import decode_image
from lmdb_dataset.sources import base
from lmdb_dataset.sources.conversion import convert_source
from lmdb_dataset.sources.detect import detect_kind, open_source
from lmdb_dataset.sources.listfile import HEADER_FIELDS, read_list
from lmdb_dataset.storage import format as fmt
from lmdb_dataset.storage.format import MAX_IMPLIED_CLASSES


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
    (tmp_path / "renamed.txt").write_text("Ant\nMoth\nZebra\n")  # --classes renames the source's own classes
    renamed = convert(listing, tmp_path / "renamed", root=root, classes=tmp_path / "renamed.txt")
    assert renamed.classes == ["Ant", "Moth", "Zebra"] and renamed.targets.tolist() == dataset.targets.tolist()
    (tmp_path / "short.txt").write_text("Ant\nMoth\n")  # label 2 would have no name, or a wrong one
    with pytest.raises(ValueError, match=r"names its own 3 classes \('ant' .. 'zebra'\), but the classes file "
                                         r".*short.txt' has 2 lines"):
        convert(listing, tmp_path / "short", root=root, classes=tmp_path / "short.txt")
    assert not (tmp_path / "short").exists()


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


def folder_tar(root: Path, target: Path, prefix: str, *, extra: list[tuple[str, bytes]] = ()) -> Path:
    """A tar of the ImageFolder tree at ``root`` below ``prefix``, members in a scrambled order, plus ``extra``."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    files = files[1::2] + files[::2][::-1]  # archive order is not ImageFolder's
    members = [(prefix + p.relative_to(root).as_posix(), p.read_bytes()) for p in files]
    target.write_bytes(tar_bytes([*members[:3], *extra, *members[3:]]))
    return target


@pytest.mark.parametrize("prefix", ["", "./", "data/train/"])
def test_tar_of_an_image_folder_is_image_folder_of_the_extracted_tree(root, images, tmp_path, prefix) -> None:
    nested = (prefix + "class_001/deeper/z.JPG", images[0][1])  # a sub-folder of a class, as ImageFolder walks it
    archive = folder_tar(root, tmp_path / "train.tar", prefix,
                         extra=[nested, (prefix + "class_002/notes.txt", b"not an image")])
    assert detect_kind(archive) == "folder-tar"
    dataset = convert(archive, tmp_path / "out")
    with tarfile.open(archive) as extracted:
        extracted.extractall(tmp_path / "x", filter="data")
    folder = ImageFolder(str(tmp_path / "x" / prefix))
    pixels = LMDBImageDataset(tmp_path / "out", output="numpy")
    assert dataset.classes == folder.classes and len(dataset) == len(folder) == len(images) + 1
    assert dataset.samples == [(os.path.relpath(p, tmp_path / "x" / prefix), t) for p, t in folder.samples]
    for i in range(len(folder)):
        image, label = folder[i]
        assert pixels[i][1] == label
        np.testing.assert_array_equal(pixels[i][0], np.asarray(image))


def test_tar_of_one_class_folder_resumed_after_a_bad_image_keeps_image_folders_order(root, images, tmp_path) -> None:
    cut = ("train/class_001/cut.jpg", images[0][1][:300])
    archive = folder_tar(root / "class_001", tmp_path / "one.tar", "train/class_001/", extra=[cut])
    source = open_source(archive)
    assert source.classes == ["class_001"] and source.count() == len(list((root / "class_001").iterdir())) + 1
    with pytest.raises(SourceImageError, match=r"record 'class_001/cut.jpg'"):
        convert(archive, tmp_path / "out")
    dataset = convert(archive, tmp_path / "out", resume=True, skip_bad=True)
    expected = [path for path, _ in source.samples if path != "class_001/cut.jpg"]
    assert [path for path, _ in dataset.samples] == expected
    in_image_folder_order = [(root / path).read_bytes() for path in expected]
    assert stored_payloads(tmp_path / "out") != in_image_folder_order  # records in archive order, samples mapped
    assert sorted(stored_payloads(tmp_path / "out")) == sorted(in_image_folder_order)


def test_flat_tar_of_images_and_folder_tar_as_webdataset_are_refused_at_once(images, tmp_path) -> None:
    flat = tmp_path / "flat.tar"
    flat.write_bytes(tar_bytes([("x.jpg", images[0][1]), ("y.jpg", images[1][1])]))
    with pytest.raises(ValueError, match=r"first sample 'x' holds jpg and no x.cls label; webdataset shards hold"):
        convert(flat, tmp_path / "out")
    with pytest.raises(ValueError, match=r"images at its top level, not in class folders"):
        convert(flat, tmp_path / "out", kind="folder-tar")
    archive = tmp_path / "train.tar"
    archive.write_bytes(tar_bytes([("train/a/x.jpg", images[0][1]), ("train/b/y.jpg", images[1][1])]))
    with pytest.raises(ValueError, match=r"not a webdataset shard.*tar of an image folder.*--from folder-tar"):
        convert(archive, tmp_path / "out", kind="webdataset")
    write_shards(images, tmp_path / "shards")
    with pytest.raises(ValueError, match=r"holds .cls label members.*--from webdataset"):
        convert(tmp_path / "shards" / "shard-00000.tar", tmp_path / "out", kind="folder-tar")
    assert not (tmp_path / "out").exists()


def _tar_with(target: Path, entries: list[tuple[str, str, bytes]]) -> Path:
    """A tar of ``(kind, name, data-or-link-target)`` entries: ``file``, ``dir``, ``hardlink``, ``symlink``."""
    with tarfile.open(target, "w") as archive:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "hardlink": tarfile.LNKTYPE, "symlink": tarfile.SYMTYPE}[kind]
            info.linkname = payload.decode()
            archive.addfile(info)
    return target


@pytest.mark.parametrize("link", ["hardlink", "symlink"])
def test_a_folder_tar_with_images_stored_as_links_is_refused_not_read_short(images, tmp_path, link) -> None:
    """Hard-linked files (and `tar -h` of symlinks) are link members: dropping them shifted every label."""
    archive = _tar_with(tmp_path / "linked.tar", [("file", "train/b/2.jpg", images[0][1]),
                                                  (link, "train/a/1.jpg", b"train/b/2.jpg")])
    with pytest.raises(ValueError, match=r"holds images stored as links \(e.g. 'train/a/1.jpg'.*extract it and "
                                         r"convert the folder"):
        convert(archive, tmp_path / "out", kind="folder-tar")
    assert not (tmp_path / "out").exists()


def test_a_folder_tar_with_an_empty_class_folder_is_refused_as_the_folder_is(images, tmp_path) -> None:
    archive = _tar_with(tmp_path / "empty.tar", [("dir", "train", b""), ("dir", "train/a", b""),
                                                 ("file", "train/a/1.jpg", images[0][1]), ("dir", "train/b", b""),
                                                 ("dir", "train/c", b""), ("file", "train/c/2.jpg", images[1][1])])
    with pytest.raises(ValueError, match=r"found no image file in the class folder\(s\) b of 'train'"):
        convert(archive, tmp_path / "out")


def test_a_webdataset_shard_whose_first_sample_lacks_its_label_skips_it_with_skip_bad(images, tmp_path) -> None:
    members = [("s0.jpg", images[0][1]), ("s1.jpg", images[1][1]), ("s1.cls", b"1"), ("s2.jpg", images[2][1]),
               ("s2.cls", b"0")]
    (tmp_path / "shard.tar").write_bytes(tar_bytes(members))
    with pytest.raises(SourceImageError, match=r"shard.tar/s0: expected one image and a .cls label"):
        convert(tmp_path / "shard.tar", tmp_path / "out")
    assert convert(tmp_path / "shard.tar", tmp_path / "out", resume=True, skip_bad=True).targets.tolist() == [1, 0]


def test_every_record_skipped_leaves_no_destination_this_call_created(images, tmp_path) -> None:
    archive = tmp_path / "bad.tar"
    archive.write_bytes(tar_bytes([("k1.jpg", b"not a jpeg"), ("k1.cls", b"0"), ("k2.jpg", b"nor"), ("k2.cls", b"1")]))
    with pytest.raises(LMDBDatasetError, match=r"every one of the 2 records was unreadable.*nothing is left there"):
        convert(archive, tmp_path / "fresh", skip_bad=True)
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(SourceImageError):  # stops on the first record: an incomplete dataset to resume
        convert(archive, tmp_path / "resumed")
    with pytest.raises(LMDBDatasetError, match=r"every one of the 2 records.*with overwrite=True"):
        convert(archive, tmp_path / "resumed", resume=True, skip_bad=True)
    assert (tmp_path / "resumed" / "data.mdb").exists()  # it existed before this call: kept, with its skip list


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
    with pytest.raises(ValueError, match=r"stores decoded pixels, not image files.*pass storage='raw'"):
        convert(path, tmp_path / "encoded", labels="k", storage="encoded")
    assert not (tmp_path / "encoded").exists()


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


def one_image_list(root: Path, images, tmp_path: Path, label: object) -> Path:
    """A list file naming one image of ``root`` with the label text ``label``."""
    listing = tmp_path / "one.txt"
    listing.write_text(f"{images[0][0]} {label}\n{images[1][0]} 0\n")
    return listing


@pytest.mark.parametrize("workers", [0, 1])
def test_a_label_past_2_31_is_a_bad_record_named_with_its_label(root, images, tmp_path, workers: int) -> None:
    """It used to reach the record header's packing in a worker: struct.error, and a "worker died" message."""
    listing = one_image_list(root, images, tmp_path, "99999999999999999999999")
    with pytest.raises(SourceImageError, match=rf"one.txt: record '{images[0][0]}': label 99999999999999999999999 "
                                               r"is outside 0..2\*\*31-1.*--skip-bad"):
        convert_source(listing, tmp_path / "out", root=root, workers=workers, progress=False)
    report = convert_source(listing, tmp_path / "out", root=root, workers=workers, progress=False, resume=True,
                            skip_bad=True)
    assert report.num_records == 1 and [s["path"] for s in report.skipped] == [images[0][0]]
    assert LMDBImageDataset(tmp_path / "out").classes == ["0"]  # the skipped label implies no class


def test_labels_implying_too_many_classes_need_class_names(root, images, tmp_path) -> None:
    """Without class names, label 10**9 used to make a billion names "0".."999999999" (MemoryError)."""
    listing = one_image_list(root, images, tmp_path, str(MAX_IMPLIED_CLASSES))
    with pytest.raises(SourceImageError, match=rf"label {MAX_IMPLIED_CLASSES} would make {MAX_IMPLIED_CLASSES + 1} "
                                               r"classes.*pass the class names.*or remap"):
        convert(listing, tmp_path / "out", root=root)
    (tmp_path / "classes.txt").write_text("only\n")
    with pytest.raises(SourceImageError, match=rf"label {MAX_IMPLIED_CLASSES} has no class name \(the classes are 1\)"):
        convert(listing, tmp_path / "out2", root=root, classes=tmp_path / "classes.txt")


def test_the_last_label_below_the_bound_converts(root, images, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(fmt, "MAX_IMPLIED_CLASSES", 4)
    assert convert(one_image_list(root, images, tmp_path, "3"), tmp_path / "out", root=root).classes == list("0123")
    with pytest.raises(SourceImageError, match="label 4 would make 5 classes"):
        convert(one_image_list(root, images, tmp_path, "4"), tmp_path / "out2", root=root)


@PROPERTY
@given(label=st.integers(-2**70, 2**70) | st.integers(-3, 10) | st.integers(2**31 - 2, 2**31 + 1))
def test_property_list_file_labels_convert_exactly_when_in_range(root, images, tmp_path_factory, label: int) -> None:
    folder = tmp_path_factory.mktemp("label")
    listing = one_image_list(root, images, folder, str(label))
    assert read_list(listing)[1] is None  # an integer, negative or huge, is no class name
    (folder / "classes.txt").write_text("".join(f"c{i}\n" for i in range(4)))
    with mock.patch.object(fmt, "MAX_IMPLIED_CLASSES", 8):  # not 2**24 names, a second each
        for classes, bound in ((None, 8), (folder / "classes.txt", 4)):
            if 0 <= label < bound:
                dataset = convert(listing, folder / "out", root=root, classes=classes, overwrite=True)
                assert dataset.targets[0] == label
            else:
                with pytest.raises(SourceImageError, match=rf"record '{images[0][0]}': label {label} "):
                    convert(listing, folder / "out", root=root, classes=classes, overwrite=True)


@PROPERTY
@given(text=st.text(st.sampled_from("0123456789-+_ \ta\u00b2\u0663")) | st.text())
def test_property_label_text_is_an_ascii_integer_or_nothing(text: str) -> None:
    """Unicode digits ('\u00b2' passes str.isdigit, int() refuses it), signs, spaces and underscores spell no label."""
    plain = text.isascii() and text == text.strip() and not set(text) & set("+_")
    try:
        expected = int(text) if plain else None
    except ValueError:
        expected = None
    assert base.parse_label(text) == expected


def test_webdataset_negative_label_says_negative(images, tmp_path) -> None:
    (tmp_path / "neg.tar").write_bytes(tar_bytes([("k1.jpg", images[0][1]), ("k1.cls", b"-1\n")]))
    with pytest.raises(SourceImageError, match=r"record 'neg.tar/k1': label -1 is negative"):
        convert(tmp_path / "neg.tar", tmp_path / "out", kind="webdataset")
    (tmp_path / "name.tar").write_bytes(tar_bytes([("k1.jpg", images[0][1]), ("k1.cls", b"cat")]))
    with pytest.raises(SourceImageError, match=r"label 'cat' in k1.cls is not an integer"):
        convert(tmp_path / "name.tar", tmp_path / "out2", kind="webdataset")


@pytest.mark.parametrize("workers", [0, 1])
def test_hdf5_uint64_label_past_int64_is_a_bad_record(tmp_path, workers: int) -> None:
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as file:
        file["images"] = np.zeros((2, 4, 4, 3), np.uint8)
        file["labels"] = np.array([0, 2**64 - 1], np.uint64)
    with pytest.raises(SourceImageError, match=rf"record 'images\[1\]': label {2**64 - 1} is outside"):
        convert_source(path, tmp_path / "out", workers=workers, progress=False)


@pytest.mark.parametrize(("labels", "images", "what", "reason"), [
    (np.arange(4), np.zeros((5, 4, 4, 3), np.uint8), "labels", "'labels' has 4 entries for 5 images"),
    (np.zeros((5, 2), int), np.zeros((5, 4, 4, 3), np.uint8), "labels", r"'labels' has shape \(5, 2\), not \(5,\) or "
                                                                        r"\(5, 1\)"),
    (np.zeros(5, np.float32), np.zeros((5, 4, 4, 3), np.uint8), "labels", "'labels' is float32, not integers"),
    (np.arange(5), np.zeros((5, 4, 4, 3), np.float32), "images", r"'images' of float32 \(5, 4, 4, 3\) holds neither "
                                                                 r"encoded images \(vlen uint8 / opaque\) nor uint8"),
])
def test_hdf5_detection_says_why_the_obvious_datasets_do_not_fit(tmp_path, labels, images, what: str,
                                                                 reason: str) -> None:
    """It used to say only "candidates: none"; naming the dataset gave the reason."""
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as file:
        file["images"], file["labels"] = images, labels
        file["sizes"] = np.zeros((5, 2, 2, 2, 2))  # 5-D: shaped like neither, not explained
    explained = rf"holds the {what} \(candidates: none: {reason}[^;]*\); name it with {what}="
    with pytest.raises(ValueError, match=explained):
        open_source(path)
    with pytest.raises(ValueError, match=reason):
        open_source(path, **{what: what})


@PROPERTY
@given(lines=st.lists(st.sampled_from(["cat", "dog", "bird", "", "  "]), max_size=6), trailing=st.integers(0, 2))
def test_property_classes_file_line_i_names_label_i_or_is_refused(tmp_path_factory, lines, trailing) -> None:
    """A blank line among the names was dropped, shifting every later label's name: now it is refused."""
    path = tmp_path_factory.mktemp("classes") / "classes.txt"
    path.write_text("\n".join(lines + [""] * trailing) + "\n")
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if not names:
        with pytest.raises(ValueError, match="names no class"):
            base.read_classes_file(path)
    elif "" in names:
        with pytest.raises(ValueError, match=rf"line {names.index('') + 1} is blank; line i names label i"):
            base.read_classes_file(path)
    elif len(set(names)) < len(names):
        with pytest.raises(ValueError, match="twice"):
            base.read_classes_file(path)
    else:
        assert base.read_classes_file(path) == names


def test_classes_file_with_a_byte_order_mark_and_unicode_line_separators(tmp_path) -> None:
    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeffcat\r\ndog\u2028x\r\nbird\n".encode())  # Notepad's BOM; U+2028 is no newline
    assert base.read_classes_file(path) == ["cat", "dog\u2028x", "bird"]
