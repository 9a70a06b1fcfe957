"""Framework protocols in one process: torchdata's StatefulDataLoader resume, resume points, copies, world.

The two-process Lightning / Accelerate runs are in ``test_frameworks_ddp.py``.
"""

from __future__ import annotations

import copy
import datetime
import pickle
import warnings

import pytest
import torch.distributed as dist
from support import pixel_checksum
from torch.utils.data import DataLoader, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset

BATCH = 3


def _indices(batches, checksums) -> list[int]:
    return [checksums[int(c)] for images, _ in batches for c in images]


def _take(loader, count: int) -> list:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def _sampler_loader(path, num_workers: int, epoch: int):
    dataset = LMDBImageDataset(path, transform=pixel_checksum, output="numpy")
    sampler = ChunkShuffleSampler(dataset, chunk_size=4, seed=11)
    sampler.set_epoch(epoch)
    context = "fork" if num_workers else None
    return sampler, StatefulDataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=num_workers,
                                       multiprocessing_context=context)


def _iterable_loader(path, num_workers: int, epoch: int, persistent: bool = False):
    dataset = LMDBIterableDataset(path, transform=pixel_checksum, output="numpy", chunk_size=4, pool_size=8,
                                  seed=11)  # no batch_size: torchdata's resume does not need it
    dataset.set_epoch(epoch)
    context = "fork" if num_workers else None
    return dataset, StatefulDataLoader(dataset, batch_size=BATCH, num_workers=num_workers,
                                       multiprocessing_context=context, persistent_workers=persistent)


def _persistent_iterable_loader(path, num_workers: int, epoch: int):
    return _iterable_loader(path, num_workers, epoch, persistent=num_workers > 0)


@pytest.mark.parametrize("make_loader", [_sampler_loader, _iterable_loader, _persistent_iterable_loader],
                         ids=["sampler", "iterable", "iterable-persistent"])
@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_torchdata_stateful_dataloader_saved_after_5_batches_resumes_with_exactly_the_rest(
        make_loader, num_workers, dataset_path, checksums):
    _, reference = make_loader(dataset_path, num_workers, epoch=4)
    full = _indices(reference, checksums)
    assert sorted(full) == list(range(len(checksums)))

    _, loader = make_loader(dataset_path, num_workers, epoch=4)
    seen = _indices(_take(loader, 5), checksums)
    state = loader.state_dict()  # torchdata asks the sampler / each worker; nobody counts samples
    del loader

    source, resumed = make_loader(dataset_path, num_workers, epoch=4)
    resumed.load_state_dict(state)
    rest = _indices(resumed, checksums)
    assert len(seen) == 5 * BATCH
    assert seen + rest == full  # no repeats, no losses, the same order
    source.set_epoch(5)  # the next epoch is whole
    assert sorted(_indices(resumed, checksums)) == list(range(len(checksums)))


@pytest.mark.parametrize("workers_before, workers_after", [(0, 2), (2, 3), (3, 0), (2, 2)])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_torchdata_loader_state_loaded_into_the_dataset_resumes_with_other_num_workers(
        workers_before, workers_after, steps, dataset_path, checksums):
    """The README's merge: ``dataset.load_state_dict(loader.state_dict())``, also before every worker delivered."""
    _, reference = _iterable_loader(dataset_path, workers_before, epoch=4)
    full = _indices(reference, checksums)
    _, loader = _iterable_loader(dataset_path, workers_before, epoch=4)
    seen = _indices(_take(loader, steps), checksums)
    state = loader.state_dict()
    del loader

    dataset, _ = _iterable_loader(dataset_path, 0, epoch=4)
    dataset.load_state_dict(state)
    rest = _indices(DataLoader(dataset, batch_size=BATCH, num_workers=workers_after,
                               multiprocessing_context="fork" if workers_after else None), checksums)
    assert seen + rest == full  # the rest, in the uninterrupted order, with another num_workers


def test_torchdata_iterable_two_workers_state_holds_each_workers_own_position(dataset_path, checksums):
    dataset, loader = _iterable_loader(dataset_path, 2, epoch=1)
    _take(loader, 3)  # worker 0 delivered 2 batches, worker 1 one (plus what they prefetched)
    snapshots = loader.state_dict()["_snapshot"]["_worker_snapshots"].values()
    worker_states = [s["dataset_state"] for s in snapshots]
    assert sorted((s["stream"], s["stream_position"]) for s in worker_states) == [(0, 2 * BATCH), (1, BATCH)]
    assert all(s["epoch"] == 1 and s["num_workers"] == 2 for s in worker_states)


# --- the stock DataLoader recipe and the resume point -------------------------------------------------------


def test_sampler_loaded_resume_point_applies_to_the_next_pass_only_without_set_epoch():
    sampler = ChunkShuffleSampler(range(20), chunk_size=4, shuffle=False)
    full = list(sampler)
    restored = ChunkShuffleSampler(range(20), chunk_size=4, shuffle=False)
    restored.load_state_dict(sampler.state_dict(samples_consumed=7))
    assert len(restored) == 13
    assert list(restored) == full[7:]
    assert len(restored) == 20
    assert list(restored) == full  # set_epoch never called: the second pass is whole


@pytest.mark.parametrize("persistent", [False, True])
def test_iterable_loaded_resume_point_two_workers_applies_to_the_next_pass_only(persistent, dataset_path,
                                                                                 checksums):
    options = {"transform": pixel_checksum, "output": "numpy", "shuffle": False, "batch_size": BATCH}
    full = list(range(len(checksums)))
    dataset = LMDBIterableDataset(dataset_path, **options)
    dataset.load_state_dict(LMDBIterableDataset(dataset_path, **options).state_dict(samples_consumed=2 * BATCH))
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=2, multiprocessing_context="fork",
                        persistent_workers=persistent)
    assert _indices(loader, checksums) == full[2 * BATCH:]
    assert len(dataset) == len(full)
    assert _indices(loader, checksums) == full  # the same epoch again, set_epoch not called: whole


def test_iterable_state_saved_during_resumed_pass_counts_from_the_epoch_start(dataset_path, checksums):
    options = {"transform": pixel_checksum, "output": "numpy", "chunk_size": 4, "seed": 2, "batch_size": BATCH}
    full = _indices(DataLoader(LMDBIterableDataset(dataset_path, **options), batch_size=BATCH, num_workers=2,
                               multiprocessing_context="fork"), checksums)
    first = LMDBIterableDataset(dataset_path, **options)
    first.load_state_dict(first.state_dict(samples_consumed=BATCH))
    loader = DataLoader(first, batch_size=BATCH, num_workers=2, multiprocessing_context="fork")
    seen = _indices(_take(loader, 2), checksums)
    state = first.state_dict(samples_consumed=len(seen))  # consumed in this pass, on top of the first batch
    second = LMDBIterableDataset(dataset_path, **options)
    second.load_state_dict(state)
    rest = _indices(DataLoader(second, batch_size=BATCH, num_workers=2, multiprocessing_context="fork"), checksums)
    assert full[BATCH:BATCH + len(seen)] == seen and full[BATCH + len(seen):] == rest


@pytest.mark.parametrize("dataset_batch_size", [BATCH, None], ids=["given", "seen"])
@pytest.mark.parametrize("workers_before, workers_after", [(2, 3), (3, 2), (2, 0), (0, 2)])
def test_iterable_stock_dataloader_resume_with_another_num_workers_continues_the_uninterrupted_order(
        workers_before, workers_after, dataset_batch_size, dataset_path, checksums):
    options = {"transform": pixel_checksum, "output": "numpy", "chunk_size": 4, "pool_size": 8, "seed": 9,
               "batch_size": dataset_batch_size}

    def loader(dataset, num_workers):
        return DataLoader(dataset, batch_size=BATCH, num_workers=num_workers,
                          multiprocessing_context="fork" if num_workers else None)

    full = _indices(loader(LMDBIterableDataset(dataset_path, **options), workers_before), checksums)
    dataset = LMDBIterableDataset(dataset_path, **options)
    seen = _indices(_take(loader(dataset, workers_before), 4), checksums)
    state = dataset.state_dict(samples_consumed=len(seen))
    restored = LMDBIterableDataset(dataset_path, **options)
    restored.load_state_dict(state)
    rest = _indices(loader(restored, workers_after), checksums)
    assert seen + rest == full  # the rest, dealt afresh to the new workers: the uninterrupted order
    done = LMDBIterableDataset(dataset_path, **options)
    done.load_state_dict(restored.state_dict(samples_consumed=len(rest)))  # the epoch is complete
    assert done.epoch == 1 and len(done) == len(checksums)
    assert len(_indices(loader(restored, workers_after), checksums)) == len(checksums)  # the next pass: whole


@pytest.mark.parametrize("workers_before, workers_after", [(2, 0), (0, 3)])
def test_sampler_stock_dataloader_resume_with_another_num_workers_is_exact(workers_before, workers_after,
                                                                           dataset_path, checksums):
    def loader(sampler, num_workers):
        dataset = LMDBImageDataset(dataset_path, transform=pixel_checksum, output="numpy")
        return DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=num_workers,
                          multiprocessing_context="fork" if num_workers else None)

    sampler = ChunkShuffleSampler(range(len(checksums)), chunk_size=4, seed=6)
    full = list(sampler)
    seen = _indices(_take(loader(sampler, workers_before), 3), checksums)
    restored = ChunkShuffleSampler(range(len(checksums)), chunk_size=4, seed=6)
    restored.load_state_dict(sampler.state_dict(samples_consumed=len(seen)))
    assert seen + _indices(loader(restored, workers_after), checksums) == full


def test_iterable_state_dict_without_count_in_main_process_after_workers_read_raises(dataset_path):
    dataset = LMDBIterableDataset(dataset_path, transform=pixel_checksum, output="numpy", batch_size=BATCH)
    assert dataset.state_dict()["samples_consumed"] == 0  # nothing read yet: the epoch's start
    _take(DataLoader(dataset, batch_size=BATCH, num_workers=2, multiprocessing_context="fork"), 1)
    with pytest.raises(ValueError, match="samples_consumed"):
        dataset.state_dict()
    assert dataset.state_dict(samples_consumed=BATCH)["samples_consumed"] == BATCH
    dataset.set_epoch(1)
    assert dataset.state_dict() == {**dataset.state_dict(samples_consumed=0)}


def test_iterable_main_process_state_dict_without_count_is_what_it_yielded(dataset_path, checksums):
    options = {"transform": pixel_checksum, "output": "numpy", "chunk_size": 4, "seed": 3}
    dataset = LMDBIterableDataset(dataset_path, **options)
    iterator = iter(dataset)
    seen = [checksums[int(next(iterator)[0])] for _ in range(7)]
    state = dataset.state_dict()
    assert state["samples_consumed"] == 7
    copied = pickle.loads(pickle.dumps(dataset))  # a worker's copy starts without this process's position
    assert copied.state_dict() == {**state, "samples_consumed": 0} and copied._replicas.inherited is None
    restored = LMDBIterableDataset(dataset_path, **options)
    restored.load_state_dict(state)
    assert seen + [checksums[int(image)] for image, _ in restored] == [checksums[int(i)] for i, _ in
                                                                        LMDBIterableDataset(dataset_path, **options)]


# --- copies ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
def test_copied_sampler_and_dataset_have_their_own_epoch_and_resume_point(copier, dataset_path):
    for original in (ChunkShuffleSampler(range(40), chunk_size=4),
                     LMDBIterableDataset(dataset_path, batch_size=BATCH)):
        original.set_epoch(2)
        clone = copier(original)
        assert clone.epoch == 2
        clone.set_epoch(5)
        clone.load_state_dict(clone.state_dict(samples_consumed=BATCH))
        assert original.epoch == 2 and len(original) == len(clone) + BATCH
        original.set_epoch(3)
        assert clone.epoch == 5


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
def test_copied_dataset_set_epoch_reaches_its_persistent_workers(copier, dataset_path, checksums):
    dataset = LMDBIterableDataset(dataset_path, transform=pixel_checksum, output="numpy", chunk_size=4, seed=8)
    view = copier(dataset)
    loader = DataLoader(view, batch_size=BATCH, num_workers=2, multiprocessing_context="fork",
                        persistent_workers=True)
    orders = []
    for epoch in range(2):
        view.set_epoch(epoch)
        orders.append(_indices(loader, checksums))
        assert sorted(orders[-1]) == list(range(len(checksums)))
    assert orders[0] != orders[1]


# --- DistributedSampler semantics and world resolution -------------------------------------------------------


def test_sampler_is_a_distributed_sampler_with_its_attributes():
    sampler = ChunkShuffleSampler(range(29), chunk_size=4, num_replicas=2, rank=1, drop_last=True, seed=4)
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.num_samples, sampler.total_size) == (2, 1, 14, 28)
    assert (sampler.drop_last, sampler.shuffle, sampler.seed, sampler.epoch) == (True, True, 4, 0)
    sampler.set_epoch(3)
    assert sampler.epoch == 3 and len(list(sampler)) == len(sampler) == 14


@pytest.mark.parametrize("options", [{"num_replicas": 0}, {"rank": -1}, {"num_replicas": 2, "rank": 2}])
def test_invalid_world_raises_naming_the_value(options, dataset_path):
    with pytest.raises(ValueError, match="num_replicas|rank"):
        ChunkShuffleSampler(range(10), **options)
    with pytest.raises(ValueError, match="num_replicas|rank"):
        LMDBIterableDataset(dataset_path, **options)


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    yield
    dist.destroy_process_group()


def test_world_resolved_when_asked_and_explicit_world_differing_from_process_group_warns(one_process_group,
                                                                                        dataset_path):
    explicit = ChunkShuffleSampler(range(10), num_replicas=2, rank=1)
    with pytest.warns(UserWarning, match="num_replicas=2, rank=1"):
        assert len(list(explicit)) == 5
    with pytest.warns(UserWarning, match="process group of 1"):
        len(LMDBIterableDataset(dataset_path, num_replicas=2, rank=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the whole dataset on this process, or following the group: no warning
        assert len(ChunkShuffleSampler(range(10), num_replicas=1, rank=0)) == 10
        assert len(ChunkShuffleSampler(range(10))) == 10


# --- timm -----------------------------------------------------------------------------------------------------


def test_timm_image_dataset_with_lmdb_reader_pixels_labels_and_names_equal_the_dataset(dataset_path):
    import numpy as np
    from timm.data import ImageDataset

    from lmdb_dataset.integrations.timm import ReaderLMDB

    reference = LMDBImageDataset(dataset_path, output="numpy")
    dataset = ImageDataset(str(dataset_path), reader=ReaderLMDB(dataset_path))
    assert len(dataset) == len(reference) == 32
    for index in range(len(reference)):
        image, label = dataset[index]
        np.testing.assert_array_equal(np.asarray(image), reference[index][0])
        assert label == reference.targets[index]
    assert dataset.filenames() == [reference.source_path(i) for i in range(32)]
    assert dataset.filename(0, basename=True) == reference.source_path(0).split("/")[-1]


@pytest.mark.parametrize("through_reader", [True, False], ids=["ImageDataset", "LMDBImageDataset"])
def test_timm_create_loader_two_workers_one_epoch_every_record_once_at_input_size(through_reader, dataset_path):
    from timm.data import ImageDataset, create_loader

    from lmdb_dataset.integrations.timm import ReaderLMDB

    reference = LMDBImageDataset(dataset_path)
    dataset = (ImageDataset(str(dataset_path), reader=ReaderLMDB(dataset_path)) if through_reader
               else LMDBImageDataset(dataset_path))
    loader = create_loader(dataset, input_size=(3, 32, 32), batch_size=4, is_training=True, use_prefetcher=False,
                           num_workers=2)
    labels = []
    for images, targets in loader:
        assert tuple(images.shape[1:]) == (3, 32, 32) and images.dtype.is_floating_point
        labels.extend(targets.tolist())
    assert sorted(labels) == sorted(reference.targets.tolist()) and len(labels) == 32
