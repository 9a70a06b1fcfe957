"""Tests for lmdb_dataset.tools.photo_folders.make_photo_folder."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from lmdb_dataset.tools.photo_folders import PHOTO_DIR, make_photo_folder

NUM_IMAGES = 12
NUM_CLASSES = 3


def _make(root: pathlib.Path, **options) -> pathlib.Path:
    options = {
        "num_images": NUM_IMAGES,
        "num_classes": NUM_CLASSES,
        "size_profile": "small",
        **options,
    }
    return make_photo_folder(root, **options)


def _contents(root: pathlib.Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return _make(tmp_path_factory.mktemp("photos"))


def test_returns_root_with_exact_layout(tmp_path: pathlib.Path) -> None:
    root = _make(tmp_path / "new")

    assert root == tmp_path / "new"
    per_class = NUM_IMAGES // NUM_CLASSES
    expected = [
        f"class_{i // per_class:03d}/class_{i // per_class:03d}_{i:06d}.JPEG"
        for i in range(NUM_IMAGES)
    ]
    assert list(_contents(root)) == expected
    assert sorted(path.name for path in root.iterdir()) == ["class_000", "class_001", "class_002"]


def test_uneven_split_keeps_every_image(tmp_path: pathlib.Path) -> None:
    root = _make(tmp_path, num_images=7, num_classes=3)

    assert sorted(len(list(folder.iterdir())) for folder in root.iterdir()) == [2, 2, 3]


def test_same_seed_gives_identical_bytes(folder: pathlib.Path, tmp_path: pathlib.Path) -> None:
    assert _contents(_make(tmp_path)) == _contents(folder)


def test_workers_do_not_change_output(folder: pathlib.Path, tmp_path: pathlib.Path) -> None:
    assert _contents(_make(tmp_path, workers=2)) == _contents(folder)


def test_different_seed_gives_different_images(
    folder: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    other = _contents(_make(tmp_path, seed=1))
    original = _contents(folder)

    assert other.keys() == original.keys()
    assert all(other[name] != original[name] for name in original)


def test_files_are_textured_jpegs_of_small_size(folder: pathlib.Path) -> None:
    for path in folder.rglob("*.JPEG"):
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert 64 <= max(image.size) <= 160
            pixels = np.asarray(image, dtype=np.float64)
        assert pixels.std() > 10.0
        assert np.abs(np.diff(pixels, axis=1)).mean() > 2.0


def test_classes_come_from_different_photos(folder: pathlib.Path) -> None:
    means = [
        np.mean(
            [
                np.asarray(Image.open(path), dtype=np.float64).mean(axis=(0, 1))
                for path in class_dir.iterdir()
            ],
            axis=0,
        )
        for class_dir in sorted(folder.iterdir())
    ]

    assert min(np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1 :]) > 5.0


def test_explicit_photos_override_shipped_ones(tmp_path: pathlib.Path) -> None:
    photo = sorted(PHOTO_DIR.glob("*.jpg"))[0]
    one = _make(tmp_path / "one", photos=[photo], num_images=2, num_classes=1)
    again = _make(tmp_path / "again", photos=[str(photo)], num_images=2, num_classes=1)

    assert _contents(one) == _contents(again)


def test_shipped_photos_exist() -> None:
    assert len(list(PHOTO_DIR.glob("*.jpg"))) >= 4
    assert (PHOTO_DIR / "LICENSES.md").is_file()


@pytest.mark.parametrize(
    ("options", "bad_name"),
    [
        ({"num_images": 0}, "num_images"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_images": 2, "num_classes": 3}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"size_profile": "huge"}, "size_profile"),
        ({"workers": 0}, "workers"),
        ({"photos": []}, "photos"),
        ({"photos": "photo.jpg"}, "photos"),
    ],
)
def test_invalid_arguments_raise_value_error(
    tmp_path: pathlib.Path, options: dict, bad_name: str
) -> None:
    message = f"{bad_name} .*{re.escape(repr(options[bad_name]))}"
    with pytest.raises(ValueError, match=message):
        _make(tmp_path, **options)
    assert not any(tmp_path.iterdir())


def test_missing_photo_raises_file_not_found(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape("missing.jpg")):
        _make(tmp_path / "out", photos=[tmp_path / "missing.jpg"])
