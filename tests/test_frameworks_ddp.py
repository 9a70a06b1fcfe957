"""The issue-8 table with the real frameworks: PyTorch Lightning and HF Accelerate, 2 CPU processes over gloo.

Each launch spawns two rank processes with the torchrun environment variables (loopback
only); the framework inside builds the process group. Each rank records the pixel checksums
it trained on per loader and epoch into a JSON file, and the tests assert exact per-rank
multisets (each rank its share, together every record once) and a new order every epoch.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from collections import Counter
from pathlib import Path

import pytest
from support import pixel_checksum, run_ranks

from lmdb_dataset import ChunkShuffleSampler, LMDBIterableDataset
from lmdb_dataset.order.world import World

WORLD_SIZE = 2
DEADLINE_S = 240
BATCH = 4
ITERABLE = {"chunk_size": 4, "pool_size": 8}


def _join_world(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0", LOCAL_WORLD_SIZE=str(WORLD_SIZE))


def _record(seen: dict, name: str, epoch: int, images) -> None:
    seen.setdefault(name, {}).setdefault(str(epoch), []).extend(int(c) for c in images)


def _lightning_rank(rank: int, port: int, path: str) -> dict:
    _join_world(rank, port)
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader

    from lmdb_dataset import LMDBImageDataset
    from lmdb_dataset.integrations.lightning import SetEpochCallback

    class Data(pl.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            # Built before the process group exists (table row 2): the world is read when iterating,
            # here in spawned workers, which inherit it from the rank process.
            self.early = LMDBIterableDataset(path, transform=pixel_checksum, output="numpy", seed=1, **ITERABLE)

        def setup(self, stage: str) -> None:
            self.late = LMDBIterableDataset(path, transform=pixel_checksum, output="numpy", seed=2, **ITERABLE)
            self.images = LMDBImageDataset(path, transform=pixel_checksum, output="numpy")

        def train_dataloader(self):
            sampler = ChunkShuffleSampler(self.images, chunk_size=4, seed=3)
            return {"sampler": DataLoader(self.images, batch_size=BATCH, sampler=sampler),
                    "early": DataLoader(self.early, batch_size=BATCH, num_workers=2, multiprocessing_context="spawn",
                                        persistent_workers=True),
                    "late": DataLoader(self.late, batch_size=BATCH)}

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen: dict = {}

        def training_step(self, batch, batch_idx):
            for name, (images, _) in batch.items():
                _record(self.seen, name, self.current_epoch, images)
            return self.layer(torch.ones(1, 1)).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = Data()
    model = Model()
    trainer = pl.Trainer(accelerator="cpu", devices=WORLD_SIZE, strategy="ddp", max_epochs=2, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[SetEpochCallback()])
    trainer.fit(model, datamodule=data)
    return model.seen


def _accelerate_rank(rank: int, port: int, path: str) -> dict:
    _join_world(rank, port)
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from lmdb_dataset import LMDBImageDataset

    accelerator = Accelerator(cpu=True)
    images = LMDBImageDataset(path, transform=pixel_checksum, output="numpy")
    # Accelerate splits the batches of a prepared loader across processes itself: give it the
    # whole epoch (num_replicas=1), identical on every process through the shared seed.
    whole = ChunkShuffleSampler(images, chunk_size=4, seed=3, num_replicas=1)
    stream = LMDBIterableDataset(path, transform=pixel_checksum, output="numpy", seed=4, num_replicas=1, **ITERABLE)
    prepared = {"sampler": DataLoader(images, batch_size=BATCH, sampler=whole),
                "iterable": DataLoader(stream, batch_size=BATCH)}
    prepared = dict(zip(prepared, accelerator.prepare(*prepared.values())))
    # Or keep the loader out of prepare(): the dataset shards by rank itself (set_epoch is then yours).
    sharded = LMDBIterableDataset(path, transform=pixel_checksum, output="numpy", seed=5, **ITERABLE)
    seen: dict = {}
    for epoch in range(2):
        sharded.set_epoch(epoch)
        for name, loader in [*prepared.items(), ("unprepared", DataLoader(sharded, batch_size=BATCH))]:
            for images, _ in loader:
                _record(seen, name, epoch, images.cpu())
    accelerator.wait_for_everyone()
    return seen


def _rank_main(scenario, rank: int, port: int, path: str, out_dir: str) -> None:
    try:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(scenario(rank, port, path)))
    except BaseException:
        Path(out_dir, f"rank{rank}.error").write_text(traceback.format_exc())
        raise SystemExit(1) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(scenario, path: Path, out_dir: Path) -> list[dict]:
    port = _free_port()
    return run_ranks(_rank_main, lambda rank: (scenario, rank, port, str(path), str(out_dir)), WORLD_SIZE, out_dir,
                     DEADLINE_S)


@pytest.fixture(scope="module")
def lightning_run(dataset_path, tmp_path_factory):
    return _launch(_lightning_rank, dataset_path, tmp_path_factory.mktemp("lightning"))


@pytest.fixture(scope="module")
def accelerate_run(dataset_path, tmp_path_factory):
    return _launch(_accelerate_rank, dataset_path, tmp_path_factory.mktemp("accelerate"))


def _per_rank(run: list[dict], name: str, epoch: int, checksums: dict[int, int]) -> list[list[int]]:
    return [[checksums[c] for c in rank[name][str(epoch)]] for rank in run]


def _sampler_share(rank: int, epoch: int, seed: int) -> list[int]:
    sampler = ChunkShuffleSampler(range(32), chunk_size=4, seed=seed, num_replicas=WORLD_SIZE, rank=rank)
    sampler.set_epoch(epoch)
    return list(sampler)


def _iterable_share(path: Path, rank: int, epoch: int, seed: int, num_workers: int) -> list[int]:
    dataset = LMDBIterableDataset(path, seed=seed, num_replicas=WORLD_SIZE, rank=rank, **ITERABLE)
    dataset.set_epoch(epoch)
    streams = [dataset.worker_plan(World(rank, WORLD_SIZE, w, num_workers)) for w in range(num_workers)]
    return [int(i) for records, _, _ in streams for i in records]


def _assert_exact_shares_and_new_order(run, name, checksums, expected_share) -> None:
    orders = []
    for epoch in range(2):
        per_rank = _per_rank(run, name, epoch, checksums)
        assert [len(p) for p in per_rank] == [16, 16], name
        assert sorted(per_rank[0] + per_rank[1]) == list(range(32)), name
        if expected_share is not None:
            assert [Counter(p) for p in per_rank] == [Counter(expected_share(r, epoch)) for r in range(WORLD_SIZE)]
        orders.append(per_rank)
    assert orders[0][0] != orders[1][0] and orders[0][1] != orders[1][1], f"{name}: the same order every epoch"


def test_lightning_ddp_chunk_sampler_from_train_dataloader_is_kept_not_rewrapped(lightning_run, checksums):
    _assert_exact_shares_and_new_order(lightning_run, "sampler", checksums,
                                       lambda rank, epoch: _sampler_share(rank, epoch, seed=3))
    for epoch in range(2):  # in the sampler's own order: Lightning did not wrap it
        assert _per_rank(lightning_run, "sampler", epoch, checksums) == [_sampler_share(r, epoch, seed=3)
                                                                          for r in range(WORLD_SIZE)]


def test_lightning_ddp_iterable_built_before_process_group_shards_by_rank_in_spawned_workers(lightning_run,
                                                                                           checksums,
                                                                                           dataset_path):
    _assert_exact_shares_and_new_order(lightning_run, "early", checksums,
                                       lambda rank, epoch: _iterable_share(dataset_path, rank, epoch, 1, 2))


def test_lightning_ddp_iterable_built_in_setup_changes_order_every_epoch_with_set_epoch_callback(
        lightning_run, checksums, dataset_path):
    _assert_exact_shares_and_new_order(lightning_run, "late", checksums,
                                       lambda rank, epoch: _iterable_share(dataset_path, rank, epoch, 2, 1))


@pytest.mark.parametrize("name", ["sampler", "iterable"])
def test_accelerate_prepare_whole_epoch_sampler_or_iterable_is_split_once(accelerate_run, checksums, name):
    _assert_exact_shares_and_new_order(accelerate_run, name, checksums, None)


def test_accelerate_unprepared_loader_dataset_shards_by_rank(accelerate_run, checksums, dataset_path):
    _assert_exact_shares_and_new_order(accelerate_run, "unprepared", checksums,
                                       lambda rank, epoch: _iterable_share(dataset_path, rank, epoch, 5, 1))
