"""Storage shaping (``convert --max-side N``): disk, train speed and pixel difference of each choice, two corpora.

For each choice the same ImageFolder is converted:

* ``original``: ``convert`` (the original JPEG bytes);
* ``encoded-512`` and ``encoded-256``: ``convert --max-side N --quality 90`` (images longer than N
  re-encoded at a longer side of N; smaller ones keep their bytes);
* ``raw-256``: ``convert --storage raw --max-side 256`` (pixels at a longer side of at most 256);
* ``ffcv-256`` / ``ffcv-512``: FFCV's ``RGBImageField(write_mode="jpg", max_resolution=N, jpeg_quality=90)``
  (every image re-encoded; written with 2 workers and its smallest page size, 2 MiB), read by its
  ``Loader`` with 2 threads and its own pipeline (``RandomResizedCropRGBImageDecoder``, flip, normalise
  to float32); val crops by its ``CenterCropRGBImageDecoder(224, ratio=224/256)``. Measured only when
  ``ffcv`` imports (otherwise listed as not measured).

on two corpora: ``imagenet`` (``make_photo_folder(size_profile="imagenet")``, median 500x375) and
``highres`` (GENERATED 1-4 MP photos, as in benchmarks/decode/fused_decode.py). Measured per choice:

* disk: the dataset's files (data.mdb + lock.mdb), MB and x the ``original`` dataset;
* convert: wall seconds of the conversion (2 workers), once;
* train speed: img/s of one epoch of ``LMDBLoader(device="cpu", train=True, num_workers=2,
  batch_size=32, size=224)`` after a warm-up epoch (persistent workers), every choice once per round,
  the order rotated each round; median [min, max] over the rounds, and the median of the per-round
  ratios to ``original``;
* val pixel difference: ``Resize(256) + CenterCrop(224)`` (uint8, antialiased, what
  ``LMDBLoader(train=False)`` crops) of each stored image vs of the original image, the same sample:
  mean and 99th percentile of |difference| over every output pixel and channel, in grey levels (0-255);
* re-encode difference: the stored image vs the exact Lanczos resize of the decoded original at the
  stored size (``lmdb_dataset.write.shaping.resize_pixels``), mean |difference|: the loss of the JPEG
  re-encoding alone (0 for raw).

Writes a JSON (default: benchmarks/data/results/decode/storage_shaping.json); ``--out
benchmarks/decode/storage_shaping.json`` replaces the committed results and re-renders benchmarks/RESULTS.md;
``--readme README.md`` rewrites the README's table. ``markdown(results)`` renders its section,
``readme_block(results)`` the README's table; ``--render JSON`` renders a saved run without measuring.

Example:
    python -m benchmarks.decode.storage_shaping --imagenet-images 600 --highres-images 200 --rounds 5 \\
        --out benchmarks/decode/storage_shaping.json --readme README.md
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import time

import numpy as np
import torch

from lmdb_dataset import LMDBImageDataset, LMDBLoader, convert_image_folder, val_transform
from lmdb_dataset.storage.environment import environments
from lmdb_dataset.tools.photo_folders import make_photo_folder
from lmdb_dataset.write.shaping import resize_pixels

from .. import report
from . import fused_decode

MB = 1e6
PAGE_SIZE = 1 << 21
"""FFCV's page size here: its minimum, 2 MiB (its default, 8 MiB, pads a small file by up to 8 MiB a worker)."""
CHOICES: dict[str, dict] = {
    "original": {},
    "encoded-512": {"max_side": 512, "quality": 90},
    "encoded-256": {"max_side": 256, "quality": 90},
    "raw-256": {"storage": "raw", "max_side": 256},
}
"""The conversions measured: name -> ``convert_image_folder`` keyword arguments."""
FFCV_CHOICES = {"ffcv-256": 256, "ffcv-512": 512}
"""FFCV at the same max resolutions (``RGBImageField(max_resolution=N, jpeg_quality=90)``)."""
LABELS = {"original": "encoded, original bytes", "encoded-512": "encoded --max-side 512 --quality 90",
          "encoded-256": "encoded --max-side 256 --quality 90", "raw-256": "raw --max-side 256",
          "ffcv-256": "FFCV max_resolution=256, jpeg_quality=90",
          "ffcv-512": "FFCV max_resolution=512, jpeg_quality=90"}


def image_folders(data: pathlib.Path, imagenet_images: int, highres_images: int) -> dict[str, pathlib.Path]:
    """``{corpus: ImageFolder root}``, generated under ``data`` once."""
    imagenet = data / f"imagenet-{imagenet_images}-folder"
    if not imagenet.exists():
        staging = imagenet.with_suffix(".partial")  # renamed when complete: an interrupted run starts it again
        shutil.rmtree(staging, ignore_errors=True)
        make_photo_folder(staging, num_images=imagenet_images, num_classes=4, size_profile="imagenet", seed=0,
                          workers=2)
        staging.rename(imagenet)
    highres = data / f"highres-{highres_images}-folder"
    if not highres.exists():
        fused_decode.highres_corpus(data, highres_images)  # the generated 1-4 MP photos, flat
        staging = highres.with_suffix(".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for i, photo in enumerate(sorted((data / f"highres-{highres_images}").glob("*.jpg"))):
            link = staging / f"class_{i % 2}" / photo.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(photo.resolve())
        staging.rename(highres)
    return {"imagenet": imagenet, "highres": highres}


def disk_mb(path: pathlib.Path) -> float:
    """MB of the files directly in a dataset directory."""
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / MB


def epoch_img_s(path: pathlib.Path, batch_size: int) -> float:
    """Images/s of the second epoch of a train ``LMDBLoader`` on the CPU with 2 workers (the first warms up)."""
    loader = LMDBLoader(path, batch_size=batch_size, train=True, num_workers=2, device="cpu", size=224, seed=0,
                        persistent_workers=True)
    for _ in loader:
        pass
    loader.set_epoch(1)
    count = 0
    start = time.perf_counter()
    for images, _ in loader:
        count += len(images)
    seconds = time.perf_counter() - start
    if not count:
        raise SystemExit(f"{path}: not one full batch of {batch_size} images per epoch; lower --batch-size")
    del loader
    environments.release(path)
    return count / seconds


def differences(original: pathlib.Path, shaped: pathlib.Path) -> dict[str, float]:
    """Val-crop difference (mean, p99) and re-encode difference (mean) of ``shaped`` vs ``original``."""
    crop = val_transform(224, resize=256)
    first, second = LMDBImageDataset(original, output="numpy"), LMDBImageDataset(shaped, output="numpy")
    histogram = np.zeros(256, dtype=np.int64)
    reencode_sum = reencode_count = 0
    for i in range(len(first)):
        full, stored = first[i][0], second[i][0]
        outputs = [crop(torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1)).int() for p in (full, stored)]
        histogram += np.bincount((outputs[0] - outputs[1]).abs().flatten().numpy(), minlength=256)
        exact = resize_pixels(full, max(stored.shape[:2])) if stored.shape != full.shape else full
        reencode_sum += int(np.abs(exact.astype(np.int32) - stored).sum())
        reencode_count += stored.size
    return {**_summary(histogram), "reencode_mean_abs": round(reencode_sum / reencode_count, 2)}


def ffcv_reason() -> str | None:
    """None when FFCV's writer and loader import, else why FFCV is not measured."""
    try:
        import ffcv.fields.decoders
        import ffcv.loader
        import ffcv.transforms
        import ffcv.writer  # noqa: F401
    except Exception as exc:
        return f"not measured: ffcv does not import in this environment ({type(exc).__name__}: {exc})"
    return None


def ffcv_write(folder: pathlib.Path, path: pathlib.Path, max_resolution: int) -> float:
    """``path``: ``folder`` written by FFCV's ``DatasetWriter`` with ``RGBImageField(write_mode="jpg",
    max_resolution=N, jpeg_quality=90)`` (every image re-encoded), 2 workers; returns the seconds it took."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    DatasetWriter(str(path), {"image": RGBImageField(write_mode="jpg", max_resolution=max_resolution,
                                                     jpeg_quality=90), "label": IntField()},
                  page_size=PAGE_SIZE, num_workers=2).from_indexed_dataset(ImageFolder(str(folder)))
    return time.perf_counter() - start


def ffcv_loader(path: pathlib.Path, batch_size: int, *, train: bool):
    """FFCV's ``Loader`` with 2 threads. Train: ``RandomResizedCropRGBImageDecoder(224)`` + flip + normalise
    to float32 NCHW (what ``LMDBLoader`` delivers), random order, last partial batch dropped. Val: uint8
    ``CenterCropRGBImageDecoder(224, ratio=224/256)`` in index order."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    from lmdb_dataset.decode.transforms import IMAGENET_MEAN, IMAGENET_STD

    if train:
        image = [RandomResizedCropRGBImageDecoder((224, 224)), RandomHorizontalFlip(),
                 NormalizeImage(np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255, np.float32),
                 ToTensor(), ToTorchImage()]
    else:
        image = [CenterCropRGBImageDecoder((224, 224), ratio=224 / 256), ToTensor(), ToTorchImage()]
    return Loader(str(path), batch_size=batch_size, num_workers=2, drop_last=train, os_cache=True,
                  order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
                  pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze(1)]})


def ffcv_img_s(path: pathlib.Path, batch_size: int, loaders: dict) -> float:
    """Images/s of one epoch of FFCV's train ``Loader``, after a warm-up epoch.

    The loader of ``path`` is made (its pipeline compiled by numba, ~10-40 s) and warmed up by its
    first call, then kept in ``loaders`` for the next rounds: its threads stay, as persistent workers do.
    """
    if path not in loaders:
        loaders[path] = ffcv_loader(path, batch_size, train=True)
        for _ in loaders[path]:
            pass
    loader = loaders[path]
    count = 0
    start = time.perf_counter()
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start)


def ffcv_differences(original: pathlib.Path, beton: pathlib.Path) -> dict[str, float]:
    """FFCV's val crops (its ``CenterCropRGBImageDecoder``) vs ``Resize(256)+CenterCrop(224)`` of the originals."""
    crop = val_transform(224, resize=256)
    first = LMDBImageDataset(original, output="tensor")
    histogram = np.zeros(256, dtype=np.int64)
    index = 0
    for images, _ in ffcv_loader(beton, 32, train=False):
        for image in images:
            reference = crop(first[index][0]).int()
            histogram += np.bincount((reference - image.int()).abs().flatten().numpy(), minlength=256)
            index += 1
    return {**_summary(histogram), "reencode_mean_abs": None}


def _summary(histogram: np.ndarray) -> dict[str, float]:
    """Mean and 99th percentile of the |difference| values counted in ``histogram``."""
    cumulative = np.cumsum(histogram)
    return {"val_mean_abs": round(float((histogram * np.arange(256)).sum() / cumulative[-1]), 2),
            "val_p99_abs": int(np.searchsorted(cumulative, 0.99 * cumulative[-1]))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--imagenet-images", type=int, default=600, help="ImageNet-like images (default 600)")
    parser.add_argument("--highres-images", type=int, default=200, help="generated 1-4 MP images (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the train epochs (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="LMDBLoader batch size (default 32)")
    parser.add_argument("--data", type=pathlib.Path, default=report.BENCHMARKS / "data" / "storage_shaping",
                        help="where the corpora and datasets are written (default: benchmarks/data/storage_shaping)")
    parser.add_argument("--out", type=pathlib.Path, help="JSON results file (default: "
                        "benchmarks/data/results/decode/storage_shaping.json)")
    parser.add_argument("--readme", type=pathlib.Path, help="also write the table into this README.md "
                        "(between its storage-shaping-table markers)")
    parser.add_argument("--render", type=pathlib.Path, metavar="JSON",
                        help="measure nothing: render a saved run (its section, and --readme's table)")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        print(markdown(result))
        if args.readme:
            write_readme(result, args.readme)
        return result
    folders = image_folders(args.data, args.imagenet_images, args.highres_images)
    reason = ffcv_reason()
    paths: dict[tuple[str, str], pathlib.Path] = {}
    rows: dict[tuple[str, str], dict] = {}
    for corpus, folder in folders.items():
        for choice, options in CHOICES.items():
            path = args.data / "lmdb" / f"{corpus}-{choice}.lmdb"
            done = convert_image_folder(folder, path, workers=2, overwrite=True, progress=False, **options)
            environments.release(path)
            paths[corpus, choice] = path
            shaping = LMDBImageDataset(path)._meta.info.shaping
            rows[corpus, choice] = {"corpus": corpus, "choice": choice, "images": done.num_records,
                                    "disk_mb": round(disk_mb(path), 1), "convert_s": round(done.seconds, 1),
                                    "resized": None if shaping is None else shaping["resized"], "img_s": []}
            print(f"converted {corpus}/{choice}: {rows[corpus, choice]['disk_mb']} MB in {done.seconds:.1f} s",
                  flush=True)
        for choice, max_resolution in FFCV_CHOICES.items() if reason is None else ():
            path = args.data / "ffcv" / f"{corpus}-{choice}.beton"
            seconds = ffcv_write(folder, path, max_resolution)
            paths[corpus, choice] = path
            rows[corpus, choice] = {"corpus": corpus, "choice": choice, "images": len(LMDBImageDataset(
                paths[corpus, "original"])), "disk_mb": round(path.stat().st_size / MB, 1),
                "convert_s": round(seconds, 1), "resized": None, "img_s": []}
            print(f"wrote {corpus}/{choice}: {rows[corpus, choice]['disk_mb']} MB in {seconds:.1f} s", flush=True)
    load_before = os.getloadavg()[0]
    order = list(paths)
    ffcv_loaders: dict[pathlib.Path, object] = {}
    for round_index in range(args.rounds):
        shift = round_index % len(order)
        for key in order[shift:] + order[:shift]:
            speed = (ffcv_img_s(paths[key], args.batch_size, ffcv_loaders) if key[1] in FFCV_CHOICES
                     else epoch_img_s(paths[key], args.batch_size))
            rows[key]["img_s"].append(round(speed, 1))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{c}/{k} {rows[c, k]['img_s'][-1]}" for c, k in order), flush=True)
    load_after = os.getloadavg()[0]
    for (corpus, choice), row in rows.items():
        base = rows[corpus, "original"]
        row["disk_x"] = round(row["disk_mb"] / base["disk_mb"], 2)
        row["img_s_median"] = round(statistics.median(row["img_s"]), 1)
        row["speed_x"] = round(statistics.median(a / b for a, b in zip(row["img_s"], base["img_s"])), 2)
        if choice == "original":
            row.update(val_mean_abs=0.0, val_p99_abs=0, reencode_mean_abs=0.0)
        else:
            compare = ffcv_differences if choice in FFCV_CHOICES else differences
            row.update(compare(paths[corpus, "original"], paths[corpus, choice]))
    result = {**report.provenance("decode.storage_shaping", argv), "rounds": args.rounds, "batch_size": args.batch_size,
              "load_average_1min": [round(load_before, 2), round(load_after, 2)],
              "rows": list(rows.values()),
              "not_measured": [{"choice": name, "reason": reason} for name in FFCV_CHOICES] if reason else []}
    print(markdown(result))
    report.save(result, args.out or report.SCRATCH / "decode" / "storage_shaping.json")
    if args.readme:
        write_readme(result, args.readme)
    return result


def _table(rows: list[dict]) -> list[str]:
    lines = ["| corpus | choice | disk MB (x original) | train img/s, median [min, max] (x original) "
             "| val pixel diff mean / p99 | re-encode diff mean | resized | convert s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        resized = "-" if row["resized"] is None else f"{row['resized']} of {row['images']}"
        lines.append(f"| {row['corpus']} | {LABELS[row['choice']]} | {row['disk_mb']} ({row['disk_x']}x) | "
                     f"{row['img_s_median']} [{min(row['img_s'])}, {max(row['img_s'])}] ({row['speed_x']}x) | "
                     f"{row['val_mean_abs']} / {row['val_p99_abs']} | {_maybe(row['reencode_mean_abs'])} | {resized} | "
                     f"{row['convert_s']} |")
    return lines


def _maybe(value: float | None) -> str:
    return "n/a" if value is None else f"{value}"


def _findings(results: dict) -> list[str]:
    lines = []
    for corpus in dict.fromkeys(row["corpus"] for row in results["rows"]):
        rows = {row["choice"]: row for row in results["rows"] if row["corpus"] == corpus}
        parts = [f"{LABELS[name]} takes {row['disk_x']}x the disk and trains at {row['speed_x']}x the speed, "
                 f"{row['val_mean_abs']} grey levels from the original's val crops on average"
                 for name, row in rows.items() if name != "original"]
        lines.append(f"- `{corpus}` ({rows['original']['images']} images, original {rows['original']['disk_mb']} MB, "
                     f"{rows['original']['img_s_median']} img/s): " + "; ".join(parts) + ".")
    for entry in results.get("not_measured", []):
        lines.append(f"- {LABELS[entry['choice']]}: {entry['reason']}.")
    return lines


def markdown(results: dict) -> str:
    """The section of RESULTS.md for a saved run: settings, the table and what each choice costs and gains."""
    load = results["load_average_1min"]
    lines = ["## Storage shaping", "", *report.provenance_lines(results),
             f"Settings: LMDBLoader(device=\"cpu\", train=True, num_workers=2, batch_size={results['batch_size']}, "
             f"size=224), one epoch after a warm-up epoch, every choice once per round for {results['rounds']} "
             f"rounds (order rotated), 1-minute load average {load[0]} before and {load[1]} after; x original = "
             "median of the per-round ratios; val pixel diff = |Resize(256)+CenterCrop(224) of the stored image - "
             "the same of the original|, mean / 99th percentile in grey levels (0-255); re-encode diff = mean "
             "|stored - exact Lanczos resize of the original at the stored size|.", "",
             *_table(results["rows"]), "", *_findings(results), ""]
    return "\n".join(lines)


def readme_block(results: dict) -> str:
    """The README's table of this run (disk, speed, pixel difference of each choice on both corpora), with its
    command; README.md holds it between ``<!-- storage-shaping-table -->`` markers."""
    rows = results["rows"]
    sizes = ", ".join(f"`{corpus}` {count} images" for corpus, count in
                      dict.fromkeys((row["corpus"], row["images"]) for row in rows))
    lines = [f"Measured on {results['machine']['cores']} cores ({sizes}; {results['rounds']} interleaved rounds, "
             f"1-minute load average {results['load_average_1min'][0]} to {results['load_average_1min'][1]}) by "
             f"`{results['command']}`; `imagenet` is ImageNet-sized (median 500x375), `highres` generated "
             "1-4 MP photos. Train speed: `LMDBLoader(device=\"cpu\")`, 2 workers, RandomResizedCrop 224 + flip, "
             "median of the rounds (FFCV: its own Loader, 2 threads). Pixel difference: Resize(256) + "
             "CenterCrop(224) of the stored image vs of the original, grey levels 0-255 (FFCV: its own centre-crop "
             "decoder). All numbers: [benchmarks/RESULTS.md](benchmarks/RESULTS.md#storage-shaping).", "",
             "| corpus | stored as | disk (x original) | train img/s, 2 workers (x original) | val pixel diff "
             "mean / p99 |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['corpus']} | {LABELS[row['choice']]} | {row['disk_mb']} MB ({row['disk_x']}x) | "
                     f"{row['img_s_median']} ({row['speed_x']}x) | {row['val_mean_abs']} / {row['val_p99_abs']} |")
    for entry in results.get("not_measured", []):
        lines.append(f"| both | {LABELS[entry['choice']]} | {entry['reason']} | | |")
    return "\n".join(lines) + "\n"


def write_readme(results: dict, readme: pathlib.Path) -> None:
    """Replace the table between README's ``storage-shaping-table`` markers with :func:`readme_block`."""
    text = readme.read_text()
    start, end = "<!-- storage-shaping-table -->\n", "<!-- /storage-shaping-table -->"
    if start not in text or end not in text:
        raise SystemExit(f"{readme}: the {start.strip()} ... {end} markers are missing")
    head, rest = text.split(start, 1)
    readme.write_text(head + start + readme_block(results) + end + rest.split(end, 1)[1])
    print(f"updated the table in {readme}")


if __name__ == "__main__":
    main()
