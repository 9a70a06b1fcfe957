"""Real two-process DDP (gloo, CPU): rank sharding of ChunkShuffleSampler and LMDBIterableDataset, and training.

One module-scoped launch runs every scenario in two spawned rank processes (a process
group over a FileStore); each rank writes what it saw to a JSON file and the tests below
assert on those files from the parent. A hang fails the launch after a deadline instead
of blocking the test run.
"""

from __future__ import annotations

import traceback
import zlib
from collections import Counter

import numpy as np
import pytest
from support import dataloader_batches, gloo_rank, pixel_checksum, run_ranks

WORLD_SIZE = 2
DEADLINE_S = 240
COLLECTIVE_TIMEOUT_S = 90


def _checksums_and_labels(loader) -> tuple[list[int], list[int]]:
    checksums, labels = [], []
    for images, targets in loader:
        checksums.extend(int(c) for c in images)
        labels.extend(int(t) for t in targets)
    return checksums, labels


def _sampler_scenario(dataset_path: str) -> dict:
    from torch.utils.data import DataLoader

    from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset

    dataset = LMDBImageDataset(dataset_path, transform=pixel_checksum, output="numpy")
    sampler = ChunkShuffleSampler(dataset, chunk_size=4, seed=7)  # world from the process group
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=0)
        epochs.append(_checksums_and_labels(loader))
    return {"num_replicas": sampler.num_replicas, "rank": sampler.rank, "len": len(sampler), "epochs": epochs}


def _iterable_scenario(dataset_path: str, drop_last: bool) -> dict:
    from torch.utils.data import DataLoader

    from lmdb_dataset import LMDBIterableDataset

    dataset = LMDBIterableDataset(dataset_path, transform=pixel_checksum, output="numpy", chunk_size=4,
                                  pool_size=6, batch_size=3, seed=7, drop_last=drop_last)  # world from the group
    loader = DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context="fork",
                        persistent_workers=True)
    epochs = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        epochs.append(_checksums_and_labels(loader))
    return {"num_replicas": dataset.num_replicas, "rank": dataset.rank, "len": len(dataset), "epochs": epochs}


def _world_scenario(dataset_path: str) -> dict:
    from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset

    sampler = ChunkShuffleSampler(LMDBImageDataset(dataset_path))
    iterable = LMDBIterableDataset(dataset_path)
    return {"sampler": [sampler.num_replicas, sampler.rank], "iterable": [iterable.num_replicas, iterable.rank]}


def _training_scenario(path: str) -> dict:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader

    from lmdb_dataset import LMDBIterableDataset
    from lmdb_dataset.decode.transforms import NormalizeBatch, val_transform

    torch.manual_seed(1234 + dist.get_rank())  # different initial weights: DDP must broadcast rank 0's
    dataset = LMDBIterableDataset(path, transform=val_transform(size=16, resize=16), output="tensor", chunk_size=4,
                                  pool_size=8, batch_size=4, seed=3)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="fork")
    model = DistributedDataParallel(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, len(dataset.classes))))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    normalize = NormalizeBatch()
    steps, losses = [], []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        count = 0
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(normalize(images)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
            count += 1
        steps.append(count)
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"steps": steps, "losses": losses, "param_sum": float(params.double().sum()),
            "param_crc": zlib.crc32(params.numpy().tobytes())}


def _rank_main(rank: int, world_size: int, init_file: str, path: str, odd_path: str, out_dir: str) -> None:
    gloo_rank(rank, world_size, init_file, out_dir, lambda: _scenarios(rank, world_size, path, odd_path),
              COLLECTIVE_TIMEOUT_S)


def _scenarios(rank: int, world_size: int, path: str, odd_path: str) -> dict:
    import torch.distributed as dist

    # A scenario that raises is recorded and the next one still runs, so one failure does not
    # hide the others (only the training loop uses collectives).
    scenarios = {"world": lambda: _world_scenario(path),
                 "sampler_even": lambda: _sampler_scenario(path),
                 "sampler_odd": lambda: _sampler_scenario(odd_path),
                 "iterable_even": lambda: _iterable_scenario(path, drop_last=False),
                 "iterable_odd_drop_last": lambda: _iterable_scenario(odd_path, drop_last=True),
                 "training": lambda: _training_scenario(path)}
    result = {"rank": rank}
    for name, scenario in scenarios.items():
        try:
            result[name] = scenario()
        except Exception:
            result[name] = {"error": traceback.format_exc()}
    gathered = [None] * world_size
    dist.all_gather_object(gathered, result["training"].get("steps"))
    result["gathered_steps"] = gathered
    return result


# --- the launch (parent) and its checks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def paths(converted):
    return {"even": converted(num_images=27, special=True),  # 32 records
            "odd": converted(num_images=24, special=True)}  # 29 records


@pytest.fixture(scope="module")
def checksum_tables(paths):
    from lmdb_dataset import LMDBImageDataset

    tables = {}
    for name, path in paths.items():
        reference = LMDBImageDataset(path, output="numpy")
        tables[name] = {pixel_checksum(reference[i][0]): i for i in range(len(reference))}
        assert len(tables[name]) == len(reference)
    return tables


@pytest.fixture(scope="module")
def ddp(paths, tmp_path_factory):
    """Run the scenarios on a two-rank gloo process group; returns each rank's results."""
    out_dir = tmp_path_factory.mktemp("ddp")
    init_file = out_dir / "filestore"
    return run_ranks(_rank_main, lambda rank: (rank, WORLD_SIZE, str(init_file), str(paths["even"]),
                                               str(paths["odd"]), str(out_dir)), WORLD_SIZE, out_dir, DEADLINE_S)


def _indices(checksums: list[int], table: dict[int, int]) -> list[int]:
    return [table[c] for c in checksums]


def results_of(ddp: list[dict], scenario: str) -> list[dict]:
    """Each rank's results of ``scenario``; fails with the ranks' tracebacks if it raised."""
    errors = [f"rank {rank}:\n{r[scenario]['error']}" for rank, r in enumerate(ddp) if "error" in r[scenario]]
    if errors:
        pytest.fail(f"scenario {scenario!r} raised\n" + "\n".join(errors))
    return [r[scenario] for r in ddp]


@pytest.mark.parametrize("kind", ["sampler", "iterable"])
def test_ddp_two_ranks_defaults_take_world_size_and_rank_from_process_group(ddp, kind):
    assert [r[kind] for r in results_of(ddp, "world")] == [[2, 0], [2, 1]]


def test_ddp_two_ranks_chunk_sampler_divisible_dataset_every_record_once_equal_lengths(ddp, checksum_tables,
                                                                                    paths):
    from lmdb_dataset import LMDBImageDataset

    table, targets = checksum_tables["even"], LMDBImageDataset(paths["even"]).targets
    ranks = results_of(ddp, "sampler_even")
    for epoch in range(2):
        per_rank = [_indices(r["epochs"][epoch][0], table) for r in ranks]
        labels = [r["epochs"][epoch][1] for r in ranks]
        assert [len(p) for p in per_rank] == [16, 16] == [r["len"] for r in ranks]
        assert sorted(per_rank[0] + per_rank[1]) == list(range(32))
        assert labels[0] + labels[1] == targets[per_rank[0] + per_rank[1]].tolist()
    assert ranks[0]["epochs"][0][0] != ranks[0]["epochs"][1][0]  # set_epoch reshuffles


def test_ddp_two_ranks_chunk_sampler_odd_dataset_padded_to_equal_lengths_like_distributed_sampler(
        ddp, checksum_tables):
    table = checksum_tables["odd"]
    ranks = results_of(ddp, "sampler_odd")
    for epoch in range(2):
        per_rank = [_indices(r["epochs"][epoch][0], table) for r in ranks]
        assert [len(p) for p in per_rank] == [15, 15] == [r["len"] for r in ranks]
        counts = Counter(per_rank[0] + per_rank[1])
        assert set(counts) == set(range(29)) and sorted(counts.values()) == [1] * 28 + [2]


def test_ddp_two_ranks_iterable_two_workers_every_record_once_per_epoch_in_planned_order(ddp, checksum_tables,
                                                                                          paths):
    from lmdb_dataset import LMDBIterableDataset
    from lmdb_dataset.order.world import World

    table = checksum_tables["even"]
    ranks = results_of(ddp, "iterable_even")
    orders = []
    for epoch in range(2):
        per_rank = [_indices(r["epochs"][epoch][0], table) for r in ranks]
        labels = [r["epochs"][epoch][1] for r in ranks]
        assert [len(p) for p in per_rank] == [16, 16] == [r["len"] for r in ranks]
        assert sorted(per_rank[0] + per_rank[1]) == list(range(32))
        for rank in range(WORLD_SIZE):
            plan = LMDBIterableDataset(paths["even"], chunk_size=4, pool_size=6, batch_size=3, seed=7,
                                       num_replicas=WORLD_SIZE, rank=rank)
            plan.set_epoch(epoch)
            assert labels[rank] == plan.targets[per_rank[rank]].tolist()
            streams = []
            for worker in range(2):
                records, _, _ = plan.worker_plan(World(rank, WORLD_SIZE, worker, 2))
                streams.append(records.tolist())
            assert per_rank[rank] == [i for _, b in dataloader_batches(streams, 3) for i in b]
        orders.append(per_rank)
    assert orders[0] != orders[1]  # set_epoch reached the persistent workers on both ranks


def test_ddp_two_ranks_iterable_odd_dataset_drop_last_equal_lengths_no_repeats(ddp, checksum_tables):
    table = checksum_tables["odd"]
    ranks = results_of(ddp, "iterable_odd_drop_last")
    for epoch in range(2):
        per_rank = [_indices(r["epochs"][epoch][0], table) for r in ranks]
        assert [len(p) for p in per_rank] == [14, 14] == [r["len"] for r in ranks]
        together = per_rank[0] + per_rank[1]
        assert len(set(together)) == 28 and set(together) <= set(range(29))


def test_ddp_two_ranks_training_loop_over_iterable_completes_with_equal_steps_and_synced_weights(ddp):
    ranks = results_of(ddp, "training")
    steps = [r["steps"] for r in ranks]
    assert steps == [[4, 4], [4, 4]]  # 16 records per rank, batches of 4, two epochs
    assert all(r["gathered_steps"] == steps for r in ddp)
    assert all(len(r["losses"]) == 8 and np.isfinite(r["losses"]).all() for r in ranks)
    # DDP broadcast rank 0's initial weights and averaged the gradients: the replicas ended identical.
    assert ranks[0]["param_crc"] == ranks[1]["param_crc"]
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]
