"""The iterable dataset gives its plan's temporaries back to the OS before reading."""

from __future__ import annotations

from lmdb_dataset import LMDBIterableDataset, memory


def test_iterating_releases_the_free_heap_once_per_pass(converted, monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda pad: calls.append(pad))
    dataset = LMDBIterableDataset(converted(num_images=24), output="numpy")
    assert len(list(dataset)) == len(dataset)
    assert calls == [0]


def test_release_free_heap_runs_on_this_c_library():
    memory.release_free_heap()
