"""DataLoader cases: ImageFolder, lmdb_dataset's access paths and the peers, warm or cold, timed in steady state."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from lmdb_dataset import ChunkShuffleSampler, LMDBImageDataset, LMDBIterableDataset
from lmdb_dataset.decode.transforms import NormalizeBatch
from lmdb_dataset.storage.environment import data_file, environments

from ..common.harness import Case, Context, Result, evict, warm
from ..common.pipelines import HWCToCHW, SimplejpegImageFolder, classic_pipeline, float_v2_pipeline, uint8_pipeline


@dataclass(frozen=True)
class LoaderSpec:
    """How to build one DataLoader-like iterable.

    Attributes:
        source: ``imagefolder-pillow``, ``imagefolder-simplejpeg``, ``lmdb-random``, ``lmdb-chunk``,
            ``lmdb-iterable`` or ``peer:<name>``.
        pipeline: ``train`` or ``val``.
        output: ``uint8`` or ``float`` (normalised in the worker).
        normalize: For ``uint8``: normalise each batch in the main process with NormalizeBatch,
            timed (on a GPU machine this runs on the GPU); False times the uint8 batches as the
            loader delivers them ("uint8-batches" in case names).
        workers: DataLoader workers.
        storage: LMDB storage, ``encoded`` or ``raw``.
        access: LMDBImageDataset access, ``pread`` or ``mmap``.
        verify: LMDB datasets check each record's CRC32 (the default); False shows its cost
            ("-nocrc" in case names).
    """

    source: str
    pipeline: str = "train"
    output: str = "uint8"
    normalize: bool = True
    workers: int = 2
    storage: str = "encoded"
    access: str = "pread"
    verify: bool = True

    @property
    def label(self) -> str:
        """Short name used in case names."""
        extra = f"-{self.storage}" if self.source == "lmdb-random" else ""
        extra += f"-{self.access}" if self.source.startswith("lmdb") and self.access != "pread" else ""
        extra += "" if self.verify else "-nocrc"
        output = self.output if self.normalize or self.output != "uint8" else "uint8-batches"
        return f"{self.source}{extra}/{output}"

    def files(self, ctx: Context) -> list[str]:
        """The files this loader reads (for warming and eviction)."""
        if self.source.startswith("imagefolder"):
            return ctx.files
        if self.source.startswith("peer:"):
            return [str(p) for p in Path(ctx.peers[self.source[5:]][1]).parent.rglob("*") if p.is_file()]
        return [str(data_file(ctx.lmdb[self.storage]))]


def make_loader(spec: LoaderSpec, ctx: Context, *, persistent: bool = False) -> Iterable:
    """Build the iterable of ``(images, labels)`` batches for ``spec`` (DataLoaders with ``persistent`` workers)."""
    transform = float_v2_pipeline(spec.pipeline) if spec.output == "float" else uint8_pipeline(spec.pipeline)
    options = {"batch_size": ctx.args.batch_size, "num_workers": spec.workers}
    if persistent:  # memory cases only (peers' loaders are not built with it)
        options["persistent_workers"] = True
    if spec.source == "imagefolder-pillow":
        return DataLoader(ImageFolder(str(ctx.folder), transform=classic_pipeline(spec.pipeline)), shuffle=True,
                          **options)
    if spec.source == "imagefolder-simplejpeg":
        return DataLoader(SimplejpegImageFolder(ctx.folder, transform), shuffle=True, **options)
    if spec.source.startswith("peer:"):
        peer, prepared = ctx.peers[spec.source[5:]]
        return peer.make_loader(prepared, transform=HWCToCHW(transform), **options)
    path = ctx.lmdb[spec.storage]
    if spec.source == "lmdb-iterable":
        iterable = LMDBIterableDataset(path, transform=transform, output="tensor", batch_size=ctx.args.batch_size)
        return DataLoader(iterable, **options)
    dataset = LMDBImageDataset(path, transform=transform, output="tensor", access=spec.access,
                               verify_checksums=spec.verify)
    sampler = ChunkShuffleSampler(dataset) if spec.source == "lmdb-chunk" else None
    return DataLoader(dataset, sampler=sampler, shuffle=sampler is None, **options)


def cpu_seconds() -> float:
    """CPU seconds (user + system) so far of this process and of every process it started (workers).

    Each live process counts its own time and that of its children it has reaped (workers that ended).
    """
    import psutil  # the bench extra's (and accelerate's) dependency

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process that ended meanwhile
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def time_loader(loader: Iterable, *, workers: int, batches: int, normalize: bool = True,
                skip: int | None = None, finish: bool = False) -> Result:
    """Iterate a loader: first-batch latency apart from steady-state throughput, and the CPU it took.

    The steady-state window starts when batch ``skip`` arrives (default ``workers - 1``: every
    worker has delivered its first batch, built in parallel with the first one) and covers the
    next ``batches`` batches; the loop stops there, so batches a loader finished ahead of the
    window's end (prefetched, staged) are not counted. The window ends as its last batch arrives,
    before the loop is left: leaving it ends the loader (a DataLoader joins its workers, which first
    finish the batch at hand), and that teardown is no part of the steady state. With ``finish``
    the rest of the epoch is then read, untimed, so that the loader's next iteration is its next
    epoch (for loaders that keep their workers or threads across epochs). With ``normalize``,
    uint8 batches are normalised here, in the main process, and timed. ``cpu_ms_per_image`` is the
    CPU time of this process (its threads included) and its worker processes over the window, per
    image delivered in it; ``cores_busy`` the same CPU time over the window's wall time.
    """
    normalizer = NormalizeBatch()
    start = max(workers, 1) - 1 if skip is None else skip
    started = time.perf_counter()
    first = window_start = cpu_start = 0.0
    window_end = cpu_end = None
    images = steady = 0
    iterator = iter(loader)
    for step, (batch, _) in enumerate(iterator):
        if normalize and batch.dtype == torch.uint8:
            batch = normalizer(batch)
        if step == 0:
            first = time.perf_counter() - started
        if step == start:
            window_start = time.perf_counter()  # then the CPU, as at the end: the two reads' own time cancels
            cpu_start = cpu_seconds()
        elif step > start:
            images += len(batch)
            steady += 1
            if steady >= batches:
                window_end, cpu_end = time.perf_counter(), cpu_seconds()
                break
    if window_end is None or cpu_end is None:  # the epoch ended first (the DataLoader has ended its workers)
        window_end, cpu_end = time.perf_counter(), cpu_seconds()
    elif finish:
        for _ in iterator:
            pass
    wall, cpu = window_end - window_start, cpu_end - cpu_start
    if images == 0:
        raise RuntimeError("the corpus is too small for a steady-state window; use more images")
    return {"value": images / wall, "first_batch_s": first, "images": images, "steady_batches": steady,
            "cpu_ms_per_image": 1e3 * cpu / images, "cores_busy": cpu / wall}


def loader_case(spec: LoaderSpec, *, cold: bool = False) -> Case:
    """A DataLoader throughput case (warm: files read first; cold: files evicted first)."""
    def run(ctx: Context) -> Result:
        files = spec.files(ctx)
        environments.release(ctx.lmdb["encoded"])  # our own mapping would pin pages in the cache
        state = evict(files) if cold else (warm(files) or {})
        result = time_loader(make_loader(spec, ctx), workers=spec.workers, batches=ctx.args.batches,
                             normalize=spec.normalize)
        return {**result, **state}
    rate = (200.0 if spec.output == "float" else 500.0) * spec.workers / 2  # img/s seen on 2 cores
    temperature = "cold" if cold else "warm"
    return Case(f"{temperature}/{spec.pipeline}/w{spec.workers}/{spec.label}", "img/s", run,
                lambda c: 3.0 + (spec.workers + c.args.batches) * c.args.batch_size / rate)


LMDB_SOURCES = ("lmdb-random", "lmdb-chunk", "lmdb-iterable")


def warm_loader_specs(peers: Iterable[str]) -> list[LoaderSpec]:
    """Warm DataLoader configurations: the train grid at 2 workers, then 1 worker and val."""
    specs = [LoaderSpec("imagefolder-pillow", output="float"), LoaderSpec("imagefolder-simplejpeg"),
             LoaderSpec("imagefolder-simplejpeg", output="float"), LoaderSpec("lmdb-random"),
             LoaderSpec("lmdb-random", output="float"), LoaderSpec("lmdb-random", storage="raw"),
             LoaderSpec("lmdb-random", access="mmap"), LoaderSpec("lmdb-chunk"), LoaderSpec("lmdb-iterable")]
    specs += [LoaderSpec(source, normalize=False) for source in ("lmdb-random", "lmdb-chunk", "lmdb-iterable")]
    specs.append(LoaderSpec("lmdb-random", normalize=False, verify=False))
    specs += [LoaderSpec(f"peer:{name}") for name in peers]
    specs += [LoaderSpec("imagefolder-pillow", output="float", workers=1), LoaderSpec("lmdb-random", workers=1),
              LoaderSpec("imagefolder-pillow", pipeline="val", output="float"),
              LoaderSpec("lmdb-random", pipeline="val")]
    return specs


COLD_PATHS = (LoaderSpec("imagefolder-simplejpeg"), LoaderSpec("lmdb-random"),
              LoaderSpec("lmdb-random", access="mmap"), LoaderSpec("lmdb-chunk"), LoaderSpec("lmdb-iterable"))


# --------------------------------------------------------------------------- cold raw reads
