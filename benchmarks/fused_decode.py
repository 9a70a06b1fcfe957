"""Fused crop decoding vs full decode + torchvision transforms, per CPU core, on two corpora.

Measures the decode stage of a DataLoader worker (one thread, bytes already in memory,
records read identically by both): ``full`` is what the datasets do with ``output="tensor"``
and ``train_transform()`` / ``val_transform()`` (simplejpeg full decode, then torchvision v2
RandomResizedCrop + flip or Resize + CenterCrop, uint8); ``fused`` is
``RandomResizedCropDecode`` / ``CenterCropDecode`` (crop chosen from the stored size, decode at
the smallest covering DCT scale, crop, resize). Two corpora side by side in one run:

* ``imagenet``: ``make_photo_folder(size_profile="imagenet")`` (median 500x375, like ImageNet);
* ``highres``: GENERATED 1-4 MP photos (the package's shipped photographs, randomly cropped,
  upscaled to 1-4 megapixels with Lanczos, film grain added so the JPEGs carry
  camera-like detail, saved at quality 90), standing in for OpenImages/iNaturalist-sized photos.

Timing is interleaved image by image (each image decoded by both methods back to back, which
goes first alternating) so that load from other processes hits both alike; every case runs
once per round. The ratio is ``full time / fused time`` per round, reported as median
[min, max]; img/s are those of the round with the median ratio. The 1-minute load average is printed before and
after. The mean absolute pixel difference (0-255) between the two outputs under the same
seed is reported too.

Targets (issue 12): fused >= 1.3x full on the high-resolution corpus, never slower (median
>= 1.0x) on the ImageNet-like one. Writes a JSON (default: in --data, a scratch folder);
``markdown(results)`` renders its section of RESULTS.md. ``--out benchmarks/fused_decode.json``
replaces the committed results and re-renders benchmarks/RESULTS.md.

Example:
    python benchmarks/fused_decode.py --rounds 5 --out benchmarks/fused_decode.json
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from lmdb_dataset import CenterCropDecode, RandomResizedCropDecode, make_photo_folder, train_transform, val_transform
from lmdb_dataset.decoding import decode_image, to_output
from lmdb_dataset.format import KIND_ENCODED, RecordHeader
from lmdb_dataset.samples import PHOTO_DIR

import report
from make_corpus import render_highres

Corpus = list[tuple[RecordHeader, bytes]]
TARGETS = {"highres": 1.3, "imagenet": 1.0}
"""The least median ratio fused / full each corpus must reach."""


def imagenet_corpus(root: pathlib.Path, num_images: int) -> Corpus:
    """ImageNet-like JPEGs from ``make_photo_folder`` (cached under ``root``)."""
    folder = root / f"imagenet-{num_images}"
    if not folder.exists():
        make_photo_folder(folder, num_images=num_images, num_classes=4, size_profile="imagenet", seed=0)
    return load_records(sorted(folder.rglob("*.JPEG")))


def highres_corpus(root: pathlib.Path, num_images: int) -> Corpus:
    """Generated 1-4 MP JPEGs: shipped photos cropped, upscaled, with film grain (cached under ``root``)."""
    folder = root / f"highres-{num_images}"
    if not folder.exists():
        folder.mkdir(parents=True)
        photos = sorted(PHOTO_DIR.glob("*.jpg"))
        rng = np.random.default_rng(0)
        for i in range(num_images):
            with Image.open(photos[i % len(photos)]) as photo:
                (folder / f"{i:04d}.jpg").write_bytes(render_highres(photo, rng))
    return load_records(sorted(folder.glob("*.jpg")))


def load_records(files: list[pathlib.Path]) -> Corpus:
    """Each file's bytes with the record header the converter would store (its decoded size)."""
    corpus = []
    for file in files:
        data = file.read_bytes()
        height, width = decode_image(data).shape[:2]  # as the converter stores it in the record header
        corpus.append((RecordHeader(kind=KIND_ENCODED, label=0, crc32=0, height=height, width=width, channels=3),
                       data))
    return corpus


def pipelines(size: int) -> dict[str, dict[str, Callable[[RecordHeader, bytes], torch.Tensor]]]:
    """``{split: {"full": f, "fused": f}}``, each ``f(header, payload) -> 3 x size x size`` uint8."""
    train, val = train_transform(size), val_transform(size, resize=round(size * 256 / 224))
    return {
        "train": {"full": lambda header, data: train(to_output(decode_image(data), "tensor")),
                  "fused": RandomResizedCropDecode(size)},
        "val": {"full": lambda header, data: val(to_output(decode_image(data), "tensor")),
                "fused": CenterCropDecode(size, resize=round(size * 256 / 224))},
    }


def time_pair(functions: dict[str, Callable[[RecordHeader, bytes], torch.Tensor]], corpus: Corpus,
              round_index: int) -> dict[str, float]:
    """Seconds each of ``full`` and ``fused`` takes over the corpus, timed image by image, alternating.

    Both methods decode each image back to back (which goes first alternates by image and
    round), so a burst of load from other processes hits both alike.
    """
    totals = {"full": 0.0, "fused": 0.0}
    for i, (header, data) in enumerate(corpus):
        order = ("full", "fused") if (i + round_index) % 2 == 0 else ("fused", "full")
        for name in order:
            torch.manual_seed(i)  # same box and flip for both
            start = time.perf_counter()
            functions[name](header, data)
            totals[name] += time.perf_counter() - start
    return totals


def pixel_difference(functions: dict[str, Callable], corpus: Corpus) -> float:
    """Mean |full - fused| over the corpus, same seed per image (same boxes and flips)."""
    total = 0.0
    for i, (header, data) in enumerate(corpus):
        outputs = []
        for name in ("full", "fused"):
            torch.manual_seed(i)
            outputs.append(functions[name](header, data).int())
        total += (outputs[0] - outputs[1]).abs().float().mean().item()
    return total / len(corpus)


def markdown(results: dict) -> str:
    """The section of RESULTS.md for a saved run: settings, the table and the targets' verdicts."""
    rows = results["rows"]
    load = results["load_average_1min"]
    versions = ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items())
    lines = ["## Fused crop decoding", "", *report.provenance_lines(results),
             *([f"Versions: {versions}", ""] if versions else []),
             f"Settings: {results['cpus']} CPUs, 1-minute load average {load[0]} before and {load[1]} after; "
             f"{results['rounds']} rounds interleaved image by image, 1 thread, output {results['size']}; "
             "ratio = full time / fused time per round, median [min, max]; img/s of the median round; pixel "
             "difference = mean |full - fused| in grey levels (0-255) under the same seed.", "",
             "| corpus | split | images | median MP | full img/s | fused img/s | fused / full, median [min, max] "
             "| mean abs pixel diff |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row['corpus']} | {row['split']} | {row['images']} | {row['median_megapixels']} | "
              f"{row['full_img_s']} | {row['fused_img_s']} | {row['ratio_median']}x "
              f"[{row['ratio_min']}, {row['ratio_max']}] | {row['mean_abs_pixel_difference']} |" for row in rows]
    lines.append("")
    for corpus, least in TARGETS.items():
        found = [row for row in rows if row["corpus"] == corpus]
        if found:
            met = all(row["ratio_median"] >= least for row in found)
            lines.append(f"- Target fused / full >= {least}x on `{corpus}` (median): {'met' if met else 'missed'}: "
                         + ", ".join(f"{row['split']} {row['ratio_median']}x (rounds {row['ratio_min']}x to "
                                     f"{row['ratio_max']}x)" for row in found) + ".")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--imagenet-images", type=int, default=300, help="ImageNet-like images (default 300)")
    parser.add_argument("--highres-images", type=int, default=60, help="generated 1-4 MP images (default 60)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--size", type=int, default=224, help="output side (default 224)")
    parser.add_argument("--data", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "fused_decode",
                        help="where the corpora are generated and cached (default: a scratch dir)")
    parser.add_argument("--out", type=pathlib.Path, help="JSON results file (default: in --data)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one DataLoader worker's view
    corpora = {"imagenet": imagenet_corpus(args.data, args.imagenet_images),
               "highres": highres_corpus(args.data, args.highres_images)}
    cases = pipelines(args.size)
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {}
    for round_index in range(args.rounds):
        for corpus_name, corpus in corpora.items():
            for split, functions in cases.items():
                for method, seconds in time_pair(functions, corpus, round_index).items():
                    times.setdefault(f"{corpus_name}/{split}/{method}", []).append(seconds)
    load_after = os.getloadavg()[0]
    rows = []
    for corpus_name, corpus in corpora.items():
        megapixels = statistics.median(h.height * h.width / 1e6 for h, _ in corpus)
        for split, functions in cases.items():
            full, fused = times[f"{corpus_name}/{split}/full"], times[f"{corpus_name}/{split}/fused"]
            ratios = [a / b for a, b in zip(full, fused)]
            middle = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]  # the median round
            rows.append({"corpus": corpus_name, "split": split, "images": len(corpus),
                         "median_megapixels": round(megapixels, 2),
                         "full_img_s": round(len(corpus) / full[middle], 1),
                         "fused_img_s": round(len(corpus) / fused[middle], 1),
                         "ratio_median": round(statistics.median(ratios), 2),
                         "ratio_min": round(min(ratios), 2), "ratio_max": round(max(ratios), 2),
                         "mean_abs_pixel_difference": round(pixel_difference(functions, corpus), 2)})
    result = {**report.provenance("fused_decode.py", argv), "rounds": args.rounds, "size": args.size,
              "load_average_1min": [round(load_before, 2), round(load_after, 2)], "cpus": os.cpu_count(),
              "rows": rows}
    print(markdown(result))
    report.save(result, args.out or args.data / "fused_decode.json")
    return result


if __name__ == "__main__":
    main()
