"""The safe decoders of legacy values: pickle parser, msgpack(-numpy), Caffe Datum.

Real writers build the inputs (``pickle.dumps`` at protocols 2-5, ``msgpack`` with
msgpack-numpy's encoder); malicious pickles prove that nothing in a value is ever run.
"""

from __future__ import annotations

import copyreg
import os
import pickle

import msgpack
import msgpack_numpy
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from legacy_writers import RunsCommand
from support import PROPERTY

from lmdb_dataset.sources import caffe, msgpack_values, safe_pickle
from lmdb_dataset.sources.datapoint import image_and_label
from lmdb_dataset.sources.errors import UnsupportedValueError

PROTOCOLS = [2, 3, 4, 5]
JPEG_LIKE = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3


def assert_same(got, want) -> None:
    """Equal values of equal types (numpy scalars compare as the Python numbers the parser returns)."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    elif isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    elif isinstance(want, np.generic):
        assert got == want.item() and type(got) is type(want.item())
    else:
        assert got == want and type(got) is type(want)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("value", [
    (JPEG_LIKE, 7),  # folder2lmdb
    [np.frombuffer(JPEG_LIKE, dtype=np.uint8), 3],  # tensorpack BinaryILSVRC12 / cjsg jpeg mode
    [np.arange(2 * 5 * 3, dtype=np.uint8).reshape(3, 5, 2), np.int64(4)],  # cjsg numpy mode, numpy label
    [np.asfortranarray(np.arange(6, dtype="<i4").reshape(2, 3)), 1.5, None, True, "text", b""],
    [b"\x00" * 300, -5, 2**40, -(2**70)],
], ids=["bytes-int", "array-int", "chw-npint", "fortran-misc", "bigints"])
def test_pickles_of_real_writers_parse_to_what_pickle_loads_returns(value, protocol: int) -> None:
    data = pickle.dumps(value, protocol=protocol)
    assert_same(safe_pickle.loads(data), pickle.loads(data))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_array_referenced_twice_is_one_array(protocol: int) -> None:
    array = np.arange(5, dtype=np.uint8)
    first, second = safe_pickle.loads(pickle.dumps([array, array], protocol=protocol))
    assert first is second
    np.testing.assert_array_equal(first, array)


def test_parsed_arrays_are_fresh_writable_copies() -> None:
    data = pickle.dumps([np.zeros(4, np.uint8), 1], protocol=5)
    array = safe_pickle.loads(data)[0]
    assert array.flags.writeable  # a copy, not a read-only view of the record's bytes


leaves = st.one_of(st.binary(max_size=40), st.integers(-(2**70), 2**70), st.booleans(), st.none(),
                   st.text(max_size=10), st.floats(allow_nan=False),
                   st.binary(max_size=30).map(lambda b: np.frombuffer(b, dtype=np.uint8).copy()))
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.lists(inner, max_size=4).map(tuple)), max_leaves=12)


@PROPERTY
@given(value=values, protocol=st.sampled_from(PROTOCOLS))
def test_property_parser_agrees_with_pickle_on_plain_data(value, protocol: int) -> None:
    assert_same(safe_pickle.loads(pickle.dumps(value, protocol=protocol)), value)


@PROPERTY
@given(value=values, protocol=st.sampled_from(PROTOCOLS), data=st.data())
def test_property_mutated_pickles_parse_or_raise_the_module_error(value, protocol: int, data) -> None:
    blob = bytearray(pickle.dumps(value, protocol=protocol))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(blob)))
    try:
        safe_pickle.loads(bytes(blob[:cut]))
    except UnsupportedValueError:
        pass


@PROPERTY
@given(blob=st.binary(max_size=200))
def test_property_random_bytes_parse_or_raise_the_module_error(blob: bytes) -> None:
    for decode in (safe_pickle.loads, msgpack_values.loads, caffe.parse_datum):
        try:
            decode(blob)
        except UnsupportedValueError:
            pass


def malicious_pickles(marker: str) -> dict[str, bytes]:
    """Pickles that run a command when unpickled, each in a different disguise."""
    evil = RunsCommand(marker)
    cases = {f"reduce-p{p}": pickle.dumps((JPEG_LIKE, evil), protocol=p) for p in PROTOCOLS}
    cases["object-array"] = pickle.dumps([np.array([evil, 1], dtype=object), 0], protocol=2)
    copyreg.add_extension(os.system.__module__, "system", 0x7A)
    try:
        cases["ext1"] = pickle.dumps((JPEG_LIKE, evil), protocol=2)
    finally:
        copyreg.remove_extension(os.system.__module__, "system", 0x7A)
    assert b"\x82\x7a" in cases["ext1"]  # EXT1 0x7a: a bypass of find_class-based allowlists
    # A numpy "gadget": _reconstruct called on os.system's arguments instead of (ndarray, (0,), b'b').
    cases["numpy-gadget"] = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cposix\nsystem\nq\x01"
                             + b"X" + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode()
                             + b"\x85q\x02R.")
    cases["dotted-name"] = b"\x80\x04\x8c\x05numpy\x8c\x16core.multiarray.system\x93)R."
    return cases


def test_malicious_pickles_never_run_and_name_the_record(tmp_path) -> None:
    marker = tmp_path / "pwned"
    cases = malicious_pickles(str(marker))
    pickle.loads(cases["reduce-p2"])  # the payload works when actually unpickled ...
    assert marker.exists()
    marker.unlink()
    for name, data in cases.items():
        with pytest.raises(UnsupportedValueError, match=r"record '00000042'.*refused") as caught:
            safe_pickle.loads(data, where="record '00000042'")
        assert not marker.exists(), name  # ... and never when parsed
        assert "nothing was executed" in str(caught.value)


@pytest.mark.parametrize("data, reason", [
    (b"\x80\x02K\x01r\xff\xff\xff\x7f.", "memo index 2147483647 skips ahead"),  # huge LONG_BINPUT
    (b"\x80\x02" + b"(" * 100 + b".", "deeper than 16"),
    (b"\x80\x02K\x01" + b"\x85" * 40 + b".", "deeper than 16"),
    (b"\x80\x02]q\x00h\x00a.", "refers to itself"),
    (b"\x80\x02}.", r"opcode b'\}'"),
    (b"\x80\x02cnumpy\ndtype\nX\x01\x00\x00\x00O\x89\x88\x87R.", "'O' is not a plain numeric dtype"),
    (b"\x80\x02B\xff\xff\xff\x00.", "truncated"),
    (b"K\x01.", "no PROTO"),
    (b"\x80\x02K\x01K\x02.", "unbalanced"),
])
def test_refused_shapes_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(UnsupportedValueError, match=reason):
        safe_pickle.loads(data)


def test_shared_references_cost_their_size_not_their_expansion() -> None:
    """A 'billion laughs' pickle: 15 levels of lists holding the level below 50 times."""
    level = [b"x"]
    for _ in range(15):
        level = [level] * 50
    value = safe_pickle.loads(pickle.dumps(level, protocol=4))
    assert len(value) == 50 and value[0] is value[1]


@pytest.mark.parametrize("use_bin_type", [True, False], ids=["bin", "old-raw"])
def test_msgpack_numpy_values_decode_without_its_hooks(use_bin_type: bool) -> None:
    array = np.frombuffer(JPEG_LIKE, dtype=np.uint8)
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    data = msgpack.packb([array, 3, pixels, np.int64(9)], default=msgpack_numpy.encode, use_bin_type=use_bin_type)
    got = msgpack_values.loads(data)
    assert_same(got, [array, 3, pixels, 9])


def test_msgpack_object_arrays_and_ext_types_are_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = np.array([RunsCommand(str(marker))], dtype=object)
    data = msgpack.packb([evil, 0], default=msgpack_numpy.encode, use_bin_type=True)
    with pytest.raises(UnsupportedValueError, match="kind 'O'.*object arrays are refused"):
        msgpack_values.loads(data, where="record '7'")
    assert not marker.exists()
    with pytest.raises(UnsupportedValueError, match="ExtType"):
        msgpack_values.loads(msgpack.packb([msgpack.ExtType(5, b"xx"), 1]))


def test_caffe_raw_datum_byte_layout_is_planar_bgr() -> None:
    """A raw 2x3 colour datum, bytes laid out as convert_imageset writes them."""
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    planar_bgr = rgb[:, :, ::-1].transpose(2, 0, 1).tobytes()
    value = b"\x08\x03\x10\x02\x18\x03\x22\x12" + planar_bgr + b"\x28\x05\x38\x00"
    datum = caffe.parse_datum(value)
    assert (datum.channels, datum.height, datum.width, datum.label, datum.encoded) == (3, 2, 3, 5, False)
    np.testing.assert_array_equal(datum.image(), rgb)


def test_caffe_encoded_datum_keeps_the_file_bytes() -> None:
    length = len(JPEG_LIKE)
    varint = bytes([length & 0x7F | 0x80, length >> 7])
    datum = caffe.parse_datum(b"\x22" + varint + JPEG_LIKE + b"\x28\xe7\x07\x38\x01")
    assert datum.image() == JPEG_LIKE and datum.label == 999 and datum.encoded


@pytest.mark.parametrize("value, reason", [
    (b"\x08\x03\x10\x02\x18\x03\x22\x05abcde\x28\x01", "holds 5 bytes of pixels"),
    (b"\x35\x00\x00\x80\x3f", "float_data"),
    (b"\x22\x10abc", "runs past"),
    (b"\x48\x01", "field 9"),
    (b"\x28", "truncated"),
])
def test_caffe_bad_datums_say_why(value: bytes, reason: str) -> None:
    with pytest.raises(UnsupportedValueError, match=reason):
        caffe.parse_datum(value, where="record '00000001_a.jpg'").image()


@pytest.mark.parametrize("value, expected", [
    ((JPEG_LIKE, 2), (JPEG_LIKE, 2)),
    ([np.frombuffer(JPEG_LIKE, np.uint8), np.array([4])], (JPEG_LIKE, 4)),
])
def test_datapoints_give_file_bytes_and_label(value, expected) -> None:
    assert image_and_label(value, where="x") == expected


def test_datapoints_with_chw_pixels_become_hwc() -> None:
    chw = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    image, label = image_and_label([chw, 1], where="x")
    np.testing.assert_array_equal(image, chw.transpose(1, 2, 0))


@pytest.mark.parametrize("value, reason", [
    (b"abc", "expected an \\(image, label\\) pair"),
    ((np.zeros(3, np.float32), 1), "float32"),
    ((b"x", "cat"), "label is a str"),
    ((b"x", -1), "label -1 is negative"),
    ((b"x", 2**31), r"label 2147483648 is outside 0..2\*\*31-1"),
    ((np.zeros((4, 5, 6), np.uint8), 1), "neither HxWxC"),
])
def test_datapoints_of_other_shapes_are_refused(value, reason: str) -> None:
    with pytest.raises(UnsupportedValueError, match=reason):
        image_and_label(value, where="record '3'")


@PROPERTY
@given(height=st.integers(1, 300), width=st.integers(1, 300), channels=st.sampled_from([1, 3]),
       label=st.integers(0, 2**31 - 1), seed=st.integers(0, 2**32 - 1))
def test_property_raw_caffe_datums_give_back_the_rgb_pixels(height, width, channels, label, seed) -> None:
    from legacy_writers import caffe_datum

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    datum = caffe.parse_datum(caffe_datum(label=label, pixels=pixels))
    assert datum.label == label and (datum.channels, datum.height, datum.width) == (channels, height, width)
    np.testing.assert_array_equal(datum.image(), pixels)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pickles_written_by_numpy_1_name_numpy_core(protocol: int) -> None:
    """numpy < 2 wrote ``numpy.core.*`` where numpy 2 writes ``numpy._core.*``: both parse the same."""
    value = [np.frombuffer(JPEG_LIKE, dtype=np.uint8), np.int64(3)]
    data = pickle.dumps(value, protocol=protocol)
    for module in (b"multiarray", b"numeric"):
        new, old = b"numpy._core." + module, b"numpy.core." + module
        data = data.replace(bytes([0x8C, len(new)]) + new, bytes([0x8C, len(old)]) + old)  # protocol 4-5
        data = data.replace(b"c" + new + b"\n", b"c" + old + b"\n")  # protocol 2-3 GLOBAL
    assert b"numpy._core" not in data and b"numpy.core" in data
    assert_same(safe_pickle.loads(data), value)
