"""Storage shaping (``max_side``/``quality``): sizes, kept bytes, metadata, info, resume, CLI, legacy sources."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import _photo, _save, add_corrupt_image
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from support import PROPERTY

from lmdb_dataset import LMDBDatasetError, LMDBImageDataset, LMDBWriter, SourceImageError, convert_image_folder
from lmdb_dataset.decode.image import decode_image
from lmdb_dataset.sources.conversion import convert_source
from lmdb_dataset.storage import format as fmt
from lmdb_dataset.storage.environment import begin_read, environments, open_databases, read_path_table
from lmdb_dataset.tools.cli import main
from lmdb_dataset.tools.inspection import summarize
from lmdb_dataset.write.shaping import DEFAULT_QUALITY, Shaping, resize_pixels, shape_image, shaped_size

MAX_SIDE = 256
# name -> (class folder, file name, bytes): colour JPEGs above, at and below the bound, a 1x1 one,
# grayscale, CMYK, RGBA PNG (above and below), tall and wide ones.
SOURCES = {
    "large": ("a", "large.jpg", lambda: _save(_photo(10, (500, 375)), "JPEG")),
    "tall": ("a", "tall.jpg", lambda: _save(_photo(11, (301, 997)), "JPEG")),
    "exact": ("a", "exact.jpg", lambda: _save(_photo(12, (MAX_SIDE, 100)), "JPEG")),
    "small": ("a", "small.jpg", lambda: _save(_photo(13, (200, 150)), "JPEG")),
    "tiny": ("a", "tiny.jpeg", lambda: _save(_photo(14, (1, 1)), "JPEG")),
    "wide": ("b", "wide.jpg", lambda: _save(_photo(15, (1200, 3)), "JPEG")),
    "gray": ("b", "gray.jpg", lambda: _save(_photo(16, (320, 410)).convert("L"), "JPEG")),
    "cmyk": ("b", "cmyk.jpg", lambda: _save(_photo(17, (400, 300)).convert("CMYK"), "JPEG")),
    "png": ("b", "alpha.png", lambda: _save(_photo(18, (333, 260)).convert("RGBA"), "PNG")),
    "small_png": ("b", "small.png", lambda: _save(_photo(19, (64, 48)), "PNG")),
}
RESIZED = {"large", "tall", "wide", "gray", "cmyk", "png"}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """An ImageFolder of ``SOURCES``."""
    root = tmp_path_factory.mktemp("shaping") / "src"
    for folder, name, make in SOURCES.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(make())
    return root


def records_by_path(path: Path) -> dict[str, tuple[fmt.RecordHeader, bytes]]:
    """Every record of a dataset as {source path: (header, payload)}."""
    env, _ = environments.get(path)
    records_db, _ = open_databases(env, path)
    with begin_read(env) as txn:
        values = [bytes(v) for _, v in txn.cursor(db=records_db)]
    paths = read_path_table(path, len(values))
    return {paths[i]: (fmt.decode_header(v), v[fmt.HEADER_SIZE:]) for i, v in enumerate(values)}


def original(source: Path, name: str) -> bytes:
    folder, file, _ = SOURCES[name]
    return (source / folder / file).read_bytes()


# ----------------------------------------------------------------------------------------------- the size maths

@PROPERTY
@given(st.integers(1, 20000), st.integers(1, 20000), st.integers(1, 4096))
def test_shaped_size_bounds_the_longer_side_exactly_keeps_aspect_and_never_upscales(height, width, max_side):
    new_height, new_width = shaped_size(height, width, max_side)
    if max(height, width) <= max_side:
        assert (new_height, new_width) == (height, width)
        return
    assert max(new_height, new_width) == max_side
    assert (new_height >= new_width) == (height >= width) or new_height == new_width
    assert 1 <= min(new_height, new_width) <= min(height, width)
    # The shorter side is the exact scaled one rounded to the nearest integer (or 1).
    exact = min(height, width) * max_side / max(height, width)
    assert abs(min(new_height, new_width) - max(exact, 1)) <= 0.5 + 1e-9


def test_shaped_size_rounds_halves_up_and_names_bad_arguments():
    assert shaped_size(375, 500, 256) == (192, 256)  # 191.999..: FFCV's truncation would give 191
    assert shaped_size(3, 4, 2) == (2, 2)  # 1.5 rounds up
    assert shaped_size(1, 1000, 10) == (1, 10)  # never 0
    assert shaped_size(256, 100, 256) == (256, 100)
    for bad in ({"height": 0}, {"width": -3}, {"max_side": 0}, {"max_side": True}, {"height": 2.5}):
        arguments = {"height": 10, "width": 10, "max_side": 5, **bad}
        with pytest.raises(ValueError, match=f"{next(iter(bad))}=.* must be a positive integer"):
            shaped_size(**arguments)


@pytest.mark.parametrize(("max_side", "quality", "storage", "message"), [
    (0, None, "encoded", "max_side=0 must be a positive integer"),
    (-5, None, "encoded", "max_side=-5 must be a positive integer"),
    (True, None, "encoded", "max_side=True must be a positive integer"),
    (256.0, None, "encoded", "max_side=256.0 must be a positive integer"),
    (256, 0, "encoded", "quality=0 must be a JPEG quality, an integer from 1 to 100"),
    (256, 101, "encoded", "quality=101 must be a JPEG quality"),
    (256, "90", "encoded", "quality='90' must be a JPEG quality"),
    (None, 80, "encoded", "quality=80 applies only to images resized by max_side"),
    (256, 80, "raw", "quality=80 does not apply to storage='raw'"),
])
def test_shaping_settings_are_validated_with_the_allowed_values(max_side, quality, storage, message, source,
                                                                tmp_path):
    with pytest.raises(ValueError, match=message):
        Shaping.of(max_side, quality, storage)
    with pytest.raises(ValueError, match=message):
        convert_image_folder(source, tmp_path / "ds", storage=storage, max_side=max_side, quality=quality,
                             workers=0, progress=False)
    assert not (tmp_path / "ds").exists()
    with pytest.raises(ValueError, match=message):
        LMDBWriter(tmp_path / "w", storage=storage, max_side=max_side, quality=quality)


def test_shaping_defaults():
    assert Shaping.of(None, None, "encoded") is None
    assert Shaping.of(512, None, "encoded") == Shaping(512, DEFAULT_QUALITY) and DEFAULT_QUALITY == 90
    assert Shaping.of(512, None, "raw") == Shaping(512, None)


# --------------------------------------------------------------------------------------------- encoded storage

@pytest.mark.parametrize("workers", [0, 2])
def test_encoded_max_side_resizes_only_longer_images_and_keeps_the_others_byte_identical(source, tmp_path, workers):
    report = convert_image_folder(source, tmp_path / "ds", max_side=MAX_SIDE, quality=85, workers=workers,
                                  progress=False)
    records = records_by_path(tmp_path / "ds")
    assert report.num_records == len(SOURCES) == len(records)
    for name, (folder, file, _) in SOURCES.items():
        header, payload = records[f"{folder}/{file}"]
        data = original(source, name)
        full = decode_image(data)
        assert (header.height, header.width) == shaped_size(*full.shape[:2], MAX_SIDE), name
        if name not in RESIZED:
            assert payload == data, f"{name} must keep its original bytes"
            continue
        assert payload[:2] == b"\xff\xd8" and payload != data  # a new JPEG, whatever the source format
        stored = decode_image(payload)
        assert stored.shape == (header.height, header.width, 3)
        reference = resize_pixels(full, MAX_SIDE)
        error = np.abs(stored.astype(int) - reference).mean()
        assert error < 4.0, f"{name}: mean |stored - Lanczos(original)| = {error:.2f}"
        if name == "gray":
            assert np.abs(stored[..., 0].astype(int) - stored[..., 1]).max() <= 1  # stays gray
    info = LMDBImageDataset(tmp_path / "ds")._meta.info
    assert info.shaping == {"max_side": MAX_SIDE, "quality": 85, "filter": "lanczos", "resized": len(RESIZED),
                            "kept": len(SOURCES) - len(RESIZED)}


def test_a_lower_quality_gives_smaller_resized_images(source, tmp_path):
    sizes = {}
    for quality in (50, 95):
        convert_image_folder(source, tmp_path / f"q{quality}", max_side=MAX_SIDE, quality=quality, workers=0,
                             progress=False)
        records = records_by_path(tmp_path / f"q{quality}")
        sizes[quality] = sum(len(records[f"{SOURCES[n][0]}/{SOURCES[n][1]}"][1]) for n in RESIZED)
    assert sizes[50] < 0.8 * sizes[95]


def test_without_max_side_nothing_changes_and_no_shaping_is_recorded(source, tmp_path):
    convert_image_folder(source, tmp_path / "ds", workers=0, progress=False)
    records = records_by_path(tmp_path / "ds")
    assert all(records[f"{folder}/{file}"][1] == original(source, name)
               for name, (folder, file, _) in SOURCES.items())
    assert LMDBImageDataset(tmp_path / "ds")._meta.info.shaping is None
    assert not any(line.startswith("shaping:") for line in summarize(tmp_path / "ds").lines())


# ------------------------------------------------------------------------------------------------- raw storage

def test_raw_max_side_stores_the_documented_resize_of_the_decoded_image(source, tmp_path):
    convert_image_folder(source, tmp_path / "ds", storage="raw", max_side=MAX_SIDE, workers=0, progress=False)
    records = records_by_path(tmp_path / "ds")
    for name, (folder, file, _) in SOURCES.items():
        header, payload = records[f"{folder}/{file}"]
        expected = resize_pixels(decode_image(original(source, name)), MAX_SIDE)
        stored = np.frombuffer(payload, dtype=np.uint8).reshape(header.height, header.width, header.channels)
        assert header.kind == fmt.KIND_RAW and np.array_equal(stored, expected), name
    dataset = LMDBImageDataset(tmp_path / "ds", output="numpy")
    assert max(max(dataset[i][0].shape[:2]) for i in range(len(dataset))) == MAX_SIDE
    shaping = dataset._meta.info.shaping
    assert shaping["quality"] is None and (shaping["resized"], shaping["kept"]) == (len(RESIZED), 4)


def test_resize_pixels_matches_pillow_lanczos_on_the_rgb_image():
    pixels = np.asarray(_photo(20, (640, 480)))
    expected = np.asarray(Image.fromarray(pixels).resize((256, 192), Image.LANCZOS))
    assert np.array_equal(resize_pixels(pixels, 256), expected)
    gray = pixels[..., :1].copy()
    assert resize_pixels(gray, 256).shape == (192, 256, 1) and resize_pixels(pixels[..., 0], 256).shape == (192, 256)
    assert resize_pixels(pixels, 640) is pixels


def test_shape_image_refuses_a_longer_image_that_does_not_decode():
    data = _save(_photo(21, (800, 600)), "JPEG")
    with pytest.raises(ValueError, match="not a decodable image"):
        shape_image(data[: len(data) // 3], Shaping(256, 90), "encoded")


# ------------------------------------------------------------------------------------- metadata, info, the writer

def test_info_says_what_was_done(source, tmp_path):
    convert_image_folder(source, tmp_path / "enc", max_side=MAX_SIDE, workers=0, progress=False)
    convert_image_folder(source, tmp_path / "raw", storage="raw", max_side=MAX_SIDE, workers=0, progress=False)
    encoded = [line for line in summarize(tmp_path / "enc").lines() if line.startswith("shaping:")]
    raw = [line for line in summarize(tmp_path / "raw").lines() if line.startswith("shaping:")]
    assert encoded == [f"shaping:   lossy: images longer than {MAX_SIDE} px resized (Lanczos) and re-encoded as "
                       f"JPEG at quality 90: {len(RESIZED)} of {len(SOURCES)}; the other 4 kept as they were"]
    assert raw == [f"shaping:   lossy: images longer than {MAX_SIDE} px resized (Lanczos) and stored as pixels: "
                   f"{len(RESIZED)} of {len(SOURCES)}; the other 4 kept as they were"]


def test_writer_add_shapes_bytes_and_arrays_and_counts_them(tmp_path):
    big, small = _save(_photo(22, (600, 400)), "JPEG"), _save(_photo(23, (100, 80)), "JPEG")
    with LMDBWriter(tmp_path / "enc", max_side=128, quality=70) as writer:
        writer.add(big, 0)
        writer.add(small, 0)
        assert writer.info.shaping["resized"] == 1 and writer.info.shaping["kept"] == 1
    dataset = LMDBImageDataset(tmp_path / "enc", output="numpy")
    assert dataset[0][0].shape == (85, 128, 3) and dataset[1][0].shape == (80, 100, 3)
    with LMDBWriter(tmp_path / "raw", storage="raw", max_side=128) as writer:
        writer.add(np.zeros((300, 30), np.uint8), 0)
        writer.add(np.zeros((30, 300, 3), np.uint8), 0)
    dataset = LMDBImageDataset(tmp_path / "raw", output="numpy")
    assert [dataset[i][0].shape for i in range(2)] == [(128, 13, 3), (13, 128, 3)]
    assert dataset._meta.info.shaping["resized"] == 2


@pytest.mark.parametrize("shaping", [
    {"max_side": 0, "quality": 90, "filter": "lanczos", "resized": 0, "kept": 0},
    {"max_side": 256, "quality": "90", "filter": "lanczos", "resized": 0, "kept": 0},
    {"max_side": 256, "quality": 90, "filter": "lanczos", "resized": -1, "kept": 0},
    {"max_side": 256, "quality": 90, "resized": 0, "kept": 0},
    [256, 90],
])
def test_metadata_with_a_malformed_shaping_field_is_refused(shaping):
    data = json.loads(fmt.DatasetInfo().to_json())
    data["shaping"] = shaping
    with pytest.raises(ValueError, match="metadata field 'shaping' has an invalid value"):
        fmt.DatasetInfo.from_json(json.dumps(data).encode())


def test_metadata_round_trips_shaping_and_old_metadata_has_none():
    info = fmt.DatasetInfo(shaping={"max_side": 256, "quality": None, "filter": "lanczos", "resized": 3, "kept": 1})
    assert fmt.DatasetInfo.from_json(info.to_json()) == info
    old = json.loads(fmt.DatasetInfo().to_json())
    del old["shaping"]
    assert fmt.DatasetInfo.from_json(json.dumps(old).encode()).shaping is None


# ----------------------------------------------------------------------------------------------------- resuming

@pytest.fixture
def interrupted(source, tmp_path):
    """A --max-side 256 conversion stopped after its first record by a corrupt file, which is then deleted."""
    src = Path(shutil.copytree(source, tmp_path / "src"))
    bad = add_corrupt_image(src, "a", "f_broken.jpg")  # second in folder order, before "large.jpg"
    with pytest.raises(SourceImageError, match="f_broken.jpg"):
        convert_image_folder(src, tmp_path / "ds", max_side=MAX_SIDE, order="folder", workers=0, progress=False)
    assert not summarize(tmp_path / "ds").info.complete
    (src / bad).unlink()
    return src, tmp_path / "ds"


def test_resume_with_other_shaping_settings_is_refused_naming_both(interrupted):
    src, path = interrupted
    for other, said in (({"max_side": 512}, "max_side=512, quality=90"), ({}, "every image stored as given"),
                        ({"max_side": MAX_SIDE, "quality": 80}, "quality=80")):
        with pytest.raises(LMDBDatasetError, match=f"cannot resume .*converted with max_side={MAX_SIDE}, "
                                                   f"quality=90, now .*{said}.*overwrite=True"):
            convert_image_folder(src, path, order="folder", resume=True, workers=0, progress=False, **other)


def test_a_resumed_shaped_conversion_equals_an_uninterrupted_one(interrupted, tmp_path):
    src, path = interrupted
    convert_image_folder(src, path, max_side=MAX_SIDE, order="folder", resume=True, workers=0, progress=False)
    convert_image_folder(src, tmp_path / "whole", max_side=MAX_SIDE, order="folder", workers=0, progress=False)
    assert records_by_path(path) == records_by_path(tmp_path / "whole")
    info, whole = (LMDBImageDataset(p)._meta.info for p in (path, tmp_path / "whole"))
    assert info.shaping == whole.shaping and info.shaping["resized"] + info.shaping["kept"] == info.num_records
    with pytest.raises(LMDBDatasetError, match="already complete: it was converted with max_side=256"):
        convert_image_folder(src, path, max_side=128, order="folder", resume=True, workers=0, progress=False)


# ------------------------------------------------------------------------------------- the command line, sources

def test_cli_max_side_and_quality(source, tmp_path, capsys):
    target = tmp_path / "cli.lmdb"
    assert main(["convert", str(source), str(target), "--max-side", "256", "--quality", "80", "--workers", "0",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(target)]) == 0
    assert (f"shaping:   lossy: images longer than 256 px resized (Lanczos) and re-encoded as JPEG at quality 80: "
            f"{len(RESIZED)} of {len(SOURCES)}") in capsys.readouterr().out
    assert main(["convert", str(source), str(target), "--max-side", "300", "--resume", "--quiet"]) == 2
    assert ("already complete: it was converted with --max-side 256, --quality 80, now with --max-side 300, "
            "--quality 90") in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-side", "0"], "argument --max-side: 0 is too small"),
    (["--max-side", "big"], "argument --max-side: 'big' is not a whole number"),
    (["--max-side", "256", "--quality", "101"], "argument --quality: 101 is too large"),
    (["--max-side", "256", "--quality", "0"], "argument --quality: 0 is too small"),
    (["--quality", "80"], "--quality 80 applies only to images resized by max_side; pass max_side too "
                          r"\(e.g. --max-side 256\)"),
    (["--max-side", "256", "--storage", "raw", "--quality", "80"], "--quality 80 does not apply to --storage"),
])
def test_cli_shaping_argument_errors(source, tmp_path, capsys, flags, message):
    try:
        status = main(["convert", str(source), str(tmp_path / "x.lmdb"), "--quiet", *flags])
    except SystemExit as exc:  # argparse's own checks
        status = exc.code
    assert status == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "x.lmdb").exists()


def test_list_file_sources_are_shaped_too(source, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{folder}/{file} {i % 2}\n" for i, (folder, file, _) in enumerate(SOURCES.values())))
    report = convert_source(listing, tmp_path / "ds", kind="list", root=source, max_side=MAX_SIDE, workers=0,
                            progress=False)
    dataset = LMDBImageDataset(report.path, output="numpy")
    for i, name in enumerate(SOURCES):
        assert dataset[i][0].shape[:2] == shaped_size(*decode_image(original(source, name)).shape[:2], MAX_SIDE)
    assert dataset._meta.info.shaping["resized"] == len(RESIZED)
    with pytest.raises(LMDBDatasetError, match="already complete: it was converted with max_side=256"):
        convert_source(listing, tmp_path / "ds", kind="list", root=source, resume=True, workers=0, progress=False)


def test_cli_shapes_a_list_file_source_and_refuses_resuming_it_otherwise(source, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{folder}/{file} 0\n" for folder, file, _ in SOURCES.values()))
    target = tmp_path / "list.lmdb"
    assert main(["convert", str(listing), str(target), "--from", "list", "--root", str(source), "--storage", "raw",
                 "--max-side", "128", "--workers", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(target)]) == 0
    assert "images longer than 128 px resized (Lanczos) and stored as pixels" in capsys.readouterr().out
    assert main(["convert", str(listing), str(target), "--from", "list", "--root", str(source), "--storage", "raw",
                 "--resume", "--quiet"]) == 2
    assert ("converted with --max-side 128, now with every image stored as given; run again with --max-side 128"
            in capsys.readouterr().err)


def test_hdf5_pixel_arrays_are_resized_with_raw_storage(tmp_path):
    h5py = pytest.importorskip("h5py")
    pixels = np.stack([np.asarray(_photo(30 + i, (400, 300))) for i in range(3)])
    with h5py.File(tmp_path / "data.h5", "w") as file:
        file["images"] = pixels
        file["labels"] = np.array([0, 1, 0])
    report = convert_source(tmp_path / "data.h5", tmp_path / "ds", max_side=200, workers=0, progress=False)
    dataset = LMDBImageDataset(report.path, output="numpy")
    assert dataset._meta.info.storage == "raw"
    for i in range(3):
        assert np.array_equal(dataset[i][0], resize_pixels(pixels[i], 200))


def test_png_bytes_are_readable_after_shaping(source):
    shaped, resized = shape_image(original(source, "png"), Shaping(100, 90), "encoded")
    assert resized and Image.open(io.BytesIO(shaped)).format == "JPEG"


# ---------------------------------------------------------------------------------- the measurement's report

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def shaping_bench():
    """benchmarks/decode/storage_shaping.py, and its committed run."""
    from benchmarks.decode import storage_shaping

    return storage_shaping, json.loads((BENCHMARKS / "decode" / "storage_shaping.json").read_text())


def test_storage_shaping_section_is_registered_and_renders_only_its_numbers(shaping_bench):
    from benchmarks import report

    module, results = shaping_bench
    assert ("decode/storage_shaping.json", "decode.storage_shaping") in report.SECTIONS
    text = module.markdown(results)
    assert text.startswith("## Storage shaping\n") and text.count("\n## ") == 0 and text.endswith("\n")
    assert f"Command: `{results['command']}`" in text
    for row in results["rows"]:
        assert f"| {row['corpus']} | {module.LABELS[row['choice']]} | {row['disk_mb']} ({row['disk_x']}x) |" in text
    corpora = {row["corpus"] for row in results["rows"]}
    choices = {row["choice"] for row in results["rows"]} | {e["choice"] for e in results["not_measured"]}
    assert corpora == {"imagenet", "highres"} and choices == {*module.CHOICES, *module.FFCV_CHOICES}


def test_storage_shaping_findings_follow_the_numbers(shaping_bench):
    module, results = shaping_bench
    row = next(r for r in results["rows"] if r["choice"] == "raw-256" and r["corpus"] == "imagenet")
    row.update(disk_x=9.99, speed_x=0.12)
    assert "raw --max-side 256 takes 9.99x the disk and trains at 0.12x the speed" in module.markdown(results)
    results["not_measured"] = [{"choice": "ffcv-256", "reason": "not measured: no ffcv"}]
    assert "- FFCV max_resolution=256, jpeg_quality=90: not measured: no ffcv." in module.markdown(results)


def test_readme_storage_shaping_table_is_generated_from_the_committed_run(shaping_bench):
    module, results = shaping_bench
    readme = (BENCHMARKS.parent / "README.md").read_text()
    block = module.readme_block(results)
    assert f"<!-- storage-shaping-table -->\n{block}<!-- /storage-shaping-table -->" in readme, (
        "regenerate it: python -m benchmarks.decode.storage_shaping --render benchmarks/decode/storage_shaping.json "
        "--readme README.md")
