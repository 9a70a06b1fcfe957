"""The record format: pure packing and unpacking, property-tested."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmdb_dataset.storage import format as fmt

labels = st.integers(min_value=-(2**63), max_value=2**63 - 1)
dims = st.integers(min_value=0, max_value=2**32 - 1)


@given(payload=st.binary(max_size=4096), label=labels, height=dims, width=dims)
def test_encoded_record_round_trips_header_and_payload(payload, label, height, width):
    value = fmt.encode_record(payload, kind=fmt.KIND_ENCODED, label=label, height=height, width=width, channels=3)
    header = fmt.decode_header(value)
    assert (header.kind, header.label, header.height, header.width, header.channels) == (
        fmt.KIND_ENCODED, label, height, width, 3)
    assert bytes(fmt.payload_of(value)) == payload
    assert header.crc32 == zlib.crc32(payload)
    assert fmt.payload_crc_matches(header, fmt.payload_of(value))


@given(h=st.integers(1, 12), w=st.integers(1, 12), c=st.sampled_from([1, 3]), label=labels, data=st.data())
def test_raw_record_round_trips_pixels(h, w, c, label, data):
    pixels = np.frombuffer(data.draw(st.binary(min_size=h * w * c, max_size=h * w * c)), np.uint8).reshape(h, w, c)
    value = fmt.encode_record(pixels.tobytes(), kind=fmt.KIND_RAW, label=label, height=h, width=w, channels=c)
    header = fmt.decode_header(value)
    restored = np.frombuffer(fmt.payload_of(value), np.uint8).reshape(header.height, header.width, header.channels)
    assert np.array_equal(restored, pixels)


@given(payload=st.binary(min_size=1, max_size=256), position=st.integers(0, 255), flip=st.integers(1, 255))
def test_any_payload_byte_flip_fails_the_crc(payload, position, flip):
    value = bytearray(fmt.encode_record(payload, kind=fmt.KIND_ENCODED, label=1, height=1, width=1, channels=3))
    value[fmt.HEADER_SIZE + position % len(payload)] ^= flip
    assert not fmt.payload_crc_matches(fmt.decode_header(value), fmt.payload_of(value))


def test_decode_header_rejects_short_unknown_version_kind_and_bad_raw_size():
    good = fmt.encode_record(b"x" * 12, kind=fmt.KIND_RAW, label=0, height=2, width=2, channels=3)
    with pytest.raises(ValueError, match="shorter"):
        fmt.decode_header(good[:10])
    with pytest.raises(ValueError, match="version"):
        fmt.decode_header(bytes([99]) + good[1:])
    with pytest.raises(ValueError, match="kind"):
        fmt.decode_header(good[:1] + bytes([7]) + good[2:])
    with pytest.raises(ValueError, match="raw payload"):
        fmt.decode_header(good[:-1])


@given(st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=50, unique=True))
def test_key_byte_order_equals_index_order(indices):
    assert sorted(indices) == [fmt.decode_key(k) for k in sorted(fmt.encode_key(i) for i in indices)]


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))),
                max_size=30))
def test_path_table_round_trips(paths):
    table = fmt.PathTable(fmt.encode_paths(paths), len(paths))
    assert len(table) == len(paths)
    assert [table[i] for i in range(len(paths))] == paths


def test_path_table_rejects_wrong_count():
    with pytest.raises(ValueError, match="holds 2 paths, expected 3"):
        fmt.PathTable(fmt.encode_paths(["a", "b"]), 3)


@given(st.lists(labels, max_size=100))
def test_labels_round_trip_as_int64(values):
    restored = fmt.decode_labels(fmt.encode_labels(np.array(values, dtype=np.int64)))
    assert restored.dtype == np.int64 and restored.tolist() == values


@settings(max_examples=30)
@given(st.lists(st.tuples(st.integers(0, 2**62), st.integers(0, 2**31)), max_size=50))
def test_spans_round_trip(pairs):
    spans = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    assert np.array_equal(fmt.decode_spans(fmt.encode_spans(spans)), spans)


@given(num_records=st.integers(0, 10**7), classes=st.lists(st.text(max_size=20), max_size=5),
       complete=st.booleans(), storage=st.sampled_from(["encoded", "raw"]))
def test_dataset_info_json_round_trips(num_records, classes, complete, storage):
    info = fmt.DatasetInfo(num_records=num_records, storage=storage, classes=classes, complete=complete,
                           skipped=[{"path": "a/b.jpg", "error": "truncated"}], conversion={"next_source": 3})
    assert fmt.DatasetInfo.from_json(info.to_json()) == info


def test_dataset_info_rejects_foreign_json_and_future_versions():
    with pytest.raises(ValueError, match="format marker"):
        fmt.DatasetInfo.from_json(b'{"num_records": 3}')
    with pytest.raises(ValueError, match="not valid JSON"):
        fmt.DatasetInfo.from_json(b"\x80not json")
    future = fmt.DatasetInfo().to_json().replace(b'"format_version": 1', b'"format_version": 2')
    with pytest.raises(ValueError, match="format version 2 is not supported"):
        fmt.DatasetInfo.from_json(future)


@given(data=st.data(), n=st.integers(0, 300))
def test_order_table_round_trips_and_inverts(data, n):
    record_of_sample = np.array(data.draw(st.permutations(range(n))), dtype=np.int64)
    decoded, file_order = fmt.decode_order(fmt.encode_order(record_of_sample), n)
    assert decoded.tolist() == record_of_sample.tolist()
    assert file_order[record_of_sample].tolist() == list(range(n))
    assert record_of_sample[file_order].tolist() == list(range(n))
    assert fmt.invert_order(file_order).tolist() == record_of_sample.tolist()


@given(values=st.lists(st.integers(-3, 12), min_size=1, max_size=10))
def test_order_table_that_is_not_a_permutation_is_refused(values):
    if sorted(values) == list(range(len(values))):
        return
    with pytest.raises(ValueError, match="not a permutation"):
        fmt.decode_order(fmt.encode_labels(np.array(values)), len(values))
    with pytest.raises(ValueError, match="bytes, expected"):
        fmt.decode_order(fmt.encode_labels(np.array(values)), len(values) + 1)


@given(payload=st.binary(max_size=70_000), start=st.integers(0, 69_999))
@settings(max_examples=60)
def test_the_records_crc32_is_zlibs_for_bytes_and_views(payload, start):
    assert fmt.crc32(payload) == zlib.crc32(payload)
    view = memoryview(payload)[start:]  # a payload is a view into the record's value
    assert fmt.crc32(view) == zlib.crc32(view)


def test_the_records_crc32_is_isals_where_isal_is_installed():
    """setup.cfg requires isal on the platforms it has wheels for: a silent fallback to zlib's 13x slower CRC
    must show up here."""
    isal_zlib = pytest.importorskip("isal.isal_zlib")
    assert fmt.crc32 is isal_zlib.crc32
