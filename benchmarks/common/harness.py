"""The suite's frame: what a case is, the context it runs in, page-cache control and interleaved rounds."""

from __future__ import annotations

import argparse
import fnmatch
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder

from lmdb_dataset.storage.pagecache import evict_from_page_cache, resident_fraction

CORES = len(os.sched_getaffinity(0))
MB = 1e6
ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the folder that holds the ``benchmarks`` package."""

Result = dict[str, Any]


@dataclass
class Context:
    """Paths and settings shared by all cases.

    Attributes:
        folder: The ImageFolder root measured.
        lmdb: Converted datasets by storage (``encoded``, ``raw``).
        args: Parsed command line (``batch_size``, ``batches``, ``data``, ...).
        peers: Available peer adapters by name, with their prepared paths.
    """

    folder: Path
    lmdb: dict[str, Path]
    args: argparse.Namespace
    peers: dict[str, tuple[Any, Path]] = field(default_factory=dict)

    @functools.cached_property
    def files(self) -> list[str]:
        """Every image file of the ImageFolder, in its order."""
        return [path for path, _ in ImageFolder(str(self.folder)).samples]


@dataclass(frozen=True)
class Case:
    """One measurement.

    Attributes:
        name: Slash-separated name, matched by ``--only`` patterns.
        unit: Unit of ``value``.
        run: Measures once and returns a result holding at least ``value``.
        cost: Estimated seconds of one run on 2 cores for the default corpus (for the ETA).
        once: Run in the first round only (slow, not part of a ratio).
    """

    name: str
    unit: str
    run: Callable[[Context], Result]
    cost: Callable[[Context], float]
    once: bool = False


# --------------------------------------------------------------------------- page cache


def warm(files: list[str]) -> None:
    """Read files so they are in the page cache."""
    for path in files:
        with open(path, "rb") as file:
            while file.read(8 << 20):
                pass


def evict(files: list[str]) -> dict[str, float]:
    """Evict files from the page cache; resident fraction (size-weighted) before and after."""
    before = cached_fraction(files)
    for path in files:
        evict_from_page_cache(path)
    return {"resident_before": before, "resident_after": cached_fraction(files)}


def cached_fraction(files: list[str]) -> float:
    """Size-weighted fraction of ``files`` in the page cache."""
    sizes = [os.path.getsize(p) for p in files]
    return sum(resident_fraction(p) * s for p, s in zip(files, sizes)) / max(sum(sizes), 1)


# --------------------------------------------------------------------------- rounds


def select(cases: list[Case], patterns: list[str] | None) -> list[Case]:
    """Cases whose name matches any ``--only`` glob pattern (all when none given)."""
    if not patterns:
        return cases
    return [case for case in cases if any(fnmatch.fnmatch(case.name, p) or p in case.name for p in patterns)]


# --------------------------------------------------------------------------- preparation


def run_rounds(cases: list[Case], ctx: Context, rounds: int) -> dict[str, list[Result]]:
    """Run every case once per round, interleaved; a failing case records its error and the suite goes on."""
    results: dict[str, list[Result]] = {case.name: [] for case in cases}
    started = time.perf_counter()
    for round_index in range(rounds):
        for case in cases:
            if case.once and round_index > 0:
                continue
            case_started = time.perf_counter()
            try:
                result = case.run(ctx)
            except Exception as error:
                result = {"value": float("nan"), "error": f"{type(error).__name__}: {error}"}
            result["seconds"] = time.perf_counter() - case_started
            results[case.name].append(result)
            note = result.get("error") or f"{result['value']:.1f} {case.unit}"
            print(f"[round {round_index + 1}/{rounds} {time.perf_counter() - started:6.0f}s] {case.name}: {note}",
                  flush=True)
    return results


def values(results: dict[str, list[Result]], name: str) -> list[float]:
    """A case's value in each round (NaN where it failed or did not run)."""
    return [r["value"] for r in results.get(name, [])]


def per_round_ratio(results: dict[str, list[Result]], numerator: str, denominator: str,
                    scale: float = 1.0) -> list[float]:
    """``numerator / (denominator * scale)`` within each round."""
    return [n / (d * scale) if d else float("nan")
            for n, d in zip(values(results, numerator), values(results, denominator))]


def child_env() -> dict[str, str]:
    """This process's environment with the repository root first on ``PYTHONPATH``: a child started
    as ``python -m benchmarks...`` or ``python -c`` imports the same ``benchmarks`` package."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
