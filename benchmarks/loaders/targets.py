"""The suite's targets: which ratios of which cases are promised, checked on per-round series."""

from __future__ import annotations

import argparse
import fnmatch
from dataclasses import dataclass

import numpy as np

from ..common.harness import CORES, Result, per_round_ratio, values
from ..report import median
from .dataloader_cases import COLD_PATHS


@dataclass(frozen=True)
class Target:
    """A goal checked on a per-round series.

    Attributes:
        goal: What is promised, in words.
        measured: What was compared, in words.
        series: The per-round values (ratios, or % for memory).
        threshold: The bound.
        at_least: True for ``>= threshold``, False for ``< threshold``.
    """

    goal: str
    measured: str
    series: list[float]
    threshold: float
    at_least: bool = True

    @property
    def median(self) -> float:
        """Median of the series."""
        return median(self.series)

    @property
    def passed(self) -> bool:
        """Whether the median meets the bound."""
        return self.median >= self.threshold if self.at_least else self.median < self.threshold

    def gap(self) -> str:
        """How far the median is from the bound ("" when met)."""
        if self.passed or not np.isfinite(self.median):
            return "" if self.passed else "not measured"
        if self.at_least:
            return f"short by {self.threshold - self.median:.2g}x ({100 * (1 - self.median / self.threshold):.2g}%)"
        return f"over by {self.median - self.threshold:.1f} points"


def best(results: dict[str, list[Result]], pattern: str, exclude: str = "\0") -> str | None:
    """The case matching ``pattern`` (and not containing ``exclude``) with the highest median value."""
    medians = {name: median(values(results, name)) for name in results
               if fnmatch.fnmatch(name, pattern) and exclude not in name}
    medians = {name: m for name, m in medians.items() if np.isfinite(m)}
    return max(medians, key=medians.get) if medians else None


def targets(results: dict[str, list[Result]], args: argparse.Namespace) -> list[Target]:
    """The targets that the selected cases allow to check."""
    found: list[Target] = []
    lmdb = best(results, "warm/train/w2/lmdb-*", exclude="-batches")  # every batch normalised, like the baseline
    baseline = "warm/train/w2/imagefolder-pillow/float"
    if lmdb and baseline in results:
        found.append(Target("1 warm train w2: best LMDB >= 2.0x ImageFolder+Pillow+v1", f"{lmdb} / {baseline}",
                            per_round_ratio(results, lmdb, baseline), 2.0))
    for peer in (name for name in results if name.startswith("warm/train/w2/peer:")):
        if lmdb:
            found.append(Target(f"1 warm train w2: best LMDB >= {peer.split('/')[3]}", f"{lmdb} / {peer}",
                                per_round_ratio(results, lmdb, peer), 1.0))
    encoded = best(results, "warm/train/w2/lmdb-*/uint8-batches", exclude="-raw")
    ceiling = "decode/pipeline/simplejpeg+v2-uint8"
    if encoded and ceiling in results:
        found.append(Target(f"2 best encoded LMDB uint8 w2 >= 0.9x per-core ceiling x {CORES} cores",
                            f"{encoded} / ({ceiling} x {CORES})", per_round_ratio(results, encoded, ceiling, CORES),
                            0.9))
    pairs = [("3a cold random raw reads: LMDB pread >= 1.5x ImageFolder open+read", "cold-read/random/lmdb-pread",
              "cold-read/random/imagefolder", 1.5),
             ("3a cold random raw reads: LMDB mmap >= 1.5x ImageFolder open+read", "cold-read/random/lmdb-mmap",
              "cold-read/random/imagefolder", 1.5),
             ("3b chunk-shuffle reads >= 0.8x disk sequential", "cold-read/seq/lmdb-chunk",
              "cold-read/seq/disk-sequential", 0.8),
             ("3b iterable cursor reads >= 0.8x disk sequential", "cold-read/seq/lmdb-iterable",
              "cold-read/seq/disk-sequential", 0.8)]
    pairs += [(f"3c cold end-to-end >= 0.9x warm: {spec.label}", f"cold/train/w2/{spec.label}",
               f"warm/train/w2/{spec.label}", 0.9) for spec in COLD_PATHS]
    pairs.append((f"4 conversion >= 0.9x simplejpeg ceiling x {args.convert_workers} workers", "convert/encoded",
                  "decode/simplejpeg", 0.9))
    for goal, numerator, denominator, threshold in pairs:
        if numerator in results and denominator in results:
            scale = args.convert_workers if numerator == "convert/encoded" else 1.0
            found.append(Target(goal, f"{numerator} / {denominator}" + (f" x {scale:g}" if scale != 1 else ""),
                                per_round_ratio(results, numerator, denominator, scale), threshold))
    for name in (n for n in results if n.startswith("memory/")):
        found.append(Target(f"5 worker USS growth < 5% over an epoch ({name.split('/', 1)[1]})",
                            f"{name}: 2nd epoch, persistent workers (max over workers)",
                            values(results, name), 5.0, at_least=False))
    return found


# --------------------------------------------------------------------------- report
