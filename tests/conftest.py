"""Shared fixtures: small ImageFolder trees of real images, and their converted datasets.

``image_folder(...)`` builds a tree of real photographic JPEGs (from the photos shipped with
the package) in three classes, optionally with the awkward cases ImageFolder users meet:
odd sizes, a grayscale JPEG, a CMYK JPEG, a PNG with alpha and a corrupt file.
``converted(...)`` converts such a tree (cached per test session, so the many tests reading
the same dataset share one conversion).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmdb_dataset import convert_image_folder
from lmdb_dataset.tools.photo_folders import make_photo_folder


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A crop of a shipped photograph, resized: real image content, not noise."""
    from lmdb_dataset.tools.photo_folders import PHOTO_DIR

    photos = sorted(PHOTO_DIR.glob("*.jpg"))
    rng = np.random.default_rng(seed)
    with Image.open(photos[seed % len(photos)]) as image:
        image = image.convert("RGB")
        w, h = image.size
        left, top = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
        return image.crop((left, top, left + w // 2, top + h // 2)).resize(size)


def add_special_images(root: Path) -> dict[str, str]:
    """Add grayscale, CMYK, PNG (RGBA), odd-size and progressive images; returns name -> relative path."""
    special = {
        "gray": ("class_000", "gray.jpg", lambda: _save(_photo(1, (97, 61)).convert("L"), "JPEG")),
        "cmyk": ("class_001", "cmyk.jpg", lambda: _save(_photo(2, (80, 120)).convert("CMYK"), "JPEG")),
        "png": ("class_002", "alpha.png", lambda: _save(_photo(3, (64, 64)).convert("RGBA"), "PNG")),
        "tiny": ("class_000", "tiny.jpeg", lambda: _save(_photo(4, (1, 1)), "JPEG")),
        "progressive": ("class_001", "progressive.JPG",
                        lambda: _save(_photo(5, (333, 211)), "JPEG", progressive=True, subsampling=0)),
    }
    paths = {}
    for name, (folder, filename, make) in special.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / filename).write_bytes(make())
        paths[name] = f"{folder}/{filename}"
    return paths


def _save(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, quality=90, **options)
    return buffer.getvalue()


def add_corrupt_image(root: Path, folder: str = "class_001", name: str = "broken.jpg") -> str:
    """A file with a .jpg name whose JPEG data is cut off after the header: not decodable."""
    data = _save(_photo(6, (120, 90)), "JPEG")
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / name).write_bytes(data[:200])
    return f"{folder}/{name}"


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``image_folder(num_images=24, special=True, corrupt=False)`` -> a cached ImageFolder root."""
    cache: dict[tuple, Path] = {}

    def build(num_images: int = 24, *, special: bool = True, corrupt: bool = False) -> Path:
        key = (num_images, special, corrupt)
        if key not in cache:
            root = tmp_path_factory.mktemp("images") / "src"
            make_photo_folder(root, num_images=num_images, num_classes=3, size_profile="small", seed=num_images)
            if special:
                add_special_images(root)
            if corrupt:
                add_corrupt_image(root)
            cache[key] = root
        return cache[key]

    return build


@pytest.fixture(scope="session")
def converted(image_folder: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``converted(num_images=24, storage="encoded", order="folder", special=True)`` -> dataset path.

    ``order="folder"`` (record ``i`` holds sample ``i``) unless asked for, unlike ``convert``'s
    default (``"shuffled"``). Cached per session; treat the result as read-only (copy it with
    ``copy_dataset`` to modify).
    """
    cache: dict[tuple, Path] = {}

    def build(num_images: int = 24, *, storage: str = "encoded", order: str = "folder",
              special: bool = True) -> Path:
        key = (num_images, storage, order, special)
        if key not in cache:
            target = tmp_path_factory.mktemp("lmdb") / "data.lmdb"
            convert_image_folder(image_folder(num_images, special=special), target, storage=storage,
                                 order=order, workers=0, progress=False)
            cache[key] = target
        return cache[key]

    return build


def copy_dataset(source: Path, target: Path) -> Path:
    """Copy a dataset directory (to damage or rewrite it without touching the cached one)."""
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def dataset_path(converted: Callable[..., Path]) -> Path:
    """32 records, including grayscale, CMYK, PNG and 1x1 images."""
    return converted(num_images=27, special=True)


@pytest.fixture(scope="module")
def checksums(dataset_path: Path) -> dict[int, int]:
    """Pixel checksum -> record index, read by random access with LMDBImageDataset."""
    from support import pixel_checksum

    from lmdb_dataset import LMDBImageDataset

    reference = LMDBImageDataset(dataset_path, output="numpy")
    table = {pixel_checksum(reference[i][0]): i for i in range(len(reference))}
    assert len(table) == len(reference) == 32
    return table
