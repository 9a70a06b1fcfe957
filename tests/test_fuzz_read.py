"""Property tests: damaged record headers and fuzzed ``meta/info`` JSON never give a wrong sample silently."""

from __future__ import annotations

import json
import shutil
import warnings

import lmdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import PROPERTY

from lmdb_dataset import CorruptRecordError, LMDBDatasetError, LMDBImageDataset, verify_dataset
from lmdb_dataset.decode.image import pixels_of
from lmdb_dataset.storage import format as fmt
from lmdb_dataset.storage.environment import environments, load_metadata
from lmdb_dataset.storage.reader import RecordReader, record_pixels
from lmdb_dataset.tools.inspection import summarize

byte_damage = st.lists(st.tuples(st.integers(0, fmt.HEADER_SIZE - 1), st.integers(1, 255)), min_size=1, max_size=1)
"""One header byte XOR-ed with a non-zero mask: what a flipped bit or a torn write does to a header."""


@pytest.fixture(scope="module", params=["encoded", "raw"])
def stored(request, converted):
    """(metadata, [(value, pixels, label)]) of a dataset of each storage kind."""
    meta = load_metadata(converted(storage=request.param))
    reader = RecordReader(meta)
    values = [bytes(v) for _, v in reader.values(range(meta.info.num_records))]
    reader.close()
    return meta, [(v, *record_pixels(meta, i, v, decode=pixels_of)) for i, v in enumerate(values)]


@PROPERTY
@given(index=st.integers(0, 28), damage=byte_damage)
def test_damaged_header_raises_or_reads_the_very_same_sample(stored, index, damage):
    meta, records = stored
    value, pixels, label = records[index]
    damaged = bytearray(value)
    for position, mask in damage:
        damaged[position] ^= mask
    try:
        got, got_label = record_pixels(meta, index, bytes(damaged), decode=pixels_of)
    except CorruptRecordError as exc:
        assert exc.index == index and f"record {index}" in str(exc)
        return
    # Only bytes the reader does not use may change without an error: the reserved byte and,
    # for encoded images, the informative height/width (pixels come from the payload).
    assert got_label == label and np.array_equal(got, pixels)
    assert {p for p, _ in damage} <= ({3} | (set(range(16, 24)) if meta.info.storage == "encoded" else set()))


@PROPERTY
@given(index=st.integers(0, 28), value=st.binary(max_size=400))
def test_arbitrary_record_bytes_raise_corrupt_record_error(stored, index, value):
    meta, _ = stored
    with pytest.raises(CorruptRecordError, match=f"record {index}"):
        record_pixels(meta, index, value, decode=pixels_of)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4),
                           max_leaves=8)


@pytest.fixture(scope="module")
def info_copy(converted, tmp_path_factory):
    """A writable copy of a dataset, its original info dict and its samples (label, pixel sum)."""
    path = shutil.copytree(converted(), tmp_path_factory.mktemp("fuzz") / "ds")
    reference = LMDBImageDataset(path, output="numpy")
    samples = [(label, int(image.sum())) for image, label in (reference[i] for i in range(len(reference)))]
    info = json.loads(bytes(summarize(path).info.to_json()))
    return path, info, samples


def _store_info(path, raw: bytes) -> None:
    environments.release(path)
    env = lmdb.open(str(path), max_dbs=2, sync=False)
    meta_db = env.open_db(fmt.META_DB)
    with env.begin(write=True) as txn:
        txn.put(fmt.INFO_KEY, raw, db=meta_db)
    env.close()


@settings(PROPERTY, max_examples=100)
@given(data=st.data())
def test_fuzzed_info_json_is_refused_cleanly_or_changes_no_sample(info_copy, data):
    path, original, samples = info_copy
    mutated = dict(original)
    kind = data.draw(st.sampled_from(["field", "drop", "bytes"]))
    if kind == "field":
        mutated[data.draw(st.sampled_from(sorted(original)) | st.text(max_size=8))] = data.draw(json_values)
        raw = json.dumps(mutated).encode()
    elif kind == "drop":
        mutated.pop(data.draw(st.sampled_from(sorted(original))))
        raw = json.dumps(mutated).encode()
    else:
        raw = data.draw(st.binary(max_size=200))
    _store_info(path, raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the write makes readers ignore the offset table
        for inspect in (summarize, lambda p: verify_dataset(p, progress=False)):
            try:
                inspect(path)
            except LMDBDatasetError:
                pass
        try:
            ds = LMDBImageDataset(path, output="numpy")
        except LMDBDatasetError:
            return
        assert len(ds) == len(samples)
        assert [(label, int(image.sum())) for image, label in (ds[i] for i in range(len(ds)))] == samples


@pytest.mark.parametrize("field, value", [("num_records", 0), ("num_records", 30), ("num_records", 2**40),
                                          ("classes", "abc"),
                                          ("storage", "jpeg"), ("complete", 1), ("skipped", [3])])
def test_inconsistent_info_is_reported_by_verify_and_refused_by_readers(info_copy, field, value):
    path, original, _ = info_copy
    _store_info(path, json.dumps({**original, field: value}).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(LMDBDatasetError, match="invalid value|label table holds|label"):
            LMDBImageDataset(path)
        try:
            report = verify_dataset(path, progress=False)
        except LMDBDatasetError as exc:
            assert "invalid value" in str(exc)
        else:
            assert not report.ok
            if value == 2**40:  # a damaged count is one problem, not 2**40 missing records (found by CI's fuzz run)
                assert len(report.bad) == 0 and any("the data file holds" in p for p in report.problems)
