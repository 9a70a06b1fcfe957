"""Worker batches collated into shared memory that is reused, not mapped anew for every batch.

A DataLoader worker's ``default_collate`` puts each batch into a fresh shared-memory segment,
whose pages fault in as the worker writes the batch (and again in the main process as it reads
it). For 128 images of 224 x 224 x 3 uint8 that is 19 MB, 4,700 pages: measured on this project's
2-core machine, collating into fresh shared memory costs 0.13 ms an image, into a segment already
mapped 0.008 ms, about a tenth of what decoding the image costs.

:class:`BatchRing` is a ``collate_fn`` that gives each worker a few batch-sized slots in one
shared segment, made the first time the worker collates. A slot is taken by the worker when it
writes a batch and given back by the main process (:meth:`BatchRing.release`) once it has copied
the images out (normalised them, or copied them to pinned memory or the device); the slot's state
is one byte at the head of the segment, written by whoever owns the slot. A worker that finds no
free slot, or cannot make its segment (a small ``/dev/shm``), collates as ``default_collate``
does: the ring saves time, it never blocks and never writes over a batch in use. The main process
keeps a reference to each worker's segment, so torch's shared-storage cache maps it once.

The ring is for batches whose size is known up front, the fixed-size uint8 images of
:class:`~lmdb_dataset.loader.LMDBLoader`'s worker decode; the batch's images are valid only until
they are released.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

FREE, TAKEN = 0, 1
HEADER_BYTES = 64
"""The slots' state bytes, padded so that every slot starts 64-byte aligned."""


class RingBatch:
    """A collated batch: ``images``, ``labels`` and the ring ``slot`` holding the images (-1: none).

    The DataLoader's pin-memory thread calls :meth:`pin_memory`, which copies the batch to pinned
    memory and gives the slot back at once.
    """

    __slots__ = ("images", "labels", "slot")

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, slot: int = -1) -> None:
        self.images, self.labels, self.slot = images, labels, slot

    def release(self) -> None:
        """Give the slot back to its worker: the images must not be read again (no-op outside the ring)."""
        if self.slot >= 0:
            state = torch.empty(0, dtype=torch.uint8).set_(self.images.untyped_storage())
            state[self.slot] = FREE
            self.slot = -1

    def pin_memory(self) -> RingBatch:
        pinned = RingBatch(self.images.pin_memory(), self.labels.pin_memory())
        self.release()
        return pinned

    def __iter__(self) -> Iterator[torch.Tensor]:
        """``images, labels = batch``, as with ``default_collate``'s tuples."""
        return iter((self.images, self.labels))

    def __reduce__(self) -> tuple[Any, ...]:
        return RingBatch, (self.images, self.labels, self.slot)


class BatchRing:
    """A ``collate_fn`` for ``(image, label)`` samples whose images go into reused shared memory.

    Collates to a :class:`RingBatch`. Hand every batch to :meth:`release` once its images have
    been copied out (or let the pin-memory thread do it).

    Args:
        batch_size: The most images a batch holds.
        image_shape: The shape of every image (``(3, size, size)``); other shapes or dtypes
            are collated as ``default_collate`` does.
        slots: Slots per worker: the batches a worker has in flight (the DataLoader's
            ``prefetch_factor``) plus the one the main process is copying out.
    """

    def __init__(self, batch_size: int, image_shape: Sequence[int], *, slots: int) -> None:
        if not 0 < slots <= HEADER_BYTES:
            raise ValueError(f"slots={slots} must be in [1, {HEADER_BYTES}]")
        self.batch_size = batch_size
        self.image_shape = tuple(image_shape)
        self.slots = slots
        self.image_bytes = int(np.prod(self.image_shape))
        self._segment: torch.Tensor | None = None  # this worker's, made on first use
        self._no_segment = False  # making it failed in this worker: collate as default_collate does
        self._mapped: dict[int, torch.UntypedStorage] = {}  # main process: the workers' segments

    def __call__(self, samples: Sequence[tuple[Any, Any]]) -> RingBatch:
        images, labels = zip(*samples)
        slot = self._take(images)
        if slot < 0:
            return RingBatch(default_collate(list(images)), default_collate(list(labels)))
        assert self._segment is not None
        start = HEADER_BYTES + slot * self.batch_size * self.image_bytes
        out = self._segment[start:start + len(images) * self.image_bytes].view(len(images), *self.image_shape)
        return RingBatch(torch.stack(images, out=out), default_collate(list(labels)), slot)

    def _take(self, images: Sequence[Any]) -> int:
        """A free slot of this worker's segment for ``images``, marked taken; -1 if none can hold them."""
        if (get_worker_info() is None or self._no_segment or len(images) > self.batch_size
                or not all(isinstance(image, torch.Tensor) and image.dtype == torch.uint8
                           and tuple(image.shape) == self.image_shape for image in images)):
            return -1
        if self._segment is None:
            try:
                self._segment = torch.zeros(HEADER_BYTES + self.slots * self.batch_size * self.image_bytes,
                                            dtype=torch.uint8).share_memory_()
            except (RuntimeError, OSError):  # /dev/shm too small for the ring: default_collate's way
                self._no_segment = True
                return -1
        state = self._segment[:self.slots].numpy()
        free = np.flatnonzero(state == FREE)
        if not len(free):
            return -1
        state[free[0]] = TAKEN
        return int(free[0])

    def release(self, batch: RingBatch) -> None:
        """Main process: give ``batch``'s slot back, keeping its worker's segment mapped for the next batches."""
        if batch.slot >= 0:
            storage = batch.images.untyped_storage()
            self._mapped.setdefault(storage.data_ptr(), storage)
        batch.release()

    def forget_segments(self) -> None:
        """Drop the main process's references to the workers' segments (after its workers have exited)."""
        self._mapped.clear()

    def __getstate__(self) -> dict[str, Any]:
        # A worker gets the settings, never another process's segment or references.
        return {**self.__dict__, "_segment": None, "_no_segment": False, "_mapped": {}}
