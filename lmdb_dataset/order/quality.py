"""How well a sample order mixes, as numbers; and the class-locality warning of sequential readers.

:func:`order_quality` scores the batches a reader delivered over consecutive epochs:

* distinct classes per batch (random sampling from ImageNet's 1000 classes gives ~226 in 256);
* the total-variation distance between each batch's label histogram and the dataset's
  (0 = a batch is a perfect miniature of the dataset, 1 = disjoint classes);
* repeat co-occurrence: of the pairs of samples that shared a batch in epoch ``e``, the
  fraction that share one again in epoch ``e + 1`` (random sampling: about
  ``(batch_size - 1) / (n - 1)``);
* seeks per 1000 records: run breaks in the physical order the storage was read in.

:func:`check_class_locality` is what :class:`ChunkShuffleSampler` and
:class:`LMDBIterableDataset` call on construction: it warns (:class:`ClassLocalityWarning`)
when the records stored next to each other hold far fewer classes than a random sample would.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np


class ClassLocalityWarning(UserWarning):
    """A sequential reader is used on a file whose neighbouring records hold few classes."""


@dataclasses.dataclass(frozen=True)
class OrderQuality:
    """Mixing scores of a sequence of batches (see :func:`order_quality`).

    Attributes:
        distinct_classes: Mean number of distinct labels per batch.
        tv_distance: Mean total-variation distance between a batch's label histogram and the dataset's.
        repeat_cooccurrence: Fraction of the pairs sharing a batch in one epoch that share one in
            the next (pooled over consecutive epoch pairs); NaN with a single epoch.
        seeks_per_1000: Run breaks per 1000 records read; NaN when no reads were given.
    """

    distinct_classes: float
    tv_distance: float
    repeat_cooccurrence: float
    seeks_per_1000: float


def batch_label_scores(batches: Sequence[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct labels and TV distance to the dataset's label distribution, per batch.

    Args:
        batches: Sample indices of each batch (any integer arrays, lengths may differ; empty ones
            are skipped).
        labels: Label of every sample of the dataset, int, shape ``(n,)``.

    Returns:
        ``(distinct, tv)``: float64 arrays of shape ``(number of non-empty batches,)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    batches = [np.asarray(b, dtype=np.int64) for b in batches if len(b)]
    if not batches:
        return np.zeros(0), np.zeros(0)
    num_classes = int(labels.max()) + 1
    dataset = np.bincount(labels, minlength=num_classes) / len(labels)
    batch_of = np.repeat(np.arange(len(batches)), [len(b) for b in batches])
    counts = np.bincount(batch_of * num_classes + labels[np.concatenate(batches)],
                         minlength=len(batches) * num_classes).reshape(len(batches), num_classes)
    sizes = counts.sum(axis=1, keepdims=True)
    tv = 0.5 * np.abs(counts / sizes - dataset).sum(axis=1)
    return (counts > 0).sum(axis=1).astype(np.float64), tv


def _batch_of_sample(batches: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Each sample's first batch in one epoch (-1 if absent), int64 shape ``(n,)``."""
    batch_of = np.full(n, -1, dtype=np.int64)
    samples = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches]) if batches else np.zeros(0, np.int64)
    ids = np.repeat(np.arange(len(batches)), [len(b) for b in batches])
    first = np.unique(samples, return_index=True)[1]  # padding repeats: keep each sample's first batch
    batch_of[samples[first]] = ids[first]
    return batch_of


def _pairs(group_sizes: np.ndarray) -> int:
    return int((group_sizes * (group_sizes - 1) // 2).sum())


def repeat_cooccurrence(first: Sequence[np.ndarray], second: Sequence[np.ndarray], n: int) -> tuple[int, int]:
    """Pairs that shared a batch in ``first``, and how many of them share one again in ``second``.

    Exact, without enumerating pairs: pairs sharing a batch in ``first`` are counted per batch,
    and pairs sharing both a ``first`` batch and a ``second`` batch are the pairs within each
    group of samples with the same (first batch, second batch). A sample repeated within an
    epoch (``DistributedSampler`` padding) counts in its first batch only.

    Args:
        first: One epoch's batches of sample indices.
        second: The next epoch's.
        n: Number of samples in the dataset (indices are ``0..n-1``).

    Returns:
        ``(shared_before, shared_again)``.
    """
    before = _batch_of_sample(first, n)
    after = _batch_of_sample(second, n)
    present = before >= 0
    shared_before = _pairs(np.bincount(before[present]))
    both = present & (after >= 0)
    keys = before[both] * (int(after.max()) + 1) + after[both]
    shared_again = _pairs(np.unique(keys, return_counts=True)[1])
    return shared_before, shared_again


def seeks(reads: Sequence[np.ndarray]) -> tuple[int, int]:
    """``(seeks, records)``: run breaks in each stream of physical record reads, plus one per stream start."""
    breaks = sum(int(np.count_nonzero(np.diff(np.asarray(r)) != 1)) + 1 for r in reads if len(r))
    return breaks, sum(len(r) for r in reads)


def order_quality(epochs: Sequence[Sequence[np.ndarray]], labels: np.ndarray, *,
                  reads: Sequence[np.ndarray] | None = None) -> OrderQuality:
    """Score the batches a reader delivered over consecutive epochs.

    Args:
        epochs: For each epoch (at least one), the batches in delivery order, each an integer
            array of sample indices (under DDP: every rank's batches; a batch is what one
            optimizer step of one rank, and its BatchNorm, sees).
        labels: Label of every sample, int, shape ``(n,)``.
        reads: Physical record indices in the order storage is read, one array per
            independent stream (a worker, a rank's prefetcher); each break in a stream's
            consecutive run is a seek. Defaults to None (``seeks_per_1000`` is NaN).

    Returns:
        The :class:`OrderQuality` (per-batch scores averaged over all epochs' batches).

    Raises:
        ValueError: No epochs, or a sample index outside ``0..n-1``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not epochs:
        raise ValueError("epochs is empty: pass at least one epoch of batches")
    for batches in epochs:
        for batch in batches:
            if len(batch) and not (0 <= np.min(batch) and np.max(batch) < len(labels)):
                raise ValueError(f"a batch holds a sample index outside 0..{len(labels) - 1} (n = len(labels))")
    scores = [batch_label_scores(batches, labels) for batches in epochs]
    distinct = np.concatenate([d for d, _ in scores])
    tv = np.concatenate([t for _, t in scores])
    pairs = [repeat_cooccurrence(a, b, len(labels)) for a, b in zip(epochs, epochs[1:])]
    before, again = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    seek_count, read_count = seeks(reads) if reads is not None else (0, 0)
    return OrderQuality(
        distinct_classes=float(distinct.mean()) if len(distinct) else float("nan"),
        tv_distance=float(tv.mean()) if len(tv) else float("nan"),
        repeat_cooccurrence=again / before if before else float("nan"),
        seeks_per_1000=1000 * seek_count / read_count if read_count else float("nan"))


def chunk_class_counts(labels_in_file_order: np.ndarray, chunk_size: int) -> tuple[float, float]:
    """Distinct classes per chunk of neighbouring records: measured, and expected if records were shuffled.

    Args:
        labels_in_file_order: Labels of the records in storage order (``targets[file_order]``).
        chunk_size: Records per chunk.

    Returns:
        ``(measured, expected)``: mean distinct labels over the chunks of the file, and the
        mean for chunks of the same sizes drawn at random from the label distribution
        (``sum_c 1 - (1 - p_c) ** size``).
    """
    labels = np.asarray(labels_in_file_order, dtype=np.int64)
    if len(labels) == 0:
        return 0.0, 0.0
    num_classes = int(labels.max()) + 1
    chunk = np.arange(len(labels)) // chunk_size
    per_chunk = np.bincount(np.unique(chunk * num_classes + labels) // num_classes)
    sizes, chunks_of_size = np.unique(np.bincount(chunk), return_counts=True)  # at most two sizes
    share = np.bincount(labels, minlength=num_classes) / len(labels)
    expected = (1 - (1 - share[None, :]) ** sizes[:, None]).sum(axis=1)
    return float(per_chunk.mean()), float((expected * chunks_of_size).sum() / chunks_of_size.sum())


def labels_in_file_order(dataset: object) -> np.ndarray | None:
    """A dataset's labels in storage order (``targets[file_order]``; ``targets`` without ``file_order``).

    None when the dataset has no ``targets`` (nothing to judge the order by).
    """
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    targets = np.asarray(targets)
    file_order = getattr(dataset, "file_order", None)
    return targets if file_order is None else targets[file_order]


CHECKED_CHUNKS = 1024
"""Chunks :func:`check_class_locality` looks at (evenly spread over the file) when there are more."""


def check_class_locality(labels_in_file_order: np.ndarray | None, *, chunk_size: int, pool_size: int,
                         reader: str) -> None:
    """Warn (:class:`ClassLocalityWarning`) if neighbouring records hold under half the classes of a shuffle.

    A sequential reader mixes about ``pool_size / chunk_size`` chunks at a time; if each chunk
    holds one or two classes, every batch then holds only the classes of those chunks (batch
    statistics and gradients go wrong). Nothing is checked when the labels are unknown
    (None) or when one pool holds the whole dataset (a full shuffle). Large files are judged
    from :data:`CHECKED_CHUNKS` chunks spread evenly over them, so a constructor stays fast.
    """
    if labels_in_file_order is None or len(labels_in_file_order) <= pool_size:
        return
    labels = np.asarray(labels_in_file_order)
    whole_chunks = len(labels) // chunk_size
    if whole_chunks > CHECKED_CHUNKS:  # an evenly spread sample of whole chunks: ~10 ms for ImageNet
        picked = np.linspace(0, whole_chunks - 1, CHECKED_CHUNKS).astype(np.int64)
        labels = labels[(picked[:, None] * chunk_size + np.arange(chunk_size)).ravel()]
    measured, expected = chunk_class_counts(labels, chunk_size)
    if expected >= 1.5 and measured < 0.5 * expected:
        warnings.warn(
            f"{reader}: the dataset's records are stored grouped by class: a chunk of {chunk_size} neighbouring "
            f"records holds {measured:.1f} distinct classes on average where a shuffled file would hold "
            f"{expected:.1f}, so batches (drawn from pools of {pool_size} records) will hold few classes. "
            "Re-convert with the default shuffled order (`lmdb-dataset convert` without `--order folder`, or "
            "convert_image_folder(order='shuffled')), or use LMDBImageDataset with a random sampler, or a much "
            "smaller chunk_size.",
            ClassLocalityWarning, stacklevel=3)
