"""Elastic resume: a mid-epoch state saved by any rank loads into another world size and num_workers.

The new ranks share exactly the samples of the epoch not yet consumed (each once, plus
``DistributedSampler``'s padding of that rest), with equal lengths, and the next epoch is
whole. In one process with explicit ranks and real DataLoaders (every world change, every
reader), and with real processes on gloo process groups (4 ranks, then 3).
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from pathlib import Path

import pytest
from support import gloo_rank, pixel_checksum, run_ranks
from torch.utils.data import DataLoader

from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset, LMDBLoader
from lmdb_dataset.order.maths import rank_length

BATCH = 3
N = 32  # records of the fixture dataset


def _rank_reader(path, kind: str, num_replicas: int, rank: int, num_workers: int):
    """``(resumable, loader)`` of one rank: the object holding the epoch, and what the loop iterates."""
    workers = {"num_workers": num_workers, "multiprocessing_context": "fork" if num_workers else None}
    common = {"seed": 4, "num_replicas": num_replicas, "rank": rank}
    if kind == "loader":
        loader = LMDBLoader(path, batch_size=BATCH, size=16, train=False, shuffle=True, reader="chunk",
                            drop_last=False, reader_options={"chunk_size": 4, "pool_size": 8}, **common, **workers)
        return loader, loader
    if kind == "sampler":
        dataset = LMDBImageDataset(path, transform=pixel_checksum, output="numpy")
        sampler = ChunkShuffleSampler(dataset, chunk_size=4, pool_size=8, **common)
        return sampler, DataLoader(dataset, batch_size=BATCH, sampler=sampler, **workers)
    dataset = LMDBIterableDataset(path, transform=pixel_checksum, output="numpy", chunk_size=4, pool_size=8, **common)
    return dataset, DataLoader(dataset, batch_size=BATCH, **workers)


def _identities(loader, checksums, steps: int | None = None) -> list[int]:
    seen = []
    for step, (images, labels) in enumerate(loader):
        for image, label in zip(images, labels):
            seen.append(checksums[int(image)] if image.ndim == 0 else (int(label), _crc(image)))
        if steps is not None and step + 1 == steps:
            break
    return seen


def _crc(image) -> int:
    return zlib.crc32(image.float().numpy().tobytes())


def _state(resumable, loader, consumed: int) -> dict:
    return loader.state_dict() if isinstance(loader, LMDBLoader) else resumable.state_dict(samples_consumed=consumed)


@pytest.mark.parametrize("kind", ["sampler", "iterable", "loader"])
@pytest.mark.parametrize("before, after, steps, workers_after",
                         [(4, 3, 1, 0), (2, 5, 3, 2), (3, 1, 2, 0), (4, 4, 2, 3)])
def test_state_of_any_rank_resumes_in_another_world_with_each_unconsumed_sample_once(
        dataset_path, checksums, kind, before, after, steps, workers_after):
    everything = _identities(_rank_reader(dataset_path, kind, 1, 0, 0)[1], checksums)  # one rank, the whole epoch
    consumed, states = [], []
    for rank in range(before):  # ranks step in lockstep: each consumed `steps` batches
        resumable, loader = _rank_reader(dataset_path, kind, before, rank, 0)
        seen = _identities(loader, checksums, steps)
        consumed += seen
        states.append(_state(resumable, loader, len(seen)))
    assert all(state == states[0] for state in states)  # any rank's state is the rank-independent state
    shares = []
    for rank in range(after):
        resumable, loader = _rank_reader(dataset_path, kind, after, rank, workers_after)
        loader.load_state_dict(states[rank % before]) if kind == "loader" else resumable.load_state_dict(
            states[rank % before])
        shares.append(_identities(loader, checksums))
    assert len({len(share) for share in shares}) == 1  # equal lengths: DDP steps in lockstep
    rest = Counter(identity for share in shares for identity in share)
    padding_before = rank_length(N, before, False) * before - N  # the first world's padding repeats
    padding_after = sum(rest.values()) - (N + padding_before - len(consumed))  # the new world's
    assert 0 <= padding_after < after
    delivered = Counter(consumed) + rest
    assert set(delivered) == set(everything)  # nothing lost
    assert sum(delivered.values()) - len(delivered) == padding_before + padding_after  # nothing else twice

    # The next epoch is whole again, dealt over the new world.
    again = []
    for rank in range(after):
        resumable, loader = _rank_reader(dataset_path, kind, after, rank, 0)
        resumable.set_epoch(1)
        again.append(_identities(loader, checksums))
    assert {len(share) for share in again} == {rank_length(N, after, False)}
    if kind != "loader":
        assert {i for share in again for i in share} == set(range(N))


# --- real processes: 4 gloo ranks stop mid-epoch, 3 resume --------------------------------------------------


def _elastic_rank(rank: int, world_size: int, init_file: str, path: str, state_file: str, resume: bool,
                  out_dir: str) -> None:
    gloo_rank(rank, world_size, init_file, out_dir, lambda: _elastic_pass(rank, world_size, path, state_file, resume),
              60)


def _elastic_pass(rank: int, world_size: int, path: str, state_file: str, resume: bool) -> dict:
    result = {}
    for kind in ("sampler", "iterable"):
        # num_replicas and rank come from the process group.
        if kind == "sampler":
            dataset = LMDBImageDataset(path, transform=pixel_checksum, output="numpy")
            resumable = ChunkShuffleSampler(dataset, chunk_size=4, pool_size=8, seed=4)
            loader = DataLoader(dataset, batch_size=BATCH, sampler=resumable)
        else:
            resumable = LMDBIterableDataset(path, transform=pixel_checksum, output="numpy", chunk_size=4,
                                            pool_size=8, seed=4)
            loader = DataLoader(resumable, batch_size=BATCH)
        state_path = Path(f"{state_file}.{kind}")
        if resume:  # the restarted job: every rank loads the state one rank saved
            resumable.load_state_dict(json.loads(state_path.read_text()))
            resumable.set_epoch(0)
            result[kind] = [int(c) for images, _ in loader for c in images]
        else:
            seen = []
            for step, (images, _) in enumerate(loader):
                seen += [int(c) for c in images]
                if step == 1:
                    break
            if rank == world_size - 1:  # the last rank writes the checkpoint
                state_path.write_text(json.dumps(resumable.state_dict(samples_consumed=len(seen))))
            result[kind] = seen
    return result


def test_four_gloo_ranks_stop_mid_epoch_and_three_resume_with_exactly_the_rest(dataset_path, checksums,
                                                                               tmp_path):
    state_file = str(tmp_path / "checkpoint")
    results = {}
    for phase, world_size in (("before", 4), ("after", 3)):
        out_dir = tmp_path / phase
        out_dir.mkdir()
        args = (world_size, str(out_dir / "store"), str(dataset_path), state_file, phase == "after", str(out_dir))
        results[phase] = run_ranks(_elastic_rank, lambda rank, args=args: (rank, *args), world_size, out_dir, 240)
    for kind in ("sampler", "iterable"):
        consumed = [checksums[c] for r in results["before"] for c in r[kind]]
        shares = [[checksums[c] for c in r[kind]] for r in results["after"]]
        rest = [i for share in shares for i in share]
        assert len(consumed) == 4 * 2 * BATCH == len(set(consumed))  # 4 ranks x 2 batches of 3
        assert [len(share) for share in shares] == [3, 3, 3]  # 32 - 24 = 8 left: 3 ranks of 3, one repeat
        assert set(consumed) | set(rest) == set(range(N)) and not set(consumed) & set(rest)
        assert len(rest) - len(set(rest)) == 1
