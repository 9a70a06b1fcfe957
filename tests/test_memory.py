"""Workers' private memory: the plan's temporaries go back to the OS, inherited objects stay shared."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch.utils.data
from torch.utils.data import DataLoader

from lmdb_dataset import LMDBImageDataset, LMDBIterableDataset
from lmdb_dataset.read import process_memory as memory


def test_iterating_releases_the_free_heap_once_per_pass(converted, monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda pad: calls.append(pad))
    dataset = LMDBIterableDataset(converted(num_images=24), output="numpy")
    assert len(list(dataset)) == len(dataset)
    assert calls == [0]


def test_release_free_heap_runs_on_this_c_library():
    memory.release_free_heap()


class _AfterFullCollection(torch.utils.data.Dataset):
    """Reads a sample, then reports the worker's freeze count and its private-memory growth over ``gc.collect()``."""

    def __init__(self, dataset: LMDBImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[int, int]:
        self.dataset[index]
        before = _private_bytes()
        gc.collect()
        return gc.get_freeze_count(), _private_bytes() - before


def _private_bytes() -> int:
    fields = dict(line.split(":") for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[name].split()[0]) * 1024 for name in ("Private_Clean", "Private_Dirty"))


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's /proc/self/smaps_rollup")
def test_a_forked_worker_does_not_copy_the_parents_objects_when_it_collects(dataset_path):
    inherited = [[n] for n in range(300_000)]  # ~22 MB of gc-tracked containers
    gc.collect()
    loader = DataLoader(_AfterFullCollection(LMDBImageDataset(dataset_path)), batch_size=None, num_workers=1,
                        multiprocessing_context="fork")
    (frozen, growth), = list(loader)
    assert frozen >= len(inherited)
    assert growth < 4 << 20  # unfrozen: every inherited container is written (~100 MB here)


def test_reading_in_the_main_process_freezes_nothing(dataset_path):
    frozen = gc.get_freeze_count()
    LMDBImageDataset(dataset_path)[0]
    assert gc.get_freeze_count() == frozen
