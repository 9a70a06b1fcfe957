"""Fused crop decoding (whole and region JPEG decode) vs full decode + torchvision transforms, per CPU core.

Measures the decode stage of a DataLoader worker (one thread, bytes already in memory,
records read identically by all): ``full`` is what the datasets do with ``output="tensor"``
and ``train_transform()`` / ``val_transform()`` (simplejpeg full decode, then torchvision v2
RandomResizedCrop + flip or Resize + CenterCrop, uint8); ``fused`` is the fused decoders'
whole-image path, which they take without the region decoder (crop chosen from the stored size,
simplejpeg decode of the whole JPEG at the smallest covering DCT scale, crop, resize);
``region`` is ``RandomResizedCropDecode`` / ``CenterCropDecode`` with the region decoder
(``lmdb_dataset/decode/_jpeg_region.c``: only the rows and iMCU columns the output needs are decoded;
omitted when it is not built). Two corpora side by side in one run:

* ``imagenet``: ``make_photo_folder(size_profile="imagenet")`` (median 500x375, like ImageNet);
* ``highres``: GENERATED 1-4 MP photos (the package's shipped photographs, randomly cropped,
  upscaled to 1-4 megapixels with Lanczos, film grain added so the JPEGs carry
  camera-like detail, saved at quality 90), standing in for OpenImages/iNaturalist-sized photos.

Timing is interleaved image by image (each image decoded by every method back to back, which
goes first rotating) so that load from other processes hits all alike; every case runs
once per round. Ratios are ``full time / fused time`` (and ``/ region time``, and
``fused / region``) per round, reported as median [min, max]; img/s are those of the round with
the median ratio. The 1-minute load average is printed before and after. The absolute pixel
difference (0-255) to ``full`` under the same seed is reported (mean; for ``region`` also the
99th percentile and maximum).

``--candidates`` adds a decode-only table (no crop or resize) of the JPEG decoders considered
for region decoding, on the training boxes: simplejpeg whole at full scale and at the chosen
scale, the region decoder, Pillow's ``draft`` then crop, pyvips shrink-on-load + crop and
TurboJPEG 2.1's lossless ``tjTransform`` crop then a scaled decode (each where installed).
``--threads`` adds the thread-vs-process table: img/s of the training decode (and of its
decode and resize parts alone) in 1 and 2 threads of one process and in 1 and 2 processes.

Targets (issue 12): fused >= 1.3x full on the high-resolution corpus, never slower (median
>= 1.0x) on the ImageNet-like one. Writes a JSON (default: in --data, a scratch folder);
``markdown(results)`` renders its section of RESULTS.md. ``--out
benchmarks/decode/fused_decode.json`` replaces the committed results and re-renders benchmarks/RESULTS.md.

Example:
    python -m benchmarks.decode.fused_decode --rounds 5 --candidates --threads --out benchmarks/decode/fused_decode.json
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import io
import math
import multiprocessing
import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from lmdb_dataset import (
    CenterCropDecode,
    RandomResizedCropDecode,
    train_transform,
    val_transform,
)
from lmdb_dataset.decode.crop import (
    CropDecoder,
    decode_scaled,
    decode_window,
    fast_scale,
    region_decoding,
    scaled_window,
)
from lmdb_dataset.decode.image import decode_image, to_output
from lmdb_dataset.storage.format import KIND_ENCODED, RecordHeader
from lmdb_dataset.tools.photo_folders import PHOTO_DIR, make_photo_folder

from .. import report
from ..common.make_corpus import render_highres

Corpus = list[tuple[RecordHeader, bytes]]
TARGETS = {"highres": 1.3, "imagenet": 1.0}
"""The least median ratio fused / full each corpus must reach."""
REGION_TARGET = 1.0
"""The least median ratio region / fused (the region decoder never slower than the whole decode)."""


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


def whole_decode(decoder: CropDecoder) -> Callable[[RecordHeader, bytes], torch.Tensor]:
    """The fused decoder's path without the region decoder: whole JPEG at the chosen DCT scale, then ``finish``."""

    def run(header: RecordHeader, data: bytes) -> torch.Tensor:
        box = decoder.box(header.height, header.width)
        min_height, min_width = decoder.decode_size(header.height, header.width, box)
        pixels = decode_scaled(data, header, min_height=min_height, min_width=min_width)
        return decoder.finish(torch.from_numpy(pixels).permute(2, 0, 1), box, full_height=header.height,
                              full_width=header.width)

    return run


def pipelines(size: int) -> dict[str, dict[str, Callable[[RecordHeader, bytes], torch.Tensor]]]:
    """``{split: {"full": f, "fused": f, "region": f}}``, each ``f(header, payload) -> 3 x size x size`` uint8.

    ``region`` is left out when the region decoder is not built.
    """
    train, val = train_transform(size), val_transform(size, resize=round(size * 256 / 224))
    decoders = {"train": RandomResizedCropDecode(size), "val": CenterCropDecode(size, resize=round(size * 256 / 224))}
    full = {"train": lambda header, data: train(to_output(decode_image(data), "tensor")),
            "val": lambda header, data: val(to_output(decode_image(data), "tensor"))}
    return {split: {"full": full[split], "fused": whole_decode(decoder),
                    **({"region": decoder} if region_decoding() else {})} for split, decoder in decoders.items()}


def time_methods(functions: dict[str, Callable[[RecordHeader, bytes], torch.Tensor]], corpus: Corpus,
                 round_index: int) -> dict[str, float]:
    """Seconds each method takes over the corpus, timed image by image, the first one rotating.

    All methods decode each image back to back (which goes first rotates by image and round),
    so a burst of load from other processes hits all alike.
    """
    names = list(functions)
    totals = dict.fromkeys(names, 0.0)
    for i, (header, data) in enumerate(corpus):
        shift = (i + round_index) % len(names)
        for name in names[shift:] + names[:shift]:
            torch.manual_seed(i)  # same box and flip for all
            start = time.perf_counter()
            functions[name](header, data)
            totals[name] += time.perf_counter() - start
    return totals


def pixel_differences(functions: dict[str, Callable], corpus: Corpus) -> dict[str, dict[str, float]]:
    """``{method: {"mean", "p99", "max"}}`` of |full - method| over every output value of the corpus, same seeds."""
    differences: dict[str, list[np.ndarray]] = {name: [] for name in functions if name != "full"}
    for i, (header, data) in enumerate(corpus):
        outputs = {}
        for name, function in functions.items():
            torch.manual_seed(i)
            outputs[name] = function(header, data).int()
        for name, parts in differences.items():
            parts.append((outputs["full"] - outputs[name]).abs().flatten().numpy())
    stats = {}
    for name, parts in differences.items():
        values = np.concatenate(parts)
        stats[name] = {"mean": round(float(values.mean()), 3), "p99": float(np.percentile(values, 99)),
                       "max": int(values.max())}
    return stats


def decode_jobs(corpus: Corpus, size: int) -> list[tuple[RecordHeader, bytes, int, tuple[int, int, int, int]]]:
    """Per image: header, bytes, DCT scale (eighths) and box ``(top, bottom, left, right)`` at that scale
    of the training crop under seed = image index."""
    decoder, jobs = RandomResizedCropDecode(size), []
    for i, (header, data) in enumerate(corpus):
        torch.manual_seed(i)
        box = decoder.box(header.height, header.width)
        min_height, min_width = decoder.decode_size(header.height, header.width, box)
        eighths = fast_scale(header.height, header.width, min_height=min_height, min_width=min_width)
        scaled = math.ceil(header.height * eighths / 8), math.ceil(header.width * eighths / 8)
        jobs.append((header, data, eighths, scaled_window(decoder.window(header.height, header.width, box),
                                                          header.height, header.width, *scaled)))
    return jobs


def candidate_decoders() -> dict[str, Callable]:
    """Decode-only functions ``f(header, data, eighths, (top, bottom, left, right))`` of the installed candidates."""
    from PIL import Image

    def scaled(header: RecordHeader, eighths: int) -> tuple[int, int]:
        return math.ceil(header.height * eighths / 8), math.ceil(header.width * eighths / 8)

    def pillow_draft(header, data, eighths, box):
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", scaled(header, eighths)[::-1])
            top, bottom, left, right = box
            return np.asarray(image.convert("RGB").crop((left, top, right, bottom)))

    candidates = {
        "simplejpeg, whole, full scale": lambda header, data, eighths, box: simplejpeg.decode_jpeg(
            data, colorspace="RGB"),
        "simplejpeg, whole, chosen scale (fused)": lambda header, data, eighths, box: simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=scaled(header, eighths)[0], min_width=scaled(header, eighths)[1]),
        "Pillow draft, whole, then crop": pillow_draft,
    }
    if region_decoding():
        candidates[f"libjpeg-turbo {region_decoding()} region (region)"] = lambda header, data, eighths, box: \
            decode_window(data, header, (box[0] * 8 / eighths, box[2] * 8 / eighths, (box[1] - box[0]) * 8 / eighths,
                                         (box[3] - box[2]) * 8 / eighths), min_height=1, min_width=1)
    try:
        import pyvips
    except (ImportError, OSError):
        pyvips = None
    if pyvips is not None:
        pyvips.cache_set_max(0)

        def vips(header, data, eighths, box):
            image = pyvips.Image.new_from_buffer(data, "", shrink=8 // eighths, access="sequential")
            top, bottom, left, right = box
            right, bottom = min(right, image.width), min(bottom, image.height)
            return image.crop(left, top, right - left, bottom - top).write_to_memory()

        candidates[f"pyvips {pyvips.version(0)}.{pyvips.version(1)} shrink-on-load + crop"] = vips
    turbojpeg = _TurboJPEGCrop.load()
    if turbojpeg is not None:
        candidates["TurboJPEG 2.x tjTransform crop + scaled decode"] = turbojpeg
    return candidates


class _TurboJPEGCrop:
    """TurboJPEG 2.x's lossless crop (``tjTransform``, MCU-aligned) then a scaled decode, through ctypes."""

    class _Transform(ctypes.Structure):
        _fields_: ClassVar = [("r", ctypes.c_int * 4), ("op", ctypes.c_int), ("options", ctypes.c_int),
                              ("data", ctypes.c_void_p), ("customFilter", ctypes.c_void_p)]

    MCU: ClassVar = {0: (8, 8), 1: (16, 8), 2: (16, 16), 3: (8, 8), 4: (8, 16), 5: (32, 8)}  # TJSAMP -> (w, h)

    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.tjInitTransform.restype = lib.tjInitDecompress.restype = ctypes.c_void_p
        lib.tjTransform.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int,
                                    ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte)), ctypes.POINTER(ctypes.c_ulong),
                                    ctypes.POINTER(self._Transform), ctypes.c_int]
        lib.tjDecompress2.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                                      ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.tjDecompressHeader3.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong,
                                            *[ctypes.POINTER(ctypes.c_int)] * 4]
        lib.tjFree.argtypes = [ctypes.c_void_p]
        self.lib, self.transformer, self.decompressor = lib, lib.tjInitTransform(), lib.tjInitDecompress()

    @classmethod
    def load(cls) -> _TurboJPEGCrop | None:
        path = ctypes.util.find_library("turbojpeg")
        return cls(ctypes.CDLL(path)) if path else None

    def __call__(self, header: RecordHeader, data: bytes, eighths: int, box: tuple[int, int, int, int]) -> np.ndarray:
        fields = [ctypes.c_int() for _ in range(4)]
        self.lib.tjDecompressHeader3(self.decompressor, data, len(data), *fields)
        mcu_width, mcu_height = self.MCU[fields[2].value]
        top, bottom, left, right = box
        y0, x0 = top * 8 // eighths // mcu_height * mcu_height, left * 8 // eighths // mcu_width * mcu_width
        y1, x1 = min(header.height, math.ceil(bottom * 8 / eighths)), min(header.width, math.ceil(right * 8 / eighths))
        transform = self._Transform((ctypes.c_int * 4)(x0, y0, x1 - x0, y1 - y0), 0, 4, None, None)  # TJXOPT_CROP
        cropped, size = ctypes.POINTER(ctypes.c_ubyte)(), ctypes.c_ulong(0)
        if self.lib.tjTransform(self.transformer, data, len(data), 1, ctypes.byref(cropped), ctypes.byref(size),
                                ctypes.byref(transform), 0):
            raise ValueError("tjTransform failed")
        height, width = math.ceil((y1 - y0) * eighths / 8), math.ceil((x1 - x0) * eighths / 8)
        pixels = np.empty((height, width, 3), np.uint8)
        failed = self.lib.tjDecompress2(self.decompressor, cropped, size, pixels.ctypes.data, width, 0, height, 0, 0)
        self.lib.tjFree(cropped)
        if failed:
            raise ValueError("tjDecompress2 failed")
        return pixels


def measure_candidates(corpora: dict[str, Corpus], size: int, rounds: int) -> list[dict]:
    """Decode-only ms per image of each candidate, interleaved image by image; ratio = fused's time / its time."""
    candidates, rows = candidate_decoders(), []
    for corpus_name, corpus in corpora.items():
        jobs, times = decode_jobs(corpus, size), {name: [] for name in candidates}
        for round_index in range(rounds):
            totals = dict.fromkeys(candidates, 0.0)
            names = list(candidates)
            for i, job in enumerate(jobs):
                shift = (i + round_index) % len(names)
                for name in names[shift:] + names[:shift]:
                    start = time.perf_counter()
                    candidates[name](*job)
                    totals[name] += time.perf_counter() - start
            for name in names:
                times[name].append(totals[name] / len(jobs) * 1e3)
        reference = times["simplejpeg, whole, chosen scale (fused)"]
        for name, series in times.items():
            ratios = [a / b for a, b in zip(reference, series)]
            rows.append({"corpus": corpus_name, "decoder": name, "ms_per_image": round(statistics.median(series), 3),
                         "ratio_median": round(statistics.median(ratios), 2), "ratio_min": round(min(ratios), 2),
                         "ratio_max": round(max(ratios), 2)})
    return rows


_WORK: dict = {}  # the process pool's corpus and stages, set before the fork


def _stages(size: int) -> dict[str, Callable[[RecordHeader, bytes], object]]:
    """The training decode and its two parts: region decode alone, and the resize + flip alone (of a fixed crop)."""
    decoder = RandomResizedCropDecode(size)
    crop = torch.randint(0, 256, (250, 250, 3), dtype=torch.uint8).permute(2, 0, 1)

    def decode_only(header: RecordHeader, data: bytes) -> object:
        box = decoder.box(header.height, header.width)
        min_height, min_width = decoder.decode_size(header.height, header.width, box)
        return decode_window(data, header, decoder.window(header.height, header.width, box), min_height=min_height,
                             min_width=min_width)

    def resize_only(header: RecordHeader, data: bytes) -> object:
        return F.resize(crop, [size, size], antialias=True).flip(-1)

    return {"train decode (region)": decoder, "region decode alone": decode_only, "resize + flip alone": resize_only}


def _run_share(stage: str, share: int, parts: int) -> tuple[int, float]:
    """Run ``stage`` over one worker's share of the corpus: (images, CPU seconds of this thread)."""
    corpus = _WORK["corpus"]
    function = _WORK["stages"][stage]
    start = time.thread_time()
    for header, data in corpus[share::parts]:
        function(header, data)
    return len(corpus[share::parts]), time.thread_time() - start


def measure_threads(corpus: Corpus, size: int, rounds: int) -> list[dict]:
    """img/s of each stage in 1 and 2 threads of one process and in 1 and 2 processes (fork), interleaved.

    Besides wall-clock img/s (which only shows scaling when the cores are free), each row has the
    CPU milliseconds the workers spent per image (their threads' CPU time): per-core img/s that
    other processes' load does not change.
    """
    _WORK.update(corpus=corpus, stages=_stages(size))
    context = multiprocessing.get_context("fork")
    pools = {n: context.Pool(n) for n in (1, 2)}
    for n, pool in pools.items():
        pool.starmap(_run_share, [("resize + flip alone", k, 64 * n) for k in range(n)])  # started and warm
    threads = {n: ThreadPoolExecutor(n) for n in (1, 2)}
    rates: dict[tuple[str, str, int], list[float]] = {}
    cpu: dict[tuple[str, str, int], list[float]] = {}
    try:
        for _ in range(rounds):
            for stage in _WORK["stages"]:
                for kind, n in (("threads", 1), ("processes", 1), ("threads", 2), ("processes", 2)):
                    start = time.perf_counter()
                    if kind == "threads":
                        shares = list(threads[n].map(lambda k, s=stage, m=n: _run_share(s, k, m), range(n)))
                    else:
                        shares = pools[n].starmap(_run_share, [(stage, k, n) for k in range(n)])
                    done = sum(images for images, _ in shares)
                    rates.setdefault((stage, kind, n), []).append(done / (time.perf_counter() - start))
                    cpu.setdefault((stage, kind, n), []).append(sum(seconds for _, seconds in shares) / done)
    finally:
        for pool in pools.values():
            pool.terminate()
        for executor in threads.values():
            executor.shutdown()
    rows = []
    for (stage, kind, n), series in rates.items():
        one = rates[(stage, kind, 1)]
        scaling = [b / a for a, b in zip(one, series)]
        rows.append({"stage": stage, "kind": kind, "workers": n, "img_s": round(statistics.median(series), 1),
                     "scaling_median": round(statistics.median(scaling), 2), "scaling_min": round(min(scaling), 2),
                     "scaling_max": round(max(scaling), 2),
                     "cpu_ms_per_image": round(statistics.median(cpu[(stage, kind, n)]) * 1e3, 3)})
    return rows


def gil_held_fraction(corpus: Corpus, size: int) -> dict[str, float]:
    """CPU seconds per image of the training decode, and of the same calls on a 16x16 JPEG to an 8 px output.

    The small case does (next to) no pixel work: its time is the Python and dispatch overhead,
    which holds the GIL (libjpeg-turbo and the torch kernels release it), so ``small / full`` bounds
    the serial fraction of threads in one process (Amdahl). Both are this thread's CPU time
    (``time.thread_time``, least of five passes), so other processes' load does not inflate them.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "JPEG")
    small = (RecordHeader(kind=KIND_ENCODED, label=0, crc32=0, height=16, width=16, channels=3), buffer.getvalue())
    decoder, tiny = RandomResizedCropDecode(size), RandomResizedCropDecode(8)
    totals: dict[str, list[float]] = {"full": [], "small": []}
    for _ in range(5):
        start = time.thread_time()
        for header, data in corpus:
            decoder(header, data)
        totals["full"].append((time.thread_time() - start) / len(corpus))
        start = time.thread_time()
        for _ in range(len(corpus)):
            tiny(*small)
        totals["small"].append((time.thread_time() - start) / len(corpus))
    full, overhead = min(totals["full"]), min(totals["small"])
    return {"ms_per_image": round(full * 1e3, 3), "overhead_ms_per_image": round(overhead * 1e3, 3),
            "gil_fraction": round(overhead / full, 3), "amdahl_bound": round(full / overhead, 1)}


def markdown(results: dict) -> str:
    """The section of RESULTS.md for a saved run: settings, the tables and the targets' verdicts."""
    rows = results["rows"]
    load = results["load_average_1min"]
    versions = ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items())
    region = any("region_img_s" in row for row in rows)
    lines = ["## Fused crop decoding", "", *report.provenance_lines(results),
             *([f"Versions: {versions}", ""] if versions else []),
             f"Settings: {results['cpus']} CPUs, 1-minute load average {load[0]} before and {load[1]} after; "
             f"{results['rounds']} rounds interleaved image by image, 1 thread, output {results['size']}; "
             "ratio = full time / fused time per round, median [min, max]; img/s of the median round; pixel "
             "difference = mean |full - fused| in grey levels (0-255) under the same seed."
             + (f" Region decoder: libjpeg-turbo {results['region_decoder']}; `region` ratios per round likewise, "
                "its pixel difference to full as mean / 99th percentile / max." if region else ""), "",
             "| corpus | split | images | median MP | full img/s | fused img/s | fused / full, median [min, max] "
             "| mean abs pixel diff |" + (" region img/s | region / full | region / fused | region pixel diff |"
                                         if region else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if region else "")]
    for row in rows:
        line = (f"| {row['corpus']} | {row['split']} | {row['images']} | {row['median_megapixels']} | "
                f"{row['full_img_s']} | {row['fused_img_s']} | {row['ratio_median']}x "
                f"[{row['ratio_min']}, {row['ratio_max']}] | {row['mean_abs_pixel_difference']} |")
        if "region_img_s" in row:
            difference = row["region_pixel_difference"]
            line += (f" {row['region_img_s']} | {_span(row, 'region_ratio')} | {_span(row, 'region_vs_fused')} | "
                     f"{difference['mean']} / {difference['p99']:g} / {difference['max']} |")
        lines.append(line)
    lines.append("")
    for corpus, least in TARGETS.items():
        found = [row for row in rows if row["corpus"] == corpus]
        if found:
            met = all(row["ratio_median"] >= least for row in found)
            lines.append(f"- Target fused / full >= {least}x on `{corpus}` (median): {'met' if met else 'missed'}: "
                         + ", ".join(f"{row['split']} {row['ratio_median']}x (rounds {row['ratio_min']}x to "
                                     f"{row['ratio_max']}x)" for row in found) + ".")
    if region:
        found = [row for row in rows if "region_vs_fused_median" in row]
        met = all(row["region_vs_fused_median"] >= REGION_TARGET for row in found)
        lines.append(f"- Target region / fused >= {REGION_TARGET}x (median): {'met' if met else 'missed'}: "
                     + ", ".join(f"{row['corpus']} {row['split']} {row['region_vs_fused_median']}x"
                                 for row in found) + ".")
    lines.append("")
    if results.get("candidates"):
        lines += [("Decode only (no crop or resize), the training boxes, ms per image (median round); ratio = "
                   "fused's decoder time / this decoder's time per round, median [min, max]:"), "",
                  "| corpus | decoder | ms / image | ratio |", "|---|---|---|---|"]
        lines += [f"| {row['corpus']} | {row['decoder']} | {row['ms_per_image']} | {_span(row, 'ratio')} |"
                  for row in results["candidates"]]
        lines.append("")
    if results.get("threads"):
        gil = results["gil"]
        lines += [(f"Threads vs processes, `{results['threads_corpus']}` corpus: img/s of all workers together "
                   "(median round); scaling = img/s with 2 / with 1 of the same kind per round, median [min, max]; "
                   "CPU ms / image = the workers' CPU time per image (median round), per-core img/s = 1000 / it:"),
                  "", "| stage | kind | workers | img/s | scaling | CPU ms / image | per-core img/s |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {row['stage']} | {row['kind']} | {row['workers']} | {row['img_s']} | "
                  f"{_span(row, 'scaling')} | {row.get('cpu_ms_per_image', '')} | "
                  f"{round(1000 / row['cpu_ms_per_image'], 1) if row.get('cpu_ms_per_image') else ''} |"
                  for row in results["threads"]]
        lines += ["", (f"GIL-held time per image: the training decode took {gil['ms_per_image']} CPU ms per image, "
                       f"the same calls on a 16x16 JPEG to 8 px {gil['overhead_ms_per_image']} ms (Python and "
                       f"dispatch, at most the GIL-held part): {gil['gil_fraction']} of the time, so threads of one "
                       f"process can at most reach {gil['amdahl_bound']}x one thread (Amdahl)."), ""]
    return "\n".join(lines)


def _span(row: dict, key: str) -> str:
    return f"{row[key + '_median']}x [{row[key + '_min']}, {row[key + '_max']}]"


def _ratio_fields(key: str, numerators: list[float], denominators: list[float]) -> dict[str, float]:
    ratios = [a / b for a, b in zip(numerators, denominators)]
    return {f"{key}_median": round(statistics.median(ratios), 2), f"{key}_min": round(min(ratios), 2),
            f"{key}_max": round(max(ratios), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--imagenet-images", type=int, default=300, help="ImageNet-like images (default 300)")
    parser.add_argument("--highres-images", type=int, default=60, help="generated 1-4 MP images (default 60)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--size", type=int, default=224, help="output side (default 224)")
    parser.add_argument("--candidates", action="store_true", help="also time the candidate JPEG region decoders")
    parser.add_argument("--threads", action="store_true",
                        help="also time 1 and 2 threads against 1 and 2 processes (imagenet corpus)")
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
                for method, seconds in time_methods(functions, corpus, round_index).items():
                    times.setdefault(f"{corpus_name}/{split}/{method}", []).append(seconds)
    rows = []
    for corpus_name, corpus in corpora.items():
        megapixels = statistics.median(h.height * h.width / 1e6 for h, _ in corpus)
        for split, functions in cases.items():
            full, fused = times[f"{corpus_name}/{split}/full"], times[f"{corpus_name}/{split}/fused"]
            ratios = [a / b for a, b in zip(full, fused)]
            middle = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]  # the median round
            differences = pixel_differences(functions, corpus)
            row = {"corpus": corpus_name, "split": split, "images": len(corpus),
                   "median_megapixels": round(megapixels, 2),
                   "full_img_s": round(len(corpus) / full[middle], 1),
                   "fused_img_s": round(len(corpus) / fused[middle], 1),
                   **_ratio_fields("ratio", full, fused),
                   "mean_abs_pixel_difference": round(differences["fused"]["mean"], 2)}
            if "region" in functions:
                region = times[f"{corpus_name}/{split}/region"]
                row.update(region_img_s=round(len(corpus) / region[middle], 1),
                           **_ratio_fields("region_ratio", full, region),
                           **_ratio_fields("region_vs_fused", fused, region),
                           region_pixel_difference=differences["region"])
            rows.append(row)
    extra: dict = {}
    if args.candidates:
        extra["candidates"] = measure_candidates(corpora, args.size, args.rounds)
    if args.threads and region_decoding():
        extra.update(threads=measure_threads(corpora["imagenet"], args.size, args.rounds), threads_corpus="imagenet",
                     gil=gil_held_fraction(corpora["imagenet"], args.size))
    load_after = os.getloadavg()[0]
    result = {**report.provenance("decode.fused_decode", argv), "rounds": args.rounds, "size": args.size,
              "load_average_1min": [round(load_before, 2), round(load_after, 2)], "cpus": os.cpu_count(),
              "region_decoder": region_decoding(), "rows": rows, **extra}
    print(markdown(result))
    report.save(result, args.out or args.data / "fused_decode.json")
    return result


if __name__ == "__main__":
    main()
