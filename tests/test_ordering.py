"""Property tests of the epoch-order maths in lmdb_dataset.order.maths (pure integer functions)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import PROPERTY, chunk_sizes, epochs, replicas, seeds, sizes, workers
from torch.utils.data import DistributedSampler

from lmdb_dataset.order.maths import (
    chunk_bounds,
    contiguous_runs,
    epoch_order,
    pool_shuffle,
    pool_starts,
    pool_targets,
    rank_length,
    rank_order,
    rank_share,
    rest_length,
    rest_of_epoch,
    worker_positions,
)
from lmdb_dataset.order.quality import chunk_class_counts, order_quality, repeat_cooccurrence
from lmdb_dataset.order.resume import compose


def assert_chunk_structure(order: np.ndarray, bounds: np.ndarray) -> None:
    """``order`` is the chunks ``[bounds[c], bounds[c+1])``, each whole and in order, one after another."""
    position, seen = 0, set()
    while position < len(order):
        chunk = int(np.searchsorted(bounds, order[position], side="right")) - 1
        assert chunk not in seen and order[position] == bounds[chunk]
        seen.add(chunk)
        expected = np.arange(bounds[chunk], bounds[chunk + 1])
        np.testing.assert_array_equal(order[position:position + len(expected)], expected)
        position += len(expected)
    assert len(seen) == len(bounds) - 1


# --- chunk_bounds / epoch_order ------------------------------------------------------------------------------


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, seed=seeds, epoch=epochs)
def test_chunk_bounds_cover_records_with_chunks_of_at_most_chunk_size_on_a_shifted_grid(n, chunk_size, seed, epoch):
    bounds = chunk_bounds(n, chunk_size=chunk_size, seed=seed, epoch=epoch)
    assert bounds.dtype == np.int64 and bounds[0] == 0 and bounds[-1] == n
    lengths = np.diff(bounds)
    assert np.all(lengths >= 1) and np.all(lengths <= chunk_size)
    inner = bounds[1:-1]
    if len(inner):  # one grid: every inner boundary is offset + k * chunk_size
        assert len(set((inner % chunk_size).tolist())) == 1
        assert np.all(np.diff(inner) == chunk_size)
    assert len(bounds) - 1 <= math.ceil(n / chunk_size) + 1


@PROPERTY
@given(num_chunks=st.integers(20, 300), chunk_size=st.integers(2, 10), seed=seeds, epoch=epochs)
def test_chunk_bounds_grid_offset_changes_between_epochs(num_chunks, chunk_size, seed, epoch):
    # The composition of chunks changes from epoch to epoch: over 20 epochs the offsets take
    # several values (all equal by chance: probability chunk_size ** -19 <= 2 ** -19).
    n = num_chunks * chunk_size
    offsets = {int(chunk_bounds(n, chunk_size=chunk_size, seed=seed, epoch=e)[1]) % chunk_size
               for e in range(epoch, epoch + 20)}
    assert len(offsets) > 1


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, seed=seeds, epoch=epochs)
def test_epoch_order_shuffled_is_permutation_of_this_epochs_whole_contiguous_chunks(n, chunk_size, seed, epoch):
    order = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=epoch, shuffle=True)
    assert order.dtype == np.int64 and order.shape == (n,)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert_chunk_structure(order, chunk_bounds(n, chunk_size=chunk_size, seed=seed, epoch=epoch))


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, seed=seeds, epoch=epochs)
def test_epoch_order_unshuffled_is_identity(n, chunk_size, seed, epoch):
    order = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=epoch, shuffle=False)
    np.testing.assert_array_equal(order, np.arange(n))
    assert order.dtype == np.int64


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, seed=seeds, epoch=epochs)
def test_epoch_order_same_arguments_same_array(n, chunk_size, seed, epoch):
    args = {"chunk_size": chunk_size, "seed": seed, "epoch": epoch, "shuffle": True}
    np.testing.assert_array_equal(epoch_order(n, **args), epoch_order(n, **args))


@PROPERTY
@given(num_chunks=st.integers(20, 300), chunk_size=st.integers(1, 10), last=st.integers(1, 10), seed=seeds,
       epoch=epochs)
def test_epoch_order_twenty_or_more_chunks_differs_between_consecutive_epochs(num_chunks, chunk_size, last,
                                                                             seed, epoch):
    # >= 20 chunks: equal chunk permutations by chance have probability <= 1/20! (~4e-19).
    n = (num_chunks - 1) * chunk_size + min(last, chunk_size)
    args = {"chunk_size": chunk_size, "seed": seed, "shuffle": True}
    first, second = epoch_order(n, epoch=epoch, **args), epoch_order(n, epoch=epoch + 1, **args)
    assert not np.array_equal(first, second)
    assert not np.array_equal(epoch_order(n, epoch=epoch, **{**args, "seed": seed + 1}), first)


def test_epoch_order_pinned_small_example_is_reproducible_across_runs_and_machines():
    # A pure function of its arguments (PCG64 via default_rng): a saved resume point stays valid.
    assert chunk_bounds(10, chunk_size=3, seed=0, epoch=0).tolist() == [0, 2, 5, 8, 10]
    assert epoch_order(10, chunk_size=3, seed=0, epoch=0, shuffle=True).tolist() == [5, 6, 7, 0, 1, 2, 3, 4, 8, 9]
    plan = rank_order(10, chunk_size=3, pool_size=4, seed=0, epoch=0, rank=0, num_replicas=1, drop_last=False,
                      shuffle=True)
    assert plan.starts.tolist() == [0, 3, 8, 10]  # pool targets 1, 3 (the ramp), 7, rounded to chunk starts
    assert plan.order.tolist() == [6, 5, 7, 0, 2, 3, 4, 1, 9, 8]


def test_epoch_order_rejects_chunk_size_zero():
    with pytest.raises(ValueError):
        epoch_order(10, chunk_size=0, seed=0, epoch=0, shuffle=True)


# --- rank_share ----------------------------------------------------------------------------------------------


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, num_replicas=replicas, drop_last=st.booleans(), seed=seeds, epoch=epochs)
def test_rank_share_lengths_and_multiset_match_distributed_sampler(n, chunk_size, num_replicas, drop_last, seed,
                                                                   epoch):
    order = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=epoch, shuffle=True)
    ours, theirs = [], []
    for rank in range(num_replicas):
        share = rank_share(order, rank=rank, num_replicas=num_replicas, drop_last=drop_last)
        reference = list(DistributedSampler(range(n), num_replicas=num_replicas, rank=rank, shuffle=False,
                                            drop_last=drop_last))
        assert len(share) == len(reference) == rank_length(n, num_replicas, drop_last)
        ours.extend(share.tolist())
        theirs.extend(order[reference].tolist())  # the sampler's positions, over the same base order
    assert Counter(ours) == Counter(theirs)


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, num_replicas=replicas, drop_last=st.booleans(), seed=seeds)
def test_rank_share_ranks_are_consecutive_slices_of_padded_or_truncated_order(n, chunk_size, num_replicas,
                                                                              drop_last, seed):
    order = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=0, shuffle=True)
    shares = [rank_share(order, rank=r, num_replicas=num_replicas, drop_last=drop_last)
              for r in range(num_replicas)]
    total = rank_length(n, num_replicas, drop_last) * num_replicas
    expected = np.resize(order, total) if total > n else order[:total]
    np.testing.assert_array_equal(np.concatenate(shares), expected)


@PROPERTY
@given(per_rank=st.integers(0, 600), chunk_size=chunk_sizes, num_replicas=replicas, drop_last=st.booleans(),
       seed=seeds)
def test_rank_share_divisible_length_every_index_exactly_once_across_ranks(per_rank, chunk_size, num_replicas,
                                                                           drop_last, seed):
    n = per_rank * num_replicas
    order = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=0, shuffle=True)
    shares = [rank_share(order, rank=r, num_replicas=num_replicas, drop_last=drop_last)
              for r in range(num_replicas)]
    assert [len(s) for s in shares] == [per_rank] * num_replicas
    np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.arange(n))


@pytest.mark.parametrize("rank, num_replicas", [(-1, 2), (2, 2), (0, 0)])
def test_rank_share_rank_outside_world_raises(rank, num_replicas):
    with pytest.raises(ValueError):
        rank_share(np.arange(10), rank=rank, num_replicas=num_replicas, drop_last=False)


# --- worker_positions ----------------------------------------------------------------------------------------


@PROPERTY
@given(length=sizes, piece_size=st.integers(1, 300), num_workers=workers)
def test_worker_positions_partition_rank_slice_into_round_robin_pieces(length, piece_size, num_workers):
    parts = [worker_positions(length, piece_size=piece_size, worker=w, num_workers=num_workers)
             for w in range(num_workers)]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(length))
    for w, part in enumerate(parts):
        assert np.all(np.diff(part) > 0)  # in order
        assert np.all((part // piece_size) % num_workers == w)  # whole pieces, dealt round-robin


@pytest.mark.parametrize("worker, num_workers, piece_size", [(2, 2, 4), (-1, 2, 4), (0, 0, 4), (0, 1, 0)])
def test_worker_positions_invalid_worker_or_piece_raises(worker, num_workers, piece_size):
    with pytest.raises(ValueError):
        worker_positions(10, piece_size=piece_size, worker=worker, num_workers=num_workers)


# --- pool_starts / pool_shuffle / rank_order ----------------------------------------------------------------


@PROPERTY
@given(length=st.integers(0, 5000), pool_size=st.integers(1, 3000))
def test_pool_targets_ramp_up_by_halves_to_pool_size_then_step_by_it(length, pool_size):
    targets = pool_targets(length, pool_size)
    if length <= pool_size:  # one pool, a full shuffle of the share
        assert len(targets) == 0
        return
    sizes_ = np.diff(np.concatenate(([0], targets))).tolist()
    ramp = [size for size in (pool_size // 8, pool_size // 4, pool_size // 2) if size]
    assert sizes_[:len(ramp)] == ramp[:len(sizes_)]
    assert all(size == pool_size for size in sizes_[len(ramp):])
    assert all(0 < t < length for t in targets.tolist())
    # the targets stop only where the next one would reach the end
    following = int(targets[-1]) + (pool_size if len(sizes_) >= len(ramp) else ramp[len(sizes_)]) if len(targets) \
        else (ramp or [pool_size])[0]
    assert following >= length


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, pool_size=st.integers(1, 700), num_replicas=replicas, seed=seeds,
       epoch=epochs)
def test_pool_starts_cut_at_the_first_chunk_start_at_or_after_each_target(n, chunk_size, pool_size, num_replicas,
                                                                          seed, epoch):
    bounds = chunk_bounds(n, chunk_size=chunk_size, seed=seed, epoch=epoch)
    order = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=epoch, shuffle=True)
    reads = rank_share(order, rank=num_replicas - 1, num_replicas=num_replicas, drop_last=False)
    starts = pool_starts(reads, chunk_starts=bounds[:-1], pool_size=pool_size)
    assert starts[0] == 0 and starts[-1] == len(reads) and np.all(np.diff(starts) >= 1 if len(reads) else True)
    piece_starts = [p for p in range(len(reads)) if p == 0 or reads[p] in set(bounds[:-1].tolist())]
    expected = sorted({next((p for p in piece_starts if p >= t), None) for t in
                       pool_targets(len(reads), pool_size).tolist()} - {None, 0})
    assert starts[1:-1].tolist() == expected  # each pool holds whole chunk pieces
    sizes_ = np.diff(starts)
    assert np.all(sizes_ < pool_size + chunk_size)


@PROPERTY
@given(starts=st.lists(st.integers(1, 40), max_size=20).map(lambda s: np.cumsum([0, *s])), seed=seeds,
       stream=st.tuples(st.integers(0, 100), st.integers(0, 4)))
def test_pool_shuffle_permutes_within_each_pool_only_and_is_deterministic(starts, seed, stream):
    out = pool_shuffle(starts, seed=seed, stream=stream)
    for a, b in itertools.pairwise(starts.tolist()):
        assert sorted(out[a:b].tolist()) == list(range(a, b))
    np.testing.assert_array_equal(out, pool_shuffle(starts, seed=seed, stream=stream))


@PROPERTY
@given(starts=st.lists(st.integers(1, 40), max_size=20).map(lambda s: np.cumsum([0, *s])), seed=seeds,
       stream=st.tuples(st.integers(0, 100), st.integers(0, 4)))
def test_pool_shuffle_is_the_order_of_each_pools_keys(starts, seed, stream):
    """The order every released epoch used (ORDER_VERSION 2): positions sorted by (pool, key), in one lexsort."""
    keys = np.random.default_rng([seed, *stream, 2]).random(int(starts[-1]))
    expected = np.lexsort((keys, np.repeat(np.arange(len(starts) - 1), np.diff(starts))))
    np.testing.assert_array_equal(pool_shuffle(starts, seed=seed, stream=stream), expected)


def test_pool_shuffle_large_pool_actually_reorders():
    out = pool_shuffle(np.array([0, 500]), seed=3, stream=(0, 0))
    assert not np.array_equal(out, np.arange(500))
    assert not np.array_equal(out, pool_shuffle(np.array([0, 500]), seed=3, stream=(0, 1)))


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, pool_size=st.integers(1, 700), num_replicas=replicas,
       drop_last=st.booleans(), shuffle=st.booleans(), seed=seeds, epoch=epochs)
def test_rank_order_ranks_get_distributed_sampler_shares_delivered_as_pool_permutations_of_reads(
        n, chunk_size, pool_size, num_replicas, drop_last, shuffle, seed, epoch):
    base = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=epoch, shuffle=shuffle)
    for rank in range(num_replicas):
        plan = rank_order(n, chunk_size=chunk_size, pool_size=pool_size, seed=seed, epoch=epoch, rank=rank,
                          num_replicas=num_replicas, drop_last=drop_last, shuffle=shuffle)
        share = rank_share(base, rank=rank, num_replicas=num_replicas, drop_last=drop_last)
        assert len(plan.order) == rank_length(n, num_replicas, drop_last)
        np.testing.assert_array_equal(plan.reads, share)
        for a, b in zip(plan.starts[:-1], plan.starts[1:]):
            assert sorted(plan.order[a:b].tolist()) == sorted(plan.reads[a:b].tolist())
        runs = plan.runs()
        assert [i for pool in runs for start, stop in pool for i in range(start, stop)] == share.tolist()
        if not shuffle:
            np.testing.assert_array_equal(plan.order, share)


@PROPERTY
@given(per_rank=st.integers(0, 600), chunk_size=chunk_sizes, pool_size=st.integers(1, 700),
       num_replicas=replicas, drop_last=st.booleans(), seed=seeds, epoch=epochs)
def test_rank_order_divisible_length_every_record_exactly_once_across_ranks(per_rank, chunk_size, pool_size,
                                                                           num_replicas, drop_last, seed, epoch):
    n = per_rank * num_replicas
    orders = [rank_order(n, chunk_size=chunk_size, pool_size=pool_size, seed=seed, epoch=epoch, rank=r,
                         num_replicas=num_replicas, drop_last=drop_last, shuffle=True).order
              for r in range(num_replicas)]
    assert [len(o) for o in orders] == [per_rank] * num_replicas
    np.testing.assert_array_equal(np.sort(np.concatenate(orders)), np.arange(n))


@PROPERTY
@given(num_chunks=st.integers(40, 200), chunk_size=st.integers(4, 10), seed=seeds, epoch=epochs)
def test_rank_order_chunk_mates_are_split_by_the_next_epochs_grid(num_chunks, chunk_size, seed, epoch):
    # Chunk composition changes between epochs: some records that shared a chunk in epoch e are
    # in different chunks in epoch e + 1 unless both grids have the same offset.
    n = num_chunks * chunk_size
    first, second = (chunk_bounds(n, chunk_size=chunk_size, seed=seed, epoch=e) for e in (epoch, epoch + 1))
    chunk_of = [np.searchsorted(b, np.arange(n), side="right") for b in (first, second)]
    same_before = chunk_of[0][1:] == chunk_of[0][:-1]
    same_after = chunk_of[1][1:] == chunk_of[1][:-1]
    if first[1] % chunk_size != second[1] % chunk_size:
        assert np.any(same_before & ~same_after)
    else:
        np.testing.assert_array_equal(same_before, same_after)


# --- rest_of_epoch: the rest of an epoch, re-dealt over another world -------------------------------------------


def reference_rest(n: int, hops: list[tuple[int, int]], num_replicas: int, **options) -> list[list[int]]:
    """Each rank's records after ``hops``, by DistributedSampler's rule on plain lists (independent of the package)."""
    world = hops[0][1] if hops else num_replicas
    ranks = [rank_order(n, rank=r, num_replicas=world, **options).order.tolist() for r in range(world)]
    for index, (consumed, _world) in enumerate(hops):
        rest = [record for share in ranks for record in share[consumed:]]
        following = hops[index + 1][1] if index + 1 < len(hops) else num_replicas
        per_rank = (len(rest) // following if options["drop_last"] else -(-len(rest) // following))
        dealt = (rest * (per_rank * following // max(len(rest), 1) + 1))[:per_rank * following]
        ranks = [dealt[r * per_rank:(r + 1) * per_rank] for r in range(following)]
    return ranks


order_settings = st.fixed_dictionaries({"chunk_size": st.integers(1, 20), "pool_size": st.integers(1, 60),
                                        "seed": seeds, "epoch": epochs, "drop_last": st.booleans(),
                                        "shuffle": st.booleans()})


@PROPERTY
@given(data=st.data(), n=st.integers(0, 400), options=order_settings, worlds=st.lists(replicas, min_size=2,
                                                                                        max_size=4))
def test_rest_of_epoch_equals_distributed_sampler_rule_applied_to_every_ranks_rest(data, n, options, worlds):
    hops = []
    for world in worlds[:-1]:  # each pass consumed part of what it was dealt
        length = rest_length(n, hops=hops, num_replicas=world, drop_last=options["drop_last"])
        hops.append((data.draw(st.integers(0, length), label=f"consumed of {length} in a world of {world}"), world))
    expected = reference_rest(n, hops, worlds[-1], **options)
    for rank in range(worlds[-1]):
        plan = rest_of_epoch(n, rank=rank, num_replicas=worlds[-1], hops=hops, **options)
        assert plan.order.tolist() == expected[rank]
        assert len(plan.order) == rest_length(n, hops=hops, num_replicas=worlds[-1], drop_last=options["drop_last"])
        for a, b in zip(plan.starts[:-1], plan.starts[1:]):  # pools: delivered as permutations of storage order
            assert sorted(plan.order[a:b].tolist()) == plan.reads[a:b].tolist()
            covered = {i for start, stop in plan.pool_runs(int(np.searchsorted(plan.starts, a, side="right") - 1))
                       for i in range(start, stop)}
            assert set(plan.order[a:b].tolist()) <= covered
    # Two passes in a row over one world are one pass of their sum (what compose relies on).
    if hops and worlds[-1] == hops[-1][1]:
        more = data.draw(st.integers(0, len(expected[0])), label="consumed in the last world")
        assert reference_rest(n, [*hops[:-1], (hops[-1][0] + more, hops[-1][1])], worlds[-1], **options) == \
            reference_rest(n, [*hops, (more, worlds[-1])], worlds[-1], **options)
        # compose: passes that consumed nothing are left out (they only re-deal, adding no padding), and
        # the new pass merges into the last one when it continues its world: the same rest, shortest.
        composed = compose(hops, more, worlds[-1])
        consumed = [hop for hop in [*hops, (more, worlds[-1])] if hop[0]]
        assert reference_rest(n, list(composed), worlds[-1], **options) == \
            reference_rest(n, consumed, worlds[-1], **options)
        earlier = [hop for hop in hops if hop[0]]
        merged = bool(more) and bool(earlier) and earlier[-1][1] == worlds[-1]
        assert all(k for k, _ in composed) and len(composed) == len(earlier) + (bool(more) and not merged)


@PROPERTY
@given(data=st.data(), per_rank=st.integers(1, 60), options=order_settings, before=replicas, after=replicas)
def test_rest_of_epoch_elastic_restart_deals_exactly_the_unconsumed_samples_once(data, per_rank, options, before,
                                                                                  after):
    n = per_rank * before  # no padding in the first world: every record once per epoch
    consumed = data.draw(st.integers(0, per_rank), label="consumed per rank")
    shares = [rank_order(n, rank=r, num_replicas=before, **options).order for r in range(before)]
    seen = Counter(int(i) for share in shares for i in share[:consumed])
    plans = [rest_of_epoch(n, rank=r, num_replicas=after, hops=[(consumed, before)], **options).order
             for r in range(after)]
    assert len({len(plan) for plan in plans}) == 1  # equal lengths: DDP steps in lockstep
    rest = Counter(int(i) for plan in plans for i in plan)
    left = n - sum(seen.values())
    if options["drop_last"]:  # the rest truncated to a multiple of the new world, nothing repeated
        assert max(rest.values(), default=1) == 1 and not set(rest) & set(seen)
        assert sum(rest.values()) == left - left % after
    else:  # every unconsumed sample, plus the padding repeats (fewer than the new world)
        assert set(rest) | set(seen) == set(range(n)) and not set(rest) & set(seen)
        assert sum(rest.values()) - left == (-left) % after


def test_rest_of_epoch_at_imagenet_scale_8_ranks_to_6_and_16_with_32_workers_each_index_once():
    n, batch = 1_281_167, 256
    options = {"chunk_size": 64, "pool_size": 8192, "seed": 0, "epoch": 7, "drop_last": False, "shuffle": True}
    consumed = 300 * batch  # 300 steps of 8 ranks
    seen = np.zeros(n, dtype=np.int64)
    for rank in range(8):
        seen[rank_order(n, rank=rank, num_replicas=8, **options).order[:consumed]] += 1
    for after in (6, 16):
        counts = seen.copy()
        lengths = set()
        for rank in range(after):
            plan = rest_of_epoch(n, rank=rank, num_replicas=after, hops=[(consumed, 8)], **options)
            lengths.add(len(plan.order))
            for worker in range(32):  # every worker's share of whole batches, dealt in turn
                counts[plan.order[worker_positions(len(plan.order), piece_size=batch, worker=worker,
                                                   num_workers=32)]] += 1
        assert lengths == {rest_length(n, hops=[(consumed, 8)], num_replicas=after, drop_last=False)}
        padding = lengths.pop() * after - (8 * rank_length(n, 8, False) - 8 * consumed)
        assert 0 <= padding < after
        # 8 x 160,146 = 1,281,168: the first epoch's one padding repeat, plus the new world's.
        assert counts.min() == 1 and counts.sum() - n == 1 + padding and counts.max() == 2


# --- contiguous_runs -----------------------------------------------------------------------------------------


@PROPERTY
@given(indices=st.lists(st.integers(0, 50), max_size=60))
def test_contiguous_runs_expand_back_to_input_with_maximal_runs(indices):
    runs = contiguous_runs(np.asarray(indices, dtype=np.int64))
    assert runs.dtype == np.int64 and runs.shape == (len(runs), 2)
    assert [i for start, stop in runs.tolist() for i in range(start, stop)] == indices
    for (_, stop), (start, _) in itertools.pairwise(runs):
        assert start != stop  # a run that could continue is not split


# --- order_quality (hand-computed cases) ---------------------------------------------------------------------


def test_order_quality_two_epochs_of_four_samples_hand_computed():
    labels = np.array([0, 0, 1, 1])  # dataset histogram (1/2, 1/2)
    epoch0 = [np.array([0, 1]), np.array([2, 3])]  # one class per batch: TV 1/2 each
    epoch1 = [np.array([0, 2]), np.array([1, 3])]  # both classes per batch: TV 0
    quality = order_quality([epoch0, epoch1], labels, reads=[np.array([0, 1, 2, 3]), np.array([3, 1, 2])])
    assert quality.distinct_classes == (1 + 1 + 2 + 2) / 4
    assert quality.tv_distance == (0.5 + 0.5 + 0 + 0) / 4
    assert quality.repeat_cooccurrence == 0.0  # pairs {0,1} and {2,3} never meet again
    assert quality.seeks_per_1000 == 1000 * (1 + 2) / 7  # one run, then 3 | 1,2


def test_order_quality_same_batches_again_repeat_cooccurrence_is_one_and_padding_counts_once():
    labels = np.arange(6) % 3
    batches = [np.array([0, 1, 2]), np.array([3, 4, 5, 0])]  # 0 repeated (padding): counted in its first batch
    quality = order_quality([batches, batches], labels)
    assert quality.repeat_cooccurrence == 1.0
    assert repeat_cooccurrence(batches, batches, 6) == (3 + 3, 6)
    assert repeat_cooccurrence(batches, [np.array([0, 3]), np.array([1, 4]), np.array([2, 5])], 6) == (6, 0)
    assert repeat_cooccurrence(batches, [np.array([0, 1, 3, 4]), np.array([2, 5])], 6) == (6, 1 + 1)
    assert np.isnan(quality.seeks_per_1000) and np.isnan(order_quality([batches], labels).repeat_cooccurrence)


@PROPERTY
@given(n=st.integers(2, 60), batch=st.integers(1, 8), seed=seeds)
def test_repeat_cooccurrence_equals_brute_force_pair_count(n, batch, seed):
    rng = np.random.default_rng(seed)
    first, second = (list(np.array_split(rng.permutation(n), max(1, n // batch))) for _ in range(2))
    pairs = [{frozenset((int(a), int(b))) for bt in epoch for a, b in itertools.combinations(bt.tolist(), 2)}
             for epoch in (first, second)]
    assert repeat_cooccurrence(first, second, n) == (len(pairs[0]), len(pairs[0] & pairs[1]))


def test_order_quality_rejects_out_of_range_samples_and_no_epochs():
    with pytest.raises(ValueError, match="outside"):
        order_quality([[np.array([0, 4])]], np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="empty"):
        order_quality([], np.zeros(4, dtype=np.int64))


def test_chunk_class_counts_class_sorted_versus_interleaved_hand_computed():
    sorted_labels = np.repeat(np.arange(4), 8)  # chunks of 8: one class each
    assert chunk_class_counts(sorted_labels, 8) == (1.0, pytest.approx(4 * (1 - 0.75 ** 8)))
    assert chunk_class_counts(np.tile(np.arange(4), 8), 8)[0] == 4.0


@pytest.mark.parametrize("layout", ["class-sorted", "shuffled"])
def test_class_locality_check_on_an_imagenet_sized_file_judges_from_a_chunk_sample(layout):
    import warnings

    from lmdb_dataset.order.quality import CHECKED_CHUNKS, ClassLocalityWarning, check_class_locality

    labels = np.repeat(np.arange(1000), 1281)  # 20,000 chunks of 64: more than CHECKED_CHUNKS
    assert len(labels) // 64 > CHECKED_CHUNKS
    if layout == "shuffled":
        labels = np.random.default_rng(0).permutation(labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_class_locality(labels, chunk_size=64, pool_size=8192, reader="LMDBIterableDataset")
    warned = [w for w in caught if issubclass(w.category, ClassLocalityWarning)]
    assert len(warned) == (layout == "class-sorted")
    if warned:
        assert "holds 1.0 distinct classes" in str(warned[0].message) or "holds 1.1 distinct" in str(warned[0].message)
