"""Device decoding ahead of the training loop: a thread, two CUDA streams, a bounded queue.

:class:`DeviceDecodeStage` takes the DataLoader's :class:`~lmdb_dataset.decode.device.MixedBatch`
batches and, on a thread of its own, decodes each batch's JPEGs, crops, resizes, merges and
normalises them on the device, up to ``ahead`` batches before the training loop asks for them.
The loop's thread only waits when the stage is behind; nvJPEG's host-side Huffman decoding
(GPUs without a hardware JPEG engine, progressive JPEGs) and the blocking ``decode_jpeg`` call
run on the stage's thread. This is DALI's arrangement (a prefetch queue of ready batches fed by
its own threads and streams).

Streams, and why no kernel reads memory being rewritten (:class:`CudaStreams`)::

    decode stream D   decode_jpeg(list) -- its outputs are allocated on D (the current stream)
                      and written by nvJPEG on torchvision's internal stream
    work stream   W   waits for D; crop_resize, merge, normalise; records event e_k
    loop's stream     waits for e_k; record_stream: the batch stays alive while the step reads it

Hazard: torchvision allocates ``decode_jpeg``'s outputs from the caching allocator on the
*current* stream but writes them on its own stream, without waiting for the current stream. If
the decode ran on W (as the first version did), the blocks of batch k's full-size images and
temporaries, dropped while batch k's kernels are still queued on W, could be handed to batch
k+1's decode and overwritten before those kernels read them: wrong pixels, silently. By
construction here: (1) nothing of ours is allocated or queued on D, so D's pool holds only
decoded images (and torchvision's own temporaries); (2) every decoded image is marked
``record_stream(W)`` before it is handed to W, so the allocator returns its block to D's pool
only after the work queued on W at the time it was dropped has finished; (3) W's temporaries
live in W's pool, which only W allocates from, in stream order. ``tests/test_device_stage.py``
replays the orderings on a fake allocator that recycles freed blocks eagerly and runs queued
work late: the first version's and a decode stream without ``record_stream`` give wrong pixels,
this one exact ones.

Memory: at most ``ahead`` prepared batches wait in the queue, plus the batch being prepared
and the one the loop holds. Shutdown: :meth:`DeviceDecodeStage.close` (also on leaving a
``with`` block, on a loop's ``break`` when used from a generator, and when the batches run
out) stops the thread after the batch it is preparing and joins it. An exception raised while
preparing a batch is raised by the ``next()`` that would have returned that batch, after the
batches prepared before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch

from .device import MixedBatch, assemble, decode_jpegs

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class Pending:
    """Work queued on the work stream: its result, usable once ``event`` has passed.

    Attributes:
        result: The tensors the work produces (already allocated; filled in stream order).
        event: A CUDA event recorded after the work (None where work runs at once).
    """

    result: tuple[torch.Tensor, ...]
    event: Any = None


class HostStreams:
    """Streams where there are none (the CPU): decode and work run at once, in order."""

    def scope(self) -> contextlib.AbstractContextManager:
        """Context of the stage's thread."""
        return contextlib.nullcontext()

    def decode(self, fn: Callable[..., list[torch.Tensor]], *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        """``fn(*args, **kwargs)``: decode a batch's JPEGs."""
        return fn(*args, **kwargs)

    def launch(self, fn: Callable[..., tuple[torch.Tensor, ...]], inputs: list[torch.Tensor],
               *args: Any) -> Pending:
        """``fn(inputs, *args)``, after the decode that produced ``inputs``."""
        return Pending(fn(inputs, *args))

    def hand_over(self, pending: Pending) -> tuple[torch.Tensor, ...]:
        """The result, ready for the training loop."""
        return pending.result


class CudaStreams(HostStreams):
    """The decode stream and the work stream of one CUDA device (see the module's docstring).

    Args:
        device: A CUDA device.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.decoding = torch.cuda.Stream(device=device)
        self.work = torch.cuda.Stream(device=device)

    def scope(self) -> contextlib.AbstractContextManager:
        return torch.cuda.device(self.device)

    def decode(self, fn: Callable[..., list[torch.Tensor]], *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        """``fn(*args, **kwargs)`` with the decode stream current: its outputs come from that stream's pool."""
        with torch.cuda.stream(self.decoding):
            return fn(*args, **kwargs)

    def launch(self, fn: Callable[..., tuple[torch.Tensor, ...]], inputs: list[torch.Tensor],
               *args: Any) -> Pending:
        """Queue ``fn(inputs, *args)`` on the work stream, after the decode; ``inputs`` stay allocated until it ran."""
        self.work.wait_stream(self.decoding)
        for tensor in inputs:
            tensor.record_stream(self.work)  # its block is not reused before W's queued work is done
        with torch.cuda.stream(self.work):
            result = fn(inputs, *args)
        return Pending(result, self.work.record_event())

    def hand_over(self, pending: Pending) -> tuple[torch.Tensor, ...]:
        """Order the calling thread's current stream after the work; keep the result alive while it reads it."""
        current = torch.cuda.current_stream(self.device)
        current.wait_event(pending.event)
        for tensor in pending.result:
            tensor.record_stream(current)
        return pending.result


def streams_for(device: torch.device) -> HostStreams:
    """:class:`CudaStreams` on a CUDA device, else :class:`HostStreams`."""
    return CudaStreams(device) if device.type == "cuda" else HostStreams()


def prepare_batch(batch: MixedBatch, streams: HostStreams, *, size: int,
                  normalize: Callable[[torch.Tensor], torch.Tensor], device: torch.device, path: str) -> Pending:
    """Decode ``batch`` on the decode stream, then queue its crops, merge and normalisation on the work stream.

    The decoded full-size images reach the work only as ``launch``'s inputs, and nothing here
    keeps them once it is queued: their lifetime is the streams' business (see the module).

    Raises:
        CorruptRecordError: A JPEG decodes neither on the device nor on the CPU.
    """
    full_images = streams.decode(decode_jpegs, batch, device, path=path)
    return streams.launch(_finish, full_images, batch, size, normalize, device)


def _finish(full_images: list[torch.Tensor], batch: MixedBatch, size: int,
            normalize: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> Batch:
    images = assemble(batch, full_images, size, device)
    return normalize(images), batch.labels.to(device, non_blocking=True)


class DeviceDecodeStage:
    """Iterator of ``(images, labels)`` device batches, decoded on a background thread ahead of the loop.

    ``images`` are ``N x 3 x size x size`` after ``normalize``, ``labels`` int64, both on
    ``device``. Use it in a ``with`` block (or call :meth:`close`) so that the thread stops
    when the loop stops early.

    Args:
        batches: An iterator of :class:`MixedBatch` (``iter(dataloader)``, created on the
            calling thread: DataLoader workers are started there).
        size: Output side.
        normalize: Module turning the uint8 batch into the output dtype (on ``device``).
        device: Where to decode.
        path: The dataset path, named in errors.
        ahead: Batches prepared ahead of the loop (the queue's bound). Each costs one output
            batch of device memory (``N x 3 x size x size`` in the output dtype); 2 hides a
            decode as slow as a training step. Defaults to 2.
        streams: The streams to run on. Defaults to :func:`streams_for` ``(device)``.

    Raises:
        ValueError: ``ahead < 1``.
    """

    def __init__(self, batches: Iterator[MixedBatch], *, size: int, normalize: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device, path: str, ahead: int = 2, streams: HostStreams | None = None) -> None:
        if ahead < 1:
            raise ValueError(f"ahead={ahead} must be >= 1")
        self.size, self.normalize, self.device, self.path = size, normalize, device, path
        self.streams = streams_for(device) if streams is None else streams
        self._batches: Iterator[MixedBatch] | None = batches
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="lmdb-dataset-device-decode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            assert self._batches is not None  # released only as this, the stage's one run, ends
            with self.streams.scope():
                for batch in self._batches:
                    pending = prepare_batch(batch, self.streams, size=self.size, normalize=self.normalize,
                                            device=self.device, path=self.path)
                    if self._stop.is_set() or not self._put(("batch", pending)):
                        return
            self._put(("end", None))
        except BaseException as exc:
            self._put(("error", exc))
        finally:
            self._batches = None  # a DataLoader iterator shuts its workers down when released

    def _put(self, item: tuple[str, Any]) -> bool:
        """Queue ``item`` unless the stage is closed first; whether it was queued."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> DeviceDecodeStage:
        return self

    def __next__(self) -> Batch:
        if self._done:
            raise StopIteration
        kind, item = self._queue.get()
        if kind == "batch":
            return cast(Batch, self.streams.hand_over(item))  # prepare_batch's work: (images, labels)
        self.close()
        if kind == "error":
            raise item
        raise StopIteration

    def close(self) -> None:
        """Stop the thread (after the batch it is preparing) and release the batches queued."""
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._thread.join(timeout=0.05)
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def __enter__(self) -> DeviceDecodeStage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(device={str(self.device)!r}, ahead={self._queue.maxsize}, "
                f"streams={type(self.streams).__name__}, running={self._thread.is_alive()})")
