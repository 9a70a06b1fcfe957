"""Build an ImageNet-like benchmark corpus of photographic JPEGs.

Collects the openly licensed photographs listed in ``benchmarks/PHOTOS.md``
from installed packages into ``OUT_DIR/source_photos``, renders
``OUT_DIR/train/<class>/<class>_<i>.JPEG`` with
``lmdb_dataset.tools.photo_folders.make_photo_folder(size_profile="imagenet")``, then
prints the corpus statistics next to ImageNet's and writes them to
``OUT_DIR/corpus_stats.json``.

Example:
    python benchmarks/make_corpus.py /tmp/corpus --num-images 10000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, JpegImagePlugin

from lmdb_dataset.tools.photo_folders import make_photo_folder

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
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes (default: %(default)s)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build the corpus and report its statistics."""
    args = parse_args(argv)
    photos = collect_photos(args.out_dir / "source_photos")
    start = time.perf_counter()
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
        "seconds": seconds,
        "workers": args.workers,
        "seed": args.seed,
    }
    (args.out_dir / "corpus_stats.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
