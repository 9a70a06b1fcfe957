"""Adapters that put peer data-loading libraries on the same footing as ours.

Each peer converts an ImageFolder tree (torchvision's sample order and class
indices) into its own storage format and reads it back as ``(images, labels)``
batches. Every peer except FFCV stores the ORIGINAL encoded image bytes (no
re-encode) and decodes them with :func:`decode_image` (simplejpeg, with a
Pillow fallback), applies the caller's ``transform`` and batches with torch's
``default_collate``, so a comparison measures the storage and the loader, not
the decoder. The peer libraries are imported lazily: one that is not installed
is listed by :func:`unavailable_peers` and never breaks the suite.

Run ``python -m benchmarks.common.peers IMAGE_FOLDER WORK_DIR`` for a self-check that
prepares every available peer, iterates it and checks the label counts against
the ImageFolder (and, for byte-preserving peers, that every image arrives
exactly once per epoch).
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate

Transform = Callable[[np.ndarray], torch.Tensor]
Record = dict[str, Any]

# JPEG colour spaces that simplejpeg turns into RGB itself; everything else
# (CMYK, YCCK, grayscale, non-JPEG files) goes through Pillow's convert("RGB").
_SIMPLEJPEG_COLORSPACES = frozenset({"YCbCr", "RGB"})
# Shards are sized so that even a small dataset spreads over this many shards
# (enough for every DataLoader worker to get some), capped at _MAX_SHARD_BYTES.
_MIN_SHARDS = 8
_MAX_SHARD_BYTES = 64 << 20
_MIN_SHARD_BYTES = 1 << 16


@dataclass(frozen=True)
class Peer:
    """One peer library: how to convert an ImageFolder and how to read it.

    Attributes:
        name: Short name used in reports.
        prepare: ``(image_folder_root, work_dir) -> prepared_path``. Converts
            the ImageFolder (torchvision order, label = class index) into the
            peer's format under ``work_dir`` and returns the path to hand to
            ``make_loader``.
        make_loader: ``(prepared_path, *, transform, batch_size, num_workers)
            -> iterable of (images_batch, labels_batch)`` covering every
            sample once per pass.

    Peer ``"ffcv"`` differs from the others: FFCV cannot run an arbitrary
    Python transform, so its ``make_loader`` ignores ``transform`` and runs
    FFCV's own compiled pipeline (``RandomResizedCropRGBImageDecoder((224,
    224))``, ``RandomHorizontalFlip``, ``ToTensor``, ``ToTorchImage``) on
    ``num_workers`` threads, and its ``prepare`` re-encodes every image as JPEG
    (quality 90) with ``max_resolution=512`` as FFCV's ImageNet example does,
    so it decodes smaller images than the byte-preserving peers.
    """

    name: str
    prepare: Callable[[Path, Path], Path]
    make_loader: Callable[..., Iterable]


def decode_image(data: bytes) -> np.ndarray:
    """Decodes encoded image bytes into an RGB array.

    Baseline/progressive YCbCr or RGB JPEGs are decoded by simplejpeg; other
    files (PNG, CMYK/YCCK or grayscale JPEGs, ...) fall back to Pillow's
    ``convert("RGB")``.

    Args:
        data: The encoded image file contents.

    Returns:
        An HWC ``uint8`` array with three channels.
    """
    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
    except ValueError:
        colorspace = None
    if colorspace in _SIMPLEJPEG_COLORSPACES:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


@dataclass(frozen=True)
class DecodeSample:
    """Turns a stored record into a ``(tensor, label)`` pair; shared by peers.

    Picklable, so it can travel to DataLoader worker processes.

    Attributes:
        transform: Maps a decoded HWC ``uint8`` RGB array to a tensor.
    """

    transform: Transform

    def __call__(self, record: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        """Decodes ``record["image"]`` and transforms it.

        Args:
            record: Mapping with ``"image"`` (encoded bytes) and ``"label"``
                (an int, or its decimal text as bytes/str).

        Returns:
            The transformed image and the integer label.
        """
        return self.transform(decode_image(record["image"])), int(record["label"])


def image_folder_samples(root: Path) -> list[tuple[str, int]]:
    """Lists ``(path, class_index)`` pairs in torchvision ImageFolder order.

    Args:
        root: ImageFolder root (one sub-folder per class).

    Returns:
        The samples exactly as ``torchvision.datasets.ImageFolder`` lists them.
    """
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(root)).samples


def read_record(sample: tuple[str, int]) -> Record:
    """Reads one ImageFolder sample as ``{"image": bytes, "label": int}``.

    Args:
        sample: ``(path, class_index)`` as listed by :func:`image_folder_samples`.

    Returns:
        The original file bytes and the class index.
    """
    path, label = sample
    return {"image": Path(path).read_bytes(), "label": int(label)}


def _shard_bytes(samples: list[tuple[str, int]]) -> int:
    """Picks a shard size giving at least ``_MIN_SHARDS`` shards when possible."""
    total = sum(os.path.getsize(path) for path, _ in samples)
    return max(_MIN_SHARD_BYTES, min(_MAX_SHARD_BYTES, math.ceil(total / _MIN_SHARDS)))


def _fresh_dir(path: Path) -> Path:
    """Deletes ``path`` if present and recreates it empty."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------- webdataset


def _prepare_webdataset(root: Path, work_dir: Path) -> Path:
    """Writes ``shard-NNNNNN.tar`` files holding ``.image`` and ``.label`` members."""
    import webdataset as wds

    samples = image_folder_samples(root)
    out = _fresh_dir(work_dir / "webdataset")
    pattern = str(out / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxsize=_shard_bytes(samples), verbose=0) as sink:
        for index, sample in enumerate(samples):
            record = read_record(sample)
            sink.write(
                {
                    "__key__": f"{index:09d}",
                    "image": record["image"],
                    "label": str(record["label"]).encode(),
                }
            )
    return out


def _webdataset_loader(
    prepared: Path, *, transform: Transform, batch_size: int, num_workers: int
) -> Iterable:
    """Reads the shards with ``WebDataset`` + ``WebLoader`` (batching in workers).

    Shards are split over workers and shuffled (shard order plus a 1000-sample
    buffer); each worker emits its own final partial batch, so every sample is
    seen once per epoch. ``empty_check`` is off so that more workers than
    shards is not an error.
    """
    import webdataset as wds

    shards = sorted(str(path) for path in prepared.glob("shard-*.tar"))
    dataset = (
        wds.WebDataset(shards, shardshuffle=len(shards), empty_check=False)
        .shuffle(1000)
        .map(DecodeSample(transform))
        .batched(batch_size, collation_fn=default_collate, partial=True)
    )
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers)


# --------------------------------------------------------------------------- litdata


def _prepare_litdata(root: Path, work_dir: Path) -> Path:
    """Runs ``litdata.optimize`` storing the raw bytes (``bytes`` serializer).

    ``optimize`` forces the process-wide multiprocessing start method (to
    ``spawn`` by default); passing the current one keeps later DataLoaders of
    the suite on the start method they would have had.
    """
    import litdata

    samples = image_folder_samples(root)
    out = _fresh_dir(work_dir / "litdata")
    litdata.optimize(
        fn=read_record,
        inputs=samples,
        output_dir=str(out),
        chunk_bytes=_shard_bytes(samples),
        num_workers=min(len(samples), os.cpu_count() or 1),
        mode="overwrite",
        start_method=multiprocessing.get_start_method(),
        verbose=False,
    )
    return out


def _litdata_loader(
    prepared: Path, *, transform: Transform, batch_size: int, num_workers: int
) -> Iterable:
    """Reads with ``StreamingDataset(shuffle=True, transform=...)`` + ``StreamingDataLoader``."""
    import litdata

    dataset = litdata.StreamingDataset(
        str(prepared), shuffle=True, drop_last=False, transform=DecodeSample(transform)
    )
    return litdata.StreamingDataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=default_collate
    )


# --------------------------------------------------------------------------- mosaicml-streaming


def _prepare_streaming(root: Path, work_dir: Path) -> Path:
    """Writes uncompressed MDS shards with ``image: bytes`` and ``label: int``."""
    from streaming import MDSWriter

    samples = image_folder_samples(root)
    out = _fresh_dir(work_dir / "mosaicml-streaming")
    with MDSWriter(
        out=str(out),
        columns={"image": "bytes", "label": "int"},
        size_limit=_shard_bytes(samples),
        progress_bar=False,
    ) as writer:
        for sample in samples:
            writer.write(read_record(sample))
    return out


@cache
def _decoding_streaming_dataset() -> type:
    """Builds (once) a ``StreamingDataset`` subclass that decodes in ``get_item``.

    Overriding ``get_item`` is how the library's own vision datasets add
    transforms. The class is created lazily so that ``streaming`` stays an
    optional import; the module ``__getattr__`` makes it picklable by name for
    spawned DataLoader workers.
    """
    from streaming import StreamingDataset

    class DecodingStreamingDataset(StreamingDataset):
        """``StreamingDataset`` whose items are ``(transform(image), label)``."""

        def __init__(self, *, decode: DecodeSample, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.decode = decode

        def get_item(self, sample_id: int, retry: int = 7) -> tuple[torch.Tensor, int]:
            return self.decode(super().get_item(sample_id, retry))

    DecodingStreamingDataset.__module__ = __name__
    DecodingStreamingDataset.__qualname__ = DecodingStreamingDataset.__name__
    return DecodingStreamingDataset


def __getattr__(name: str) -> Any:
    """Resolves ``DecodingStreamingDataset`` on demand (PEP 562) for unpickling."""
    if name == "DecodingStreamingDataset":
        return _decoding_streaming_dataset()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _streaming_loader(
    prepared: Path, *, transform: Transform, batch_size: int, num_workers: int
) -> Iterable:
    """Reads the local MDS copy with ``StreamingDataset(shuffle=True)`` + torch ``DataLoader``.

    Stale shared memory left by a crashed earlier run is cleared first, as the
    library recommends.
    """
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    dataset = _decoding_streaming_dataset()(
        decode=DecodeSample(transform), local=str(prepared), shuffle=True, batch_size=batch_size
    )
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=default_collate
    )


# --------------------------------------------------------------------------- FFCV


def _prepare_ffcv(root: Path, work_dir: Path) -> Path:
    """Writes ``train.beton`` like ffcv-imagenet: JPEG re-encoded at <= 512 px."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    out = _fresh_dir(work_dir / "ffcv") / "train.beton"
    writer = DatasetWriter(
        str(out),
        {
            "image": RGBImageField(write_mode="jpg", max_resolution=512, jpeg_quality=90),
            "label": IntField(),
        },
        num_workers=os.cpu_count() or 1,
    )
    writer.from_indexed_dataset(ImageFolder(str(root)))
    return out


def _ffcv_loader(
    prepared: Path, *, transform: Transform, batch_size: int, num_workers: int
) -> Iterable:
    """Reads with FFCV's ``Loader`` (random order, ``num_workers`` threads).

    ``transform`` is ignored: FFCV compiles its own pipeline
    (``RandomResizedCropRGBImageDecoder((224, 224))``, ``RandomHorizontalFlip``,
    ``ToTensor``, ``ToTorchImage``), which yields ``uint8`` NCHW batches.
    """
    del transform  # FFCV cannot run an arbitrary Python transform.
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    return Loader(
        str(prepared),
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption.RANDOM,
        drop_last=False,
        os_cache=True,
        pipelines={
            "image": [
                RandomResizedCropRGBImageDecoder((224, 224)),
                RandomHorizontalFlip(),
                ToTensor(),
                ToTorchImage(),
            ],
            "label": [IntDecoder(), ToTensor(), Squeeze(1)],
        },
    )


# --------------------------------------------------------------------------- registry

_PEERS: tuple[tuple[Peer, tuple[str, ...]], ...] = (
    (Peer("webdataset", _prepare_webdataset, _webdataset_loader), ("webdataset",)),
    (Peer("litdata", _prepare_litdata, _litdata_loader), ("litdata",)),
    (Peer("mosaicml-streaming", _prepare_streaming, _streaming_loader), ("streaming",)),
    (
        Peer("ffcv", _prepare_ffcv, _ffcv_loader),
        ("ffcv.writer", "ffcv.loader", "ffcv.fields.decoders", "ffcv.transforms"),
    ),
)


@cache
def _import_error(modules: tuple[str, ...]) -> str | None:
    """Imports ``modules``; returns ``"Type: message"`` of the first failure."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # any failure means unavailable
            return f"{type(error).__name__}: {error}"
    return None


def available_peers() -> dict[str, Peer]:
    """Returns the peers whose library imports, by name."""
    return {peer.name: peer for peer, modules in _PEERS if _import_error(modules) is None}


def unavailable_peers() -> dict[str, str]:
    """Returns ``name -> reason`` for peers whose library fails to import."""
    return {
        peer.name: reason
        for peer, modules in _PEERS
        if (reason := _import_error(modules)) is not None
    }


# --------------------------------------------------------------------------- self-check


def _fingerprint(image: np.ndarray) -> torch.Tensor:
    """Summarises a decoded image as ``[height, width, pixel sum]``."""
    return torch.tensor([image.shape[0], image.shape[1], int(image.sum(dtype=np.int64))])


def _timing_transform() -> Transform:
    """The FFCV-like augmentation used to time the peers in the self-check."""
    from torchvision.transforms import v2

    return v2.Compose(
        [v2.ToImage(), v2.RandomResizedCrop((224, 224), antialias=True), v2.RandomHorizontalFlip()]
    )


def _epoch(loader: Iterable) -> tuple[Counter[tuple[int, ...]], Counter[int], float]:
    """Iterates one pass; returns per-image rows, label counts and seconds."""
    rows: Counter[tuple[int, ...]] = Counter()
    labels: Counter[int] = Counter()
    start = time.perf_counter()
    for images, batch_labels in loader:
        batch_labels = batch_labels.tolist()
        labels.update(batch_labels)
        if images.ndim == 2:  # fingerprint batches: (batch, 3)
            rows.update(
                (label, *row) for label, row in zip(batch_labels, images.tolist(), strict=True)
            )
    return rows, labels, time.perf_counter() - start


def _self_check(
    root: Path, work_dir: Path, names: list[str], batch_size: int, num_workers: int, epochs: int
) -> bool:
    """Prepares and reads every requested peer; prints a report; True if all match."""
    samples = image_folder_samples(root)
    want_labels = Counter(label for _, label in samples)
    want_rows = Counter(
        (label, *_fingerprint(decode_image(Path(path).read_bytes())).tolist())
        for path, label in samples
    )
    print(
        f"ImageFolder {root}: {len(samples)} images, "
        f"label counts {dict(sorted(want_labels.items()))}"
    )
    for name, reason in unavailable_peers().items():
        print(f"[{name}] UNAVAILABLE: {reason}")
    peers = available_peers()
    all_ok = True
    for name in names:
        if name not in peers:
            continue
        peer = peers[name]
        start = time.perf_counter()
        prepared = peer.prepare(root, work_dir)
        prepare_s = time.perf_counter() - start
        loader = peer.make_loader(
            prepared, transform=_timing_transform(), batch_size=batch_size, num_workers=num_workers
        )
        times = []
        ok = True
        for _ in range(epochs):
            _, labels, seconds = _epoch(loader)
            times.append(seconds)
            ok &= labels == want_labels
        exact = "n/a (FFCV re-encodes; own pipeline)"
        if name != "ffcv":
            check_loader = peer.make_loader(
                prepared, transform=_fingerprint, batch_size=batch_size, num_workers=num_workers
            )
            rows, labels, _ = _epoch(check_loader)
            exact_ok = rows == want_rows and labels == want_labels
            exact = "yes" if exact_ok else "NO"
            ok &= exact_ok
        all_ok &= ok
        print(
            f"[{name}] {'OK' if ok else 'MISMATCH'}: label counts {dict(sorted(labels.items()))}; "
            f"prepare {prepare_s:.2f}s; epochs {', '.join(f'{t:.2f}s' for t in times)}; "
            f"every image exactly once with original bytes: {exact}"
        )
    return all_ok


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of the self-check.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The process exit status: 0 when every checked peer matched.
    """
    parser = argparse.ArgumentParser(
        description="Self-check of the peer adapters: prepare each available peer from an "
        "ImageFolder, iterate it and compare label counts with the ImageFolder."
    )
    parser.add_argument("image_folder", type=Path, help="ImageFolder root (one folder per class)")
    parser.add_argument("work_dir", type=Path, help="where the prepared datasets are written")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per peer")
    parser.add_argument(
        "--peers", nargs="+", default=[peer.name for peer, _ in _PEERS], help="peers to check"
    )
    args = parser.parse_args(argv)
    ok = _self_check(
        args.image_folder, args.work_dir, args.peers, args.batch_size, args.num_workers, args.epochs
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
