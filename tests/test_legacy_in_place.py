"""LegacyLMDBDataset: a legacy LMDB read in place, in DataLoader workers, with ImageFolder's pixels."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from legacy_writers import RunsCommand, poison, write_caffe, write_folder2lmdb
from torch.utils.data import DataLoader, get_worker_info
from torchvision.datasets import ImageFolder

from lmdb_dataset import CorruptRecordError
from lmdb_dataset.sources.in_place import LegacyLMDBDataset
from lmdb_dataset.storage.environment import data_file, environments


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


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_two_views_of_one_lmdb_read_side_by_side_and_in_workers(root, folder2lmdb, context: str) -> None:
    train = LegacyLMDBDataset(folder2lmdb, output="tensor", transform=first_pixel)
    first = train[0]  # open while the second view is constructed (it reads the keys)
    evaluation = LegacyLMDBDataset(folder2lmdb, output="numpy")
    assert evaluation[0][1] == first[1] and train[1][1] == evaluation[1][1]
    assert evaluation.targets.tolist() == ImageFolder(str(root)).targets
    expected = sorted(int(label) for _, label in ImageFolder(str(root)))
    for dataset in (train, evaluation):
        loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context=context,
                            collate_fn=labels_read_through_own_environment)
        assert sorted(label for labels in loader for label in labels) == expected
    assert train[2][1] == evaluation[2][1]  # the parent's shared environment outlived the workers


def labels_read_through_own_environment(batch: list) -> list[int]:
    """The labels of a batch, checking in the worker that it read through an environment it opened itself."""
    worker = get_worker_info()
    assert worker is not None
    opened = environments._by_path[os.path.realpath(data_file(worker.dataset.path))]
    assert opened.pid == os.getpid() and opened.env() is worker.dataset._env
    return [int(label) for _, label in batch]


def test_too_few_class_names_are_refused_at_the_first_record_without_one(root, folder2lmdb) -> None:
    # The labels are read from the values, so the rule convert follows (label_problem) applies at each read.
    dataset = LegacyLMDBDataset(folder2lmdb, output="numpy", classes=["class_000"])
    labels = ImageFolder(str(root)).targets
    first_label_1, first_label_2 = labels.index(1), labels.index(2)
    with pytest.raises(CorruptRecordError, match=rf"record {first_label_2}: record '{first_label_2}': "
                       r"label 2 has no class name \(the classes are 1\)"):
        dataset[first_label_2]
    assert dataset[0][1] == 0  # a record of a named class still reads
    with pytest.raises(CorruptRecordError, match=rf"record {first_label_1}: .*label 1 has no class name"):
        _ = dataset.targets


def first_pixel(image: torch.Tensor) -> torch.Tensor:
    """The top-left RGB pixel (module level: picklable for spawn workers)."""
    return image[:, 0, 0].clone()


def test_a_refused_value_raises_a_corrupt_record_error_naming_the_key(root, tmp_path) -> None:
    path = write_folder2lmdb(root, tmp_path / "f2l.lmdb", protocol=4)
    poison(path, b"4", pickle.dumps((b"\xff\xd8", RunsCommand(str(tmp_path / "pwned"))), protocol=4))
    dataset = LegacyLMDBDataset(path)
    with pytest.raises(CorruptRecordError, match=r"record 4: record '4': pickle asks for global posix.system"):
        dataset[4]
    assert not (tmp_path / "pwned").exists()
    dataset[3]
