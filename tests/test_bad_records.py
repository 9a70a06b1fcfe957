"""on_error="skip": a bad record is replaced by a fixed other record, reported once and counted, everywhere.

The damaged datasets here are copies of a converted one with real damage: a flipped payload
byte (bit rot: the CRC32 check fails), a failing or short ``pread`` (EIO, a truncated file),
a legacy LMDB value that does not parse.
"""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
from conftest import copy_dataset
from hypothesis import given
from hypothesis import strategies as st
from legacy_writers import poison, write_folder2lmdb
from support import PROPERTY, failing_pread, pixel_checksum, records_of
from torch.utils.data import DataLoader

from lmdb_dataset import (
    BadRecordWarning,
    ChunkShuffleSampler,
    CorruptRecordError,
    LegacyLMDBDataset,
    LMDBImageDataset,
    LMDBIterableDataset,
    LMDBLoader,
)
from lmdb_dataset.read.bad_records import MAX_REPLACEMENT_TRIES, replacement_candidates

BAD = 9  # the damaged record (= sample: the fixture dataset is stored in folder order)


@pytest.fixture(scope="module")
def rotten(dataset_path, tmp_path_factory):
    """A copy of the 32-record dataset with one payload byte of record ``BAD`` flipped."""
    path = copy_dataset(dataset_path, tmp_path_factory.mktemp("rotten") / "data.lmdb")
    offset, length = (int(v) for v in LMDBImageDataset(path)._meta.spans[BAD])
    with open(path / "data.mdb", "r+b") as file:
        file.seek(offset + length - 40)
        byte = file.read(1)
        file.seek(offset + length - 40)
        file.write(bytes([byte[0] ^ 0x10]))
    return path


def _replacement(count: int = 32) -> int:
    return next(replacement_candidates(BAD, count))


@PROPERTY
@given(record=st.integers(0, 10**6), count=st.integers(2, 10**6 + 1))
def test_replacement_candidates_are_other_records_fixed_by_the_record_alone(record, count):
    record %= count
    candidates = list(replacement_candidates(record, count))
    assert len(candidates) == MAX_REPLACEMENT_TRIES
    assert all(0 <= c < count and c != record for c in candidates)
    assert candidates == list(replacement_candidates(record, count))  # no state, no seed, no rank


def test_raise_is_the_default_and_names_the_record(rotten):
    with pytest.raises(CorruptRecordError, match=rf"record {BAD} \(source file '.+'\): CRC32 mismatch"):
        LMDBImageDataset(rotten, output="numpy")[BAD]


def test_skip_replaces_the_record_reports_it_once_and_counts_it(rotten, checksums):
    dataset = LMDBImageDataset(rotten, output="numpy", on_error="skip")
    with pytest.warns(BadRecordWarning, match=rf"record {BAD} \(source file '.+'\): CRC32 mismatch"):
        image, label = dataset[BAD]
    assert checksums[pixel_checksum(image)] == _replacement() and label == dataset.targets[_replacement()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once: the second read is silent
        assert pixel_checksum(dataset[BAD][0]) == pixel_checksum(image)
    report = dataset.skipped
    assert report.records == (BAD,) and report.reasons == ("damaged",) and report.replaced == 2
    assert len(LMDBImageDataset(rotten, on_error="skip").skipped) == 0  # per object


@pytest.mark.parametrize("failure, reason", [("eio", "unreadable"), ("short", "unreadable")])
def test_skip_replaces_a_record_whose_read_fails(dataset_path, checksums, monkeypatch, failure, reason):
    dataset = LMDBImageDataset(dataset_path, output="numpy", on_error="skip")
    failing_pread(monkeypatch, int(dataset._meta.spans[BAD][0]), failure)
    with pytest.warns(BadRecordWarning):
        batch = dataset.__getitems__(list(range(32)))  # one batched read: the reads go on after the bad one
    assert [checksums[pixel_checksum(image)] for image, _ in batch] == [
        _replacement() if i == BAD else i for i in range(32)]
    assert dataset.skipped.reasons == (reason,)


@pytest.mark.parametrize("reader", ["map", "iterable"])
@pytest.mark.parametrize("num_workers, context", [(0, None), (2, "fork"), (2, "forkserver")])
def test_skip_in_dataloader_workers_keeps_the_epoch_length_and_the_same_replacement(rotten, checksums, reader,
                                                                                    num_workers, context):
    options = {"transform": pixel_checksum, "output": "numpy", "on_error": "skip"}
    if reader == "map":
        dataset = LMDBImageDataset(rotten, **options)
        sampler = ChunkShuffleSampler(dataset, chunk_size=4, pool_size=8, seed=5)
        loader = DataLoader(dataset, batch_size=5, sampler=sampler, num_workers=num_workers,
                            multiprocessing_context=context)
    else:
        dataset = LMDBIterableDataset(rotten, chunk_size=4, pool_size=8, seed=5, **options)
        loader = DataLoader(dataset, batch_size=5, num_workers=num_workers, multiprocessing_context=context)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRecordWarning)  # raised in this process with 0 workers
        indices, labels = records_of(loader, checksums)
    expected = Counter(range(32))
    expected[BAD] -= 1
    expected[_replacement()] += 1
    assert len(indices) == 32 and Counter(indices) == expected  # one record stands in: length unchanged
    assert labels == dataset.targets[indices].tolist()
    assert dataset.skipped.records == (BAD,) and dataset.skipped.replaced == 1  # counted in the workers


def test_loader_skips_and_reports_on_the_loader(rotten):
    loader = LMDBLoader(rotten, batch_size=4, num_workers=2, size=32, train=True, on_error="skip",
                        multiprocessing_context="fork")
    with pytest.raises(CorruptRecordError, match=f"record {BAD}"):
        list(LMDBLoader(rotten, batch_size=4, num_workers=0, size=32, train=True))
    assert sum(len(labels) for _, labels in loader) == 32 and len(loader) == 8
    assert loader.skipped.records == (BAD,) and loader.skipped.reasons == ("damaged",)


def test_every_replacement_bad_too_raises_naming_the_record(rotten, monkeypatch):
    dataset = LMDBImageDataset(rotten, output="numpy", on_error="skip")
    monkeypatch.setattr(LMDBImageDataset, "_read_one", lambda self, record: (_ for _ in ()).throw(
        CorruptRecordError(f"record {record}: damaged too", index=record)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRecordWarning)
        with pytest.raises(CorruptRecordError, match=rf"record {BAD} .*{MAX_REPLACEMENT_TRIES} replacements"):
            dataset[BAD]


def test_legacy_lmdb_skip_replaces_a_value_that_does_not_parse(image_folder, tmp_path):
    path = write_folder2lmdb(image_folder(6, special=False), tmp_path / "legacy.lmdb", protocol=4)
    poison(path, b"2", b"not a pickle at all")  # folder2lmdb's keys are the indices
    strict = LegacyLMDBDataset(path, output="numpy")
    with pytest.raises(CorruptRecordError, match="record 2"):
        strict[2]
    fresh = LegacyLMDBDataset(path, output="numpy", on_error="skip")
    with pytest.warns(BadRecordWarning, match="record 2"):
        image, label = fresh[2]
    replacement = next(replacement_candidates(2, len(fresh)))
    assert (image == fresh[replacement][0]).all() and label == fresh[replacement][1]
    assert fresh.skipped.records == (2,)


def test_on_error_must_be_raise_or_skip(dataset_path):
    with pytest.raises(ValueError, match="on_error='ignore'"):
        LMDBImageDataset(dataset_path, on_error="ignore")
