"""LegacyLMDBDataset: a legacy LMDB read in place, in DataLoader workers, with ImageFolder's pixels."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from legacy_writers import RunsCommand, poison, write_caffe, write_folder2lmdb
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from lmdb_dataset import CorruptRecordError
from lmdb_dataset.sources.in_place import LegacyLMDBDataset


@pytest.fixture(scope="module")
def root(image_folder):
    return image_folder(9, special=True)


@pytest.fixture(scope="module")
def folder2lmdb(root, tmp_path_factory):
    return write_folder2lmdb(root, tmp_path_factory.mktemp("f2l") / "train.lmdb", protocol=5)


@pytest.mark.parametrize("writer", ["folder2lmdb", "caffe-raw"])
def test_pixels_and_labels_equal_image_folder(root, folder2lmdb, tmp_path, writer: str) -> None:
    path = folder2lmdb if writer == "folder2lmdb" else write_caffe(root, tmp_path / "caffe", encoded=False)
    dataset = LegacyLMDBDataset(path, output="numpy", classes=["class_000", "class_001", "class_002"])
    reference = ImageFolder(str(root))
    assert len(dataset) == len(reference) == 14 and dataset.classes == reference.classes
    assert dataset.targets.tolist() == reference.targets
    for index in range(len(dataset)):
        image, label = dataset[index]
        np.testing.assert_array_equal(image, np.asarray(reference[index][0]))
        assert label == reference.targets[index]
    assert dataset[-1][1] == reference.targets[-1]
    with pytest.raises(IndexError, match="out of range for the 14 records"):
        dataset[14]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_every_record_once(root, folder2lmdb, context: str) -> None:
    dataset = LegacyLMDBDataset(folder2lmdb, output="tensor", transform=first_pixel)
    dataset[0]  # the parent opens the LMDB first: workers must not use its handle
    loader = DataLoader(dataset, batch_size=3, shuffle=True, num_workers=2, multiprocessing_context=context,
                        generator=torch.Generator().manual_seed(0))
    seen = sorted((tuple(pixel.tolist()), int(label)) for pixels, labels in loader
                  for pixel, label in zip(pixels, labels))
    expected = sorted((tuple(first_pixel(torch.from_numpy(np.array(image)).permute(2, 0, 1)).tolist()), label)
                      for image, label in ImageFolder(str(root)))
    assert seen == expected
    assert pickle.loads(pickle.dumps(dataset))._env is None


def first_pixel(image: torch.Tensor) -> torch.Tensor:
    """The top-left RGB pixel (module level: picklable for spawn workers)."""
    return image[:, 0, 0].clone()


def test_a_refused_value_raises_a_corrupt_record_error_naming_the_key(root, tmp_path) -> None:
    path = write_folder2lmdb(root, tmp_path / "f2l.lmdb", protocol=4)
    poison(path, b"4", pickle.dumps((b"\xff\xd8", RunsCommand(str(tmp_path / "pwned"))), protocol=4))
    dataset = LegacyLMDBDataset(path)
    with pytest.raises(CorruptRecordError, match=r"record 4: record b'4': pickle asks for global posix.system"):
        dataset[4]
    assert not (tmp_path / "pwned").exists()
    dataset[3]
