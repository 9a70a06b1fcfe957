"""GPU check of LMDBLoader's device decoding: pixels, memory over epochs, throughput against ImageFolder and DALI.

Run by ``benchmarks/gpu/check.sh`` (which installs what is needed and runs the CUDA tests
first; see benchmarks/README.md, "GPU check"). Three checks, on the device given:

* **pixels**: ``LMDBLoader(decode="device")`` on the device against the same loader on the CPU
  (libjpeg-turbo + the same batched resize) and against the worker path
  (``decode="worker"``, the CPU's DCT-scaled decode), same seed (same boxes and flips), train
  and val, on the tests' fixture corpus (27 small photos plus grayscale, CMYK, PNG, 1x1 and
  progressive images): mean, 99th percentile and maximum absolute difference in grey levels.
  Passes when the device-vs-CPU mean is at most ``PIXEL_MEAN_BOUND``.
* **memory**: four epochs of the device path (train, persistent workers); CUDA memory
  reserved and the main process's RSS (after ``malloc_trim``) after each; passes when, for
  each, the smaller of the last two epochs' growths is at most ``MEMORY_GROWTH_BOUND`` percent.
  A leak grows every epoch; a one-time warm-up (the first epoch's allocator caches, a thread
  pool or malloc arena started late) grows one, which the dry runs showed (up to 2.8% once).
* **throughput**: ``--epochs`` whole epochs of ``--batch-size`` batches after one warm-up
  epoch (DataLoader workers prefetch many batches at the start: timing whole epochs counts
  every loader's steady state and its epoch boundaries alike), train
  (RandomResizedCrop 224 + flip) and val (Resize 256 + CenterCrop 224), of
  ``LMDBLoader(device, decode="device")``, ``LMDBLoader(device, decode="worker")``,
  ``ImageFolder`` + Pillow + torchvision v2 with the stock ``DataLoader`` (uint8 batches,
  normalised on the device) and DALI's mixed pipeline (``fn.readers.file`` +
  ``fn.decoders.image_random_crop``/``fn.decoders.image`` on ``device="mixed"`` + resize +
  ``crop_mirror_normalize``: NVIDIA's ResNet-50 recipe), all on the same generated
  ImageNet-sized JPEGs, with as many worker processes / DALI threads as CPU cores.
  Reported, not judged.

``--cpu`` is the dry run: everything on ``device="cpu"``; DALI's mixed decoder needs CUDA and
is listed as not measured. Writes a JSON (``--out``; ``benchmarks/gpu/results.json`` replaces the
committed one and re-renders benchmarks/RESULTS.md) and prints its RESULTS.md section,
``markdown(results)``.

Example:
    python -m benchmarks.gpu.check --device cuda --out benchmarks/gpu/results.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.util
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from lmdb_dataset import LMDBLoader, NormalizeBatch, convert_image_folder
from lmdb_dataset.tools.photo_folders import make_photo_folder

from .. import report

ROOT = report.BENCHMARKS.parent

PIXEL_MEAN_BOUND = 2.0
"""Most mean |device - CPU| grey levels the device path may differ by: nvJPEG's IDCT and chroma
upsampling are not libjpeg-turbo's (a grey level or two on edges)."""
MEMORY_GROWTH_BOUND = 5.0
"""Most growth, in percent, of CUDA memory reserved and of the main process's RSS over an epoch (see the module)."""
GREY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}
"""Normalisation that leaves grey levels (0-255) as they are."""
CORES = len(os.sched_getaffinity(0))
Epochs = Callable[[int], Iterable]
"""``epoch(n)``: the batches of epoch ``n`` of a loader under test."""
Case = Callable[..., Epochs]
"""``case(train=, device=, args=)``: builds a loader, returns its :data:`Epochs`."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default), or cpu for the dry run")
    parser.add_argument("--images", type=int, default=4096, help="generated ImageNet-sized JPEGs (default 4096)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per case, after one warm-up (default 2)")
    parser.add_argument("--size", type=int, default=224, help="output side (default 224; val resizes to 256/224 x)")
    parser.add_argument("--workers", type=int, default=CORES, help=f"workers / DALI threads (default: all, {CORES})")
    parser.add_argument("--tests", default="not run", help="the CUDA tests' outcome, as check.sh saw it")
    parser.add_argument("--data", type=Path, default=report.BENCHMARKS / "data" / "gpu",
                        help="corpus cache (ignored by git)")
    parser.add_argument("--out", type=Path, help="JSON results (default: DATA/gpu_check.json)")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- data


def bench_corpus(data: Path, images: int, workers: int) -> tuple[Path, Path]:
    """``(ImageFolder root, its LMDB conversion)`` of ``images`` ImageNet-sized photos, cached under ``data``."""
    folder, lmdb = data / f"imagenet-{images}", data / f"imagenet-{images}.lmdb"
    if not folder.exists():
        make_photo_folder(folder.with_suffix(".partial"), num_images=images, num_classes=10, size_profile="imagenet",
                          seed=0, workers=workers)
        folder.with_suffix(".partial").rename(folder)
    if not lmdb.exists():
        convert_image_folder(folder, lmdb, workers=workers, progress=False)
    return folder, lmdb


def fixture_corpus(data: Path) -> Path:
    """The tests' fixture dataset (``tests/conftest.py``): 27 photos and the awkward images, converted."""
    spec = importlib.util.spec_from_file_location("tests_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    add_special_images = conftest.add_special_images

    folder, lmdb = data / "fixture", data / "fixture.lmdb"
    if not lmdb.exists():
        make_photo_folder(folder, num_images=27, num_classes=3, size_profile="small", seed=27)
        add_special_images(folder)
        convert_image_folder(folder, lmdb, workers=0, order="folder", progress=False)
    return lmdb


# --------------------------------------------------------------------------- checks


def pixel_check(path: Path, device: str, *, size: int) -> list[dict[str, Any]]:
    """Grey-level differences of the device path on ``device`` against the CPU, train and val, same draws."""
    def images(split: str, on: str, decode: str) -> tuple[torch.Tensor, torch.Tensor]:
        loader = LMDBLoader(path, batch_size=64, train=split == "train", shuffle=False, drop_last=False, seed=0,
                            num_workers=2, size=size, device=on, decode=decode, **GREY)
        batches = [(x.cpu(), y.cpu()) for x, y in loader]
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    rows = []
    for split in ("train", "val"):
        device_images, device_labels = images(split, device, "device")
        for against, (reference, labels) in (("device path on the CPU", images(split, "cpu", "device")),
                                             ("worker path on the CPU", images(split, "cpu", "worker"))):
            difference = (device_images - reference).abs().flatten()
            rows.append({"split": split, "against": against, "images": len(labels),
                         "labels_equal": bool(torch.equal(labels, device_labels)),
                         "mean": round(difference.mean().item(), 4),
                         "p99": round(torch.quantile(difference[:: max(1, len(difference) // 2**22)], 0.99).item(), 2),
                         "max": round(difference.max().item(), 2)})
    return rows


def settled_rss_mb() -> float:
    """The main process's RSS in MB once freed memory went back to the OS (``malloc_trim``): leaks stay in it,
    what glibc keeps cached for the next batch (its threshold rises with the largest buffers freed) does not."""
    import psutil

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss / 2**20


def memory_check(path: Path, device: str, *, batch_size: int, workers: int, size: int,
                 epochs: int = 4) -> dict[str, Any]:
    """CUDA memory reserved and main-process RSS (settled) after each of ``epochs`` epochs of the device path."""
    loader = LMDBLoader(path, batch_size=batch_size, num_workers=workers, size=size, device=device, decode="device")
    cuda = torch.device(device).type == "cuda"
    series: dict[str, list[float]] = {"rss_mb": [], **({"cuda_reserved_mb": []} if cuda else {})}
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for _ in loader:
            pass
        if cuda:
            torch.cuda.synchronize()
            series["cuda_reserved_mb"].append(torch.cuda.memory_reserved() / 2**20)
        series["rss_mb"].append(settled_rss_mb())
    growth = {name: [round(100 * (values[i] / values[i - 1] - 1), 2) for i in (-2, -1)]
              for name, values in series.items()}
    return {"epochs": epochs, "series": {k: [round(v, 1) for v in values] for k, values in series.items()},
            "growth_pct": growth, "passed": all(min(g) <= MEMORY_GROWTH_BOUND for g in growth.values())}


# --------------------------------------------------------------------------- throughput


def time_epochs(epoch: Epochs, *, epochs: int, device: torch.device) -> dict[str, float]:
    """img/s over ``epochs`` epochs after a warm-up one (device synchronised at both ends); the first batch's s."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    first = None
    for _ in epoch(0):
        if first is None:
            sync()
            first = time.perf_counter() - start
    sync()
    timed, images = time.perf_counter(), 0
    for n in range(1, epochs + 1):
        for x, _ in epoch(n):
            images += len(x)
    sync()
    return {"img_s": round(images / (time.perf_counter() - timed), 1), "first_batch_s": round(first or 0.0, 2)}


def lmdb_case(path: Path, decode: str) -> Case:
    def make(*, train: bool, device: torch.device, args: argparse.Namespace) -> Epochs:
        loader = LMDBLoader(path, batch_size=args.batch_size, train=train, num_workers=args.workers, size=args.size,
                            device=device, decode=decode, drop_last=True)

        def epoch(n: int) -> Iterable:
            loader.set_epoch(n)
            return loader
        return epoch
    return make


def imagefolder_case(folder: Path) -> Case:
    """torchvision ImageFolder + Pillow + v2 transforms to uint8, stock DataLoader, normalised on the device."""
    def make(*, train: bool, device: torch.device, args: argparse.Namespace) -> Epochs:
        from torch.utils.data import DataLoader
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import v2

        resize = round(args.size * 256 / 224)
        crop = ([v2.RandomResizedCrop(args.size, antialias=True), v2.RandomHorizontalFlip()] if train
                else [v2.Resize(resize, antialias=True), v2.CenterCrop(args.size)])
        dataset = ImageFolder(str(folder), transform=v2.Compose([v2.PILToTensor(), *crop]))
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=train, num_workers=args.workers,
                            pin_memory=device.type == "cuda", drop_last=True, persistent_workers=True)
        normalize = NormalizeBatch().to(device)

        def epoch(n: int) -> Iterable:
            return ((normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)) for x, y in loader)
        return epoch
    return make


def dali_case(folder: Path) -> Case:
    """DALI's mixed pipeline (NVIDIA's ResNet-50 recipe) on the same JPEGs and threads."""
    def make(*, train: bool, device: torch.device, args: argparse.Namespace) -> Epochs:
        from ..common.pipelines import dali_iterator

        iterator = dali_iterator(folder, train=train, decoder="mixed", device_id=device.index or 0,
                                 batch_size=args.batch_size, num_threads=args.workers, size=args.size)

        def epoch(n: int) -> Iterable:
            return ((batch[0]["images"], batch[0]["labels"]) for batch in iterator)  # auto_reset: one epoch each
        return epoch
    return make


def throughput(folder: Path, lmdb: Path, device: torch.device, args: argparse.Namespace) -> tuple[list, dict]:
    """Rows of img/s per (split, loader), and the loaders not measured with the reason."""
    cases = {"lmdb-device-decode": lmdb_case(lmdb, "device"), "lmdb-worker-decode": lmdb_case(lmdb, "worker"),
             "imagefolder+DataLoader": imagefolder_case(folder), "dali-mixed": dali_case(folder)}
    missing: dict[str, str] = {}
    if device.type != "cuda":
        missing["dali-mixed"] = "DALI's mixed decoder needs CUDA (dry run on the CPU)"
    else:
        try:
            import nvidia.dali  # noqa: F401
        except ImportError as exc:
            missing["dali-mixed"] = f"not installed ({exc}); check.sh installs it"
    rows = []
    for split in ("train", "val"):
        for name, make in cases.items():
            if name in missing:
                continue
            epoch = make(train=split == "train", device=device, args=args)
            rows.append({"split": split, "loader": name, **time_epochs(epoch, epochs=args.epochs, device=device)})
    return rows, missing


# --------------------------------------------------------------------------- report


def device_name(device: torch.device) -> str:
    """The GPU's name and CUDA version, or the CPU's."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return "CPU (dry run: --cpu)"


def markdown(results: dict[str, Any]) -> str:
    """The "GPU check" section of RESULTS.md for a saved run."""
    lines = ["## GPU check: device decoding", "", *report.provenance_lines(results),
             f"Device: {results['device_name']}; {results['workers']} worker processes / DALI threads; batch "
             f"{results['batch_size']}, output {results['size']}; corpus {results['images']} generated ImageNet-sized "
             f"JPEGs (`make_photo_folder`, imagenet profile).", ""]
    checks = results["checks"]
    verdict = "passed" if results["passed"] else "dry run" if results["device"] == "cpu" else "FAILED"
    lines += [f"Verdict: {verdict} "
              f"({', '.join(f'{name} {outcome}' for name, outcome in checks.items())}).", ""]
    lines += [f"Pixels (grey levels 0-255, same seed; device path on the device vs ...; pass: mean <= "
              f"{PIXEL_MEAN_BOUND} against the device path on the CPU):", "",
              "| split | against | images | labels equal | mean | p99 | max |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['split']} | {r['against']} | {r['images']} | {r['labels_equal']} | {r['mean']} | {r['p99']} | "
              f"{r['max']} |" for r in results["pixels"]]
    memory = results["memory"]
    lines += ["", f"Memory over {memory['epochs']} epochs of the device path (after each epoch; pass: the smaller "
              f"growth of the last two epochs <= {MEMORY_GROWTH_BOUND}%): "
              + "; ".join(f"{name} {values} (growth {', '.join(map(str, memory['growth_pct'][name]))}%)"
                          for name, values in memory["series"].items()) + ".", ""]
    rows = results["throughput"]
    lines += [f"Throughput ({results['epochs']} epochs after a warm-up one, img/s; ratio to "
              "ImageFolder + DataLoader and to DALI in the same split):", "",
              "| split | loader | img/s | first batch s | vs ImageFolder | vs DALI |", "|---|---|---|---|---|---|"]
    for row in rows:
        peers = {r["loader"]: r["img_s"] for r in rows if r["split"] == row["split"]}
        ratios = [f"{row['img_s'] / peers[p]:.2f}x" if p in peers else "n/a"
                  for p in ("imagefolder+DataLoader", "dali-mixed")]
        lines.append(f"| {row['split']} | {row['loader']} | {row['img_s']} | {row['first_batch_s']} | "
                     f"{ratios[0]} | {ratios[1]} |")
    for name, reason in results["not_measured"].items():
        lines.append(f"\nNot measured: {name}: {reason}.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here; use --device cpu for the dry run")
    args.data.mkdir(parents=True, exist_ok=True)
    folder, lmdb = bench_corpus(args.data, args.images, args.workers)
    print(f"corpus: {folder} ({args.images} images), {lmdb}", flush=True)
    pixels = pixel_check(fixture_corpus(args.data), args.device, size=args.size)
    print("pixels:", pixels, flush=True)
    memory = memory_check(lmdb, args.device, batch_size=args.batch_size, workers=args.workers, size=args.size)
    print("memory:", memory, flush=True)
    rows, missing = throughput(folder, lmdb, device, args)
    pixels_ok = all(r["labels_equal"] for r in pixels) and all(
        r["mean"] <= PIXEL_MEAN_BOUND for r in pixels if r["against"] == "device path on the CPU")
    checks = {"tests": args.tests, "pixels": "passed" if pixels_ok else "FAILED",
              "memory": "passed" if memory["passed"] else "FAILED",
              "throughput": "measured" if not missing else f"measured, without {', '.join(missing)}"}
    results = {**report.provenance("gpu.check", argv), "device_name": device_name(device), "device": args.device,
               "images": args.images, "batch_size": args.batch_size, "epochs": args.epochs,
               "size": args.size, "workers": args.workers, "checks": checks,
               "passed": args.tests == "passed" and pixels_ok and memory["passed"] and not missing,
               "pixels": pixels, "memory": memory, "throughput": rows, "not_measured": missing}
    print(markdown(results))
    report.save(results, args.out or args.data / "gpu_check.json")
    return results


if __name__ == "__main__":
    outcome = main()
    raise SystemExit(0 if outcome["passed"] or outcome["device"] == "cpu" else 1)
