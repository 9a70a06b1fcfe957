"""Property tests of the epoch-order maths in lmdb_dataset.ordering (pure integer functions)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import PROPERTY, chunk_sizes, dataloader_batches, epochs, replicas, seeds, sizes, workers
from torch.utils.data import DistributedSampler

from lmdb_dataset.ordering import (
    buffer_shuffle,
    consumed_per_worker,
    contiguous_runs,
    epoch_order,
    rank_length,
    rank_share,
    worker_positions,
)


def assert_chunk_structure(order: np.ndarray, n: int, chunk_size: int, *, sorted_inside: bool) -> None:
    """``order`` is whole chunks ``[c*chunk_size, min(n, (c+1)*chunk_size))``, one after another."""
    position, seen = 0, set()
    while position < n:
        chunk = int(order[position]) // chunk_size
        assert chunk not in seen
        seen.add(chunk)
        expected = np.arange(chunk * chunk_size, min(n, (chunk + 1) * chunk_size))
        block = order[position:position + len(expected)]
        if sorted_inside:
            np.testing.assert_array_equal(block, expected)
        else:
            np.testing.assert_array_equal(np.sort(block), expected)
        position += len(expected)
    assert position == n
    assert len(seen) == math.ceil(n / chunk_size)


# --- epoch_order ---------------------------------------------------------------------------------------------


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, seed=seeds, epoch=epochs, within=st.booleans())
def test_epoch_order_shuffled_is_permutation_of_whole_contiguous_chunks(n, chunk_size, seed, epoch, within):
    order = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=epoch, shuffle=True,
                        shuffle_within_chunks=within)
    assert order.dtype == np.int64 and order.shape == (n,)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert_chunk_structure(order, n, chunk_size, sorted_inside=not within)


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, seed=seeds, epoch=epochs, within=st.booleans())
def test_epoch_order_unshuffled_is_identity(n, chunk_size, seed, epoch, within):
    order = epoch_order(n, chunk_size=chunk_size, seed=seed, epoch=epoch, shuffle=False,
                        shuffle_within_chunks=within)
    np.testing.assert_array_equal(order, np.arange(n))
    assert order.dtype == np.int64


@PROPERTY
@given(n=sizes, chunk_size=chunk_sizes, seed=seeds, epoch=epochs, within=st.booleans())
def test_epoch_order_same_arguments_same_array(n, chunk_size, seed, epoch, within):
    args = {"chunk_size": chunk_size, "seed": seed, "epoch": epoch, "shuffle": True, "shuffle_within_chunks": within}
    np.testing.assert_array_equal(epoch_order(n, **args), epoch_order(n, **args))


@PROPERTY
@given(num_chunks=st.integers(20, 300), chunk_size=st.integers(1, 10), last=st.integers(1, 10), seed=seeds,
       epoch=epochs, within=st.booleans())
def test_epoch_order_twenty_or_more_chunks_differs_between_consecutive_epochs(num_chunks, chunk_size, last,
                                                                             seed, epoch, within):
    # >= 20 chunks: equal chunk permutations by chance have probability <= 1/20! (~4e-19).
    n = (num_chunks - 1) * chunk_size + min(last, chunk_size)
    args = {"chunk_size": chunk_size, "seed": seed, "shuffle": True, "shuffle_within_chunks": within}
    first, second = epoch_order(n, epoch=epoch, **args), epoch_order(n, epoch=epoch + 1, **args)
    assert not np.array_equal(first, second)
    assert not np.array_equal(epoch_order(n, epoch=epoch, **{**args, "seed": seed + 1}), first)


def test_epoch_order_pinned_small_example_is_reproducible_across_runs_and_machines():
    # A pure function of its arguments (PCG64 via default_rng): a saved resume point stays valid.
    assert epoch_order(10, chunk_size=3, seed=0, epoch=0, shuffle=True).tolist() == [6, 7, 8, 0, 1, 2, 3, 4, 5, 9]
    assert epoch_order(10, chunk_size=3, seed=0, epoch=0, shuffle=True,
                       shuffle_within_chunks=True).tolist() == [7, 6, 8, 1, 2, 0, 4, 3, 5, 9]
    assert buffer_shuffle(10, buffer_size=3, seed=0, stream=(0, 0, 0)).tolist() == [1, 2, 3, 0, 4, 5, 6, 9, 8, 7]


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


# --- buffer_shuffle ------------------------------------------------------------------------------------------


@PROPERTY
@given(length=sizes, buffer_size=st.integers(0, 600), seed=seeds,
       stream=st.tuples(st.integers(0, 100), st.integers(0, 4), st.integers(0, 3)))
def test_buffer_shuffle_is_permutation_never_more_than_buffer_minus_one_ahead(length, buffer_size, seed, stream):
    out = buffer_shuffle(length, buffer_size=buffer_size, seed=seed, stream=stream)
    np.testing.assert_array_equal(np.sort(out), np.arange(length))
    assert np.all(out <= np.arange(length) + max(buffer_size, 1) - 1)
    if buffer_size <= 1:
        np.testing.assert_array_equal(out, np.arange(length))
    np.testing.assert_array_equal(out, buffer_shuffle(length, buffer_size=buffer_size, seed=seed, stream=stream))


def test_buffer_shuffle_large_buffer_actually_reorders():
    out = buffer_shuffle(500, buffer_size=64, seed=3, stream=(0, 0, 0))
    assert not np.array_equal(out, np.arange(500))
    assert not np.array_equal(out, buffer_shuffle(500, buffer_size=64, seed=3, stream=(0, 0, 1)))


# --- consumed_per_worker -------------------------------------------------------------------------------------


@PROPERTY
@given(worker_lengths=st.lists(st.integers(0, 120), min_size=1, max_size=4), batch_size=st.integers(1, 20))
def test_consumed_per_worker_matches_simulated_dataloader_and_raises_off_batch_boundaries(worker_lengths,
                                                                                           batch_size):
    streams = [list(range(n)) for n in worker_lengths]
    boundaries = {0: ([0] * len(worker_lengths), 0)}
    consumed, total = [0] * len(worker_lengths), 0
    for worker, batch in dataloader_batches(streams, batch_size):
        consumed[worker] += len(batch)
        total += len(batch)
        boundaries[total] = (list(consumed), (worker + 1) % len(worker_lengths))
    assert total == sum(worker_lengths)
    for k in range(total + 3):
        if k in boundaries:
            assert consumed_per_worker(worker_lengths, batch_size=batch_size, samples_consumed=k) == boundaries[k]
        else:
            with pytest.raises(ValueError):
                consumed_per_worker(worker_lengths, batch_size=batch_size, samples_consumed=k)


# --- contiguous_runs -----------------------------------------------------------------------------------------


@PROPERTY
@given(indices=st.lists(st.integers(0, 50), max_size=60))
def test_contiguous_runs_expand_back_to_input_with_maximal_runs(indices):
    runs = contiguous_runs(np.asarray(indices, dtype=np.int64))
    assert [i for start, stop in runs for i in range(start, stop)] == indices
    for (_, stop), (start, _) in itertools.pairwise(runs):
        assert start != stop  # a run that could continue is not split
