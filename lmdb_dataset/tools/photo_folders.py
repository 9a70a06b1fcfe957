"""Generate realistic photographic ImageFolder datasets for tests and benchmarks.

Every image is a randomly cropped, rescaled, flipped, colour-jittered,
sharpened or blurred, film-grained variation of a real photograph, saved as a
JPEG. Class ``k`` is built from photo ``k mod len(photos)`` with its own focus
point and colour cast, so classes look different from each other.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import pathlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from tqdm import tqdm

SIZE_PROFILES = ("imagenet", "small")
"""Names accepted by ``make_photo_folder(size_profile=...)``."""

PHOTO_DIR = pathlib.Path(__file__).parents[1] / "photos"
"""Folder holding the photographs shipped with the package."""

# (long side / short side, probability): landscape-heavy 4:3 and 3:2 dominate.
_ASPECT_RATIOS = (4 / 3, 3 / 2, 1.0, 5 / 4, 16 / 9)
_ASPECT_WEIGHTS = (0.55, 0.25, 0.07, 0.07, 0.06)
_LANDSCAPE_PROBABILITY = 0.75
_CHUNK_SIZE = 16  # images rendered per task; each task decodes one photo
_IMAGE_STREAM, _CLASS_STREAM = 0, 1  # keep per-image and per-class seeds apart


@dataclass(frozen=True)
class _Spec:
    """Everything a worker process needs to render images."""

    root: pathlib.Path
    photos: tuple[pathlib.Path, ...]
    num_classes: int
    seed: int
    size_profile: str

    def class_name(self, class_index: int) -> str:
        """Return the zero-padded folder name of a class."""
        width = max(3, len(str(self.num_classes - 1)))
        return f"class_{class_index:0{width}d}"


def make_photo_folder(
    root: str | os.PathLike,
    *,
    num_images: int = 200,
    num_classes: int = 4,
    seed: int = 0,
    size_profile: str = "imagenet",
    photos: Sequence[str | os.PathLike] | None = None,
    workers: int = 1,
    progress: bool = False,
) -> pathlib.Path:
    """Write a torchvision-style ImageFolder tree of photographic JPEGs.

    Files are written as ``root/<class_name>/<class_name>_<i:06d>.JPEG`` where
    ``i`` is the image's global index; images are split as evenly as possible
    between classes. The output is byte-identical across runs for the same
    arguments and Pillow/NumPy versions, whatever the number of workers.

    Args:
        root: Folder to create the tree in; created if missing.
        num_images: Total number of images. Defaults to 200.
        num_classes: Number of class folders; at most ``num_images``.
            Defaults to 4.
        seed: Non-negative seed of the random variations. Defaults to 0.
        size_profile: ``"imagenet"`` for ImageNet-like dimensions (median
            500x375, landscape-heavy 4:3/3:2, a few percent above 1000 px, up
            to 2600 px on the long side) and file sizes, or ``"small"`` for
            64-160 px images for fast tests. Defaults to ``"imagenet"``.
        photos: Source photographs (any format Pillow reads). Defaults to the
            photographs shipped in ``lmdb_dataset/photos``.
        workers: Number of processes rendering images. Defaults to 1.
        progress: Whether to show a tqdm progress bar. Defaults to False.

    Returns:
        The root folder of the tree.

    Raises:
        ValueError: If an argument is out of range.
        FileNotFoundError: If a photo does not exist.
    """
    _validate(num_images, num_classes, seed, size_profile, workers)
    spec = _Spec(
        root=pathlib.Path(root),
        photos=_resolve_photos(photos),
        num_classes=num_classes,
        seed=seed,
        size_profile=size_profile,
    )
    chunks = _chunks(num_images, num_classes)
    render = functools.partial(_render_chunk, spec)
    with contextlib.ExitStack() as stack:
        mapper: Callable[..., Iterable[int]] = map
        if workers > 1:
            pool = stack.enter_context(multiprocessing.Pool(min(workers, len(chunks))))
            mapper = pool.imap_unordered
        bar = stack.enter_context(tqdm(total=num_images, unit="img", disable=not progress, desc="build images"))
        for done in mapper(render, chunks):
            bar.update(done)
    return spec.root


def _resolve_photos(photos: Sequence[str | os.PathLike] | None) -> tuple[pathlib.Path, ...]:
    """Return the photo paths to use, checking that they exist."""
    if photos is None:
        paths = tuple(sorted(PHOTO_DIR.glob("*.jpg")))
    elif isinstance(photos, (str, os.PathLike)):
        raise ValueError(f"photos must be a sequence of paths, got a single path {photos!r}")
    else:
        paths = tuple(pathlib.Path(photo) for photo in photos)
    if not paths:
        raise ValueError(f"photos must name at least one photo, got {photos!r}")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"photo not found: {path}")
    return paths


def _validate(
    num_images: int, num_classes: int, seed: int, size_profile: str, workers: int
) -> None:
    """Raise ValueError naming the first out-of-range argument."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    if num_images < num_classes:
        raise ValueError(f"num_images must be >= num_classes ({num_classes}), got {num_images!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed!r}")
    if size_profile not in SIZE_PROFILES:
        raise ValueError(f"size_profile must be one of {SIZE_PROFILES}, got {size_profile!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")


def _chunks(num_images: int, num_classes: int) -> list[tuple[int, range]]:
    """Split image indices into per-class runs of at most ``_CHUNK_SIZE``."""
    bounds = [k * num_images // num_classes for k in range(num_classes + 1)]
    return [
        (k, range(start, min(start + _CHUNK_SIZE, bounds[k + 1])))
        for k in range(num_classes)
        for start in range(bounds[k], bounds[k + 1], _CHUNK_SIZE)
    ]


def _render_chunk(spec: _Spec, chunk: tuple[int, range]) -> int:
    """Render the images of one chunk of one class; return how many."""
    class_index, indices = chunk
    with Image.open(spec.photos[class_index % len(spec.photos)]) as source:
        photo = source.convert("RGB")
    class_rng = np.random.default_rng([spec.seed, _CLASS_STREAM, class_index])
    focus = class_rng.uniform(0.3, 0.7, size=2)
    tint = class_rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    folder = spec.root / spec.class_name(class_index)
    folder.mkdir(parents=True, exist_ok=True)
    for index in indices:
        rng = np.random.default_rng([spec.seed, _IMAGE_STREAM, index])
        image = _vary(photo, _target_size(spec.size_profile, rng), focus, tint, rng)
        image.save(
            folder / f"{folder.name}_{index:06d}.JPEG",
            format="JPEG",
            quality=int(rng.integers(85, 96)),
            subsampling="4:4:4" if rng.random() < 0.1 else "4:2:0",
        )
    return len(indices)


def _target_size(size_profile: str, rng: np.random.Generator) -> tuple[int, int]:
    """Draw a (width, height) following the size profile."""
    small = size_profile == "small"
    long_side = int(rng.integers(64, 161)) if small else _imagenet_long_side(rng)
    ratio = rng.choice(_ASPECT_RATIOS, p=_ASPECT_WEIGHTS)
    short_side = max(1, round(long_side / ratio))
    if rng.random() < _LANDSCAPE_PROBABILITY:
        return long_side, short_side
    return short_side, long_side


def _imagenet_long_side(rng: np.random.Generator) -> int:
    """Draw a long side like ImageNet's: mostly 500 px, with a large tail."""
    draw = rng.random()
    if draw < 0.78:
        return 500
    if draw < 0.92:
        return int(rng.integers(160, 500))
    if draw < 0.97:
        return int(rng.integers(501, 1000))
    return round(float(np.exp(rng.uniform(np.log(1000), np.log(2600)))))


def _vary(
    photo: Image.Image,
    size: tuple[int, int],
    focus: np.ndarray,
    tint: np.ndarray,
    rng: np.random.Generator,
) -> Image.Image:
    """Crop, rescale, flip, jitter, filter, tint and grain one variation."""
    image = photo.resize(
        size, Image.Resampling.BICUBIC, box=_crop_box(photo.size, size, focus, rng)
    )
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.2))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.75:
        image = image.filter(
            ImageFilter.UnsharpMask(
                radius=rng.uniform(1.0, 2.5), percent=int(rng.integers(50, 151)), threshold=2
            )
        )
    else:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    grain = np.float32(rng.uniform(7.0, 13.0))  # tuned for ImageNet's ~110 KB mean file size
    pixels = np.asarray(image, dtype=np.float32) * tint
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _crop_box(
    photo_size: tuple[int, int],
    size: tuple[int, int],
    focus: np.ndarray,
    rng: np.random.Generator,
) -> tuple[float, float, float, float]:
    """Choose a crop of the photo with the target aspect ratio near the focus."""
    photo_w, photo_h = photo_size
    aspect = size[0] / size[1]
    scale = rng.uniform(0.45, 1.0)
    crop_w = min(photo_w, photo_h * aspect) * scale
    crop_h = crop_w / aspect
    center_x, center_y = (focus + rng.normal(0.0, 0.12, size=2)) * (photo_w, photo_h)
    left = float(np.clip(center_x - crop_w / 2, 0, photo_w - crop_w))
    top = float(np.clip(center_y - crop_h / 2, 0, photo_h - crop_h))
    return left, top, left + crop_w, top + crop_h
