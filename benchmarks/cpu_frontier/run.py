"""CPU frontier: LMDBLoader(device="cpu") against the strongest CPU loaders and the decode ceiling, in one run.

Every loader delivers the same batches: normalised float32 ``N x 3 x 224 x 224`` images and
labels, from RandomResizedCrop 224 + horizontal flip (``train``) or Resize 256 + CenterCrop 224
(``val``), with ``--workers`` worker processes or threads each, ``--batch-size`` per batch:

* ``imagefolder-pillow``: ``torchvision.datasets.ImageFolder`` + Pillow + the classic v1
  transforms (float in the workers), stock ``DataLoader``;
* ``dali-cpu``: DALI's CPU pipeline (``device_id=None``): ``fn.readers.file`` over the same
  JPEG files -> ``fn.decoders.image_random_crop`` -> ``fn.resize`` -> ``fn.crop_mirror_normalize``,
  ``num_threads = --workers`` (:func:`benchmarks.common.pipelines.dali_iterator`);
* ``spdl``: SPDL's image pipeline (``spdl.pipeline.PipelineBuilder``: source -> per-image
  ``spdl.io.demux_image`` + ``decode_packets`` with an FFmpeg crop/scale/flip filter, concurrency
  ``--workers`` -> ``aggregate`` -> batch), ``build(num_threads=--workers)``; uint8 batches
  normalised in the main process;
* ``ffcv``: FFCV's own compiled pipeline through ``benchmarks/common/peers.py`` (its ``.beton`` re-encodes
  the JPEGs at <= 512 px, as ffcv-imagenet does; train only), normalised in the main process;
* ``lmdbloader-random``, ``lmdbloader-chunk``, ``lmdbloader-iterable``: ``LMDBLoader(device="cpu")``
  with each reader, ``encoded`` storage (the default);
* ``lmdb-dataset-v2``: plain ``LMDBImageDataset(output="tensor")`` + torchvision v2 uint8
  transforms in a stock ``DataLoader``, normalised in the main process.

The ceiling is one core's decode + crop + resize + flip rate (simplejpeg + lmdb_dataset's crop
decoder, ``RandomResizedCropDecode`` / ``CenterCropDecode``, one process, bytes in memory, images
per second of its CPU time) x
``min(cores, workers)``, probed between runs over whole passes of every image of the corpus (the
images the loaders decode; ``--ceiling-images`` takes an even sample instead, at least
``--ceiling-seconds`` a probe); each loader is shown as a fraction of the probes right before and
right after its own run, so both are measured under the same load from other processes. Each probe
also decodes the corpus with that many processes at once (each a share of it): the cores' decode
rate when all of them decode, which is what a loader's workers get (the "all-cores" ceiling). And
each probe measures the bound of any loader on those cores: the same processes, each reading its
share of the LMDB's records and doing only the work no loader of this API can skip (``pread``, CRC32
and header check, decode + crop + resize + flip, copy into a batch, normalise the batch to float),
with no DataLoader, queue or main process (the "loader bound").

Two corpora (generated, cached under ``--data``): ``imagenet`` (``common/make_corpus.py``, median
500x375) and ``highres`` (``common/make_corpus.py --profile highres``, 1-4 megapixels). Rounds are
interleaved: each round measures every case of a corpus and cache state in an order rotated by
the round, warm (files read first) then cold (every file the case reads evicted with
``posix_fadvise(DONTNEED)``); ratios are taken within a round and reported as median
[min, max]. Each round draws every loader's order and crops from its own seed (``--seed`` + the
round), so which images and crops fall in a loader's window varies from round to round instead of
favouring one loader in every round. Throughput is the steady state of each loader's second epoch
(:func:`steady_window`): the window leaves out the first ``2 x --workers + 1`` batches (every
worker's prefetched batches) and the last 4 (delivered from the loaders' buffers as the epoch
drains), so no loader is credited with batches it finished before or after the window
(``loaders/dataloader_cases.time_loader``). The
first epoch, timed the same way and reported beside it, warms each loader up as the first epoch of
a training run does: every loader keeps its workers or threads across epochs (DataLoaders with
``persistent_workers``, DALI's and FFCV's pipelines, an SPDL pipeline an epoch), and a cold run
evicts the files again before the second epoch (pages a loader keeps mapped stay cached; the
report names those loaders).

Targets (issue 22), on the median ratio, ``train``, warm and cold: ``lmdbloader-random`` >= 2.0x
``imagefolder-pillow`` and >= 1.25x ``dali-cpu`` on ``imagenet``, >= 3x ``imagefolder-pillow`` on
``highres``, >= 0.9x the ceiling on both. Writes a JSON (every round's numbers); ``markdown(results)``
renders its section of RESULTS.md; ``--out benchmarks/cpu_frontier/results.json`` replaces the
committed results and re-renders benchmarks/RESULTS.md.

Example:
    python -m benchmarks.cpu_frontier.run --out benchmarks/cpu_frontier/results.json   # full: ~60 min on 2 cores
    python -m benchmarks.cpu_frontier.run --quick                                      # ~4 min
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import multiprocessing
import os
import pathlib
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from lmdb_dataset import (
    CenterCropDecode,
    LMDBImageDataset,
    LMDBLoader,
    NormalizeBatch,
    RandomResizedCropDecode,
)
from lmdb_dataset.decode.crop import random_resized_crop_box, resized_shape
from lmdb_dataset.storage.environment import data_file, environments
from lmdb_dataset.storage.reader import record_pixels

from .. import report
from ..common.corpus import converted, default_corpus, disk_mb
from ..common.harness import CORES, evict, warm
from ..common.pipelines import classic_pipeline, dali_iterator, uint8_pipeline
from ..decode.fused_decode import load_records
from ..loaders.dataloader_cases import time_loader

CORPORA = ("imagenet", "highres")
TEMPERATURES = ("warm", "cold")
CASES = {
    "imagefolder-pillow": "ImageFolder + Pillow + v1 transforms",
    "dali-cpu": "DALI CPU pipeline",
    "spdl": "SPDL image pipeline",
    "ffcv": "FFCV (own pipeline, re-encoded <= 512 px)",
    "lmdbloader-random": 'LMDBLoader(device="cpu"), random',
    "lmdbloader-chunk": 'LMDBLoader(device="cpu"), chunk',
    "lmdbloader-iterable": 'LMDBLoader(device="cpu"), iterable',
    "lmdb-dataset-v2": "LMDBImageDataset + v2 uint8",
}
"""Case name -> what it is, in table order."""
VAL_CASES = ("imagefolder-pillow", "dali-cpu", "spdl", "lmdbloader-random", "lmdb-dataset-v2")
"""The cases that also run the validation pipeline (FFCV's loader is train-only)."""
OURS, BASELINE, DALI = "lmdbloader-random", "imagefolder-pillow", "dali-cpu"
TARGETS = [  # (corpus, what it is compared with: a case or "ceiling", least median ratio)
    ("imagenet", BASELINE, 2.0), ("imagenet", DALI, 1.25), ("highres", BASELINE, 3.0),
    ("imagenet", "ceiling", 0.9), ("highres", "ceiling", 0.9),
]
"""Issue 22's targets for ``lmdbloader-random`` (the default reader, ``encoded`` storage), train split."""
QUICK = {"imagenet_images": 512, "highres_images": 96, "batch_size": 16, "highres_batch_size": 4, "rounds": 1}
FULL = {"imagenet_images": 3000, "highres_images": 900, "batch_size": 128, "highres_batch_size": 32, "rounds": 5}
"""The sizes of ``--quick`` and of the full run: with 2 workers the full run's steady-state windows
are 13 (``imagenet``) and 18 (``highres``) batches long."""
PREFETCH_FACTOR = 2
"""Batches each DataLoader worker is asked for ahead (the DataLoader's default, used by every case)."""
DRAIN_BATCHES = 4
"""Batches at the end of an epoch left out of the window: a loader may have finished them ahead
(DataLoader prefetching, LMDBLoader's staged batch, DALI's prefetch queue) and hands them out
faster than it makes them."""


def _windows(results: dict) -> dict[str, tuple[int, int, int]]:
    """``{corpus: (skip, batches, epoch batches)}`` of the run's steady-state windows (older runs recorded none)."""
    settings = results["settings"]
    windows = {}
    for name, (skip, batches) in settings.get("window", {}).items():
        windows[name] = (skip, batches, results["corpora"][name]["images"] // settings["batch_size"][name])
    return windows


def steady_window(epoch_batches: int, workers: int) -> tuple[int, int]:
    """``(skip, batches)``: the batches before the steady-state window and in it, for an epoch of ``epoch_batches``.

    Leaves out every worker's prefetched batches at the start and :data:`DRAIN_BATCHES` at the
    end; an epoch too short for that (``--quick``, the tests) gives up to a third of its batches
    to each margin instead.
    """
    margin = (epoch_batches - 1) // 3
    skip, tail = min(PREFETCH_FACTOR * workers + 1, margin), min(DRAIN_BATCHES, margin)
    return skip, epoch_batches - 1 - skip - tail


@dataclass(frozen=True)
class Corpus:
    """One corpus as every case reads it.

    Attributes:
        name: ``imagenet`` or ``highres``.
        folder: ImageFolder root (the JPEG files).
        lmdb: Its ``encoded`` conversion.
        files: Every image file, in ImageFolder order.
        batch_size: Images per batch for every loader on this corpus.
    """

    name: str
    folder: pathlib.Path
    lmdb: pathlib.Path
    files: list[str]
    batch_size: int


Loader = Iterable[tuple[torch.Tensor, torch.Tensor]]
Maker = Callable[[Corpus, str, argparse.Namespace], Loader]


# --------------------------------------------------------------------------- corpora


def highres_folder(data: pathlib.Path, num_images: int, workers: int) -> pathlib.Path:
    """``DATA/highres-N/train``: generated 1-4 MP JPEGs in 10 classes (make_corpus.py), made if missing."""
    from ..common.make_corpus import make_highres_folder

    root = data / f"highres-{num_images}" / "train"
    if not root.exists():
        print(f"generating {num_images} 1-4 MP JPEGs in {root}", flush=True)
        make_highres_folder(root, num_images=num_images, num_classes=10, workers=workers)
    return root


def prepare_corpus(name: str, args: argparse.Namespace) -> Corpus:
    """The corpus ``name`` at its ``--*-images`` size and its ``encoded`` conversion (cached under ``--data``)."""
    if name == "imagenet":
        folder, batch_size = default_corpus(args.data, args.imagenet_images), args.batch_size
    else:
        folder, batch_size = highres_folder(args.data, args.highres_images, args.workers), args.highres_batch_size
    files = [path for path, _ in ImageFolder(str(folder)).samples]
    return Corpus(name, folder, converted(args.data, folder, files, "encoded"), files, batch_size)


def corpus_facts(corpus: Corpus) -> dict[str, Any]:
    """Images, median megapixels, mean file size and the sizes on disk of a corpus."""
    sizes = [os.path.getsize(path) for path in corpus.files]
    megapixels = []
    for path in corpus.files[:: max(1, len(corpus.files) // 300)]:  # up to ~300 headers: enough for a median
        with Image.open(path) as image:
            megapixels.append(image.width * image.height / 1e6)
    return {"images": len(corpus.files), "median_megapixels": round(statistics.median(megapixels), 2),
            "mean_kb": round(sum(sizes) / len(sizes) / 1e3, 1), "folder_mb": round(sum(sizes) / 1e6, 1),
            "lmdb_mb": round(disk_mb(corpus.lmdb), 1)}


# --------------------------------------------------------------------------- the loaders


def imagefolder_pillow(corpus: Corpus, split: str, args: argparse.Namespace) -> Loader:
    """ImageFolder + Pillow + classic v1 transforms, float in the workers."""
    return DataLoader(ImageFolder(str(corpus.folder), transform=classic_pipeline(split)), batch_size=corpus.batch_size,
                      shuffle=split == "train", num_workers=args.workers, drop_last=split == "train",
                      persistent_workers=args.workers > 0)


class Epochs:
    """A loader whose every ``iter()`` is its next epoch, made by ``epoch()`` (for peers iterated by generators)."""

    def __init__(self, epoch: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch()


def dali_cpu(corpus: Corpus, split: str, args: argparse.Namespace) -> Loader:
    """DALI's CPU pipeline over the same JPEG files, ``--workers`` threads (one pipeline for every epoch)."""
    iterator = dali_iterator(corpus.folder, train=split == "train", decoder="cpu", device_id=None,
                             batch_size=corpus.batch_size, num_threads=args.workers, seed=args.seed)
    return Epochs(lambda: ((batch[0]["images"], batch[0]["labels"]) for batch in iterator))  # it resets itself


def spdl_filter(height: int, width: int, split: str, size: int = 224) -> str:
    """The FFmpeg filter of one image: torchvision's crop drawn from its size, scaled (bilinear), maybe mirrored."""
    if split == "train":
        top, left, h, w = random_resized_crop_box(height, width)
        flip = ",hflip" if torch.rand(1).item() < 0.5 else ""
        return f"crop={w}:{h}:{left}:{top},scale={size}:{size}:flags=bilinear{flip},format=rgb24"
    h, w = resized_shape(height, width, resize=round(size * 256 / 224))
    return f"scale={w}:{h}:flags=bilinear,crop={size}:{size},format=rgb24"


def spdl_loader(corpus: Corpus, split: str, args: argparse.Namespace) -> Loader:
    """SPDL's thread pipeline: per-image demux + filtered decode, ``--workers`` at once, then batches (one
    pipeline an epoch, SPDL's way)."""
    import spdl.io
    from spdl.pipeline import PipelineBuilder

    every = ImageFolder(str(corpus.folder)).samples
    shuffle = torch.Generator().manual_seed(args.seed)

    def load(sample: tuple[str, int]) -> tuple[np.ndarray, int]:
        packets = spdl.io.demux_image(sample[0])
        frames = spdl.io.decode_packets(packets, filter_desc=spdl_filter(packets.height, packets.width, split))
        return spdl.io.to_numpy(spdl.io.convert_frames(frames)), sample[1]

    def collate(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.stack([image for image, _ in items])).permute(0, 3, 1, 2)
        return images, torch.tensor([label for _, label in items])

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        samples = [every[i] for i in torch.randperm(len(every), generator=shuffle)] if split == "train" else every
        pipeline = (PipelineBuilder().add_source(samples).pipe(load, concurrency=args.workers)
                    .aggregate(corpus.batch_size, drop_last=split == "train").pipe(collate).add_sink(2)
                    .build(num_threads=args.workers))
        with pipeline.auto_stop():
            yield from pipeline.get_iterator()
    return Epochs(batches)


def ffcv_loader(corpus: Corpus, split: str, args: argparse.Namespace) -> Loader:
    """FFCV's loader through benchmarks/common/peers.py (its own compiled pipeline, uint8 batches)."""
    peer, prepared = ffcv_prepared(corpus, args)
    return peer.make_loader(prepared, transform=None, batch_size=corpus.batch_size, num_workers=args.workers)


def ffcv_prepared(corpus: Corpus, args: argparse.Namespace) -> tuple[Any, pathlib.Path]:
    """FFCV's peer adapter and its ``.beton`` of ``corpus`` (written once, cached under ``--data``)."""
    from ..common.peer_setup import prepared_peers

    ready, missing = prepared_peers(args.data, corpus.folder, corpus.files, {"ffcv"})
    if "ffcv" not in ready:
        raise RuntimeError(missing.get("ffcv", "ffcv is not available"))
    return ready["ffcv"]


def lmdbloader(reader: str) -> Maker:
    """``LMDBLoader(device="cpu", reader=reader)`` on the corpus's ``encoded`` conversion."""
    def make(corpus: Corpus, split: str, args: argparse.Namespace) -> Loader:
        return LMDBLoader(corpus.lmdb, batch_size=corpus.batch_size, train=split == "train", reader=reader,
                          num_workers=args.workers, device="cpu", seed=args.seed)
    return make


def lmdb_dataset_v2(corpus: Corpus, split: str, args: argparse.Namespace) -> Loader:
    """Plain ``LMDBImageDataset`` + torchvision v2 uint8 transforms in a stock DataLoader."""
    dataset = LMDBImageDataset(corpus.lmdb, transform=uint8_pipeline(split), output="tensor")
    return DataLoader(dataset, batch_size=corpus.batch_size, shuffle=split == "train", num_workers=args.workers,
                      drop_last=split == "train", persistent_workers=args.workers > 0)


MAKERS: dict[str, Maker] = {
    "imagefolder-pillow": imagefolder_pillow, "dali-cpu": dali_cpu, "spdl": spdl_loader, "ffcv": ffcv_loader,
    **{f"lmdbloader-{reader}": lmdbloader(reader) for reader in ("random", "chunk", "iterable")},
    "lmdb-dataset-v2": lmdb_dataset_v2,
}


def case_files(case: str, corpus: Corpus, args: argparse.Namespace) -> list[str]:
    """The files a case reads: what warming reads and eviction drops."""
    if case.startswith("lmdb"):
        return [str(data_file(corpus.lmdb))]
    if case == "ffcv":
        return [str(ffcv_prepared(corpus, args)[1])]
    return corpus.files


def unavailable(corpora: list[Corpus], args: argparse.Namespace) -> dict[str, str]:
    """``case -> reason`` for the peers that cannot run here (not installed, or broken)."""
    missing = {}
    probes = {"dali-cpu": ("nvidia.dali.plugin.pytorch", "pip install nvidia-dali-cuda120"),
              "spdl": ("spdl.pipeline", "pip install spdl"), "ffcv": ("ffcv.loader", "install_peers.sh")}
    for case, (module, install) in probes.items():
        try:
            __import__(module)
        except Exception as error:
            missing[case] = f"does not import ({type(error).__name__}: {error}); {install}"
    if "spdl" not in missing:
        try:
            spdl_probe(corpora[0].files[0])
        except Exception as error:
            missing["spdl"] = f"cannot decode ({type(error).__name__}: {error}); it needs FFmpeg's shared libraries"
    if "ffcv" not in missing:
        for corpus in corpora:
            try:
                ffcv_prepared(corpus, args)
            except Exception as error:
                missing["ffcv"] = f"{type(error).__name__}: {error}"
    return missing


def spdl_probe(path: str) -> None:
    """Decode one image with spdl.io (raises where its FFmpeg libraries are missing)."""
    import spdl.io

    spdl.io.to_numpy(spdl.io.load_image(path))


# --------------------------------------------------------------------------- measuring


def release(corpora: list[Corpus]) -> None:
    """Close this process's LMDB environments: pages mapped here would not be evicted."""
    for corpus in corpora:
        environments.release(corpus.lmdb)


def measure(case: str, corpus: Corpus, split: str, temperature: str, corpora: list[Corpus], records: Sequence[tuple],
            before: Probe, args: argparse.Namespace) -> dict[str, Any]:
    """One run of one case: warm or evict its files, build it, time one epoch's steady state.

    ``first_batch_s`` counts from building the loader (DALI's iterator runs its first batch as it
    is built) to its first batch; img/s is the steady state (``loaders/dataloader_cases.time_loader``). The loader
    runs in a child process (forked), so no thread or process it leaves behind (FFCV's and DALI's
    pools) runs on into the next case. The ceiling was probed on ``records`` right ``before`` and is
    probed right after, so the loader and its ceiling are measured under the same load from other
    processes (``ceiling_img_s_per_core``, ``ceiling_all_cores_img_s`` and ``loader_bound_img_s``: the two
    probes' means).
    """
    started = time.perf_counter()
    try:
        files = case_files(case, corpus, args)
        release(corpora)
        state = evict(files) if temperature == "cold" else (warm(files) or {})
        result = {**state, **in_child(time_case, case, corpus, split, files if temperature == "cold" else None, args)}
    except Exception as error:
        result = {"value": float("nan"), "error": f"{type(error).__name__}: {error}"}
    around = [before, probe_ceiling(records, corpus, split, args)]
    return {"value": result["value"], **{k: v for k, v in result.items() if k != "value"},
            "ceiling_img_s_per_core": statistics.mean(p["one_core"] for p in around),
            "ceiling_all_cores_img_s": statistics.mean(p["all_cores"] for p in around),
            "loader_bound_img_s": statistics.mean(p["loader_bound"] for p in around), "ceiling_probes": around,
            "seconds": time.perf_counter() - started, "load_1min": round(os.getloadavg()[0], 2)}


def time_case(case: str, corpus: Corpus, split: str, cold_files: list[str] | None,
              args: argparse.Namespace) -> dict[str, Any]:
    """Build a case's loader and time its second epoch (in the child process ``in_child`` runs it in).

    The first epoch warms the loader up, as a training run's first epoch does (workers' or
    threads' first batches, allocations, memory faulted in); it is timed the same way and kept as
    ``first_epoch``, and ``first_batch_s`` is its first batch. Cold (``cold_files``, the files the case
    reads): they are evicted again before the second epoch (``resident_before``/``resident_after``:
    that eviction's).
    """
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # the round's seed: DataLoader shuffles and workers' seeds, SPDL's flips
    built = time.perf_counter()
    loader = MAKERS[case](corpus, split, args)  # DALI's iterator runs its first batch here
    build_seconds = time.perf_counter() - built
    skip, batches = steady_window(len(corpus.files) // corpus.batch_size, args.workers)
    first = time_loader(loader, workers=args.workers, batches=batches, skip=skip, finish=True)
    state = evict(cold_files) if cold_files is not None else {}
    result = time_loader(loader, workers=args.workers, batches=batches, skip=skip)
    return {**result, **state, "first_batch_s": first["first_batch_s"] + build_seconds,
            "first_epoch": {key: first[key] for key in ("value", "cpu_ms_per_image", "cores_busy")}}


def in_child(function: Callable[..., Any], *arguments: Any) -> Any:
    """``function(*arguments)`` in a forked child process that exits afterwards (its exceptions re-raised here)."""
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        return pool.submit(function, *arguments).result()


Probe = dict[str, float]
"""A ceiling probe: ``one_core`` (img/s of one process), ``all_cores`` (img/s of ``ceiling_cores`` at once) and
``loader_bound`` (img/s of ``ceiling_cores`` processes doing a loader's unavoidable work, :func:`bound_rate`)."""
_PROBED: list[tuple] = []
"""The records the next probes decode (the corpus's ``(header, payload)``): set before forking the probes."""


def probe_ceiling(records: Sequence[tuple], corpus: Corpus, split: str, args: argparse.Namespace) -> Probe:
    """One core's rate on ``records``, the rate of ``min(cores, workers)`` cores at once, and the loader bound.

    For the second and third, each of that many forked processes takes its share of the records
    (every n-th one) in whole passes, all starting at one instant; their rates add up.
    """
    _PROBED[:] = records
    one_core = ceiling_rate(split, args.ceiling_seconds)
    cores = min(CORES, args.workers)
    rates = {}
    for name, rate in (("all_cores", ceiling_rate), ("loader_bound", functools.partial(bound_rate, corpus))):
        start = time.time() + 0.2  # after every process has forked
        with concurrent.futures.ProcessPoolExecutor(max_workers=cores,
                                                    mp_context=multiprocessing.get_context("fork")) as pool:
            rates[name] = sum(pool.map(rate, [split] * cores, [args.ceiling_seconds] * cores, range(cores),
                                       [cores] * cores, [start] * cores))
    return {"one_core": one_core, **rates}


def ceiling_rate(split: str, seconds: float, share: int = 0, shares: int = 1, start: float | None = None) -> float:
    """One process's img/s of decode + crop + resize + flip of the probed records, in whole passes.

    Decodes ``_PROBED[share::shares]`` (all of them by default), each once per pass, from
    ``start`` (a ``time.time()``, default now) until ``seconds`` have elapsed: every probe measures
    the same images. Probes over a changing part of a sample differed by up to 20% on 1-4 MP photos,
    and a 300-image sample of the ImageNet-like corpus decoded 2-10% faster than the whole corpus
    (its JPEGs 5% smaller): the ceiling is the rate on the images the loaders decode.

    The rate is images per second of the process's CPU time, the rate of a core it has to itself.
    Timed by the wall clock, the probes right after a case took 1.28-1.57 ms an image where a
    quiet machine takes 1.24, while a loader's window, an epoch into its run, ran at full speed:
    loaders came out above the ceiling (``benchmarks/NOTES.md``, 2026-12-07).
    """
    torch.set_num_threads(1)
    records = _PROBED[share::shares]
    decoder = probe_decoder(split)

    def decode_all() -> None:
        for record in records:
            decoder(*record)

    return rate_in_passes(decode_all, len(records), seconds, start)


def bound_rate(corpus: Corpus, split: str, seconds: float, share: int = 0, shares: int = 1,
               start: float | None = None) -> float:
    """One process's img/s (of its CPU time) doing only what no loader can skip, on its share of the LMDB's records.

    The records of ``corpus.lmdb`` whose index is ``share`` modulo ``shares`` (the whole corpus, as
    the loaders read it; an even sample of it when the probes decode one, ``--ceiling-images``), in
    whole batches (as the loaders' ``drop_last``), a batch at a time in file order: each record read
    with the dataset's ``pread``, checked (CRC32, header, label), decoded by the ceiling's crop
    decoder and copied into a uint8 batch, and each batch normalised to float32 (``NormalizeBatch``),
    in whole passes from ``start`` until ``seconds`` have elapsed. Untimed first, as a loader's first
    epoch: every record's pages cached (the rate of the work, not of the disk) and one batch made
    (its memory and the normalised batch's allocated: without that warm-up and with a last, partial
    batch, the probe's rate on the ImageNet-like corpus was 12% lower). No DataLoader, worker loop,
    queue or main process: a loader on these cores is at most this fast, within the probes' noise.
    """
    torch.set_num_threads(1)
    dataset = LMDBImageDataset(corpus.lmdb)
    step = max(1, len(dataset) // len(_PROBED))
    indices = list(range(0, len(dataset), step))[share::shares]
    size = min(corpus.batch_size, len(indices))
    batches = [indices[i:i + size] for i in range(0, len(indices) - size + 1, size)]
    decoder = probe_decoder(split)
    normalize, batch = NormalizeBatch(), torch.empty(size, 3, 224, 224, dtype=torch.uint8)

    def make(records: list[int]) -> None:
        for slot, (record, value) in enumerate(dataset.reader.values(records)):
            batch[slot], _ = record_pixels(dataset._meta, record, value, decode=decoder)
        normalize(batch)

    def make_all() -> None:
        for records in batches:
            make(records)

    for _ in dataset.reader.values(indices):
        pass
    make(batches[0])
    return rate_in_passes(make_all, len(batches) * size, seconds, start)


def probe_decoder(split: str) -> RandomResizedCropDecode | CenterCropDecode:
    """The crop decoder every probe uses for ``split``: the loaders' train crop, or Resize 256 + CenterCrop 224."""
    return RandomResizedCropDecode(224) if split == "train" else CenterCropDecode(224, resize=256)


def rate_in_passes(one_pass: Callable[[], None], images: int, seconds: float, start: float | None) -> float:
    """Images a second of this process's CPU time: ``one_pass()`` (``images`` each) repeated from ``start`` (a
    ``time.time()``, default now) until ``seconds`` of wall time have elapsed, in whole passes."""
    if start is not None:
        time.sleep(max(0.0, start - time.time()))
    done, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while True:
        one_pass()
        done += images
        if time.perf_counter() - started >= seconds:
            return done / (time.process_time() - cpu_started)


def splits_of(corpus: str, temperature: str, args: argparse.Namespace) -> list[str]:
    """``train``, and ``val`` on the warm ImageNet-like corpus unless ``--no-val``."""
    return ["train", "val"] if args.val and corpus == "imagenet" and temperature == "warm" else ["train"]


def run_rounds(corpora: list[Corpus], cases: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every case once per round and (corpus, cache state, split), in an order rotated by the round.

    The ceiling is probed before the first run of a corpus and split and after every run: each
    probe is the ``after`` of one run and the ``before`` of the next of the same corpus and split.
    Round ``r`` seeds every loader's order and crops with ``--seed + r``: with one seed for every
    round, each loader's steady-state window held the same images and crops in every round, and
    those differ between loaders (a window's mean decode cost over seeds: sd 0.8% on the 1-4 MP
    corpus, 1.7-2.0% on the ImageNet-like one; ``benchmarks/NOTES.md``, 2026-12-07, afternoon), a
    bias the rounds could not average out.
    """
    records = {}
    for corpus in corpora:
        step = max(1, len(corpus.files) // args.ceiling_images) if args.ceiling_images else 1
        records[corpus.name] = load_records([pathlib.Path(p) for p in corpus.files[::step]])
    last: dict[tuple[str, str], Probe] = {}
    runs = []
    started = time.perf_counter()
    for round_index in range(args.rounds):
        round_args = argparse.Namespace(**{**vars(args), "seed": args.seed + round_index})
        for corpus in corpora:
            for temperature in args.temperatures:
                for split in splits_of(corpus.name, temperature, args):
                    chosen = [case for case in cases if split == "train" or case in VAL_CASES]
                    shift = round_index % len(chosen)
                    for case in chosen[shift:] + chosen[:shift]:
                        sample = records[corpus.name]
                        before = last.get((corpus.name, split)) or probe_ceiling(sample, corpus, split, args)
                        run = measure(case, corpus, split, temperature, corpora, sample, before, round_args)
                        last[corpus.name, split] = run["ceiling_probes"][-1]
                        runs.append({"round": round_index, "seed": round_args.seed, "corpus": corpus.name,
                                     "temperature": temperature, "split": split, "case": case, **run})
                        note = run.get("error") or (f"{run['value']:.1f} img/s, ceiling "
                                                    f"{run['ceiling_img_s_per_core']:.1f} img/s per core, "
                                                    f"{run['ceiling_all_cores_img_s']:.1f} on all cores, "
                                                    f"loader bound {run['loader_bound_img_s']:.1f}")
                        print(f"[round {round_index + 1} {time.perf_counter() - started:5.0f}s] {corpus.name}/"
                              f"{temperature}/{split}/{case}: {note}", flush=True)
    return runs


# --------------------------------------------------------------------------- summary


def series(results: dict, corpus: str, temperature: str, split: str, case: str, key: str = "value") -> list[float]:
    """A case's img/s (or another number of its runs) per round (NaN where it failed or did not run)."""
    by_round = {run["round"]: run.get(key, float("nan")) for run in results["runs"]
                if (run["corpus"], run["temperature"], run["split"], run["case"]) == (corpus, temperature, split, case)}
    return [by_round.get(r, float("nan")) for r in range(results["settings"]["rounds"])]


def ceiling_series(results: dict, corpus: str, temperature: str, split: str, case: str) -> list[float]:
    """The ceiling probed around each run of a case (img/s per core x ``ceiling_cores``), per round."""
    cores = results["settings"]["ceiling_cores"]
    return [v * cores for v in series(results, corpus, temperature, split, case, "ceiling_img_s_per_core")]


def all_cores_series(results: dict, corpus: str, temperature: str, split: str, case: str) -> list[float]:
    """The all-cores ceiling probed around each run of a case (img/s of every core decoding at once), per round."""
    return series(results, corpus, temperature, split, case, "ceiling_all_cores_img_s")


def bound_series(results: dict, corpus: str, temperature: str, split: str, case: str) -> list[float]:
    """The loader bound probed around each run of a case (img/s of every core doing a loader's unavoidable work)."""
    return series(results, corpus, temperature, split, case, "loader_bound_img_s")


def sample_words(settings: dict) -> str:
    """What every ceiling probe decoded, in words."""
    images = settings["ceiling_images"]
    return f"a {images}-image sample of the corpus" if images else "every image of the corpus"


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Per-round ratios (NaN where either side is missing)."""
    return [n / d if d and np.isfinite(d) and np.isfinite(n) else float("nan") for n, d in zip(numerator, denominator)]


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the finite values (NaN when there are none)."""
    finite = [v for v in values if np.isfinite(v)]
    return (statistics.median(finite), min(finite), max(finite)) if finite else (float("nan"),) * 3


def ranged(values: list[float], unit: str = "x", digits: int = 2) -> str:
    """``median [min, max]`` of per-round values, or "not measured"."""
    middle, low, high = spread(values)
    if not np.isfinite(middle):
        return "not measured"
    return f"{middle:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"


def targets(results: dict) -> list[dict[str, Any]]:
    """Each target per cache state: the median ratio, pass/FAIL, the gap and what the ceiling allows."""
    found = []
    for corpus, against, least in TARGETS:
        for temperature in results["settings"]["temperatures"]:
            ours = series(results, corpus, temperature, "train", OURS)
            if not any(np.isfinite(v) for v in ours):
                continue
            extra: dict[str, float] = {}
            if against == "ceiling":  # the fraction its CPU time an image allows with every core busy
                other = ceiling_series(results, corpus, temperature, "train", OURS)
                per_core = series(results, corpus, temperature, "train", OURS, "ceiling_img_s_per_core")
                cpu = series(results, corpus, temperature, "train", OURS, "cpu_ms_per_image")
                # A window shorter than the kernel's CPU clock tick (a tiny run) has no CPU time: not measured.
                allows = spread(ratios([1e3] * len(cpu), [c * p for c, p in zip(cpu, per_core)]))[0]
                all_cores = all_cores_series(results, corpus, temperature, "train", OURS)
                extra = {"all_cores_reach": spread(ratios(all_cores, other))[0],
                         "of_all_cores": spread(ratios(ours, all_cores))[0]}
            else:  # the ratios the ceiling and the loader bound probed around the other loader's run would give
                other = series(results, corpus, temperature, "train", against)
                allows = spread(ratios(ceiling_series(results, corpus, temperature, "train", against), other))[0]
            bound = bound_series(results, corpus, temperature, "train", OURS if against == "ceiling" else against)
            extra["bound_reach"] = spread(ratios(bound, other))[0]
            middle, low, high = spread(ratios(ours, other))
            passed = bool(np.isfinite(middle) and middle >= least)
            found.append({"corpus": corpus, "temperature": temperature, "against": against, "least": least,
                          "median": middle, "min": low, "max": high, "passed": passed, "ceiling_allows": allows,
                          "measured": bool(np.isfinite(middle)), **extra})
    return found


def gap(target: dict[str, Any]) -> str:
    """How far a target's median is from its bound, and whether the ceiling leaves room to reach it."""
    if not target["measured"]:
        return "not measured"
    if target["passed"]:
        return ""
    gap = target["least"] - target["median"]
    short = f"short by {gap:.2f}x ({100 * (1 - target['median'] / target['least']):.0f}%)"
    allows = target["ceiling_allows"]
    if not np.isfinite(allows):
        return short
    if target["against"] == "ceiling":
        verdict = "out of reach" if allows < target["least"] else "within reach"
        text = (f"{short}; {verdict} at its CPU time an image: with every core busy it would reach "
                f"{allows:.2f}x the ceiling")
        reach = target.get("all_cores_reach", float("nan"))
        if np.isfinite(reach):  # the cores themselves, all decoding at once
            text += (f"; the cores all decoding at once reach {reach:.2f}x the ceiling"
                     f"{' (so the target is out of reach for any loader)' if reach < target['least'] else ''}, "
                     f"and the loader {target['of_all_cores']:.2f}x that rate")
        return text + _bound_words(target, "the ceiling")
    if allows < target["least"]:
        return f"{short}; out of reach: the decode ceiling is {allows:.3f}x {target['against']}"
    bound = _bound_words(target, target["against"])
    return f"{short}; the decode ceiling is {allows:.3f}x {target['against']}{bound or ', so within reach'}"


def _bound_words(target: dict[str, Any], against: str) -> str:
    """What the loader bound reaches against what a target compares with, and whether the target is in its reach."""
    bound = target.get("bound_reach", float("nan"))
    if not np.isfinite(bound):
        return ""
    verdict = ("out of reach for any loader that reads, checks, batches and normalises on these cores"
               if bound < target["least"] else "within its reach")
    return f"; the loader bound reaches {bound:.2f}x {against}: {verdict}"


def _seed_words(results: dict) -> str:
    """How the run seeded its loaders' orders and crops (runs saved before round seeds used one seed throughout)."""
    seed = results["settings"].get("seed", 0)
    if all("seed" in run for run in results["runs"]):
        return f"; each round's orders and crops drawn from seed {seed} + the round, FFCV's by FFCV"
    return f"; every round's orders and crops drawn from seed {seed}, FFCV's by FFCV"


def markdown(results: dict) -> str:
    """The section of RESULTS.md for a saved run: settings, targets, every case per corpus and cache state."""
    settings = results["settings"]
    load = results["load_average_1min"]
    found = targets(results)
    measured = [t for t in found if t["measured"]]
    missed = [t for t in measured if not t["passed"]]
    window = ", ".join(f"{name}: batches {skip + 2}-{skip + batches + 1} of {epoch}, timed from batch {skip + 1}"
                       for name, (skip, batches, epoch) in _windows(results).items())
    window = window or "from the batch by which every worker delivered one"
    lines = ["## CPU frontier", "", *report.provenance_lines(results),
             f"Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}.", "",
             (f"Settings: {settings['workers']} workers/threads per loader, "
              f"{settings['rounds']} round{'s' if settings['rounds'] != 1 else ''} interleaved "
              f"(case order rotated per round{_seed_words(results)}), cache states "
              f"{', '.join(settings['temperatures'])}; 1-minute load average {load[0]} before and {load[1]} after. "
              f"img/s = steady state of each loader's second epoch, {window} (the first epoch, timed the same "
              "way, warms the loader up as a training run's first epoch does: workers and threads kept across "
              "epochs; cold: the files evicted again before the second); ratios per round, median [min, max]. "
              "Ceiling = one core's "
              "decode + crop + resize + flip rate (simplejpeg + lmdb_dataset's crop decoder, bytes in memory, "
              "images per second of the probing process's CPU time, "
              f"probed before and after every run over whole passes of {sample_words(settings)}, "
              f"at least {settings['ceiling_seconds']} s a probe) x {settings['ceiling_cores']}; "
              "a loader's fraction of it uses the probes around its own run. All-cores ceiling: the same images "
              f"decoded by {settings['ceiling_cores']} processes at once in the same probes (their rates added), "
              "the rate the cores reach when every one of them decodes. Loader bound: in the same probes, as many "
              "processes each reading its share of the LMDB's records (pages cached) and doing only what no "
              "loader can skip: pread, CRC32 and header check, the same crop decode, a copy into a batch, the "
              "batch normalised to float32; no DataLoader, queue or main process."), "",
             "| corpus | images | batch | median MP | mean KB | ImageFolder MB | LMDB MB |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {c['images']} | {settings['batch_size'][name]} | {c['median_megapixels']} | "
              f"{c['mean_kb']} | {c['folder_mb']} | {c['lmdb_mb']} |" for name, c in results["corpora"].items()]
    lines += ["", "### Targets", "",
              f"{len(measured) - len(missed)} of {len(measured)} measured targets met"
              + (": missed " + "; ".join(f"{t['corpus']} {t['temperature']} vs {t['against']}" for t in missed)
                 if missed else "") + "."
              + (f" Not measured: {len(found) - len(measured)} (the loader compared with did not run)."
                 if len(measured) < len(found) else ""), "",
              f"| target | cache | {OURS} / other, median [min, max] | result | gap |", "|---|---|---|---|---|"]
    for t in found:
        what = "ceiling" if t["against"] == "ceiling" else t["against"]
        value = f"{t['median']:.2f}x [{t['min']:.2f}, {t['max']:.2f}]" if t["measured"] else "not measured"
        verdict = ("pass" if t["passed"] else "FAIL") if t["measured"] else "n/a"
        lines.append(f"| {t['corpus']}: {OURS} >= {t['least']}x {what} | {t['temperature']} | {value} | {verdict} | "
                     f"{gap(t)} |")
    for corpus in results["corpora"]:
        for temperature in settings["temperatures"]:
            for split in ("train", "val"):
                lines += case_table(results, corpus, temperature, split)
    if results["not_measured"]:
        lines += ["", "Not measured: " + "; ".join(f"`{case}`: {why}" for case, why in
                                                    results["not_measured"].items()) + "."]
    lines.append("")
    return "\n".join(lines)


def case_table(results: dict, corpus: str, temperature: str, split: str) -> list[str]:
    """One table: every case of (corpus, cache state, split) with its ratios and its fraction of the ceiling."""
    names = [case for case in CASES if any(
        (r["corpus"], r["temperature"], r["split"], r["case"]) == (corpus, temperature, split, case)
        for r in results["runs"])]
    if not names:
        return []
    probes = [v for case in names for v in ceiling_series(results, corpus, temperature, split, case)]
    all_cores = [v for case in names for v in all_cores_series(results, corpus, temperature, split, case)]
    bounds = [v for case in names for v in bound_series(results, corpus, temperature, split, case)]
    loads = [v for case in names for v in series(results, corpus, temperature, split, case, "load_1min")]
    drift = [100 * abs(after["one_core"] / before["one_core"] - 1) for run in results["runs"]
             if (run["corpus"], run["temperature"], run["split"]) == (corpus, temperature, split)
             for before, after in [run.get("ceiling_probes", ({"one_core": 1}, {"one_core": float("nan")}))]]
    baseline = series(results, corpus, temperature, split, BASELINE)
    dali = series(results, corpus, temperature, split, DALI)
    lines = ["", f"### {corpus}, {temperature}, {split}", "",
             (f"Ceiling, probed around every run: {ranged(probes, ' img/s', 1)} "
              f"({results['settings']['ceiling_cores']} x one core, whose decode + crop + resize + flip takes "
              f"{ranged([1e3 * results['settings']['ceiling_cores'] / v for v in probes], ' ms', 3)} of CPU an "
              f"image); all-cores ceiling {ranged(all_cores, ' img/s', 1)}; loader bound "
              f"{ranged(bounds, ' img/s', 1)}; the two probes around a run "
              f"differed by {ranged(drift, '%', 1)} (one core's rate, the later against the earlier). "
              "CPU an image: the loader's process "
              "(threads included) and its workers over the window, "
              "per image; cores busy: that CPU time over the window's wall time. 1-minute load average after "
              f"each run: {ranged(loads, '', 2)}."), "",
             ("| loader | img/s, median [min, max] | / ImageFolder+Pillow | / DALI CPU | / ceiling "
              "| / all-cores ceiling | CPU ms an image | cores busy | first batch s | first epoch img/s "
              "| first epoch / ceiling |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in names:
        values = series(results, corpus, temperature, split, case)
        firsts = series(results, corpus, temperature, split, case, "first_batch_s")
        first_epoch = [r.get("value", float("nan")) if isinstance(r, dict) else r
                       for r in series(results, corpus, temperature, split, case, "first_epoch")]
        errors = {r["error"] for r in results["runs"] if r.get("error") and (
            r["corpus"], r["temperature"], r["split"], r["case"]) == (corpus, temperature, split, case)}
        lines.append(f"| {CASES[case]} | {ranged(values, '', 1)} | {ranged(ratios(values, baseline))} | "
                     f"{ranged(ratios(values, dali))} | "
                     f"{ranged(ratios(values, ceiling_series(results, corpus, temperature, split, case)))} | "
                     f"{ranged(ratios(values, all_cores_series(results, corpus, temperature, split, case)))} | "
                     f"{ranged(series(results, corpus, temperature, split, case, 'cpu_ms_per_image'), '', 3)} | "
                     f"{ranged(series(results, corpus, temperature, split, case, 'cores_busy'), '', 2)} | "
                     f"{ranged(firsts, '', 2)} | {ranged(first_epoch, '', 1)} | "
                     f"{ranged(ratios(first_epoch, ceiling_series(results, corpus, temperature, split, case)))} |"
                     + (f" error: {'; '.join(sorted(errors))}" if errors else ""))
    if temperature == "cold":  # pages a loader maps stay cached: its second epoch was not read cold
        kept = [f"{case} {fraction:.0%}" for case in names
                if (fraction := max([0.0, *(v for v in series(results, corpus, temperature, split, case,
                                                                "resident_after") if np.isfinite(v))])) > 0.05]
        lines += ["", "Resident in the page cache after the eviction before the second epoch: "
                  + (", ".join(kept) + " (mapped by the loader, so not read cold); every other case's files under 5%."
                     if kept else "every case's files under 5%.")]
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--quick`` sets small sizes that explicit options override."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    parser.add_argument("--imagenet-images", type=int, help=f"ImageNet-like images (default {FULL['imagenet_images']})")
    parser.add_argument("--highres-images", type=int, help=f"1-4 MP images (default {FULL['highres_images']})")
    parser.add_argument("--batch-size", type=int,
                        help=f"images per batch, ImageNet-like corpus (default {FULL['batch_size']})")
    parser.add_argument("--highres-batch-size", type=int,
                        help=f"images per batch, 1-4 MP corpus (default {FULL['highres_batch_size']})")
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL['rounds']})")
    parser.add_argument("--workers", type=int, default=2, help="worker processes / threads per loader (default 2)")
    parser.add_argument("--corpora", nargs="+", choices=CORPORA, default=list(CORPORA), help="default: both")
    parser.add_argument("--temperatures", nargs="+", choices=TEMPERATURES, default=list(TEMPERATURES),
                        help="cache states (default: warm cold)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="default: all")
    parser.add_argument("--no-val", dest="val", action="store_false",
                        help="skip the validation pipeline (run on the warm ImageNet-like corpus by default)")
    parser.add_argument("--ceiling-images", type=int, default=0,
                        help="decode an even sample of about this many images of each corpus in every ceiling "
                             "probe (default 0: every image, the images the loaders decode)")
    parser.add_argument("--ceiling-seconds", type=float, default=0.5,
                        help="each ceiling probe's least duration, in whole passes over its images (default 0.5)")
    parser.add_argument("--seed", type=int, default=0,
                        help="order and augmentation seed of the first round; round r uses SEED + r (default 0)")
    parser.add_argument("--data", type=pathlib.Path, default=report.BENCHMARKS / "data",
                        help="where corpora, conversions and FFCV files are cached (default benchmarks/data)")
    parser.add_argument("--out", type=pathlib.Path,
                        help="JSON results file (default DATA/results/cpu_frontier/results.json)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def versions() -> dict[str, str]:
    """Installed versions of the peers' distributions."""
    from importlib import metadata

    found = {}
    for name, distribution in (("DALI", "nvidia-dali-cuda120"), ("SPDL", "spdl"), ("FFCV", "ffcv")):
        try:
            found[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def main(argv: list[str] | None = None) -> dict:
    """Prepare the corpora, run the rounds, print the section and write the JSON."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # one core per process, like the DataLoader workers
    started = time.perf_counter()
    corpora = [prepare_corpus(name, args) for name in args.corpora]
    for corpus in corpora:
        if steady_window(len(corpus.files) // corpus.batch_size, args.workers)[1] < 1:
            raise SystemExit(f"{corpus.name}: {len(corpus.files)} images give no steady-state batch at batch size "
                             f"{corpus.batch_size} and {args.workers} workers; use more images or a smaller batch")
    missing = in_child(unavailable, corpora, args)  # this process imports no peer: children fork clean
    cases = [case for case in args.cases if case not in missing]
    load_before = os.getloadavg()[0]
    runs = run_rounds(corpora, cases, args)
    results = {**report.provenance("cpu_frontier.run", argv), "versions": versions(),
               "settings": {"workers": args.workers, "batch_size": {c.name: c.batch_size for c in corpora},
                            "window": {c.name: steady_window(len(c.files) // c.batch_size, args.workers)
                                       for c in corpora},
                            "rounds": args.rounds,
                            "temperatures": args.temperatures, "ceiling_cores": min(CORES, args.workers),
                            "ceiling_images": args.ceiling_images,
                            "ceiling_seconds": args.ceiling_seconds, "seed": args.seed, "val": args.val},
               "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
               "corpora": {c.name: corpus_facts(c) for c in corpora},
               "not_measured": {case: why for case, why in missing.items() if case in args.cases},
               "runs": runs, "seconds": round(time.perf_counter() - started)}
    results["targets"] = targets(results)
    print(markdown(results))
    report.save(results, args.out or args.data / "results" / "cpu_frontier" / "results.json")
    return results


if __name__ == "__main__":
    main()
