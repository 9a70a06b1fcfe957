"""read.batch_ring: worker batches in reused shared memory, never written over while in use."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from lmdb_dataset.read.batch_ring import BatchRing, RingBatch

SHAPE = (3, 5, 4)
START_METHODS = ["fork", "spawn", "forkserver"]


class Numbered(Dataset):
    """Image ``i`` is filled with ``i % 251``; its label is ``i``."""

    def __init__(self, length: int, shape: tuple[int, ...] = SHAPE) -> None:
        self.length, self.shape = length, shape

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full(self.shape, index % 251, dtype=torch.uint8), index


def _check(batch: RingBatch) -> None:
    """The batch's images still hold what its labels say they should."""
    expected = torch.stack([torch.full(SHAPE, int(i) % 251, dtype=torch.uint8) for i in batch.labels])
    assert torch.equal(batch.images, expected), batch.labels.tolist()


def _loader(length: int, ring: BatchRing, context: str, **options) -> DataLoader:
    return DataLoader(Numbered(length), batch_size=ring.batch_size, num_workers=2, collate_fn=ring,
                      multiprocessing_context=context, **options)


@pytest.mark.parametrize("context", START_METHODS)
def test_released_batches_reuse_the_slots_and_arrive_intact(context):
    ring = BatchRing(8, SHAPE, slots=3)
    slots, labels = [], []
    loader = _loader(45, ring, context, persistent_workers=True, prefetch_factor=2)
    for _epoch in range(2):
        for batch in loader:
            _check(batch)
            slots.append(batch.slot)
            labels += batch.labels.tolist()
            ring.release(batch)
    assert sorted(labels) == sorted(list(range(45)) * 2)
    assert all(0 <= slot < 3 for slot in slots), slots  # prefetch 2 + the batch in hand: no fallback
    assert len(ring._mapped) == 2  # one segment per worker, kept mapped by the main process


@pytest.mark.parametrize("context", START_METHODS)
def test_batches_kept_unreleased_are_never_written_over(context):
    ring = BatchRing(4, SHAPE, slots=2)
    kept = list(_loader(40, ring, context))  # 10 batches, 5 per worker, none given back
    for batch in kept:
        _check(batch)
    assert [batch.slot for batch in kept].count(-1) == 6  # each worker's two slots, then default_collate's way
    assert sorted(label for batch in kept for label in batch.labels.tolist()) == list(range(40))


def test_the_slot_state_is_given_back_once():
    ring = BatchRing(4, SHAPE, slots=2)
    batch = next(iter(_loader(4, ring, "fork")))
    state = torch.empty(0, dtype=torch.uint8).set_(batch.images.untyped_storage())[:2]
    assert batch.slot == 0 and state.tolist() == [1, 0]
    ring.release(batch)
    assert batch.slot == -1 and state.tolist() == [0, 0]
    ring.release(batch)  # a second release changes nothing
    assert state.tolist() == [0, 0]


def test_other_shapes_dtypes_and_the_main_process_collate_as_default_collate():
    ring = BatchRing(4, SHAPE, slots=2)
    samples = [(torch.full(SHAPE, i, dtype=torch.uint8), i) for i in range(3)]
    batch = ring(samples)  # no worker: nothing to share
    images, labels = batch
    assert batch.slot == -1 and torch.equal(images, default_collate(samples)[0]) and labels.tolist() == [0, 1, 2]
    other = DataLoader(Numbered(8, shape=(3, 4, 4)), batch_size=4, num_workers=1, collate_fn=ring)
    assert [batch.slot for batch in other] == [-1, -1]


def test_a_short_last_batch_uses_the_ring_too():
    ring = BatchRing(8, SHAPE, slots=2)
    batches = list(_loader(10, ring, "fork"))  # 8 (worker 0), then 2 (worker 1)
    assert [len(batch.labels) for batch in batches] == [8, 2] and [batch.slot for batch in batches] == [0, 0]
    for batch in batches:
        _check(batch)


def test_a_worker_without_room_for_its_segment_collates_as_default_collate(monkeypatch):
    ring = BatchRing(4, SHAPE, slots=2)

    def no_room(self):
        raise RuntimeError("unable to write to file </torch_1>: No space left on device")

    monkeypatch.setattr(torch.Tensor, "share_memory_", no_room)
    batches = list(_loader(16, ring, "fork"))
    assert [batch.slot for batch in batches] == [-1] * 4
    for batch in batches:
        _check(batch)


def test_the_ring_pickles_its_settings_only():
    ring = BatchRing(4, SHAPE, slots=2)
    batch = next(iter(_loader(4, ring, "fork")))
    ring.release(batch)
    clone = pickle.loads(pickle.dumps(ring))
    assert (clone.batch_size, clone.image_shape, clone.slots) == (4, SHAPE, 2) and not clone._mapped
    with pytest.raises(ValueError, match="slots=0"):
        BatchRing(4, SHAPE, slots=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs CUDA")
def test_pinning_copies_the_batch_and_gives_the_slot_back():
    ring = BatchRing(4, SHAPE, slots=1)
    batches = list(_loader(16, ring, "fork", pin_memory=True))
    assert all(batch.slot == -1 and batch.images.is_pinned() for batch in batches)
    for batch in batches:
        _check(batch)
