"""Per-sample tables are shared with DataLoader workers under fork, spawn and forkserver, never copied.

A spawned worker of a 200,000-record dataset must hold no more private memory (USS) than one
of a 1,000-record dataset: its ~9.6 MB of tables (48 bytes a record) are mapped from the
parent's shared-memory block. Before, every spawned worker unpickled its own copy.
"""

from __future__ import annotations

import io
import pickle
import time

import numpy as np
import psutil
import pytest
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBWriter
from lmdb_dataset.storage.shared_tables import SharedTables

MIB = 2**20


def _tiny_dataset(path, records: int):
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, dtype=np.uint8)).save(buffer, format="JPEG")
    with LMDBWriter(path, commit_records=65536) as writer:
        for i in range(records):
            writer.add(buffer.getvalue(), i % 10, check=False)
    return path


@pytest.fixture(scope="module")
def sizes(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    return {records: _tiny_dataset(root / f"n{records}.lmdb", records) for records in (1_000, 200_000)}


def _tables_are_shared(_):
    tables = get_worker_info().dataset._meta.tables
    assert tables._block.is_shared() and not tables["labels"].flags.writeable
    assert np.shares_memory(tables["labels"], tables._block.numpy())


def _worker_uss_mib(path, context: str) -> float:
    dataset = LMDBImageDataset(path, output="numpy")
    loader = DataLoader(dataset, batch_size=8, sampler=ChunkShuffleSampler(dataset), num_workers=1,
                        multiprocessing_context=context, worker_init_fn=_tables_are_shared)
    batches = iter(loader)
    next(batches)
    time.sleep(0.2)
    uss = max(psutil.Process(worker.pid).memory_full_info().uss for worker in batches._workers)
    del batches
    return uss / MIB


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_a_spawned_workers_private_memory_does_not_grow_with_the_dataset(sizes, context):
    small, large = (_worker_uss_mib(sizes[n], context) for n in (1_000, 200_000))
    assert large - small < 3, f"{small:.1f} MiB -> {large:.1f} MiB"  # a private copy would add ~9.6 MiB


def test_shared_tables_round_trip_a_plain_pickle_as_a_copy_with_read_only_views():
    tables = SharedTables({"a": np.arange(6).reshape(3, 2), "absent": None, "b": np.array([7])})
    copy = pickle.loads(pickle.dumps(tables))
    assert copy["a"].tolist() == [[0, 1], [2, 3], [4, 5]] and copy["b"].tolist() == [7] and copy["absent"] is None
    with pytest.raises(ValueError):
        copy["a"][0, 0] = 1
    assert tables.nbytes == 7 * 8
