"""ChunkShuffleSampler: coverage across ranks, determinism, within-chunk shuffling, exact resume, DataLoader."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import PROPERTY, chunk_sizes, epochs, pixel_checksum, records_of, replicas, seeds, sizes
from torch.utils.data import DataLoader

from lmdb_dataset import ChunkShuffleSampler, ClassLocalityWarning, LMDBImageDataset
from lmdb_dataset.order.maths import chunk_bounds, rank_length, rank_order, rest_of_epoch


def samplers(n: int, num_replicas: int, **options) -> list[ChunkShuffleSampler]:
    return [ChunkShuffleSampler(range(n), num_replicas=num_replicas, rank=r, **options) for r in range(num_replicas)]


@PROPERTY
@given(per_rank=st.integers(0, 600), chunk_size=chunk_sizes, num_replicas=replicas, drop_last=st.booleans(),
       seed=seeds, epoch=epochs)
def test_sampler_divisible_length_every_index_exactly_once_across_ranks(per_rank, chunk_size, num_replicas,
                                                                        drop_last, seed, epoch):
    n = per_rank * num_replicas
    indices = []
    for sampler in samplers(n, num_replicas, chunk_size=chunk_size, seed=seed, drop_last=drop_last):
        sampler.set_epoch(epoch)
        mine = list(sampler)
        assert len(mine) == len(sampler) == per_rank
        indices.extend(mine)
    assert sorted(indices) == list(range(n))


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, num_replicas=replicas, drop_last=st.booleans(), seed=seeds, epoch=epochs,
       shuffle=st.booleans())
def test_sampler_any_length_equal_lengths_per_rank_and_distributed_sampler_coverage(n, chunk_size, num_replicas,
                                                                                    drop_last, seed, epoch,
                                                                                    shuffle):
    expected = rank_length(n, num_replicas, drop_last)
    counts = Counter()
    for sampler in samplers(n, num_replicas, chunk_size=chunk_size, seed=seed, drop_last=drop_last,
                            shuffle=shuffle):
        sampler.set_epoch(epoch)
        mine = list(sampler)
        assert len(mine) == len(sampler) == sampler.num_samples == expected
        assert all(0 <= i < n for i in mine)
        counts.update(mine)
    # DistributedSampler's coverage: without drop_last every index at least once and the
    # padding repeats at most ceil(R/N) times; with it, at most once and only the tail is lost.
    if n:
        if drop_last:
            assert max(counts.values(), default=1) == 1 and len(counts) == expected * num_replicas
        else:
            assert set(counts) == set(range(n))
            assert max(counts.values()) <= -(-num_replicas // n) + 1


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, num_replicas=replicas, drop_last=st.booleans(), seed=seeds, epoch=epochs)
def test_sampler_same_arguments_same_order_on_fresh_objects(n, chunk_size, num_replicas, drop_last, seed, epoch):
    options = {"chunk_size": chunk_size, "seed": seed, "drop_last": drop_last}
    first, second = samplers(n, num_replicas, **options), samplers(n, num_replicas, **options)
    for a, b in zip(first, second):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
        assert list(a) == list(a)  # iterating again repeats the epoch


@PROPERTY
@given(num_chunks=st.integers(20, 200), chunk_size=st.integers(1, 10), seed=seeds, epoch=epochs)
def test_sampler_set_epoch_twenty_or_more_chunks_changes_order_and_is_reproducible(num_chunks, chunk_size, seed,
                                                                                    epoch):
    (sampler,) = samplers(num_chunks * chunk_size, 1, chunk_size=chunk_size, seed=seed)
    sampler.set_epoch(epoch)
    first = list(sampler)
    sampler.set_epoch(epoch + 1)
    second = list(sampler)
    assert first != second and sorted(first) == sorted(second)
    sampler.set_epoch(epoch)
    assert list(sampler) == first


@PROPERTY
@given(n=st.integers(0, 2000), chunk_size=chunk_sizes, pool_size=st.integers(1, 700), seed=seeds, epoch=epochs)
def test_sampler_single_rank_order_is_pools_of_whole_chunks_of_the_epochs_grid(n, chunk_size, pool_size, seed,
                                                                               epoch):
    (sampler,) = samplers(n, 1, chunk_size=chunk_size, pool_size=pool_size, seed=seed)
    sampler.set_epoch(epoch)
    order = np.asarray(list(sampler), dtype=np.int64)
    plan = rank_order(n, chunk_size=chunk_size, pool_size=pool_size, seed=seed, epoch=epoch, rank=0, num_replicas=1,
                      drop_last=False, shuffle=True)
    np.testing.assert_array_equal(order, plan.order)
    bounds = chunk_bounds(n, chunk_size=chunk_size, seed=seed, epoch=epoch)
    chunk_of = np.searchsorted(bounds, order, side="right") - 1
    for a, b in itertools.pairwise(plan.starts.tolist()):  # each pool: a permutation of whole chunks
        whole = [i for c in np.unique(chunk_of[a:b]).tolist() for i in range(bounds[c], bounds[c + 1])]
        assert sorted(order[a:b].tolist()) == whole
        assert b - a < pool_size + chunk_size


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, num_replicas=replicas, drop_last=st.booleans())
def test_sampler_unshuffled_is_index_order_split_across_ranks(n, chunk_size, num_replicas, drop_last):
    got = [i for s in samplers(n, num_replicas, chunk_size=chunk_size, shuffle=False, drop_last=drop_last)
           for i in s]
    total = rank_length(n, num_replicas, drop_last) * num_replicas
    assert got == np.resize(np.arange(n), total).tolist()


def test_sampler_class_sorted_file_warns_with_measured_classes_per_chunk(converted):
    dataset = LMDBImageDataset(converted(num_images=96, special=False))
    assert list(dataset.targets) == sorted(dataset.targets)  # stored class by class
    with pytest.warns(ClassLocalityWarning, match=r"a chunk of 8 neighbouring records holds 1\.\d distinct classes"):
        ChunkShuffleSampler(dataset, chunk_size=8, pool_size=16, seed=0)


def test_sampler_shuffled_file_or_unlabelled_source_or_no_shuffle_or_one_pool_does_not_warn(converted):
    shuffled = LMDBImageDataset(converted(num_images=96, special=False, order="shuffled"))
    class_sorted = LMDBImageDataset(converted(num_images=96, special=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ChunkShuffleSampler(shuffled, chunk_size=8, pool_size=16, seed=0)
        ChunkShuffleSampler(range(96), chunk_size=8, pool_size=16, seed=0)  # no labels: nothing to measure
        ChunkShuffleSampler(class_sorted, chunk_size=8, pool_size=16, shuffle=False)  # storage order asked for
        ChunkShuffleSampler(class_sorted, chunk_size=8, pool_size=96)  # one pool: a full shuffle


def test_sampler_class_ordered_dataset_pool_of_24_mixes_three_chunks_and_changes_every_epoch(converted):
    dataset = LMDBImageDataset(converted(num_images=96, special=False))
    with pytest.warns(ClassLocalityWarning):
        sampler = ChunkShuffleSampler(dataset, chunk_size=8, pool_size=24, seed=0)
    pools = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = np.asarray(list(sampler))
        assert sorted(order.tolist()) == list(range(96))
        assert int(np.sum(np.diff(order) == 1)) < len(order) // 4  # not stored order
        pools.append({frozenset(order[i:i + 24].tolist()) for i in range(0, 96, 24)})
    assert pools[0] != pools[1]  # chunk composition and grouping change between epochs


@pytest.mark.parametrize("samples_consumed", [0, 130])
def test_sampler_prefetches_each_pool_before_yielding_it_the_next_as_it_starts_then_next_epochs_first(
        samples_consumed):
    class Source:
        def __init__(self):
            self.prefetched: list[list[tuple[int, int]]] = []
            self.waited: list[bool] = []
            self.handles = []

        def __len__(self):
            return 500

        def prefetch(self, runs, *, wait=False):
            self.prefetched.append(np.asarray(runs).tolist())
            self.waited.append(wait)
            self.handles.append(Handle())
            return self.handles[-1]

    class Handle:
        def __init__(self):
            self.done = False

        def wait(self):
            self.done = True

    source = Source()
    sampler = ChunkShuffleSampler(source, chunk_size=10, pool_size=100, seed=4)
    sampler.set_epoch(2)
    sampler.load_state_dict(sampler.state_dict(samples_consumed=samples_consumed))
    options = {"chunk_size": 10, "pool_size": 100, "seed": 4, "rank": 0, "num_replicas": 1, "drop_last": False,
               "shuffle": True}
    whole = rank_order(500, epoch=2, **options)
    following = rank_order(500, epoch=3, **options)
    # The resumed pass: the unconsumed rest of the pool it stopped in, then the following pools.
    plan = rest_of_epoch(500, epoch=2, hops=((samples_consumed, 1),) if samples_consumed else (), **options)
    assert plan.order.tolist() == whole.order[samples_consumed:].tolist()
    first = 0
    for position, index in enumerate(sampler):
        pool = int(plan.pool_of(np.asarray(position)))
        # Pools first..pool+1 requested (or, in the last pool, the next epoch's first too), nothing more.
        expected = [plan.pool_runs(q).tolist() for q in range(first, min(pool + 2, len(plan.starts) - 1))]
        if pool == len(plan.starts) - 2:
            expected.append(following.pool_runs(0).tolist())
        assert source.prefetched == expected
        assert all(handle.done for handle in source.handles[1:pool - first + 1])  # a pool's request done first
        assert any(plan.starts[q] <= position < plan.starts[q + 1] and any(a <= index < b for a, b in runs)
                   for q, runs in zip(range(first, pool + 2), source.prefetched))
    assert source.waited == [True] + [False] * (len(source.waited) - 1)  # the first pool cached before the next
    assert len(whole.starts) - 1 == 8  # three ramp pools (12, 25, 50 records rounded to chunks), then ~100 each


@PROPERTY
@given(data=st.data(), n=st.integers(0, 1500), chunk_size=chunk_sizes, num_replicas=replicas,
       drop_last=st.booleans(), seed=seeds, epoch=epochs, shuffle=st.booleans())
def test_sampler_restored_from_state_after_k_samples_yields_exactly_the_rest(data, n, chunk_size, num_replicas,
                                                                             drop_last, seed, epoch, shuffle):
    rank = data.draw(st.integers(0, num_replicas - 1), label="rank")
    options = {"chunk_size": chunk_size, "seed": seed, "num_replicas": num_replicas, "rank": rank,
               "drop_last": drop_last, "shuffle": shuffle}
    sampler = ChunkShuffleSampler(range(n), **options)
    sampler.set_epoch(epoch)
    full = list(sampler)
    k = data.draw(st.integers(0, max(0, len(full) - 1)), label="k")  # a complete epoch: the matrix test
    restored = ChunkShuffleSampler(range(n), **options)
    restored.load_state_dict(sampler.state_dict(samples_consumed=k))
    assert restored.epoch == epoch or not full
    assert len(restored) == len(full) - k
    restored.set_epoch(epoch)  # the usual loop calls set_epoch(epoch) on the resumed epoch: keeps the point
    assert list(restored) == full[k:]
    # Saving again from the resumed sampler counts from the epoch's start.
    j = data.draw(st.integers(0, max(0, len(full) - k - 1)), label="j")
    again = ChunkShuffleSampler(range(n), **options)
    again.load_state_dict(restored.state_dict(samples_consumed=j))
    assert list(again) == full[k + j:]
    # The next epoch is whole again.
    again.set_epoch(epoch + 1)
    assert len(list(again)) == len(again) == len(full)


@pytest.mark.parametrize("change", [{"chunk_size": 5}, {"seed": 1},
                                    {"shuffle": False}, {"drop_last": True}])
def test_sampler_load_state_of_another_configuration_raises(change):
    options = {"chunk_size": 4, "seed": 0, "num_replicas": 2, "rank": 0, "drop_last": False, "shuffle": True}
    state = ChunkShuffleSampler(range(51), **options).state_dict(samples_consumed=3)
    with pytest.raises(ValueError):
        ChunkShuffleSampler(range(51), **{**options, **change}).load_state_dict(state)
    with pytest.raises(ValueError):
        ChunkShuffleSampler(range(52), **options).load_state_dict(state)


@pytest.mark.parametrize("saved_version", [None, 1])
def test_sampler_state_saved_under_another_epoch_order_version_is_refused_naming_it(saved_version):
    sampler = ChunkShuffleSampler(range(51), chunk_size=4, seed=0)
    state = {**sampler.state_dict(samples_consumed=3), "order_version": saved_version}
    if saved_version is None:
        del state["order_version"]  # a state saved before the version was recorded
    with pytest.raises(ValueError, match=f"epoch order version {saved_version}.*restart that epoch"):
        sampler.load_state_dict(state)


# --- through a real DataLoader -------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_sampler_dataloader_two_workers_each_epoch_every_record_once_in_sampler_order(start_method, dataset_path,
                                                                                      checksums):
    dataset = LMDBImageDataset(dataset_path, transform=pixel_checksum, output="numpy")
    sampler = ChunkShuffleSampler(dataset, chunk_size=4, seed=5)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=2,
                        multiprocessing_context=start_method, persistent_workers=True)
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        indices, labels = records_of(loader, checksums)
        assert sorted(indices) == list(range(len(dataset)))
        assert sorted(labels) == sorted(dataset.targets.tolist())
        assert labels == dataset.targets[indices].tolist()
        assert indices == list(sampler)
        orders.append(indices)
    assert orders[0] != orders[1]


@pytest.mark.parametrize("batches_consumed", [1, 4, 7])
def test_sampler_dataloader_two_workers_resume_after_k_batches_completes_epoch_without_repeats(
        batches_consumed, dataset_path, checksums):
    batch_size = 3

    def loader_for(dataset, sampler):
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=2,
                          multiprocessing_context="fork")

    dataset = LMDBImageDataset(dataset_path, transform=pixel_checksum, output="numpy")
    sampler = ChunkShuffleSampler(dataset, chunk_size=4, seed=9)
    sampler.set_epoch(3)
    full = list(sampler)
    seen, consumed = [], 0
    for step, (images, _) in enumerate(loader_for(dataset, sampler)):
        seen.extend(checksums[int(c)] for c in images)
        consumed += len(images)
        if step + 1 == batches_consumed:
            break
    state = sampler.state_dict(samples_consumed=consumed)

    fresh_dataset = LMDBImageDataset(dataset_path, transform=pixel_checksum, output="numpy")
    fresh_sampler = ChunkShuffleSampler(fresh_dataset, chunk_size=4, seed=9)
    fresh_sampler.load_state_dict(state)
    fresh_sampler.set_epoch(3)
    rest = [checksums[int(c)] for images, _ in loader_for(fresh_dataset, fresh_sampler) for c in images]
    assert len(seen) == batches_consumed * batch_size
    assert seen + rest == full
    assert sorted(seen + rest) == list(range(len(fresh_dataset)))
