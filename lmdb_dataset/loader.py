"""LMDBLoader: normalised training or validation batches on the device, in one call.

The loader assembles the pieces a training loop would otherwise wire by hand, all on the
stock ``DataLoader`` (exposed as :attr:`LMDBLoader.dataloader`)::

    reader (random / chunk / iterable) -> fused crop decode in workers (or device decode)
      -> uint8 batches (each worker's ring of shared memory), pinned -> side-stream copy
      to the device -> NormalizeBatch (into recycled host memory on the CPU)

and keeps the readers' exact mid-epoch resume: it counts the samples it handed to the loop,
so :meth:`LMDBLoader.state_dict` needs no argument.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from .decode.crop import CenterCropDecode, CropDecoder, RandomResizedCropDecode
from .decode.device import EncodedImage, SplitDecoder, collate_mixed
from .decode.device_stage import DeviceDecodeStage
from .decode.transforms import IMAGENET_MEAN, IMAGENET_STD, NormalizeBatch
from .order.draws import RecordDraws, draw_seed
from .order.maths import check_at_least, check_positive
from .order.resume import EpochResumable
from .read.bad_records import OnError, SkipReport
from .read.batch_ring import BatchRing, RingBatch
from .read.dataset import LMDBImageDataset
from .read.iterable import LMDBIterableDataset
from .read.sampler import ChunkShuffleSampler
from .storage.reader import record_pixels
from .storage.system import available_cpus

Reader = Literal["random", "chunk", "iterable"]
READERS = ("random", "chunk", "iterable")
Decode = Literal["worker", "device"]
DECODES = ("worker", "device")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _RecordDecoding:
    """Dataset mixin: each record's checked payload goes through ``record_decoder(header, payload, generator)``.

    The decoder replaces the pixel decode, ``output`` conversion and ``transform`` of the
    dataset classes; labels are returned as stored. Its random draws come from ``draws``,
    seeded per record and epoch (:mod:`lmdb_dataset.order.draws`).
    """

    record_decoder: Callable[..., Any]
    draws: RecordDraws | None = None  # None: torch's global RNG

    def _sample(self, record: int, value: bytes | memoryview | None) -> tuple[Any, Any]:
        meta, verify = self._meta, self.verify_checksums  # type: ignore[attr-defined]
        generator = None if self.draws is None else self.draws.generator(record)
        image, label = record_pixels(meta, record, value, verify=verify,
                                     decode=lambda header, payload: self.record_decoder(header, payload, generator))
        if isinstance(image, EncodedImage):
            image.record = record
        return image, label


class _DecodingImageDataset(_RecordDecoding, LMDBImageDataset):
    pass


class _DecodingIterableDataset(_RecordDecoding, LMDBIterableDataset):
    pass


_DecodingDataset = _DecodingImageDataset | _DecodingIterableDataset


class SideStream:
    """Runs batch preparation on a side CUDA stream and hands its results to the current stream.

    On a CUDA device, work inside :meth:`context` (host-to-device copies, decoding, resizing,
    normalisation) is queued on a stream of its own, so it overlaps the training step running
    on the current stream; :meth:`hand_over` makes the current stream wait for it and marks
    the tensors as used by the current stream (``record_stream``), so the caching allocator
    does not reuse their memory for the next batch while the step still reads them. On any
    other device both are no-ops and the work runs synchronously.

    Args:
        device: The device batches are prepared on.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None

    def context(self) -> contextlib.AbstractContextManager:
        """Context in which preparation work is queued on the side stream."""
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def hand_over(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Order the current stream after the side stream's work, and mark ``tensors`` as used by it."""
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for tensor in tensors:
                tensor.record_stream(current)
        return tensors


class LMDBLoader:
    """Normalised ``(images, labels)`` batches on a device, from an LMDB image dataset.

    Builds the reader, the fused crop decoding and a stock ``DataLoader``, and yields
    ``images`` (``N x 3 x size x size``, ``dtype``, normalised with ``mean``/``std``) and
    ``labels`` (int64) on ``device``. ``train=True`` gives RandomResizedCrop + horizontal flip
    (torchvision's crop distribution), ``train=False`` Resize + CenterCrop, both decoded with
    :mod:`lmdb_dataset.decode.crop` (colour JPEGs decoded at the smallest DCT scale that
    still covers the output).

    Two places to decode:

    * ``decode="worker"`` (the default): DataLoader workers decode and crop;
      uint8 batches travel to the main process, pinned when the device is CUDA, and are
      copied on a side stream.
    * ``decode="device"`` (opt-in): workers only read records and draw crops
      from the stored image sizes; a background thread of the main process decodes each batch's colour JPEGs
      with one ``torchvision.io.decode_jpeg(list, device=device)`` call (nvJPEG on CUDA), then
      crops, resizes, flips and normalises the whole batch in a fixed number of kernels, up to
      two batches ahead of the loop, on streams of its own
      (:class:`~lmdb_dataset.decode.device_stage.DeviceDecodeStage`). Grayscale/CMYK JPEGs, PNGs,
      truncated JPEGs and ``raw`` records are decoded in the workers and merged (see
      :mod:`lmdb_dataset.decode.device`). Pixels are within one grey level of the worker
      path's on the same full-size image (:mod:`lmdb_dataset.decode.resampling`). Also works with
      ``device="cpu"`` (libjpeg-turbo). It has not run on a GPU yet, so it is not the default
      on CUDA until ``benchmarks/gpu/check.sh`` has passed on one.

    Under DDP every rank reads its own share (``num_replicas``/``rank``, defaulting to
    torch.distributed's). Call :meth:`set_epoch` every epoch. For exact mid-epoch resume save
    :meth:`state_dict` with the checkpoint and call :meth:`load_state_dict` after restarting:
    the next pass yields exactly the samples not yet consumed, with any ``num_workers`` and
    batch size, and on any world size (the rest of the epoch re-dealt over the new ranks).

    Args:
        path: Dataset directory.
        batch_size: Samples per batch. Defaults to 256.
        train: Training augmentation (random crop, flip, shuffled order) or validation
            (centre crop, unshuffled: each rank reads its share in storage order, so with one
            rank the k-th sample of a pass is the dataset index ``dataset.file_order[k]``, which
            is not ``k`` for a shuffled conversion). Defaults to True.
        reader: ``"random"`` (map-style, uniformly shuffled: best on SSDs and a warm page
            cache), ``"chunk"`` (map-style, chunk-shuffled: near-sequential reads for disks
            and network filesystems) or ``"iterable"`` (:class:`LMDBIterableDataset`: the
            chunk order read as sequential streams, mixed in page-cache pools). Defaults to ``"random"``.
        num_workers: DataLoader worker processes. Defaults to ``min(8, CPUs available)``.
        device: Where batches are delivered. Defaults to ``"cpu"``.
        decode: ``"worker"`` or ``"device"``; see above. Defaults to ``"worker"``.
        dtype: ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``. Defaults to float32.
        channels_last: Deliver channels-last images (faster convolutions on GPUs). Defaults to False.
        size: Output side. Defaults to 224.
        resize: Validation: shorter side before the centre crop. Defaults to ``round(size * 256 / 224)``
            (256 for 224, ImageNet's convention).
        scale: Training: crop area fraction range. Defaults to (0.08, 1.0).
        ratio: Training: crop aspect ratio range. Defaults to (3/4, 4/3).
        mean: Per-channel mean in [0, 1]. Defaults to ImageNet's.
        std: Per-channel standard deviation in [0, 1]. Defaults to ImageNet's.
        shuffle: Shuffle the order. Defaults to ``train``.
        seed: Non-negative seed of the order and of the augmentation draws, identical on all
            ranks: each sample's crop and flip are drawn from ``(seed, epoch, record)``
            (:mod:`lmdb_dataset.order.draws`), so ranks never share draws, epochs never repeat them,
            and a run is reproducible whatever its ranks, workers and resumes. Defaults to 0.
        reader_options: Tuning options passed on to the reader: :class:`ChunkShuffleSampler`'s
            (``chunk``) or :class:`LMDBIterableDataset`'s (``iterable``), e.g.
            ``{"chunk_size": 512}``; their docstrings explain each trade-off. Not for
            ``random``, which is a chunk-shuffle of one-record chunks. Defaults to none.
        num_replicas: DDP world size. Defaults to torch.distributed's, else 1.
        rank: This rank. Defaults to torch.distributed's, else 0.
        drop_last: Drop the last incomplete batch. Defaults to ``train``.
        pin_memory: Pin batches for faster, asynchronous copies. Defaults to True on CUDA.
        persistent_workers: Keep workers across epochs. Defaults to True when ``num_workers > 0``.
        prefetch_factor: Batches each worker prepares ahead. Defaults to the DataLoader's (2).
        multiprocessing_context: ``"fork"``, ``"spawn"``, ``"forkserver"`` or None (the
            platform's default); ignored without workers. Defaults to None.
        verify_checksums: Check each record's CRC32. Defaults to True.
        on_error: ``"raise"`` or ``"skip"``: a record that fails its CRC32 check, cannot be read
            or does not decode in a worker either raises :class:`CorruptRecordError`, or is
            replaced by a fixed other record (the same on every rank, worker layout and resume:
            epoch lengths and step counts never change), reported once with a
            :class:`BadRecordWarning` and listed in :attr:`skipped`. Defaults to ``"raise"``.

    Raises:
        TypeError: A count, size or seed (``batch_size``, ``num_workers``, ``size``, ``resize``, ``seed``,
            ``num_replicas``, ``rank``) is not an integer.
        ValueError: An option is out of range, or CUDA was asked for and is not available.
    """

    def __init__(self, path: str | os.PathLike, *, batch_size: int = 256, train: bool = True,
                 reader: Reader = "random", num_workers: int | None = None, device: str | torch.device = "cpu",
                 decode: Decode | None = None, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 size: int = 224, resize: int | None = None, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, shuffle: bool | None = None, seed: int = 0,
                 reader_options: Mapping[str, Any] | None = None, num_replicas: int | None = None,
                 rank: int | None = None, drop_last: bool | None = None, pin_memory: bool | None = None,
                 persistent_workers: bool | None = None, prefetch_factor: int | None = None,
                 multiprocessing_context: str | None = None, verify_checksums: bool = True,
                 on_error: OnError = "raise") -> None:
        self.device = torch.device(device)
        self.decode: Decode = decode or "worker"  # "device" on CUDA once benchmarks/gpu/check.sh passed on a GPU
        self.reader: Reader = reader
        self.train = train
        num_workers = min(8, available_cpus()) if num_workers is None else num_workers
        _check_options(reader=reader, decode=self.decode, dtype=dtype, batch_size=batch_size,
                       num_workers=num_workers, device=self.device, size=size, resize=resize, mean=mean, std=std)
        batch_size = int(batch_size)  # torch's samplers take a Python int, not a numpy integer
        shuffle = train if shuffle is None else shuffle
        resize = round(size * 256 / 224) if resize is None else resize
        self.crop: CropDecoder = (RandomResizedCropDecode(size, scale=scale, ratio=ratio) if train
                                  else CenterCropDecode(size, resize=resize))
        self.dataset, sampler = _reader(path, reader, batch_size=batch_size, shuffle=shuffle, seed=seed,
                                        options=dict(reader_options or {}), num_replicas=num_replicas, rank=rank,
                                        verify_checksums=verify_checksums, on_error=on_error)
        self.dataset.record_decoder = SplitDecoder(self.crop) if self.decode == "device" else self.crop
        resumable = sampler if sampler is not None else self.dataset
        assert isinstance(resumable, EpochResumable)  # the sampler, or the iterable reader itself
        self._resumable: EpochResumable = resumable
        self.dataset.draws = RecordDraws(seed, self._resumable.epoch_progress)
        self.normalize = NormalizeBatch(mean, std, dtype=dtype, channels_last=channels_last).to(self.device)
        # Worker decode: uint8 batches in shared memory reused by each worker (read.batch_ring).
        self._ring = BatchRing(batch_size, (3, size, size), slots=(prefetch_factor or 2) + 1)
        self.dataloader: DataLoader[Any] = DataLoader(
            self.dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
            collate_fn=collate_mixed if self.decode == "device" else self._ring,
            pin_memory=self.device.type == "cuda" if pin_memory is None else pin_memory,
            drop_last=train if drop_last is None else drop_last,
            persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers,
            prefetch_factor=prefetch_factor,
            multiprocessing_context=multiprocessing_context if num_workers else None,
            generator=torch.Generator().manual_seed(draw_seed(seed, self._resumable.rank)))
        self._consumed = 0  # samples of the current pass handed to the loop
        self._pass_done = False

    @property
    def epoch(self) -> int:
        """The epoch whose order is produced."""
        return self._resumable.epoch

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch``, like ``DistributedSampler.set_epoch``; call it every epoch."""
        if epoch != self.epoch:
            self._consumed, self._pass_done = 0, False  # nothing of the new epoch was handed out yet
        self._resumable.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches the next pass yields on this rank."""
        return len(self.dataloader)

    @property
    def skipped(self) -> SkipReport:
        """The bad records skipped so far with ``on_error="skip"`` on this rank (:mod:`read.bad_records`)."""
        return self.dataset.skipped

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._consumed, self._pass_done = 0, False
        if self.decode == "device":  # decoded ahead on a thread and streams of its own
            with DeviceDecodeStage(iter(self.dataloader), size=self.crop.size, normalize=self.normalize,
                                   device=self.device, path=str(self.dataset.path)) as stage:
                for images, labels in stage:
                    self._consumed += len(labels)
                    yield images, labels
            self._pass_done = True  # every sample of the pass was handed out (or dropped with drop_last)
            return
        side = SideStream(self.device)
        staged: tuple[torch.Tensor, torch.Tensor] | None = None
        for batch in self.dataloader:
            with side.context():
                ready = self._prepare(batch)
            if staged is not None:
                yield self._hand_over(side, staged)
            staged = ready  # the next batch is prepared while the loop works on this one
        if staged is not None:
            yield self._hand_over(side, staged)
        self._pass_done = True  # every sample of the pass was handed out (or dropped with drop_last)
        if not self.dataloader.persistent_workers:
            self._ring.forget_segments()  # the pass's workers have exited: let their shared memory go

    def _prepare(self, batch: RingBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Device batch from a DataLoader batch of worker-decoded images: copy, normalise, free the slot."""
        images = self.normalize(batch.images.to(self.device, non_blocking=True))
        labels = batch.labels.to(self.device, non_blocking=True)
        self._ring.release(batch)  # copied out: normalised, or (pinned or pageable) on its way to the device
        return images, labels

    def _hand_over(self, side: SideStream,
                   batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = side.hand_over(*batch)
        self._consumed += len(labels)
        return images, labels

    def state_dict(self) -> dict[str, Any]:
        """Resume state after the batches this loader has yielded in the current pass.

        Taken after a pass's last batch, it says the epoch is complete (also when
        ``drop_last`` dropped a short batch): loading it resumes at the next epoch.
        """
        consumed = self._resumable.pass_length if self._pass_done else self._consumed
        return {"reader": self.reader, "batch_size": self.dataloader.batch_size,
                "position": self._resumable.state_dict(samples_consumed=consumed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, saved with this world size or another, and any ``num_workers``.

        The next pass yields exactly the samples not yet consumed, re-dealt over this loader's
        ranks (see :meth:`ChunkShuffleSampler.load_state_dict`); the batch size may differ.

        Raises:
            ValueError: The state was saved by a loader with another reader, or another dataset
                length, seed or order setting (the message names it).
        """
        if state.get("reader") != self.reader:
            raise ValueError(f"state was saved with reader={state.get('reader')!r}, this loader has "
                             f"reader={self.reader!r}")
        self._resumable.load_state_dict(state["position"])
        self._consumed, self._pass_done = 0, False

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.dataset.path)!r}, reader={self.reader!r}, "
                f"batch_size={self.dataloader.batch_size}, train={self.train}, device={str(self.device)!r}, "
                f"decode={self.decode!r}, crop={self.crop!r}, batches={len(self)})")


def _check_options(*, reader: str, decode: str, dtype: torch.dtype, batch_size: int, num_workers: int,
                   device: torch.device, size: int, resize: int | None, mean: Sequence[float],
                   std: Sequence[float]) -> None:
    if reader not in READERS:
        raise ValueError(f"reader={reader!r} is not supported; use one of {', '.join(READERS)}")
    if decode not in DECODES:
        raise ValueError(f"decode={decode!r} is not supported; use one of {', '.join(DECODES)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16")
    check_positive(batch_size=batch_size, size=size, resize=resize)
    check_at_least(0, num_workers=num_workers)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean={tuple(mean)} and std={tuple(std)} need one value per channel of the RGB images (3)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available; use device='cpu'")


def _reader(path: str | os.PathLike, reader: str, *, batch_size: int, shuffle: bool, seed: int,
            options: dict[str, Any], num_replicas: int | None, rank: int | None, verify_checksums: bool,
            on_error: OnError) -> tuple[_DecodingDataset, ChunkShuffleSampler | None]:
    """The dataset and, for map-style readers, the sampler (``random`` = chunks of one record)."""
    common: dict[str, Any] = {"shuffle": shuffle, "seed": seed, "num_replicas": num_replicas, "rank": rank}
    if reader == "iterable":
        dataset = _DecodingIterableDataset(path, batch_size=batch_size, verify_checksums=verify_checksums,
                                           on_error=on_error, **common, **options)
        return dataset, None
    if reader == "random" and options:
        raise ValueError(f"reader_options={options!r}: reader='random' takes none (it shuffles single records); "
                         "use reader='chunk' to tune chunked reading")
    image_dataset = _DecodingImageDataset(path, verify_checksums=verify_checksums, on_error=on_error)
    if reader == "random":
        common["chunk_size"] = 1
    sampler = ChunkShuffleSampler(image_dataset, **common, **options)
    return image_dataset, sampler
