"""LMDBIterableDataset: worker plans across ranks and workers, exact resume, real DataLoaders, sequential reads."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import PROPERTY, dataloader_batches, pixel_checksum, records_of, replicas, seeds, workers
from torch.utils.data import DataLoader

from lmdb_dataset import ChunkShuffleSampler, ClassLocalityWarning, LMDBIterableDataset
from lmdb_dataset.order.maths import rank_length, rank_order
from lmdb_dataset.order.world import World
from lmdb_dataset.read import iterable


def streams_of(dataset: LMDBIterableDataset, rank: int, num_replicas: int, num_workers: int) -> list[list[int]]:
    """Each worker's emitted record indices, from ``worker_plan`` (no records are read)."""
    streams = []
    for worker in range(num_workers):
        records, _, _ = dataset.worker_plan(World(rank, num_replicas, worker, num_workers))
        streams.append(records.tolist())
    return streams


def planned_order(dataset: LMDBIterableDataset, batch_size: int, rank: int = 0, num_replicas: int = 1,
                  num_workers: int = 1) -> list[int]:
    batches = dataloader_batches(streams_of(dataset, rank, num_replicas, num_workers), batch_size)
    return [i for _, batch in batches for i in batch]


# --- worker_plan properties (pure: no DataLoader, no record reads) -------------------------------------------


@pytest.fixture(scope="module")
def plan_datasets(converted):
    """Real datasets of several lengths: 24 and 60 (divisible by 1..4 and 1..5) and 29 (prime)."""
    return {24: converted(num_images=24, special=False), 29: converted(num_images=24, special=True),
            60: converted(num_images=60, special=False)}


@PROPERTY
@given(data=st.data(), num_replicas=replicas, num_workers=workers, chunk_size=st.integers(1, 40),
       pool_size=st.integers(1, 50), batch_size=st.one_of(st.none(), st.integers(1, 12)),
       drop_last=st.booleans(), shuffle=st.booleans(), seed=seeds, epoch=st.integers(0, 100))
def test_worker_plan_all_ranks_and_workers_cover_records_with_equal_rank_totals(
        plan_datasets, data, num_replicas, num_workers, chunk_size, pool_size, batch_size, drop_last, shuffle,
        seed, epoch):
    n = data.draw(st.sampled_from(sorted(plan_datasets)), label="n")
    dataset = LMDBIterableDataset(plan_datasets[n], chunk_size=chunk_size, pool_size=pool_size,
                                  batch_size=batch_size, drop_last=drop_last, shuffle=shuffle, seed=seed,
                                  num_replicas=num_replicas, rank=0)
    dataset.set_epoch(epoch)
    assert len(dataset.targets) == n
    everything = Counter()
    for rank in range(num_replicas):
        total = 0
        for worker in range(num_workers):
            records, pools, runs = dataset.worker_plan(World(rank, num_replicas, worker, num_workers))
            assert len(pools) == len(records) and np.all(np.diff(pools) >= 0)
            for pool in set(pools.tolist()):  # each record lies in its pool's prefetched runs
                assert set(records[pools == pool].tolist()) <= {i for a, b in runs[pool] for i in range(a, b)}
            total += len(records)
            everything.update(records.tolist())
        assert total == rank_length(n, num_replicas, drop_last) == len(dataset)
    if n % num_replicas == 0:
        assert everything == Counter(range(n))
    elif drop_last:
        assert max(everything.values()) == 1 and sum(everything.values()) == n - n % num_replicas
    else:
        assert set(everything) == set(range(n)) and sum(everything.values()) == len(dataset) * num_replicas


@PROPERTY
@given(data=st.data(), num_replicas=replicas, num_workers=workers, chunk_size=st.integers(1, 40),
       batch_size=st.integers(1, 12), drop_last=st.booleans())
def test_worker_plan_unshuffled_with_batch_size_dataloader_yields_index_order_split_across_ranks(
        plan_datasets, data, num_replicas, num_workers, chunk_size, batch_size, drop_last):
    n = data.draw(st.sampled_from(sorted(plan_datasets)), label="n")
    dataset = LMDBIterableDataset(plan_datasets[n], shuffle=False, chunk_size=chunk_size, batch_size=batch_size,
                                  drop_last=drop_last, num_replicas=num_replicas, rank=0)
    per_rank = rank_length(n, num_replicas, drop_last)
    padded = np.resize(np.arange(n), per_rank * num_replicas).tolist()
    for rank in range(num_replicas):
        assert planned_order(dataset, batch_size, rank, num_replicas, num_workers) == \
            padded[rank * per_rank:(rank + 1) * per_rank]


@PROPERTY
@given(data=st.data(), num_replicas=replicas, num_workers=workers, chunk_size=st.integers(1, 40),
       pool_size=st.integers(1, 50), batch_size=st.integers(1, 12), drop_last=st.booleans(),
       shuffle=st.booleans(), seed=seeds, epoch=st.integers(0, 100))
def test_worker_plan_restored_after_k_dataloader_samples_yields_exactly_the_rest(
        plan_datasets, data, num_replicas, num_workers, chunk_size, pool_size, batch_size, drop_last, shuffle,
        seed, epoch):
    n = data.draw(st.sampled_from(sorted(plan_datasets)), label="n")
    rank = data.draw(st.integers(0, num_replicas - 1), label="rank")
    # With one worker any count is a valid resume point, and batch_size is optional.
    given_batch_size = batch_size if num_workers > 1 else data.draw(st.sampled_from([None, batch_size]))
    options = {"chunk_size": chunk_size, "pool_size": pool_size, "batch_size": given_batch_size,
                   "drop_last": drop_last, "shuffle": shuffle, "seed": seed, "num_replicas": num_replicas, "rank": rank}
    dataset = LMDBIterableDataset(plan_datasets[n], **options)
    dataset.set_epoch(epoch)
    batches = dataloader_batches(streams_of(dataset, rank, num_replicas, num_workers), batch_size)
    full = [i for _, batch in batches for i in batch]
    assert len(full) == len(dataset)
    # Any count of consumed samples is a position in the rank's order (complete epochs: the matrix test).
    k = data.draw(st.integers(0, max(0, len(full) - 1)), label="k")

    restored = LMDBIterableDataset(plan_datasets[n], **options)
    restored.load_state_dict(dataset.state_dict(samples_consumed=k))
    restored.set_epoch(epoch)  # the usual loop calls set_epoch on the resumed epoch: keeps the point
    assert restored.epoch == epoch or not full
    assert len(restored) == len(full) - k
    streams = streams_of(restored, rank, num_replicas, num_workers)
    assert Counter(i for s in streams for i in s) == Counter(full[k:])
    rest = [i for _, batch in dataloader_batches(streams, batch_size) for i in batch]
    # The rest is dealt to the workers afresh, whole batches in turn: the DataLoader, which starts
    # again at worker 0, yields exactly the uninterrupted order.
    assert rest == full[k:]

    # The next epoch is whole again.
    restored.set_epoch(epoch + 1)
    assert len(restored) == len(full)
    assert sum(len(s) for s in streams_of(restored, rank, num_replicas, num_workers)) == len(full)


@pytest.mark.parametrize("change", [{"chunk_size": 5}, {"pool_size": 7}, {"seed": 2}, {"shuffle": False},
                                    {"drop_last": True}])
def test_iterable_load_state_of_another_configuration_raises(plan_datasets, change):
    options = {"chunk_size": 4, "pool_size": 8, "batch_size": 4, "seed": 1, "shuffle": True, "drop_last": False,
                   "num_replicas": 2, "rank": 1}
    state = LMDBIterableDataset(plan_datasets[29], **options).state_dict(samples_consumed=4)
    with pytest.raises(ValueError):
        LMDBIterableDataset(plan_datasets[29], **{**options, **change}).load_state_dict(state)
    with pytest.raises(ValueError):
        LMDBIterableDataset(plan_datasets[24], **options).load_state_dict(state)
    worker_state = {**state, "stream": 0, "stream_position": 4, "order_version": 1}
    with pytest.raises(ValueError, match="epoch order version 1"):  # a worker's own state (torchdata) too
        LMDBIterableDataset(plan_datasets[29], **options).load_state_dict(worker_state)


# --- through a real DataLoader -------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_iterable_two_persistent_workers_each_epoch_every_record_once_and_set_epoch_changes_order(
        start_method, dataset_path, checksums):
    dataset = LMDBIterableDataset(dataset_path, transform=pixel_checksum, output="numpy", chunk_size=4,
                                  pool_size=6, batch_size=3, seed=11)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context=start_method,
                        persistent_workers=True)
    orders = []
    for epoch in range(2):
        dataset.set_epoch(epoch)  # reaches the persistent workers through shared memory
        indices, labels = records_of(loader, checksums)
        assert sorted(indices) == list(range(len(dataset.targets)))
        assert labels == dataset.targets[indices].tolist()
        assert sorted(labels) == sorted(dataset.targets.tolist())
        assert indices == planned_order(dataset, 3, num_workers=2)  # the plan is what the loader yields
        orders.append(indices)
    assert orders[0] != orders[1]


@pytest.mark.parametrize("loader_batch_size", [1, 5])
def test_iterable_fork_two_workers_without_batch_size_every_record_once(dataset_path, checksums,
                                                                         loader_batch_size):
    dataset = LMDBIterableDataset(dataset_path, transform=pixel_checksum, output="numpy", chunk_size=4,
                                  pool_size=6, seed=3)
    loader = DataLoader(dataset, batch_size=loader_batch_size, num_workers=2, multiprocessing_context="fork")
    indices, labels = records_of(loader, checksums)
    assert sorted(indices) == list(range(32))
    assert labels == dataset.targets[indices].tolist()


@pytest.mark.parametrize("batches_consumed", [1, 2, 5, 11])
def test_iterable_fork_two_workers_resume_after_k_batches_completes_epoch_without_repeats(
        dataset_path, checksums, batches_consumed):
    batch_size = 3
    options = {"transform": pixel_checksum, "output": "numpy", "chunk_size": 4, "pool_size": 6,
               "batch_size": batch_size, "seed": 4}

    def loader_for(dataset):
        return DataLoader(dataset, batch_size=batch_size, num_workers=2, multiprocessing_context="fork")

    dataset = LMDBIterableDataset(dataset_path, **options)
    dataset.set_epoch(2)
    full, _ = records_of(loader_for(dataset), checksums)
    assert sorted(full) == list(range(32))

    seen, consumed = [], 0
    for step, (images, _) in enumerate(loader_for(dataset)):
        seen.extend(checksums[int(c)] for c in images)
        consumed += len(images)  # count samples in the loop, as the docs say
        if step + 1 == batches_consumed:
            break
    state = dataset.state_dict(samples_consumed=consumed)

    fresh = LMDBIterableDataset(dataset_path, **options)
    fresh.load_state_dict(state)
    if consumed == 32:  # the epoch was complete: the state resumes at the next one, with nothing pending
        assert fresh.epoch == 3 and len(fresh) == 32
        return
    fresh.set_epoch(2)
    rest, _ = records_of(loader_for(fresh), checksums)
    assert seen == full[:consumed]
    assert len(seen) + len(rest) == 32
    assert sorted(seen + rest) == list(range(32))  # one whole epoch, nothing repeated
    assert Counter(rest) == Counter(full[consumed:])
    assert rest == full[consumed:]  # even the order is the uninterrupted one


# --- sequential reads ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sequential_path(converted):
    return converted(num_images=200, special=False)


def _log_reads(dataset) -> list[tuple[str, list]]:
    """Record, in order, the runs ``dataset.prefetch`` is asked for and the records ``reader.values`` reads."""
    events = []
    prefetch, values = dataset.prefetch, dataset.reader.values
    def recorded(runs, **options):
        events.append(("prefetch", np.asarray(runs).tolist()))
        return prefetch(runs, **options)

    dataset.prefetch = recorded
    dataset.reader.values = lambda indices: (events.append(("read", list(indices))), values(indices))[1]
    return events


def _expected_events(n: int, epoch: int, **options) -> list[tuple[str, list]]:
    """One worker reading a whole epoch: pool 0 prefetched, then for each pool the next pool's runs
    (for the last, the next epoch's first pool's) prefetched before its records are read."""
    plan, following = (rank_order(n, epoch=e, rank=0, num_replicas=1, drop_last=False, **options)
                       for e in (epoch, epoch + 1))
    pools = len(plan.starts) - 1
    events = [("prefetch", plan.pool_runs(0).tolist())]
    for q in range(pools):
        events.append(("prefetch", (plan.pool_runs(q + 1) if q + 1 < pools else following.pool_runs(0)).tolist()))
        events.append(("read", plan.order[plan.starts[q]:plan.starts[q + 1]].tolist()))
    return events


@pytest.mark.parametrize("pool_size", [1, 16, 512])
def test_iterable_main_process_shuffled_200_records_prefetches_chunk_runs_one_pool_ahead(sequential_path,
                                                                                         pool_size):
    dataset = LMDBIterableDataset(sequential_path, chunk_size=32, pool_size=pool_size, output="numpy", seed=1)
    events = _log_reads(dataset)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        events.clear()
        labels = [label for _, label in dataset]
        assert sorted(labels) == sorted(dataset.targets.tolist()) and len(labels) == 200
        assert events == _expected_events(200, epoch, chunk_size=32, pool_size=pool_size, seed=1, shuffle=True)
        runs = sum(len(items) for kind, items in events[:-2] if kind == "prefetch")  # this epoch's
        assert runs <= math.ceil(200 / 32) + 1  # one sequential run per chunk of the shifted grid, at most


def test_iterable_main_process_unshuffled_reads_in_index_order_prefetching_chunk_runs(sequential_path):
    dataset = LMDBIterableDataset(sequential_path, chunk_size=32, pool_size=64, shuffle=False, output="numpy")
    events = _log_reads(dataset)
    labels = [label for _, label in dataset]
    assert labels == dataset.targets.tolist()
    assert [i for kind, items in events if kind == "read" for i in items] == list(range(200))
    assert events == _expected_events(200, 0, chunk_size=32, pool_size=64, seed=0, shuffle=False)
    # pool targets 8, 24, 56 (the ramp), 120, 184, rounded up to the 32-record chunks
    assert [items for kind, items in events if kind == "prefetch"] == [[[0, 32]], [[32, 64]], [[64, 128]],
                                                                        [[128, 192]], [[192, 200]], [[0, 32]]]


def test_iterable_plans_the_next_epochs_first_pool_with_this_epoch_not_at_its_end(sequential_path):
    dataset = LMDBIterableDataset(sequential_path, chunk_size=32, pool_size=64, output="numpy")
    planned, plan = [], dataset._pass_order
    dataset._pass_order = lambda hops, **where: (planned.append(where["epoch"]), plan(hops, **where))[1]
    iterator = iter(dataset)
    assert planned == []  # planned at the first fetch, where the DataLoader's batch size shows
    next(iterator)
    assert planned == [0, 1]
    assert len(list(iterator)) == 199
    assert planned == [0, 1]  # an epoch's order (N-sized temporaries) is never built while reading


def test_iterable_only_the_last_worker_of_a_rank_plans_and_requests_the_next_epoch(sequential_path, monkeypatch):
    dataset = LMDBIterableDataset(sequential_path, chunk_size=32, pool_size=64, output="numpy", batch_size=8)
    planned, plan = [], dataset._pass_order
    for worker in range(3):
        monkeypatch.setattr(iterable, "current_world", lambda *_, worker=worker: World(0, 1, worker, 3))
        dataset._pass_order = lambda hops, worker=worker, **where: (planned.append((worker, where["epoch"])),
                                                                     plan(hops, **where))[1]
        assert len(list(dataset)) > 0
    assert planned == [(0, 0), (1, 0), (2, 0), (2, 1)]


@pytest.mark.parametrize("rank", [0, 1])
def test_iterable_main_process_rank_of_two_resumed_midway_yields_the_rest_prefetching_its_pools(sequential_path,
                                                                                            rank):
    options = {"chunk_size": 32, "pool_size": 16, "output": "numpy", "seed": 2, "num_replicas": 2, "rank": rank}
    full = [label for _, label in LMDBIterableDataset(sequential_path, **options)]
    dataset = LMDBIterableDataset(sequential_path, **options)
    dataset.load_state_dict(dataset.state_dict(samples_consumed=37))
    events = _log_reads(dataset)
    rest = [label for _, label in dataset]
    assert rest == full[37:]
    read = [i for kind, items in events if kind == "read" for i in items]
    prefetched = {i for kind, items in events if kind == "prefetch" for a, b in items for i in range(a, b)}
    assert len(read) == 100 - 37 and set(read) <= prefetched


# --- class locality and agreement with the sampler -----------------------------------------------------------


def test_iterable_class_sorted_file_warns_once_per_object_with_the_fix(converted):
    path = converted(num_images=96, special=False)
    with pytest.warns(ClassLocalityWarning, match=r"holds 1\.\d distinct classes .* default shuffled order") as caught:
        LMDBIterableDataset(path, chunk_size=8, pool_size=16)
    assert len(caught) == 1


def test_iterable_shuffled_file_or_unshuffled_reading_or_one_pool_does_not_warn(converted):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LMDBIterableDataset(converted(num_images=96, special=False, order="shuffled"), chunk_size=8, pool_size=16)
        LMDBIterableDataset(converted(num_images=96, special=False), chunk_size=8, pool_size=16, shuffle=False)
        LMDBIterableDataset(converted(num_images=96, special=False), chunk_size=8, pool_size=96)


@PROPERTY
@given(data=st.data(), num_replicas=replicas, num_workers=workers, chunk_size=st.integers(1, 40),
       pool_size=st.integers(1, 50), batch_size=st.integers(1, 12), drop_last=st.booleans(), seed=seeds,
       epoch=st.integers(0, 100))
def test_iterable_with_batch_size_dataloader_order_is_the_samplers(plan_datasets, data, num_replicas, num_workers,
                                                                   chunk_size, pool_size, batch_size, drop_last,
                                                                   seed, epoch):
    n = data.draw(st.sampled_from(sorted(plan_datasets)), label="n")
    rank = data.draw(st.integers(0, num_replicas - 1), label="rank")
    options = {"chunk_size": chunk_size, "pool_size": pool_size, "drop_last": drop_last, "seed": seed,
               "num_replicas": num_replicas, "rank": rank}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClassLocalityWarning)
        dataset = LMDBIterableDataset(plan_datasets[n], batch_size=batch_size, **options)
        sampler = ChunkShuffleSampler(range(n), **options)
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch)
    assert planned_order(dataset, batch_size, rank, num_replicas, num_workers) == list(sampler)


# --- lengths and the batch-size precondition -----------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 3])
@pytest.mark.parametrize("loader_drop_last", [False, True])
@pytest.mark.parametrize("dataset_batch_size", [None, 7], ids=["seen", "given"])
@pytest.mark.parametrize("num_replicas, rank, drop_last", [(1, 0, False), (3, 2, False), (3, 1, True)])
def test_len_loader_is_the_batches_delivered_and_drop_last_loses_at_most_one_per_rank(
        dataset_path, checksums, num_workers, loader_drop_last, dataset_batch_size, num_replicas, rank, drop_last):
    dataset = LMDBIterableDataset(dataset_path, transform=pixel_checksum, output="numpy", chunk_size=4, pool_size=8,
                                  batch_size=dataset_batch_size, num_replicas=num_replicas, rank=rank,
                                  drop_last=drop_last)
    loader = DataLoader(dataset, batch_size=7, num_workers=num_workers, drop_last=loader_drop_last,
                        multiprocessing_context="fork" if num_workers else None)
    sizes = [len(labels) for _, labels in loader]
    share = rank_length(32, num_replicas, drop_last)
    assert len(sizes) == len(loader)  # what LR schedules are sized from
    assert sum(sizes) == (share - share % 7 if loader_drop_last else share)
    assert sizes[:-1] == [7] * (len(sizes) - 1)  # one short batch per rank at most, the last


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_batch_size_other_than_the_dataloaders_is_refused_naming_both(dataset_path, num_workers):
    dataset = LMDBIterableDataset(dataset_path, output="numpy", chunk_size=4, batch_size=4)
    loader = DataLoader(dataset, batch_size=7, num_workers=num_workers,
                        multiprocessing_context="fork" if num_workers else None)
    with pytest.raises(ValueError, match=r"batch_size=4\) is read by a DataLoader with batch_size=7"):
        next(iter(loader))


def test_without_automatic_batching_workers_are_dealt_single_samples_in_turn(dataset_path, checksums):
    options = {"transform": pixel_checksum, "output": "numpy", "chunk_size": 4, "pool_size": 8, "seed": 1}
    ordered = [checksums[int(c)] for c, _ in LMDBIterableDataset(dataset_path, **options)]
    loader = DataLoader(LMDBIterableDataset(dataset_path, **options), batch_size=None, num_workers=3,
                        multiprocessing_context="fork")
    assert [checksums[int(c)] for c, _ in loader] == ordered  # the rank's order, sample by sample
