"""Augmentation draws: every rank its own, every epoch new, reproducible from the seed alone.

The crops and flips are read off the device-decoding path's batches (``decode="device"``
ships each JPEG's drawn box to the main process), on images that all have one size, so
that equal draws would give equal boxes: the stock DataLoader's per-worker seeding, the
same on every rank, gave every rank's batches the same multiset of boxes.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmdb_dataset import LMDBLoader, LMDBWriter
from lmdb_dataset.order.draws import draw_seed


@pytest.fixture(scope="module")
def same_size(tmp_path_factory) -> Path:
    """48 real-content JPEGs of one size (120 x 90), three labels."""
    path = tmp_path_factory.mktemp("draws") / "data.lmdb"
    rng = np.random.default_rng(0)
    with LMDBWriter(path) as writer:
        for i in range(48):
            pixels = (rng.random((90, 120, 3)) * 40 + np.linspace(0, 200, 120)[None, :, None]).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
            writer.add(buffer.getvalue(), i % 3)
    return path


def _boxes(path: Path, *, epoch: int = 0, **options) -> dict[int, tuple[int, ...]]:
    """record -> (top, left, height, width, flip) drawn for it in one pass of the loader's workers."""
    loader = LMDBLoader(path, batch_size=4, size=16, train=True, decode="device", reader="random",
                        multiprocessing_context="fork", **options)
    loader.set_epoch(epoch)
    boxes = {}
    for batch in loader.dataloader:  # the workers' batches: JPEG bytes and their drawn boxes, undecoded
        for record, geometry in zip(batch.records.tolist(), batch.geometry.tolist()):
            boxes[record] = tuple(geometry[2:])
    return boxes


def test_two_ranks_seeded_alike_draw_different_crops_and_flips(same_size):
    ranks = [_boxes(same_size, num_replicas=2, rank=rank, num_workers=2, seed=7) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 24
    shared = Counter(ranks[0].values()) & Counter(ranks[1].values())
    assert sum(shared.values()) <= 2  # chance coincidences only, not the same multiset


def test_draws_depend_on_seed_epoch_and_record_only(same_size):
    whole = _boxes(same_size, num_workers=0, seed=7)
    split = {**_boxes(same_size, num_replicas=2, rank=0, num_workers=2, seed=7),
             **_boxes(same_size, num_replicas=2, rank=1, num_workers=3, seed=7)}
    assert split == whole  # the same box for a record whatever the ranks and workers
    next_epoch = _boxes(same_size, num_workers=2, seed=7, epoch=1)
    assert sum(next_epoch[r] == whole[r] for r in whole) <= 2  # an epoch never repeats the last one's
    other_seed = _boxes(same_size, num_workers=2, seed=8)
    assert sum(other_seed[r] == whole[r] for r in whole) <= 2


def test_resumed_epoch_draws_the_uninterrupted_crops(same_size):
    loader = LMDBLoader(same_size, batch_size=4, size=16, train=True, num_workers=2, seed=3,
                        multiprocessing_context="fork")
    whole = [image for images, _ in loader for image in images]
    batches = iter(loader)
    seen = [image for _ in range(3) for image in next(batches)[0]]
    resumed = LMDBLoader(same_size, batch_size=4, size=16, train=True, num_workers=0, seed=3)
    resumed.load_state_dict(loader.state_dict())
    rest = [image for images, _ in resumed for image in images]
    assert len(seen + rest) == len(whole) and all((a == b).all() for a, b in zip(seen + rest, whole))


def test_draw_seed_separates_neighbouring_keys():
    seeds = {draw_seed(seed, epoch, record) for seed in range(4) for epoch in range(4) for record in range(256)}
    assert len(seeds) == 4 * 4 * 256 and all(0 <= s < 2**64 for s in seeds)
