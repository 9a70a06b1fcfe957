"""Region decoding (the optional libjpeg-turbo extension): exact geometry, same draws, fallbacks, damaged files."""

from __future__ import annotations

import io
import math
import pathlib
import sysconfig
import threading

import numpy as np
import pytest
import torch
from conftest import _photo

from lmdb_dataset.decode import crop as crop_decode
from lmdb_dataset.decode.crop import (
    CenterCropDecode,
    CropDecoder,
    RandomResizedCropDecode,
    decode_scaled,
    decode_window,
    region_decoding,
    scaled_window,
)
from lmdb_dataset.errors import CorruptRecordError
from lmdb_dataset.loader import _DecodingImageDataset
from lmdb_dataset.storage.format import KIND_ENCODED, RecordHeader

needs_region = pytest.mark.skipif(region_decoding() is None, reason="the _jpeg_region extension is not built")


def _header(height: int, width: int) -> RecordHeader:
    return RecordHeader(kind=KIND_ENCODED, label=0, crc32=0, height=height, width=width, channels=3)


def _jpeg(seed: int, size: tuple[int, int], **options) -> tuple[RecordHeader, bytes]:
    buffer = io.BytesIO()
    _photo(seed, size).save(buffer, "JPEG", quality=90, **options)
    return _header(size[1], size[0]), buffer.getvalue()


# 4:4:4, 4:2:2, 4:2:0, progressive 4:2:0, with restart markers; odd sizes so the last iMCU is partial
JPEGS = {
    "444": {"size": (301, 227), "subsampling": 0},
    "422": {"size": (333, 250), "subsampling": 1},
    "420": {"size": (517, 389), "subsampling": 2},
    "progressive": {"size": (457, 341), "subsampling": 2, "progressive": True},
    "tall": {"size": (141, 613), "subsampling": 2},
}


def test_region_decoder_is_built_where_libjpeg_headers_are():
    """CI installs libjpeg62-turbo-dev: a silently failed build of the optional piece must show up here."""
    include_dirs = [pathlib.Path(sysconfig.get_config_var("INCLUDEDIR") or "/usr/include"),
                    pathlib.Path("/usr/include")]
    if not any((folder / "jpeglib.h").exists() for folder in include_dirs):
        pytest.skip("no libjpeg headers on this machine: the package decodes whole JPEGs")
    assert region_decoding() is not None
    assert region_decoding().count(".") == 2


@needs_region
@pytest.mark.parametrize("name", sorted(JPEGS))
@pytest.mark.parametrize("eighths", [1, 2, 4, 8])
def test_window_is_the_scaled_decode_cut_exactly(name, eighths):
    """Random windows at every fast scale: region decode == whole decode at that scale, then cut (bit for bit)."""
    options = dict(JPEGS[name])
    header, payload = _jpeg(len(name), options.pop("size"), **options)
    min_height, min_width = math.ceil(header.height * eighths / 8), math.ceil(header.width * eighths / 8)
    whole = decode_scaled(payload, header, min_height=min_height, min_width=min_width)
    assert whole.shape[:2] == (min_height, min_width)
    rng = np.random.default_rng(eighths)
    for _ in range(40):
        top, left = rng.uniform(0, header.height - 1), rng.uniform(0, header.width - 1)
        window = (top, left, rng.uniform(1, header.height - top), rng.uniform(1, header.width - left))
        decoded = decode_window(payload, header, window, min_height=min_height, min_width=min_width)
        t, b, lft, r = scaled_window(window, header.height, header.width, min_height, min_width)
        assert (decoded.top, decoded.left, decoded.scaled_height, decoded.scaled_width) == (t, lft, *whole.shape[:2])
        assert np.array_equal(decoded.pixels, whole[t:b, lft:r]), window


@needs_region
def test_a_window_of_the_whole_image_is_left_to_simplejpeg():
    header, payload = _jpeg(2, (333, 250), subsampling=1)
    assert decode_window(payload, header, (0, 0, 250, 333), min_height=125, min_width=167) is None
    assert decode_window(payload, header, (0, 0, 250, 330), min_height=125, min_width=167) is not None


@needs_region
def test_without_the_column_margin_the_cut_edge_differs(monkeypatch):
    """The margin is what makes the region exact: libjpeg-turbo's upsampling at a cropped edge differs."""
    header, payload = _jpeg(3, (517, 389), subsampling=2)
    whole = decode_scaled(payload, header, min_height=header.height, min_width=header.width)
    monkeypatch.setattr(crop_decode, "REGION_MARGIN", 0)
    differing = 0
    for left in range(16, 300, 16):  # edges on iMCU edges (4:2:0: 16 px): the decode starts and ends there
        decoded = decode_window(payload, header, (10, left, 200, 160), min_height=header.height,
                                min_width=header.width)
        differing += not np.array_equal(decoded.pixels, whole[10:210, left:left + 160])
    assert differing > 0


def _records(converted):
    from lmdb_dataset import LMDBImageDataset
    from lmdb_dataset.storage.format import decode_header, payload_of

    dataset = LMDBImageDataset(converted(num_images=27, special=True))
    values = dict(dataset.reader.values(list(range(len(dataset)))))
    return [(decode_header(values[i]), bytes(payload_of(values[i]))) for i in range(len(dataset))]


@needs_region
@pytest.mark.parametrize("make", [lambda: RandomResizedCropDecode(48), lambda: RandomResizedCropDecode(160),
                                  lambda: CenterCropDecode(48, resize=56), lambda: CenterCropDecode(224)],
                         ids=["train48", "train160", "val48", "val224"])
def test_region_path_gives_the_whole_decode_path_pixels_and_draws(converted, monkeypatch, make):
    """Same seed: the region decode and the fallback (extension missing) give equal crops and use equal draws."""
    decoder, records = make(), _records(converted)
    outputs = {}
    for mode in ("region", "fallback"):
        if mode == "fallback":
            monkeypatch.setattr(crop_decode, "_jpeg_region", None)
            assert region_decoding() is None
        outputs[mode] = []
        for seed, (header, payload) in enumerate(records):
            torch.manual_seed(seed)
            outputs[mode].append((decoder(header, payload), torch.rand(1)))
    for seed, ((crop, after), (expected, expected_after)) in enumerate(zip(outputs["region"], outputs["fallback"])):
        assert torch.equal(crop, expected), seed
        assert torch.equal(after, expected_after), seed  # the same number of draws from the RNG


@needs_region
@pytest.mark.parametrize("make", [lambda: RandomResizedCropDecode(48), lambda: CenterCropDecode(48, resize=56),
                                  lambda: CenterCropDecode(24, resize=32)], ids=["train48", "val48", "val24"])
def test_each_finish_window_equals_the_generic_paste_and_finish(converted, make):
    """The decoders' own finish_window (resize the window directly; two-pass for validation) and the base
    class's (paste the window into a zero image of the scaled size, then finish) give the same pixels."""
    decoder, windows = make(), 0
    for seed, (header, payload) in enumerate(_records(converted)):
        torch.manual_seed(seed)
        box = decoder.box(header.height, header.width)
        min_height, min_width = decoder.decode_size(header.height, header.width, box)
        window = decoder.window(header.height, header.width, box)
        decoded = None if window is None else decode_window(payload, header, window, min_height=min_height,
                                                            min_width=min_width)
        if decoded is None:  # grayscale, CMYK, PNG; validation at full scale
            continue
        windows += 1
        size = {"full_height": header.height, "full_width": header.width}
        expected = CropDecoder.finish_window(decoder, decoded, box, **size)
        assert torch.equal(decoder.finish_window(decoded, box, **size), expected), seed
    assert windows >= 3


def test_validation_decodes_whole_at_full_scale_and_a_window_below_it():
    decoder = CenterCropDecode(224, resize=256)
    box = decoder.box(375, 500)
    assert decoder.window(375, 500, box) is None  # resized to 256 x 341: more than half scale is needed
    top, left, height, width = decoder.window(1500, 2000, decoder.box(1500, 2000))  # decoded at 1/4
    assert 0 < top < 1500 * 16 / 256 and 0 < left and top + height < 1500 and left + width < 2000


@needs_region
def test_non_ycbcr_and_non_jpeg_records_are_left_to_the_whole_decode():
    gray = io.BytesIO()
    _photo(1, (97, 61)).convert("L").save(gray, "JPEG")
    cmyk = io.BytesIO()
    _photo(2, (80, 120)).convert("CMYK").save(cmyk, "JPEG")
    png = io.BytesIO()
    _photo(3, (64, 64)).save(png, "PNG")
    for payload, (height, width) in [(gray, (61, 97)), (cmyk, (120, 80)), (png, (64, 64))]:
        header = _header(height, width)
        assert decode_window(payload.getvalue(), header, (0, 0, 8, 8), min_height=8, min_width=8) is None
        assert RandomResizedCropDecode(16)(header, payload.getvalue()).shape == (3, 16, 16)


@needs_region
def test_a_truncated_jpeg_is_left_to_the_whole_decode_even_where_the_crop_misses_the_damage(monkeypatch):
    """Today a truncated JPEG is an error (strict simplejpeg, then Pillow): the region decode must not hide it."""
    header, payload = _jpeg(7, (400, 300), subsampling=2)
    truncated = payload[:len(payload) * 2 // 3]
    assert decode_window(payload, header, (0, 0, 40, 400), min_height=300, min_width=400) is not None
    assert decode_window(truncated, header, (0, 0, 40, 400), min_height=300, min_width=400) is None
    decoder = RandomResizedCropDecode(32, scale=(0.01, 0.02))  # small crops: most lie above the damage
    for mode in ("region", "fallback"):
        if mode == "fallback":
            monkeypatch.setattr(crop_decode, "_jpeg_region", None)
        for seed in range(5):
            torch.manual_seed(seed)
            with pytest.raises(ValueError, match="truncated"):
                decoder(header, truncated)


def test_an_undecodable_jpeg_raises_a_corrupt_record_error_naming_it(converted, monkeypatch):
    _, payload = _jpeg(8, (120, 90))
    header = _header(90, 120)
    dataset = _DecodingImageDataset(converted(num_images=27, special=True), verify_checksums=False)
    dataset.record_decoder = lambda _header, _payload, generator: RandomResizedCropDecode(32)(header, payload[:300])
    for mode in ("region", "fallback"):
        if mode == "fallback":
            monkeypatch.setattr(crop_decode, "_jpeg_region", None)
        with pytest.raises(CorruptRecordError, match=r"record 3\b"):
            dataset[3]


@needs_region
def test_a_bad_region_is_a_value_error():
    _, payload = _jpeg(9, (64, 48))
    for args in [(0, 0, 8, 0, 8), (8, 5, 5, 0, 8), (8, 0, 8, 9, 3), (8, 0, 49, 0, 8), (8, 0, 8, 0, 65)]:
        with pytest.raises(ValueError):
            crop_decode._jpeg_region.decode_region(payload, *args)
    with pytest.raises(ValueError):
        crop_decode._jpeg_region.decode_region(b"\xff\xd8 not a JPEG", 8, 0, 1, 0, 1)


@needs_region
def test_threads_decode_regions_concurrently_with_equal_results():
    """The GIL is released in libjpeg: threads give the same pixels as one thread (no shared state)."""
    header, payload = _jpeg(10, (517, 389), subsampling=2)
    expected = decode_window(payload, header, (30, 40, 300, 200), min_height=200, min_width=260).pixels
    results = []

    def work() -> None:
        for _ in range(20):
            results.append(decode_window(payload, header, (30, 40, 300, 200), min_height=200, min_width=260).pixels)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 80 and all(np.array_equal(r, expected) for r in results)


@needs_region
def test_header_size_disagreeing_with_the_jpeg_is_an_error():
    _, payload = _jpeg(11, (64, 48))
    with pytest.raises(ValueError, match=r"JPEG is 48x64, its record header says 7x9"):
        decode_window(payload, _header(7, 9), (0, 0, 7, 9), min_height=1, min_width=1)
