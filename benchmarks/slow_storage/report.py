"""The "Slow storage" sections of ``benchmarks/RESULTS.md`` and the experiment's plot.

``markdown(results)`` renders either JSON of this folder: ``results.json`` (from
``experiment.py``: validation, targets and every case) or ``scale.json`` (from ``scale.py``);
``benchmarks/report.py`` lists both in its ``SECTIONS``, so
``python -m benchmarks.report benchmarks/loaders/results.json --out benchmarks`` puts them in RESULTS.md.
``experiment.py`` writes ``results.png`` beside its results with :func:`plot`. Every sentence
is computed from the numbers; explanations are dated notes in ``NOTES.md`` here.
"""

from __future__ import annotations

import dataclasses
import statistics
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


CASE = ("model", "loader", "pipeline", "workers")
"""The fields naming a case; ``--repeats`` runs each case several times."""
MEDIAN_FIELDS = ("open_s", "first_batch_s", "samples_per_s", "mb_per_s", "load_1min", "cores_busy", "server_cores")


def cases(runs: list[Run]) -> dict[tuple[Any, ...], list[Run]]:
    """The runs of each case, in the order the cases first ran."""
    grouped: dict[tuple[Any, ...], list[Run]] = {}
    for run in runs:
        grouped.setdefault(tuple(run[k] for k in CASE), []).append(run)
    return grouped


def summarize(repeats: list[Run]) -> Run:
    """One case's runs as one run: the median of each measure, with ``repeats`` and the rates' ``rate_range``."""
    summary = {k: repeats[0][k] for k in (*CASE, "batch_size")}
    summary["samples"] = min(run["samples"] for run in repeats)
    for field in MEDIAN_FIELDS:
        values = [run[field] for run in repeats if run.get(field) is not None]
        summary[field] = statistics.median(values) if values else None
    rates = [run["samples_per_s"] for run in repeats]
    summary["repeats"], summary["rate_range"] = len(repeats), (min(rates), max(rates))
    return summary


def summaries(runs: list[Run]) -> list[Run]:
    """Every case as one run (:func:`summarize`)."""
    return [summarize(repeats) for repeats in cases(runs).values()]


def paired(repeats: list[Run], bases: list[Run]) -> list[tuple[Run, Run]]:
    """Each run of a case with the ImageFolder run it is compared to: the one of its round, else their median.

    The runs of one round and worker count ran back to back (``experiment.py --repeats``), so
    a ratio within a round compares runs made under the same conditions.
    """
    by_round = {base["round"]: base for base in bases if "round" in base}
    median = summarize(bases)
    return [(run, by_round.get(run.get("round"), median)) for run in repeats]


Measure = Callable[[Run, Run, dict[str, Any]], float]


def measured(repeats: list[Run], bases: list[Run], measure: Measure, nominal: dict[str, Any]) -> list[float]:
    """``measure(run, base, nominal)`` for each :func:`paired` run and base both :func:`comparable` (long enough)."""
    return [measure(run, base, nominal) for run, base in paired(repeats, bases) if comparable(run, base)]


def speedup(run: Run, base: Run, _: dict[str, Any]) -> float:
    """Samples/s after the first batch, as a multiple of ImageFolder's (``base``)."""
    return run["samples_per_s"] / base["samples_per_s"]


def bandwidth(run: Run, base: Run, nominal: dict[str, Any]) -> float:
    """Stored MB/s over the whole run, as a fraction of the model's nominal sequential MB/s."""
    return overall(run)[1] / nominal["nominal_sequential_mb_s"]


def first_batch(run: Run, base: Run, _: dict[str, Any]) -> float:
    """Time to the first batch, as a fraction of ImageFolder's."""
    return run["first_batch_s"] / base["first_batch_s"]


def spread(values: list[float], unit: str = "x") -> str:
    """``"m<unit>"``, the median of ``values``, followed by ``" (low-high, n runs)"`` when there are several."""
    median = f"{statistics.median(values):.2f}{unit}"
    return median if len(values) == 1 else f"{median} ({span(values, unit)}, {len(values)} runs)"


def run_table(runs: list[Run], model: str) -> str:
    """Markdown table of one model's cases: their runs' medians, the rate's range, the median ratio to ImageFolder."""
    lines = ["| pipeline | workers | loader | runs | samples | first batch s | samples/s after it (range) "
             "| x ImageFolder | samples/s, whole run | stored MB/s, whole run | cores busy (passthrough's) | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    grouped = cases(runs)
    for key, repeats in grouped.items():
        if key[0] != model:
            continue
        run = summarize(repeats)
        bases = grouped.get((model, "imagefolder", run["pipeline"], run["workers"]))
        ratios = [] if bases is None else measured(repeats, bases, speedup, {})
        ratio = "-" if bases is None else spread(ratios) if ratios else "too short"
        low, high = run["rate_range"]
        rate, mb = overall(run)
        lines.append(f"| {run['pipeline']} | {run['workers']} | {run['loader']} | {run['repeats']} | {run['samples']} "
                     f"| {run['first_batch_s']:.2f} | {run['samples_per_s']:.0f}"
                     f"{f' ({low:.0f}-{high:.0f})' if run['repeats'] > 1 else ''} | {ratio} | {rate:.0f} "
                     f"| {'-' if mb is None else f'{mb:.1f}'} | {cores(run)} | {run['load_1min']:.1f} |")
    return "\n".join(lines)


def cores(run: Run) -> str:
    """Cores busy after the first batch, with the passthrough's share: ``"1.9 (0.8)"``; "-" where not recorded."""
    if run.get("cores_busy") is None:
        return "-"
    return f"{run['cores_busy']:.1f}" + ("" if run.get("server_cores") is None else f" ({run['server_cores']:.1f})")


def validation_table(validation: dict[str, dict[str, float]]) -> str:
    """A markdown table of ``validate.validate`` results per model, next to the nominal (or simulated) numbers."""
    lines = ["| model | random 4 KB IOPS (1 in flight) | nominal | random 4 KB IOPS (16 in flight) "
             "| random 4 KB IOPS (deep queue) | simulated | sequential MB/s | nominal | load (1 min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, r in validation.items():
        deep = [f"{r[key]:.0f}" if key in r else "-"
                for key in ("random_4k_iops_deep", "simulated_random_4k_iops_deep")]
        lines.append(f"| {model} | {r['random_4k_iops']:.0f} | {r['nominal_random_4k_iops']:.0f} "
                     f"| {r['random_4k_iops_16']:.0f} | {' | '.join(deep)} | {r['sequential_mb_s']:.0f} "
                     f"| {r['nominal_sequential_mb_s']:.0f} | {r['load_1min']:.1f} |")
    return "\n".join(lines)


def queue_sentence(validation: dict[str, dict[str, float]]) -> str:
    """What the hdd validation says about a deep queue and the dataset's records (empty without those numbers)."""
    hdd = validation.get("hdd", {})
    if "simulated_records_per_s" not in hdd:
        return ""
    return (f"hdd, random 4 KB reads with {hdd['deep_in_flight']} in flight: {hdd['random_4k_iops_deep']:.0f} IOPS "
            f"measured, {hdd['simulated_random_4k_iops_deep']:.0f} simulated with the {hdd['serving_threads']} "
            "requests the mount serves at once always queued (`HddModel.scattered_reads_per_s`). Simulated the "
            f"same way, the dataset's records (mean {hdd['record_bytes'] / 1e3:.1f} KB) read at "
            f"{hdd['simulated_records_per_s']:.0f}/s: the random-access ceiling.")


def ceiling(run: Run, base: Run, runs: list[Run], validation: dict[str, Any]) -> tuple[float, str] | None:
    """The largest ratio to ImageFolder (``base``) any reader could reach in ``run``'s case, and what sets it.

    ``run``, ``base`` and ``runs`` are cases' medians (:func:`summarize`). The lowest of the
    bounds that apply: ``run``'s own pipeline with every file in the page
    cache (the ``local`` case of the same loader, pipeline and workers: the CPU); on ``nfs``, the
    link's bandwidth over the bytes ``run`` reads per sample; on ``hdd``, for random access,
    the disk's rate for records at random offsets with the most requests the mount queues
    (``simulated_records_per_s`` of the validation: :meth:`models.HddModel.scattered_reads_per_s`).
    None where no bound is measured.
    """
    bounds = []
    warm = find(runs, model="local", loader=run["loader"], pipeline=run["pipeline"], workers=run["workers"])
    if warm is not None:
        bounds.append((warm["samples_per_s"], "CPU: the same run, warm"))
    sample_mb = run["mb_per_s"] / run["samples_per_s"] if run["mb_per_s"] else None
    if sample_mb and run["model"] == "nfs":
        link = validation["nfs"]["nominal_sequential_mb_s"]
        bounds.append((link / sample_mb, f"link: {link:.0f} MB/s"))
    scattered = validation.get("hdd", {}).get("simulated_records_per_s")
    if scattered and run["model"] == "hdd" and run["loader"] == "lmdb-random":
        bounds.append((scattered, f"disk: {scattered:.0f} records/s at random offsets, queue full"))
    if not bounds:
        return None
    rate, reason = min(bounds)
    return rate / base["samples_per_s"], reason


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One target checked on one case: the median ``value`` of its runs' ``values`` against ``threshold``.

    ``ceiling`` is the case's, where bounded (:func:`ceiling`).
    """

    model: str
    target: str
    loader: str
    pipeline: str
    workers: int
    value: float
    threshold: float
    passed: bool
    kind: str
    ceiling: tuple[float, str] | None
    values: tuple[float, ...] = ()

    @property
    def beyond_ceiling(self) -> bool:
        """A miss whose threshold is above the most any reader could reach in its case."""
        return not self.passed and self.ceiling is not None and self.ceiling[0] < self.threshold


def target_checks(runs: list[Run], validation: dict[str, Any]) -> list[CheckResult]:
    """Every (target, case) pair with ImageFolder runs to compare with: the median over the :func:`paired` runs.

    A check passes when the median of its runs passes; runs too short for a ratio
    (:func:`comparable`) are left out, and a case without any is not checked.
    """
    targets: list[tuple[str, str, tuple[str, ...], tuple[str, ...], str, Measure, float, bool]] = [
        # model, target, loaders, pipelines, kind, measure, threshold, higher is better
        ("hdd", ">= 5x ImageFolder", ("lmdb-chunk", "lmdb-iterable"), ("raw", "train"), "speedup", speedup, 5, True),
        ("hdd", ">= 0.7x sequential bandwidth", ("lmdb-chunk", "lmdb-iterable"), ("raw",), "bandwidth", bandwidth,
         0.7, True),
        ("hdd", ">= 1.5x ImageFolder", ("lmdb-random",), ("raw", "train"), "speedup", speedup, 1.5, True),
        ("nfs", ">= 3x ImageFolder", LMDB_LOADERS, ("raw", "train"), "speedup", speedup, 3, True),
        ("nfs", "first batch <= ImageFolder's", LMDB_LOADERS, ("raw", "train"), "first batch", first_batch, 1.0,
         False),
    ]
    grouped, medians = cases(runs), summaries(runs)
    checks = []
    for model, target, loaders, pipelines, kind, measure, threshold, higher in targets:
        for (run_model, loader, pipeline, workers), repeats in grouped.items():
            if run_model != model or loader not in loaders or pipeline not in pipelines:
                continue
            bases = grouped.get((model, "imagefolder", pipeline, workers))
            if bases is None or (kind == "bandwidth" and repeats[0]["mb_per_s"] is None):
                continue
            values = measured(repeats, bases, measure, validation.get(model, {}))
            if not values:
                continue
            value = statistics.median(values)
            bound = ceiling(summarize(repeats), summarize(bases), medians, validation) if kind == "speedup" else None
            checks.append(CheckResult(model, target, loader, pipeline, workers, value, threshold,
                                      value >= threshold if higher else value <= threshold, kind, bound,
                                      tuple(values)))
    return checks


def target_rows(checks: list[CheckResult]) -> list[str]:
    """The targets table: one row per check with its ceiling and pass/FAIL."""
    rows = ["| model | target | loader | pipeline | workers | measured: median (range, runs) | ceiling | result |",
            "|---|---|---|---|---|---|---|---|"]
    for check in checks:
        bound = "-" if check.ceiling is None else f"{check.ceiling[0]:.2f}x ({check.ceiling[1]})"
        result = "pass" if check.passed else "FAIL, beyond the ceiling" if check.beyond_ceiling else "FAIL"
        rows.append(f"| {check.model} | {check.target} | {check.loader} | {check.pipeline} | {check.workers} "
                    f"| {spread(list(check.values or [check.value]))} | {bound} | {result} |")
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
            rows.append((f"{kind}: worker {label}, first batch -> end of 2nd epoch MB (median); worst growth over "
                         "the 2nd epoch (the 1st, warm-up included)",
                         f"{scale[f'{kind}_{name}_first_mb']:.1f} -> {scale[f'{kind}_{name}_last_mb']:.1f}; "
                         f"{growth:+.1%} ({scale[f'{kind}_{name}_growth_first_epoch_max']:+.1%})",
                         "pass (< 5%)" if growth < 0.05 else "FAIL (< 5%)"))
    return "\n".join(["| measure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def plot(runs: list[Run], path: Path) -> None:
    """Samples/s after the first batch against workers (a case's median, its runs' range as an error bar):
    a column per model, a row per pipeline, a line per loader."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summaries(runs)
    models = [m for m in ("hdd", "nfs", "local") if any(run["model"] == m for run in runs)]
    pipelines = [p for p in ("raw", "train") if any(run["pipeline"] == p for run in runs)]
    figure, axes = plt.subplots(len(pipelines), len(models), figsize=(4.4 * len(models), 3.4 * len(pipelines)),
                                squeeze=False)
    for row, pipeline in enumerate(pipelines):
        for column, model in enumerate(models):
            axis = axes[row][column]
            for loader in ("imagefolder", *LMDB_LOADERS):
                points = sorted((run["workers"], run["samples_per_s"], *run["rate_range"]) for run in runs
                                if (run["model"], run["pipeline"], run["loader"]) == (model, pipeline, loader))
                if points:
                    workers, rates, lows, highs = map(list, zip(*points))
                    axis.errorbar(workers, rates, yerr=[[r - lo for r, lo in zip(rates, lows)],
                                                        [hi - r for r, hi in zip(rates, highs)]],
                                  marker="o", capsize=3, label=loader)
            axis.set_title(f"{model} ({'cold' if model != 'local' else 'warm'}), {pipeline}")
            axis.set_xlabel("DataLoader workers")
            axis.set_ylabel("samples/s after the first batch")
            axis.set_yscale("log")
            axis.set_xscale("log", base=2)
            axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
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
    checks = target_checks(runs, results["validation"])
    failed = sum(not check.passed for check in checks)
    beyond = sum(check.beyond_ceiling for check in checks)
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
        f"nfs round trip: {settings['rtt_ms']} ms. A case run several times (`--repeats`) shows the median of its "
        "runs and their range; each ratio pairs a run with ImageFolder's run of the same round (they ran back to "
        "back), and a target is checked on the median ratio.", "",
        "### Device models, validated through the mount", "", validation_table(results["validation"]), "",
        *([queue_sentence(results["validation"]), ""] if queue_sentence(results["validation"]) else []),
        "### Targets", "",
        f"{len(checks) - failed} of {len(checks)} checks pass; {share(beyond, failed)} that fail ask for "
        "more than the ceiling of their case: the most any reader could reach there, given ImageFolder's measured "
        "rate (see `ceiling` in `report.py`).", "", *target_rows(checks), "",
    ]
    local = "local: the source directory itself, every file in the page cache (no device model)"
    for model, title in (("hdd", "hdd"), ("nfs", "nfs"), ("local", local)):
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


README_WORKERS = 8
"""The worker count of the README's table."""
README_BEGIN = "<!-- slow-storage-results: generated by python -m benchmarks.slow_storage.report README.md -->"
README_END = "<!-- slow-storage-results: end -->"


def span(values: list[float], unit: str = "x", digits: int = 2) -> str:
    """``"a-b<unit>"`` for the range of ``values`` (``"a<unit>"`` when they are all equal; "not measured" if none)."""
    if not values:
        return "not measured"
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return f"{low}{unit}" if low == high else f"{low}-{high}{unit}"


def share(part: int, whole: int) -> str:
    """``"all 24"``, ``"3 of the 26"`` or ``"no"``: how many of ``whole`` things ``part`` is."""
    if whole == 0:
        return "no"
    return f"all {whole}" if part == whole else f"{part} of the {whole}"


def readme_table(results: dict[str, Any], workers: int = README_WORKERS) -> str:
    """The README's table: each model and pipeline with ``workers`` workers, medians of each case's runs."""
    grouped = cases(results["runs"])
    lines = ["| model | pipeline | ImageFolder | LMDB random access | ChunkShuffleSampler | LMDBIterableDataset "
             "| first batch s (ImageFolder / chunk) |", "|---|---|---|---|---|---|---|"]
    for model in ("hdd", "nfs"):
        for pipeline, label in (("raw", "raw reads"), ("train", "train (decode + crop)")):
            bases = grouped.get((model, "imagefolder", pipeline, workers))
            chunks = grouped.get((model, "lmdb-chunk", pipeline, workers))
            if bases is None or chunks is None:
                continue
            base = summarize(bases)
            cells = [f"{base['samples_per_s']:,.0f}"]
            for loader in LMDB_LOADERS:
                repeats = grouped[(model, loader, pipeline, workers)]
                run, ratios = summarize(repeats), measured(repeats, bases, speedup, {})
                ratio = f"{statistics.median(ratios):.2f}x" if ratios else "too short"
                mb = overall(run)[1] if loader != "lmdb-random" else None
                cells.append(f"{run['samples_per_s']:,.0f} ({ratio}{'' if mb is None else f', {mb:.0f} MB/s'})")
            lines.append(f"| `{model}` | {label} | {' | '.join(cells)} "
                         f"| {base['first_batch_s']:.2f} / {summarize(chunks)['first_batch_s']:.2f} |")
    return "\n".join(lines)


def readme_summary(results: dict[str, Any], scale: dict[str, Any]) -> str:
    """The README's paragraph on every worker count and the 1.28M-record bench, each number from the JSONs."""
    checks = target_checks(results["runs"], results["validation"])
    failed = [check for check in checks if not check.passed]

    def values(model: str, kind: str, loaders: tuple[str, ...], pipeline: str | None = None,
               bound: bool = False) -> list[float]:
        chosen = [check for check in checks if check.model == model and check.kind == kind
                  and check.loader in loaders and pipeline in (None, check.pipeline)]
        return [check.ceiling[0] for check in chosen if check.ceiling] if bound else [c.value for c in chosen]

    sequential = ("lmdb-chunk", "lmdb-iterable")
    counts = sorted({run["workers"] for run in results["runs"] if run["model"] in ("hdd", "nfs")})
    firsts = values("nfs", "first batch", LMDB_LOADERS)
    first_sentence = (f"every first batch comes before ImageFolder's ({span(firsts)} its time)" if max(firsts) <= 1
                      else f"first batches take {span(firsts)} ImageFolder's time")
    kinds = ("map", "chunk", "iterable")
    memory = [scale[f"{kind}_uss_{point}_mb"] for kind in kinds for point in ("first", "last")]
    return " ".join([
        f"With {', '.join(map(str, counts[:-1]))} and {counts[-1]} workers, {len(checks) - len(failed)} of "
        f"{len(checks)} checks pass, and {share(sum(check.beyond_ceiling for check in failed), len(failed))} misses "
        "ask for more than their case's ceiling: the most any reader could reach there, set by the disk's "
        "rate for records at random offsets with its queue full, the link's bandwidth, or the same run with every "
        f"file in the page cache (the machine's {results['machine']['cpus']} cores).",
        f"On `hdd` the sequential readers beat ImageFolder by {span(values('hdd', 'speedup', sequential), digits=1)} "
        f"(target 5x) at {span(values('hdd', 'bandwidth', sequential))} of its "
        f"{results['validation']['hdd']['nominal_sequential_mb_s']:.0f} MB/s over the whole run (target 0.7x); "
        f"random access gains {span(values('hdd', 'speedup', ('lmdb-random',), 'raw'))} in raw reads (target 1.5x; "
        f"ceiling {span(values('hdd', 'speedup', ('lmdb-random',), 'raw', bound=True))}) and "
        f"{span(values('hdd', 'speedup', ('lmdb-random',), 'train'))} in the train pipeline.",
        f"On `nfs` the LMDB readers gain {span(values('nfs', 'speedup', LMDB_LOADERS, 'raw'))} in raw reads "
        f"(ceiling {span(values('nfs', 'speedup', LMDB_LOADERS, 'raw', bound=True))}) and "
        f"{span(values('nfs', 'speedup', LMDB_LOADERS, 'train'))} in the train pipeline (ceiling "
        f"{span(values('nfs', 'speedup', LMDB_LOADERS, 'train', bound=True))}), against a 3x target; "
        f"{first_sentence}.",
        f"A {scale['records']:,}-record dataset opens in "
        f"{span([scale['open_map_s'], scale['open_iterable_s']], ' s')} cold and plans an epoch in at most "
        f"{max(scale['plan_iterable_max_s'], scale['plan_sampler_max_s']):.2f} s per rank or worker; 8 DataLoader "
        f"workers hold {span(memory, ' MB', 0)} of private memory and grow at most "
        f"{max(scale[f'{kind}_uss_growth_max'] for kind in kinds):.1%} over an epoch once warm "
        f"({span([scale[f'{kind}_uss_growth_first_epoch_max'] * 100 for kind in kinds], '%', 1)} over their first, "
        "warm-up included).",
    ])


def readme_block(results: dict[str, Any], scale: dict[str, Any]) -> str:
    """What the README holds between :data:`README_BEGIN` and :data:`README_END`."""
    counts = sorted({len(repeats) for repeats in cases(results["runs"]).values()})
    runs = "one run per case" if counts == [1] else f"the median of {span(counts, unit=' runs', digits=0)} per case"
    return "\n\n".join([README_BEGIN, f"Samples/s after the first batch with {README_WORKERS} workers (stored MB/s "
                         "over the whole run for the sequential readers; ratios to ImageFolder), "
                         f"{runs}:",
                         readme_table(results), "![slow storage](benchmarks/slow_storage/results.png)",
                         readme_summary(results, scale), README_END])


def update_readme(readme: Path, results: dict[str, Any], scale: dict[str, Any]) -> None:
    """Replace the generated block of ``readme`` with :func:`readme_block`."""
    text = readme.read_text()
    begin, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:begin] + readme_block(results, scale) + text[end:])


def markdown(results: dict[str, Any]) -> str:
    """The section of ``results``: the experiment's (``results.json``) or the scale bench's (``scale.json``)."""
    return experiment_section(results) if "runs" in results else scale_section(results)




def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.slow_storage.report README.md``: regenerate the README's slow-storage block."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("readme", type=Path)
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parent
    update_readme(args.readme, json.loads((here / "results.json").read_text()),
                  json.loads((here / "scale.json").read_text()))


if __name__ == "__main__":
    main()
