"""LMDBWriter: appending, map growth, completeness, refusing to clobber."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmdb_dataset import IncompleteDatasetError, LMDBImageDataset, LMDBWriter, SourceImageError
from lmdb_dataset.storage.format import MAX_IMPLIED_CLASSES
from lmdb_dataset.tools.inspection import summarize
from lmdb_dataset.write import writer
from lmdb_dataset.write.writer import build_record


def _jpeg(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    image = Image.fromarray((gradient * rng.uniform(0.5, 1)).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_writer_encoded_bytes_are_stored_unchanged_and_read_back(tmp_path):
    images = [_jpeg(i) for i in range(5)]
    with LMDBWriter(tmp_path / "ds", classes=["a", "b"]) as w:
        for i, data in enumerate(images):
            assert w.add(data, i % 2, path=f"x/{i}.jpg") == i
    ds = LMDBImageDataset(tmp_path / "ds", output="numpy")
    assert ds.targets.tolist() == [0, 1, 0, 1, 0] and ds.classes == ["a", "b"]
    ((_, value),) = list(ds.reader.values([3]))
    assert bytes(value)[24:] == images[3]
    assert ds.source_path(4) == "x/4.jpg"


def test_writer_raw_arrays_gray_and_rgb_come_back_as_rgb(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    with LMDBWriter(tmp_path / "ds", storage="raw") as w:
        w.add(gray, 0)
        w.add(rgb, 1)
    ds = LMDBImageDataset(tmp_path / "ds", output="numpy")
    assert np.array_equal(ds[0][0], np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(ds[1][0], rgb)


def test_writer_grows_the_map_by_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "INITIAL_MAP_SIZE", 256 * 1024)
    payload = np.zeros((300, 300, 3), dtype=np.uint8)  # 270 KB per record, > the initial map
    with LMDBWriter(tmp_path / "ds", storage="raw", commit_records=3) as w:
        for i in range(10):
            w.add(payload + i, i)
    ds = LMDBImageDataset(tmp_path / "ds", output="numpy")
    assert len(ds) == 10 and int(ds[9][0][0, 0, 0]) == 9


def test_writer_leaving_by_exception_keeps_committed_records_but_marks_incomplete(tmp_path):
    with pytest.raises(RuntimeError):
        with LMDBWriter(tmp_path / "ds") as w:
            w.add(_jpeg(0), 0)
            raise RuntimeError("boom")
    assert summarize(tmp_path / "ds").info.num_records == 1
    with pytest.raises(IncompleteDatasetError, match="--resume"):
        LMDBImageDataset(tmp_path / "ds")
    with LMDBWriter(tmp_path / "ds", resume=True) as w:
        assert w.num_records == 1
        w.add(_jpeg(1), 1)
    assert LMDBImageDataset(tmp_path / "ds").targets.tolist() == [0, 1]


def test_writer_rejects_undecodable_bytes_naming_the_source(tmp_path):
    with LMDBWriter(tmp_path / "ds") as w:
        with pytest.raises(SourceImageError, match="bad/file.jpg"):
            w.add(b"\xff\xd8 definitely not a jpeg", 0, path="bad/file.jpg")


def test_writer_refuses_existing_dataset_unless_overwrite_and_non_dataset_dirs(tmp_path):
    with LMDBWriter(tmp_path / "ds") as w:
        w.add(_jpeg(0), 0)
    with pytest.raises(FileExistsError, match="overwrite"):
        LMDBWriter(tmp_path / "ds")
    with LMDBWriter(tmp_path / "ds", overwrite=True) as w:
        w.add(_jpeg(1), 5)
    assert LMDBImageDataset(tmp_path / "ds").targets.tolist() == [5]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a dataset"):
        LMDBWriter(tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs, message", [
    ({"storage": "png"}, "storage='png'"),
    ({"commit_records": 0}, "positive"),
    ({"resume": True, "overwrite": True}, "exclude"),
])
def test_writer_invalid_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LMDBWriter(tmp_path / "ds", **kwargs)


def test_writer_rejects_labels_outside_its_classes_naming_label_and_path(tmp_path):
    with LMDBWriter(tmp_path / "ds", classes=["a", "b"]) as w:
        w.add(_jpeg(0), 1, path="b/0.jpg")
        for label, problem in ((2, "label 2 has no class name \\(the classes are 2\\)"), (-1, "label -1 is negative")):
            with pytest.raises(ValueError, match=rf"x/{label}\.jpg: {problem}"):
                w.add(_jpeg(1), label, path=f"x/{label}.jpg")
            with pytest.raises(ValueError, match=rf"x/{label}\.jpg: {problem}"):
                w.add_record(build_record(_jpeg(1), 0, storage="encoded"), label, path=f"x/{label}.jpg")
    assert LMDBImageDataset(tmp_path / "ds").targets.tolist() == [1]
    with LMDBWriter(tmp_path / "free") as w:  # no classes given: class indices the labels may imply
        w.add(_jpeg(0), 7)
        w.add(_jpeg(0), MAX_IMPLIED_CLASSES - 1)
        for label, problem in ((-1, "is negative"), (MAX_IMPLIED_CLASSES, "would make"),  # a reader's 16 GiB tables
                               (2**31 - 1, "would make"), (10**30, "is outside 0..2\\*\\*31-1")):  # struct.error
            with pytest.raises(ValueError, match=rf"image #2: label {label} {problem}"):
                w.add(_jpeg(0), label)
    assert LMDBImageDataset(tmp_path / "free").targets.tolist() == [7, MAX_IMPLIED_CLASSES - 1]


def test_writer_takes_path_objects_and_numpy_labels_and_refuses_other_types_at_once(tmp_path):
    with LMDBWriter(tmp_path / "ds", classes=["a", "b"]) as w:
        w.add(_jpeg(0), np.int64(1), path=Path("b/0.jpg"))  # a pathlib.Path crashed the next commit
        w.add_record(build_record(_jpeg(1), 0, storage="encoded"), 0, path=Path("a/1.jpg"))
        for label in (1.0, "1", None, True, np.True_):  # a float or str label reached struct.error at the commit
            with pytest.raises(TypeError, match=rf"x\.jpg: label={label!r} is a {type(label).__name__}, not an "
                                                r"integer class index"):
                w.add(_jpeg(2), label, path="x.jpg")
        with pytest.raises(TypeError, match=r"path=b'x.jpg' is a bytes"):
            w.add(_jpeg(2), 0, path=b"x.jpg")
    dataset = LMDBImageDataset(tmp_path / "ds")
    assert dataset.targets.tolist() == [1, 0]
    assert [dataset.source_path(i) for i in range(2)] == ["b/0.jpg", "a/1.jpg"]


def test_writer_sample_order_maps_logical_indices_to_records(tmp_path):
    images = [_jpeg(i, size=(20 + i, 30)) for i in range(4)]
    with LMDBWriter(tmp_path / "ds", classes=["a", "b", "c", "d"]) as w:
        for i in (2, 0, 3, 1):  # record r holds sample file_order[r]
            w.add(images[i], i, path=f"{i}.jpg")
        w.set_sample_order([1, 3, 0, 2])
    ds = LMDBImageDataset(tmp_path / "ds", output="numpy")
    assert ds.file_order.tolist() == [2, 0, 3, 1] and ds.targets.tolist() == [0, 1, 2, 3]
    assert [ds.source_path(i) for i in range(4)] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert [ds[i][0].shape[1] for i in range(4)] == [20, 21, 22, 23]
    assert [s[1] for s in ds.__getitems__([3, 0, 3])] == [3, 0, 3]


def test_writer_refuses_a_sample_order_that_is_not_a_permutation_and_stays_resumable(tmp_path):
    with pytest.raises(ValueError, match="not a permutation"):
        with LMDBWriter(tmp_path / "ds") as w:
            w.add(_jpeg(0), 0)
            w.add(_jpeg(1), 1)
            w.set_sample_order([0, 0])
    with pytest.raises(IncompleteDatasetError):
        LMDBImageDataset(tmp_path / "ds")
    with LMDBWriter(tmp_path / "ds", resume=True) as w:
        assert w.record_paths() == ["", ""]
        w.set_sample_order([1, 0])
    assert LMDBImageDataset(tmp_path / "ds").targets.tolist() == [1, 0]


def test_writer_unchecked_records_carry_the_size_read_from_the_header_and_feed_lmdb_loader(tmp_path):
    from conftest import add_special_images

    from lmdb_dataset import LMDBLoader
    from lmdb_dataset.storage import format as fmt

    add_special_images(tmp_path / "src")  # grayscale, CMYK and progressive JPEGs, an RGBA PNG, a 1x1 JPEG
    files = sorted((tmp_path / "src").rglob("*.*")) + [None]
    with LMDBWriter(tmp_path / "ds", classes=["a"]) as w:
        for file in files:
            w.add(_jpeg(9, size=(53, 17)) if file is None else file.read_bytes(), 0, check=False)
    ds = LMDBImageDataset(tmp_path / "ds", output="numpy")
    sizes = [(fmt.decode_header(value).height, fmt.decode_header(value).width)
             for _, value in ds.reader.values(range(len(ds)))]
    expected = [Image.open(file).size[::-1] if file else (17, 53) for file in files]
    assert sizes == [ds[i][0].shape[:2] for i in range(len(ds))] == expected
    assert (97, 61)[::-1] in sizes and (1, 1) in sizes  # the gray 97x61 and the 1x1 JPEG
    batches = list(LMDBLoader(tmp_path / "ds", batch_size=3, size=16, train=True, num_workers=0))
    assert [tuple(images.shape) for images, _ in batches] == [(3, 3, 16, 16), (3, 3, 16, 16)]
