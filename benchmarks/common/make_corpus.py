"""Build a benchmark corpus of photographic JPEGs: ImageNet-like, or 1-4 megapixels.

``--profile imagenet`` (the default) collects the openly licensed photographs listed in
``benchmarks/PHOTOS.md`` from installed packages into ``OUT_DIR/source_photos``, renders
``OUT_DIR/train/<class>/<class>_<i>.JPEG`` with
``lmdb_dataset.tools.photo_folders.make_photo_folder(size_profile="imagenet")``. ``--profile highres``
renders ``OUT_DIR/train/<class>/<i>.JPEG`` of 1-4 megapixels from the package's shipped
photographs (:func:`render_highres`). Either way it prints the corpus statistics next to
ImageNet's and writes them to ``OUT_DIR/corpus_stats.json``.

Example:
    python -m benchmarks.common.make_corpus /tmp/corpus --num-images 10000 --workers 2
    python -m benchmarks.common.make_corpus /tmp/highres --profile highres --num-images 600 --num-classes 10
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import pathlib
import time
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, JpegImagePlugin

from lmdb_dataset.tools.photo_folders import PHOTO_DIR, make_photo_folder

PROFILES = ("imagenet", "highres")

KB = 1000
JPEG_SUBSAMPLING_420 = 2  # value returned by JpegImagePlugin.get_sampling

# ImageNet-1k (ILSVRC 2012) train set. None marks a figure without a source.
IMAGENET_STATS = {
    "images": 1_281_167,  # Russakovsky et al. 2015, Table 2
    "median_width": 500,
    "median_height": 375,
    "p95_long_side": None,
    "p99_long_side": None,
    "max_long_side": None,
    "mean_kb": 110.0,  # ~140 GB of JPEGs / 1.28M images
    "median_kb": None,
    "fraction_420": None,
}


def iter_photos() -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
    """Yield (name, loader) for each licensed colour photo that is installed.

    Yields:
        The photo's name and a function returning it as an RGB uint8 array.
    """
    import skimage.data

    for name in ("astronaut", "chelsea", "coffee", "hubble_deep_field", "retina", "rocket"):
        yield name, getattr(skimage.data, name)
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        return
    for filename in ("china.jpg", "flower.jpg"):
        yield pathlib.Path(filename).stem, lambda filename=filename: load_sample_image(filename)


def collect_photos(folder: pathlib.Path) -> list[pathlib.Path]:
    """Write the source photos to ``folder`` as PNGs, reusing existing ones.

    Args:
        folder: Cache folder for the photos; created if missing.

    Returns:
        The paths of the photos, in a fixed order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, load in iter_photos():
        path = folder / f"{name}.png"
        if not path.exists():
            Image.fromarray(load()).convert("RGB").save(path)
        paths.append(path)
    return paths


def render_highres(photo: Image.Image, rng: np.random.Generator) -> bytes:
    """A 1-4 MP photographic JPEG from ``photo``: a random crop, upscaled, with film grain.

    The crop keeps 60-100% of each side; the output has a uniform 1-4 megapixels and an aspect
    ratio of 4:3, 3:2 or 16:9 (landscape three times in four), is upscaled with Lanczos, gets
    Gaussian grain (sigma 4 grey levels) so it carries camera-like detail, and is saved at
    quality 90 (4:2:0), standing in for OpenImages/iNaturalist-sized photos.
    """
    photo = photo.convert("RGB")
    w, h = photo.size
    crop_w, crop_h = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    left, top = int(rng.integers(0, w - crop_w + 1)), int(rng.integers(0, h - crop_h + 1))
    megapixels = rng.uniform(1.0, 4.0)
    aspect = rng.choice([4 / 3, 3 / 2, 16 / 9]) ** (1 if rng.random() < 0.75 else -1)
    out_w = round((megapixels * 1e6 * aspect) ** 0.5)
    out_h = round(out_w / aspect)
    image = photo.crop((left, top, left + crop_w, top + crop_h)).resize((out_w, out_h), Image.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 4.0, (out_h, out_w, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _render_highres_file(job: tuple[pathlib.Path, pathlib.Path, int]) -> None:
    photo_path, out, seed_index = job
    with Image.open(photo_path) as photo:
        out.write_bytes(render_highres(photo, np.random.default_rng(seed_index)))


def make_highres_folder(root: pathlib.Path, *, num_images: int, num_classes: int, seed: int = 0,
                        workers: int = 1) -> pathlib.Path:
    """``root/<class>/<i>.JPEG``: ``num_images`` 1-4 MP JPEGs (:func:`render_highres`), dealt over classes.

    Image ``i`` is rendered from shipped photo ``i % photos`` with its own generator seeded
    ``[seed, i]``, so the corpus is the same whatever ``workers``. Written to a staging folder
    renamed at the end: an interrupted run leaves no half corpus.
    """
    photos = sorted(PHOTO_DIR.glob("*.jpg"))
    staging = root.with_name(root.name + ".partial")
    jobs = []
    for i in range(num_images):
        out = staging / f"class_{i % num_classes:03d}" / f"{i:05d}.JPEG"
        out.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((photos[i % len(photos)], out, [seed, i]))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_render_highres_file, jobs, chunksize=4)
    staging.rename(root)
    return root


def corpus_stats(root: pathlib.Path) -> dict[str, float | int]:
    """Measure the dimensions, file sizes and chroma subsampling of a corpus.

    Args:
        root: ImageFolder root holding ``*.JPEG`` files.

    Returns:
        Statistics keyed like ``IMAGENET_STATS``.
    """
    widths, heights, sizes, subsampled = [], [], [], []
    for path in root.rglob("*.JPEG"):
        with Image.open(path) as image:
            widths.append(image.width)
            heights.append(image.height)
            subsampled.append(JpegImagePlugin.get_sampling(image) == JPEG_SUBSAMPLING_420)
        sizes.append(path.stat().st_size / KB)
    long_sides = np.maximum(widths, heights)
    return {
        "images": len(sizes),
        "median_width": float(np.median(widths)),
        "median_height": float(np.median(heights)),
        "p95_long_side": float(np.percentile(long_sides, 95)),
        "p99_long_side": float(np.percentile(long_sides, 99)),
        "max_long_side": int(long_sides.max()),
        "mean_kb": float(np.mean(sizes)),
        "median_kb": float(np.median(sizes)),
        "fraction_420": float(np.mean(subsampled)),
    }


def format_table(corpus: dict, imagenet: dict) -> str:
    """Render the corpus and ImageNet statistics side by side."""
    lines = [f"{'statistic':<16}{'corpus':>12}{'ImageNet':>12}"]
    for key, value in corpus.items():
        reference = imagenet[key]
        lines.append(
            f"{key:<16}{value:>12.6g}{'n/a' if reference is None else format(reference, '.6g'):>12}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=pathlib.Path, metavar="OUT_DIR", help="output folder")
    parser.add_argument(
        "--num-images", type=int, default=10_000, help="number of images (default: %(default)s)"
    )
    parser.add_argument(
        "--num-classes", type=int, default=100, help="number of classes (default: %(default)s)"
    )
    parser.add_argument("--profile", choices=PROFILES, default="imagenet",
                        help="image sizes: ImageNet-like or 1-4 megapixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes (default: %(default)s)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build the corpus and report its statistics."""
    args = parse_args(argv)
    start = time.perf_counter()
    if args.profile == "highres":
        photos = sorted(PHOTO_DIR.glob("*.jpg"))
        root = make_highres_folder(args.out_dir / "train", num_images=args.num_images,
                                   num_classes=args.num_classes, seed=args.seed, workers=args.workers)
    else:
        photos = collect_photos(args.out_dir / "source_photos")
        root = make_photo_folder(
            args.out_dir / "train",
            num_images=args.num_images,
            num_classes=args.num_classes,
            seed=args.seed,
            size_profile="imagenet",
            photos=photos,
            workers=args.workers,
            progress=True,
        )
    seconds = time.perf_counter() - start
    stats = corpus_stats(root)
    print(format_table(stats, IMAGENET_STATS))
    print(f"rendered in {seconds:.1f} s with {args.workers} worker(s)")
    report = {
        "corpus": stats,
        "imagenet": IMAGENET_STATS,
        "photos": [path.name for path in photos],
        "profile": args.profile,
        "seconds": seconds,
        "workers": args.workers,
        "seed": args.seed,
    }
    (args.out_dir / "corpus_stats.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
