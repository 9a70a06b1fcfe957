"""Turn the slow-storage results into the "Slow storage" section of ``benchmarks/RESULTS.md`` and a plot.

    python -m benchmarks.slow_storage.report --scale /tmp/slow/scale/scale.json

Reads ``results.json`` (from ``experiment.py``) and optionally a ``scale.json`` (from
``scale.py``), copies the latter next to this file, writes ``results.png`` here, and replaces
the text between the section markers in ``benchmarks/RESULTS.md`` (appending the section if
it is not there); the rest of that file is left as it is. Every sentence is computed from
the numbers; hand-written explanations belong in ``NOTES.md`` here, which is included as is.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .validate import table  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE.parent / "RESULTS.md"
BEGIN = "<!-- slow-storage:begin (written by benchmarks/slow_storage/report.py) -->"
END = "<!-- slow-storage:end -->"
LMDB_LOADERS = ("lmdb-random", "lmdb-chunk", "lmdb-iterable")

Run = dict[str, Any]


def overall(run: Run) -> tuple[float, float | None]:
    """Samples/s and stored MB/s over the whole run, the dataset's open and first batch included."""
    elapsed = run["first_batch_s"] + (run["samples"] - run["batch_size"]) / run["samples_per_s"]
    rate = run["samples"] / elapsed
    per_sample_mb = run["mb_per_s"] / run["samples_per_s"] if run["mb_per_s"] is not None else None
    return rate, rate * per_sample_mb if per_sample_mb is not None else None


def find(runs: list[Run], **key: Any) -> Run | None:
    """The run matching every ``key`` (model, loader, pipeline, workers), if any."""
    return next((run for run in runs if all(run[k] == v for k, v in key.items())), None)


def run_table(runs: list[Run], model: str) -> str:
    """Markdown table of one model's runs: overall rate, ratio to ImageFolder, MB/s, first batch."""
    lines = ["| pipeline | workers | loader | samples/s | x ImageFolder | stored MB/s | first batch s "
             "| samples/s after the first batch | load |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        if run["model"] != model:
            continue
        base = find(runs, model=model, loader="imagefolder", pipeline=run["pipeline"], workers=run["workers"])
        rate, mb = overall(run)
        ratio = f"{rate / overall(base)[0]:.2f}x" if base else "-"
        lines.append(f"| {run['pipeline']} | {run['workers']} | {run['loader']} | {rate:.0f} | {ratio} "
                     f"| {'-' if mb is None else f'{mb:.1f}'} | {run['first_batch_s']:.2f} "
                     f"| {run['samples_per_s']:.0f} | {run['load_1min']:.1f} |")
    return "\n".join(lines)


Check = tuple[str, Callable[[Run, Run, dict[str, Any]], tuple[float, float]]]


def target_rows(runs: list[Run], validation: dict[str, Any]) -> list[str]:
    """One row per (target, pipeline, workers): the measured value, the threshold and pass/FAIL."""
    speedup = lambda threshold: lambda run, base, _: (overall(run)[0] / overall(base)[0], threshold)  # noqa: E731
    bandwidth = lambda run, base, nominal: (overall(run)[1] / nominal["nominal_sequential_mb_s"], 0.7)  # noqa: E731
    first = lambda run, base, _: (run["first_batch_s"] / base["first_batch_s"], 1.0)  # noqa: E731
    targets: list[tuple[str, str, tuple[str, ...], tuple[str, ...], Callable, str]] = [
        ("hdd", ">= 5x ImageFolder", ("lmdb-chunk", "lmdb-iterable"), ("raw", "train"), speedup(5), ">="),
        ("hdd", ">= 0.7x sequential bandwidth", ("lmdb-chunk", "lmdb-iterable"), ("raw",), bandwidth, ">="),
        ("hdd", ">= 1.5x ImageFolder", ("lmdb-random",), ("raw", "train"), speedup(1.5), ">="),
        ("nfs", ">= 3x ImageFolder", LMDB_LOADERS, ("raw", "train"), speedup(3), ">="),
        ("nfs", "first batch <= ImageFolder's", LMDB_LOADERS, ("raw", "train"), first, "<="),
    ]
    rows = ["| model | target | loader | pipeline | workers | measured | result |", "|---|---|---|---|---|---|---|"]
    for model, label, loaders, pipelines, check, sense in targets:
        for run in runs:
            if run["model"] != model or run["loader"] not in loaders or run["pipeline"] not in pipelines:
                continue
            base = find(runs, model=model, loader="imagefolder", pipeline=run["pipeline"], workers=run["workers"])
            if base is None or (check is bandwidth and run["mb_per_s"] is None):
                continue
            value, threshold = check(run, base, validation.get(model, {}))
            passed = value >= threshold if sense == ">=" else value <= threshold
            rows.append(f"| {model} | {label} | {run['loader']} | {run['pipeline']} | {run['workers']} "
                        f"| {value:.2f}x | {'pass' if passed else 'FAIL'} |")
    return rows


def scale_table(scale: dict[str, Any]) -> str:
    """The scale bench's numbers with their targets."""
    rows = [("records", f"{scale['records']:,}", ""),
            ("data file MB", f"{scale['data_file_mb']:.0f}", ""),
            ("build (LMDBWriter) s", f"{scale['build_s']:.0f}", ""),
            ("build peak USS MB (torch import included) / without the mapped data file",
             f"{scale['build_peak_uss_mb']:.0f} / {scale['build_peak_private_mb']:.0f}", ""),
            ("build memory growth while writing, without the mapped data file, MB",
             f"{scale['build_private_growth_mb']:.0f}", "")]
    for key, name in (("open_map_s", "open LMDBImageDataset s (cold)"),
                      ("open_iterable_s", "open LMDBIterableDataset s (cold)")):
        rows.append((name, f"{scale[key]:.3f}", "pass (< 1 s)" if scale[key] < 1 else "FAIL (< 1 s)"))
    for key, name in (("plan_iterable_max_s", "iterable worker_plan, worst of 8 ranks x 8 workers s"),
                      ("plan_sampler_max_s", "ChunkShuffleSampler.epoch_indices, worst of 8 ranks s")):
        rows.append((name, f"{scale[key]:.3f}", "pass (< 1 s)" if scale[key] < 1 else "FAIL (< 1 s)"))
    for kind in ("map", "chunk", "iterable"):
        rows.append((f"{kind}: first batch with 8 workers s (cold)", f"{scale[f'{kind}_first_batch_s']:.2f}", ""))
        for name, label in (("uss", "USS"), ("private", "USS without the mapped data file")):
            growth = scale[f"{kind}_{name}_growth_max"]
            rows.append((f"{kind}: worker {label}, first -> last batch MB (median); worst growth, whole / second half",
                         f"{scale[f'{kind}_{name}_first_mb']:.1f} -> {scale[f'{kind}_{name}_last_mb']:.1f}; "
                         f"{growth:+.1%} / {scale[f'{kind}_{name}_growth_second_half_max']:+.1%}",
                         "pass (< 5%)" if growth < 0.05 else "FAIL (< 5%)"))
    return "\n".join(["| measure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def plot(runs: list[Run], path: Path) -> None:
    """Whole-run samples/s against workers: a column per model, a row per pipeline, a line per loader."""
    models = [m for m in ("hdd", "nfs", "local") if any(run["model"] == m for run in runs)]
    pipelines = [p for p in ("raw", "train") if any(run["pipeline"] == p for run in runs)]
    figure, axes = plt.subplots(len(pipelines), len(models), figsize=(4.4 * len(models), 3.4 * len(pipelines)),
                                squeeze=False)
    for row, pipeline in enumerate(pipelines):
        for column, model in enumerate(models):
            axis = axes[row][column]
            for loader in ("imagefolder", *LMDB_LOADERS):
                points = sorted((run["workers"], overall(run)[0]) for run in runs
                                if (run["model"], run["pipeline"], run["loader"]) == (model, pipeline, loader))
                if points:
                    axis.plot(*zip(*points), marker="o", label=loader)
            axis.set_title(f"{model} ({'cold' if model != 'local' else 'warm'}), {pipeline}")
            axis.set_xlabel("DataLoader workers")
            axis.set_ylabel("samples/s, whole run")
            axis.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def section(results: dict[str, Any], scale: dict[str, Any] | None, notes: str) -> str:
    """The markdown of the whole section."""
    machine, settings = results["machine"], results["settings"]
    runs = results["runs"]
    rows = target_rows(runs, results["validation"])
    failed = sum(row.endswith("FAIL |") for row in rows[2:])
    parts = [
        BEGIN, "## Slow storage (FUSE device models)", "",
        "Command: `python -m benchmarks.slow_storage.experiment CORPUS` then "
        "`python -m benchmarks.slow_storage.report` (see `benchmarks/slow_storage/`).", "",
        f"Machine: {machine['cpus']} cores, {machine['platform']}, python {machine['python']}; "
        f"1-minute load average {machine['load_1min_start']:.1f} at the start and "
        f"{machine.get('load_1min_end', float('nan')):.1f} at the end (the machine is shared; "
        "each row gives the load before its run).", "",
        f"Each case: a fresh cold mount, the dataset opened, a DataLoader (batch {settings['batch_size']}) read "
        f"until {settings['samples']} samples; samples/s and MB/s cover the whole run from opening the dataset, "
        "first batch included, and are what the targets use. The rate after the first batch counts samples "
        "the workers fetched while the first batch was pending (2 batches per worker), so it overstates "
        "where that is most of the run. nfs round trip: "
        f"{settings['rtt_ms']} ms.", "",
        "### Device models, validated through the mount", "", table(results["validation"]), "",
        "### Targets", "", f"{len(rows) - 2 - failed} of {len(rows) - 2} checks pass.", "", *rows, "",
    ]
    for model, title in (("hdd", "hdd"), ("nfs", "nfs"),
                         ("local", "local: the source directory itself, every file in the page cache (no device model)")):
        if any(run["model"] == model for run in runs):
            parts += [f"### {title}", "", run_table(runs, model), ""]
    parts += ["![slow storage](slow_storage/results.png)", ""]
    if scale is not None:
        parts += ["### Scale: a synthetic ImageNet-sized dataset (8x8 JPEGs)", "", scale_table(scale), ""]
    if notes:
        parts += ["### Notes", "", notes.strip(), ""]
    parts.append(END)
    return "\n".join(parts)


def replace_section(document: str, text: str) -> str:
    """``document`` with its slow-storage section replaced by ``text`` (appended if absent)."""
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        return head + text + rest.split(END, 1)[1]
    return document.rstrip("\n") + "\n\n" + text + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write the plot and the section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results.json", help="(default: %(default)s)")
    parser.add_argument("--scale", type=Path, default=None, help="a scale.json from scale.py to include")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    if args.results.resolve() != (HERE / "results.json").resolve():
        shutil.copyfile(args.results, HERE / "results.json")
    scale = None
    if args.scale is not None:
        if args.scale.resolve() != (HERE / "scale.json").resolve():
            shutil.copyfile(args.scale, HERE / "scale.json")
        scale = json.loads(args.scale.read_text())
    elif (HERE / "scale.json").exists():
        scale = json.loads((HERE / "scale.json").read_text())
    notes = (HERE / "NOTES.md").read_text() if (HERE / "NOTES.md").exists() else ""
    plot(results["runs"], HERE / "results.png")
    RESULTS_MD.write_text(replace_section(RESULTS_MD.read_text(), section(results, scale, notes)))


if __name__ == "__main__":
    main()
