"""Every refusal of the resume code: a state that cannot be resumed exactly is refused, naming what differs and the fix.

The exact resumes are tested in ``test_resume_matrix.py``, ``test_elastic_resume.py`` and
``test_frameworks.py``; here each wrong state, call or reader gets its error (and nothing
resumes wrongly in silence). One real ``StatefulDataLoader`` run (2 fork workers) gives
real worker states.
"""

from __future__ import annotations

import pytest
from support import pixel_checksum
from torch.utils.data import DataLoader, IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lmdb_dataset import ChunkShuffleSampler, LMDBIterableDataset
from lmdb_dataset.order.maths import rest_length
from lmdb_dataset.order.resume import MAX_HOPS, MAX_WORKERS, EpochProgress
from lmdb_dataset.order.world import World
from lmdb_dataset.read.iterable import merged_worker_state

pytestmark = pytest.mark.filterwarnings("ignore::lmdb_dataset.ClassLocalityWarning")  # the fixture is stored by class

BATCH = 3
ORDER = {"chunk_size": 4, "pool_size": 8, "seed": 5}
OPTIONS = {"transform": pixel_checksum, "output": "numpy", **ORDER}


@pytest.fixture(scope="module")
def path(converted):
    return converted(num_images=24, special=False)


@pytest.fixture(scope="module")
def loader_state(path):
    """A StatefulDataLoader's whole state after 3 batches, from 2 fork workers (worker 0 delivered 2, worker 1 one)."""
    loader = StatefulDataLoader(LMDBIterableDataset(path, **OPTIONS), batch_size=BATCH, num_workers=2,
                                multiprocessing_context="fork")
    for seen, _ in enumerate(loader, 1):
        if seen == 3:
            return loader.state_dict()
    raise AssertionError("the loader ended early")


def worker_states(loader_state) -> list[dict]:
    return [worker["dataset_state"] for worker in loader_state["_snapshot"]["_worker_snapshots"].values()]


def test_a_real_loader_state_holds_each_workers_own_position(loader_state):
    states = worker_states(loader_state)
    assert [(s["stream"], s["stream_position"], s["num_workers"], s["piece_size"]) for s in states] == \
        [(0, 2 * BATCH, 2, BATCH), (1, BATCH, 2, BATCH)]
    assert merged_worker_state(loader_state)["samples_consumed"] == 3 * BATCH


def test_samples_consumed_outside_the_pass_is_refused(path):
    dataset = LMDBIterableDataset(path, **OPTIONS)
    sampler = ChunkShuffleSampler(range(24), **ORDER)
    for reader in (dataset, sampler):
        assert reader.state_dict(samples_consumed=24)["samples_consumed"] == 24
        for wrong in (-1, 25):
            with pytest.raises(ValueError, match=f"samples_consumed={wrong} must be within the 24 samples"):
                reader.state_dict(samples_consumed=wrong)


@pytest.mark.parametrize("change, message", [
    ({"samples_consumed": None}, r"not a resume state of lmdb_dataset: TypeError"),
    ({"num_replicas": "two"}, r"not a resume state of lmdb_dataset: ValueError\(\"invalid literal"),
    ({"resumed_from": [[5]]}, r"not a resume state of lmdb_dataset"),
    ({"samples_consumed": -3}, r"passes \[\(-3, 1\)\] .*counts must be >= 0 and world sizes >= 1"),
    ({"resumed_from": [[4, 0]]}, r"passes \[\(4, 0\), \(6, 1\)\] .*world sizes >= 1"),
    ({"resumed_from": [[13, 2]]}, r"samples_consumed=13 is not within the 12 samples per rank of that pass "
                                  r"\(num_replicas=2\)"),
])
def test_a_malformed_or_impossible_state_is_refused_naming_the_field(path, change, message):
    state = {**ChunkShuffleSampler(range(24), **ORDER).state_dict(samples_consumed=6), **change}
    for reader in (ChunkShuffleSampler(range(24), **ORDER), LMDBIterableDataset(path, **OPTIONS)):
        with pytest.raises(ValueError, match=message):
            reader.load_state_dict(state)
        assert reader.epoch == 0 and len(reader) == 24  # nothing was loaded


def test_a_missing_key_is_refused_naming_it():
    state = ChunkShuffleSampler(range(24), **ORDER).state_dict(samples_consumed=6)
    del state["samples_consumed"]
    with pytest.raises(ValueError, match="not a resume state of lmdb_dataset: KeyError\\('samples_consumed'\\)"):
        ChunkShuffleSampler(range(24), **ORDER).load_state_dict(state)


def test_more_passes_of_one_epoch_than_kept_are_refused():
    # Each hop consumed one sample per rank in a world of 1, then 2, then 1 ...: no two in a row merge.
    hops = [[1, 1 + i % 2] for i in range(MAX_HOPS)]
    sampler = ChunkShuffleSampler(range(1000), **ORDER)
    state = {**sampler.state_dict(samples_consumed=0), "resumed_from": hops[:-1], "samples_consumed": 1,
             "num_replicas": hops[-1][1]}
    sampler.load_state_dict(state)  # exactly MAX_HOPS passes: kept
    assert sampler.epoch == 0 and len(sampler) == rest_length(1000, hops=hops, num_replicas=1, drop_last=False) > 0
    with pytest.raises(ValueError, match=f"describes {MAX_HOPS + 1} passes of one epoch; at most {MAX_HOPS}"):
        sampler.load_state_dict({**state, "resumed_from": hops, "num_replicas": 1 + MAX_HOPS % 2})


def test_negative_epoch_and_too_many_workers_are_refused():
    progress = EpochProgress()
    with pytest.raises(ValueError, match="epoch=-1 must be >= 0"):
        progress.set_epoch(-1)
    progress.resume(0, [(2, 1)])
    assert progress.begin_pass(World(worker=MAX_WORKERS - 1, num_workers=MAX_WORKERS), in_worker=True) == ((2, 1),)
    with pytest.raises(ValueError, match=f"DataLoader worker {MAX_WORKERS}: at most {MAX_WORKERS} workers per rank"):
        progress.begin_pass(World(worker=MAX_WORKERS, num_workers=MAX_WORKERS + 1), in_worker=True)


@pytest.mark.parametrize("epoch, num_workers, num_replicas", [(1, 2, 1), (0, 3, 1), (0, 2, 2)])
def test_a_workers_own_state_resumes_only_its_epoch_and_world(path, loader_state, epoch, num_workers,
                                                              num_replicas):
    state = {**worker_states(loader_state)[0], "epoch": epoch, "num_workers": num_workers}
    dataset = LMDBIterableDataset(path, **OPTIONS, num_replicas=num_replicas, rank=0)
    dataset.load_state_dict({**state, "num_replicas": 1})
    loader = StatefulDataLoader(dataset, batch_size=BATCH, num_workers=2, multiprocessing_context="fork")
    fix = f"call set_epoch\\({epoch}\\) first" if epoch else "load the StatefulDataLoader's whole state"
    with pytest.raises(ValueError, match=rf"saved at \(epoch, num_workers, num_replicas\) = \({epoch}, "
                                         rf"{num_workers}, 1\), the DataLoader is now at \(0, 2, {num_replicas}\)"
                                         rf".*{fix}"):
        next(iter(loader))


def test_a_workers_own_state_of_an_epoch_the_run_moved_past_is_dropped(path, loader_state):
    dataset = LMDBIterableDataset(path, **OPTIONS)
    dataset.load_state_dict(worker_states(loader_state)[0])
    dataset.set_epoch(1)
    assert len(list(DataLoader(dataset, batch_size=BATCH))) == 24 // BATCH  # epoch 1, whole


def test_a_workers_own_state_resumes_only_with_its_batch_size(path, loader_state):
    dataset = LMDBIterableDataset(path, **OPTIONS)
    dataset.load_state_dict({**worker_states(loader_state)[0], "num_workers": 1})  # a main-process stream
    with pytest.raises(ValueError, match=f"saved with batch_size={BATCH}, the DataLoader now fetches batches of 4: "
                                         "resume a worker's own state with the same batch size"):
        next(iter(DataLoader(dataset, batch_size=4)))


def test_worker_states_of_different_passes_do_not_merge(loader_state):
    first, second = worker_states(loader_state)
    snapshot = loader_state["_snapshot"]

    def loader_with(*states):
        workers = {f"w{i}": {**worker, "dataset_state": state}
                   for i, (worker, state) in enumerate(zip(snapshot["_worker_snapshots"].values(), states))}
        return {**loader_state, "_snapshot": {**snapshot, "_worker_snapshots": workers}}

    assert merged_worker_state(loader_with(first, second))["samples_consumed"] == 3 * BATCH
    for wrong in ({**second, "epoch": 1}, {**second, "resumed_from": [[3, 2]]}, {**second, "num_replicas": 2},
                  {**second, "piece_size": 4}):
        with pytest.raises(ValueError, match="the worker states are not of one pass of one rank's DataLoader"):
            merged_worker_state(loader_with(first, wrong))
    with pytest.raises(ValueError, match="not of one pass"):  # a worker's state is missing
        merged_worker_state(loader_with(first))
    with pytest.raises(ValueError, match="the loader state holds no worker states of LMDBIterableDataset"):
        merged_worker_state(loader_with(first, None))


class Wrapped(IterableDataset):
    """Another iterable over the dataset: DataLoader workers fetch from it, so the dataset cannot see the batch size."""

    def __init__(self, dataset: LMDBIterableDataset) -> None:
        self.dataset = dataset

    def __iter__(self):
        yield from self.dataset


def test_a_count_of_batches_that_are_not_the_ranks_order_is_refused(path):
    dataset = LMDBIterableDataset(path, **OPTIONS)
    loader = DataLoader(Wrapped(dataset), batch_size=BATCH, num_workers=2, multiprocessing_context="fork")
    batches = iter(loader)
    next(batches)
    with pytest.raises(ValueError, match=r"read by 2 DataLoader workers in pieces of chunk_size=4 .*pass "
                                         r"batch_size=<the DataLoader's> to LMDBIterableDataset"):
        dataset.state_dict(samples_consumed=BATCH)
    assert dataset.state_dict(samples_consumed=0)["samples_consumed"] == 0  # the pass's ends are still positions
    assert dataset.state_dict(samples_consumed=24)["epoch"] == 0
    del batches
    given = LMDBIterableDataset(path, **OPTIONS, batch_size=BATCH)  # the fix: pieces are the DataLoader's batches
    next(iter(DataLoader(Wrapped(given), batch_size=BATCH, num_workers=2, multiprocessing_context="fork")))
    assert given.state_dict(samples_consumed=BATCH)["samples_consumed"] == BATCH
