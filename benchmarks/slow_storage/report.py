"""The "Slow storage" sections of ``benchmarks/RESULTS.md`` and the experiment's plot.

``markdown(results)`` renders either JSON of this folder: ``results.json`` (from
``experiment.py``: validation, targets and every case) or ``scale.json`` (from ``scale.py``);
``benchmarks/report.py`` lists both in its ``SECTIONS``, so
``python benchmarks/report.py benchmarks/results.json --out benchmarks`` puts them in RESULTS.md.
``experiment.py`` writes ``results.png`` beside its results with :func:`plot`. Every sentence
is computed from the numbers; explanations are dated notes in ``NOTES.md`` here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

LMDB_LOADERS = ("lmdb-random", "lmdb-chunk", "lmdb-iterable")

Run = dict[str, Any]


def overall(run: Run) -> tuple[float, float | None]:
    """Samples/s and stored MB/s over the whole run, the dataset's open and first batch included (for reference)."""
    elapsed = run["first_batch_s"] + (run["samples"] - run["batch_size"]) / run["samples_per_s"]
    rate = run["samples"] / elapsed
    per_sample_mb = run["mb_per_s"] / run["samples_per_s"] if run["mb_per_s"] is not None else None
    return rate, rate * per_sample_mb if per_sample_mb is not None else None


IN_FLIGHT_MARGIN = 4
"""A run's rate after its first batch is trusted when it read at least this many times the samples
its workers can have read before that batch (one batch each): otherwise reads made before the
first batch are counted after it, and the rate can exceed the device's."""


def long_enough(run: Run) -> bool:
    """Whether ``run`` read enough samples for its rate after the first batch (see :data:`IN_FLIGHT_MARGIN`)."""
    return run["samples"] >= IN_FLIGHT_MARGIN * max(run["workers"], 1) * run["batch_size"]


def comparable(run: Run, base: Run) -> bool:
    """Whether ``run`` and its ImageFolder ``base`` are both :func:`long_enough` for a ratio of their rates."""
    return long_enough(run) and long_enough(base)


def find(runs: list[Run], **key: Any) -> Run | None:
    """The run matching every ``key`` (model, loader, pipeline, workers), if any."""
    return next((run for run in runs if all(run[k] == v for k, v in key.items())), None)


def run_table(runs: list[Run], model: str) -> str:
    """Markdown table of one model's runs: rate after the first batch and its ratio to ImageFolder, first batch."""
    lines = ["| pipeline | workers | loader | samples | first batch s | samples/s after it | x ImageFolder "
             "| samples/s, whole run | stored MB/s, whole run | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        if run["model"] != model:
            continue
        base = find(runs, model=model, loader="imagefolder", pipeline=run["pipeline"], workers=run["workers"])
        ratio = ("-" if base is None else f"{run['samples_per_s'] / base['samples_per_s']:.2f}x"
                 if comparable(run, base) else "too short")
        rate, mb = overall(run)
        lines.append(f"| {run['pipeline']} | {run['workers']} | {run['loader']} | {run['samples']} "
                     f"| {run['first_batch_s']:.2f} | {run['samples_per_s']:.0f} | {ratio} | {rate:.0f} "
                     f"| {'-' if mb is None else f'{mb:.1f}'} | {run['load_1min']:.1f} |")
    return "\n".join(lines)


def validation_table(validation: dict[str, dict[str, float]]) -> str:
    """A markdown table of ``validate.validate`` results per model, next to the nominal numbers."""
    lines = ["| model | random 4 KB IOPS (1 in flight) | nominal | random 4 KB IOPS (16 in flight) "
             "| sequential MB/s | nominal | load (1 min) |", "|---|---|---|---|---|---|---|"]
    for model, r in validation.items():
        lines.append(f"| {model} | {r['random_4k_iops']:.0f} | {r['nominal_random_4k_iops']:.0f} "
                     f"| {r['random_4k_iops_16']:.0f} | {r['sequential_mb_s']:.0f} "
                     f"| {r['nominal_sequential_mb_s']:.0f} | {r['load_1min']:.1f} |")
    return "\n".join(lines)


Check = tuple[str, Callable[[Run, Run, dict[str, Any]], tuple[float, float]]]


def target_rows(runs: list[Run], validation: dict[str, Any]) -> list[str]:
    """One row per (target, pipeline, workers): the measured value, the threshold and pass/FAIL."""
    speedup = lambda threshold: lambda run, base, _: (run["samples_per_s"] / base["samples_per_s"],  # noqa: E731
                                                      threshold)
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
            if base is None or (check is bandwidth and run["mb_per_s"] is None) or not comparable(run, base):
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
    """Samples/s after the first batch against workers: a column per model, a row per pipeline, a line per loader."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in ("hdd", "nfs", "local") if any(run["model"] == m for run in runs)]
    pipelines = [p for p in ("raw", "train") if any(run["pipeline"] == p for run in runs)]
    figure, axes = plt.subplots(len(pipelines), len(models), figsize=(4.4 * len(models), 3.4 * len(pipelines)),
                                squeeze=False)
    for row, pipeline in enumerate(pipelines):
        for column, model in enumerate(models):
            axis = axes[row][column]
            for loader in ("imagefolder", *LMDB_LOADERS):
                points = sorted((run["workers"], run["samples_per_s"]) for run in runs
                                if (run["model"], run["pipeline"], run["loader"]) == (model, pipeline, loader))
                if points:
                    axis.plot(*zip(*points), marker="o", label=loader)
            axis.set_title(f"{model} ({'cold' if model != 'local' else 'warm'}), {pipeline}")
            axis.set_xlabel("DataLoader workers")
            axis.set_ylabel("samples/s after the first batch")
            axis.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def commands_line(results: dict[str, Any]) -> str:
    """The command (or commands, each adding its models and worker counts) that produced ``results``."""
    commands = results.get("commands") or ([results["command"]] if "command" in results else [])
    if not commands:
        return "Command: not recorded in the JSON."
    following = " (each adding or replacing its cases)" if len(commands) > 1 else ""
    return "Command: " + ", then ".join(f"`{command}`" for command in commands) + following


def experiment_section(results: dict[str, Any]) -> str:
    """The seeds' experiment: how it was run, the validated models, the targets, every case."""
    machine, settings = results["machine"], results["settings"]
    runs = results["runs"]
    rows = target_rows(runs, results["validation"])
    failed = sum(row.endswith("FAIL |") for row in rows[2:])
    parts = [
        "## Slow storage (FUSE device models)", "",
        commands_line(results), "",
        *([f"Date: {results['date']}", ""] if "date" in results else []),
        f"Machine: {machine['cpus']} cores, {machine['platform']}, python {machine['python']}; "
        f"1-minute load average {machine['load_1min_start']:.1f} at the start and "
        f"{machine.get('load_1min_end', float('nan')):.1f} at the end (each row gives the load before its run).", "",
        f"Each case: a fresh cold mount, the dataset opened, a DataLoader (batch {settings['batch_size']}) read "
        "until the run's samples (or the epoch's end) with the readers' "
        "default options. The first batch (from opening the dataset) is reported apart; the targets' ratios "
        "to ImageFolder use samples/s after it, for runs of at least "
        f"{IN_FLIGHT_MARGIN} x workers x batch samples (shorter ones, marked too short, can count reads made "
        "before the first batch after it). Stored MB/s cover the whole run: a reader that reads ahead "
        "before its first batch delivers after it bytes read before it, so its rate after the first batch "
        "can exceed the device's; the whole run's cannot, and the bandwidth target uses it. "
        f"nfs round trip: {settings['rtt_ms']} ms.", "",
        "### Device models, validated through the mount", "", validation_table(results["validation"]), "",
        "### Targets", "", f"{len(rows) - 2 - failed} of {len(rows) - 2} checks pass.", "", *rows, "",
    ]
    for model, title in (("hdd", "hdd"), ("nfs", "nfs"),
                         ("local", "local: the source directory itself, every file in the page cache (no device model)")):
        if any(run["model"] == model for run in runs):
            parts += [f"### {title}", "", run_table(runs, model), ""]
    parts += ["![slow storage](slow_storage/results.png)", ""]
    return "\n".join(parts)


def scale_section(scale: dict[str, Any]) -> str:
    """The 1.28M-record scale bench: how it was run and its numbers against the targets."""
    lines = ["## Slow storage: a synthetic ImageNet-sized dataset (8x8 JPEGs)", ""]
    lines += [f"Command: `{scale['command']}`" if "command" in scale else "Command: not recorded in the JSON.", ""]
    if "date" in scale:
        lines += [f"Date: {scale['date']}", ""]
    lines += [f"1-minute load average at the start: {scale['load_1min']:.1f}.", "", scale_table(scale), ""]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The section of ``results``: the experiment's (``results.json``) or the scale bench's (``scale.json``)."""
    return experiment_section(results) if "runs" in results else scale_section(results)


