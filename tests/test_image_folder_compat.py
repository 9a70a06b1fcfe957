"""LMDBImageDataset as ImageFolder: ``samples``, ``imgs`` and ``loader``, compared with torchvision's."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
from conftest import add_corrupt_image
from torchvision.datasets import ImageFolder

from lmdb_dataset import LMDBImageDataset, convert_image_folder


@pytest.fixture(scope="module")
def shuffled(image_folder, tmp_path_factory):
    """A shuffled conversion (the default), so that sample order and record order differ."""
    target = tmp_path_factory.mktemp("compat") / "train.lmdb"
    convert_image_folder(image_folder(), target, workers=0, progress=False)
    return image_folder(), target


def test_samples_and_imgs_are_image_folders_relative_to_the_source_root(shuffled):
    src, target = shuffled
    dataset, folder = LMDBImageDataset(target), ImageFolder(str(src))
    assert dataset.samples == [(os.path.relpath(path, src), label) for path, label in folder.samples]
    assert dataset.imgs is dataset.samples and len(dataset.samples) == len(folder) == 29
    assert [(os.path.join(src, path), label) for path, label in dataset.samples] == folder.samples
    assert [label for _, label in dataset.samples] == dataset.targets.tolist()


@pytest.mark.parametrize("output", ["pil", "numpy"])
def test_loader_reads_the_record_of_a_source_path_not_the_file(shuffled, tmp_path, output):
    src, target = shuffled
    folder = ImageFolder(str(shutil.copytree(src, tmp_path / "src")))
    dataset = LMDBImageDataset(target, output=output, transform=lambda image: pytest.fail("no transform"))
    shutil.rmtree(tmp_path / "src")  # the dataset reads its records, never the files
    for i in (0, 7, 28):
        relative, _ = dataset.samples[i]
        expected = np.asarray(folder.loader(os.path.join(src, relative)))
        for path in (relative, os.path.join(src, relative)):  # as in samples, and as ImageFolder(src) lists it
            image = dataset.loader(path)
            assert (image.mode == "RGB") if output == "pil" else isinstance(image, np.ndarray)
            assert np.array_equal(np.asarray(image), expected)
    with pytest.raises(FileNotFoundError, match="was converted from 'class_000/nope.jpg'.*dataset.samples"):
        dataset.loader("class_000/nope.jpg")


def test_samples_are_not_pickled_to_workers(shuffled):
    _, target = shuffled
    dataset = LMDBImageDataset(target)
    dataset.loader(dataset.samples[3][0])
    state = pickle.loads(pickle.dumps(dataset)).__dict__
    assert "_samples" not in state and "_sample_of_path" not in state
    assert pickle.loads(pickle.dumps(dataset)).samples == dataset.samples


def test_skip_bad_leaves_the_files_out_of_samples(image_folder, tmp_path):
    src = shutil.copytree(image_folder(12, special=False), tmp_path / "src")
    broken = add_corrupt_image(src)
    report = convert_image_folder(src, tmp_path / "out.lmdb", skip_bad=True, workers=0, progress=False)
    folder = ImageFolder(str(src))
    kept = [(os.path.relpath(p, src), label) for i, (p, label) in enumerate(folder.samples)
            if i not in report.skipped_indices]
    dataset = LMDBImageDataset(tmp_path / "out.lmdb")
    assert dataset.samples == kept and broken not in {path for path, _ in dataset.samples}
    with pytest.raises(FileNotFoundError):
        dataset.loader(broken)


def test_samples_and_loader_of_a_dataset_written_with_lmdb_writer(image_folder, tmp_path):
    from lmdb_dataset import LMDBWriter

    files = sorted(image_folder(12, special=False).rglob("*.JPEG"))[:3]
    with LMDBWriter(tmp_path / "own.lmdb", classes=["a", "b"]) as writer:
        for k, file in enumerate(files):
            writer.add(file.read_bytes(), k % 2, path=f"mine/{k}.jpg" if k else None)
    dataset = LMDBImageDataset(tmp_path / "own.lmdb", output="numpy")
    assert dataset.samples == [("", 0), ("mine/1.jpg", 1), ("mine/2.jpg", 0)]
    assert np.array_equal(dataset.loader("mine/2.jpg"), dataset[2][0])
    with pytest.raises(FileNotFoundError):
        dataset.loader("")
