"""The report of a run: RESULTS.md and results.png, rendered from saved JSON alone.

A report folder is laid out like benchmarks/: RESULTS.md is the main suite's report (``markdown`` of
``loaders/results.json``, its plot ``loaders/results.png``) followed by one section per stand-alone
benchmark whose JSON lies in the folder at its ``SECTIONS`` path, in the order of ``SECTIONS``; each
section is rendered by its benchmark module's ``markdown(results)``. Every sentence is computed
from the runs' own numbers (machine, corpus, disk sizes, targets, cases); explanations written by
hand live in NOTES.md, dated, never here.
``python -m benchmarks.report benchmarks/loaders/results.json --out DIR`` renders a saved run again.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

Run = dict[str, Any]

BENCHMARKS = Path(__file__).resolve().parent
SCRATCH = BENCHMARKS / "data" / "results"
"""Default report folder of every benchmark (ignored by git); benchmarks/ holds the committed results."""
MAIN_RUN = "loaders/results.json"
MAIN_PLOT = "loaders/results.png"
"""The main suite's run and its plot, relative to a report folder."""

SECTIONS: list[tuple[str, str]] = [
    ("order/order_quality.json", "order.order_quality"),
    ("order/order_quality_corpus.json", "order.order_quality"),
    ("order/train_ab.json", "order.train_ab"),
    ("decode/fused_decode.json", "decode.fused_decode"),
    ("cpu_frontier/results.json", "cpu_frontier.run"),
    ("conversion/legacy_repack.json", "conversion.legacy_repack"),
    ("conversion/legacy_repack_cold.json", "conversion.legacy_repack"),
    ("conversion/conversion_memory.json", "conversion.conversion_memory"),
    ("slow_storage/results.json", "slow_storage.report"),
    ("slow_storage/scale.json", "slow_storage.report"),
    ("gpu/results.json", "gpu.check"),
    ("node_scale/results.json", "node_scale.report"),
    ("decode/storage_shaping.json", "decode.storage_shaping"),
]
"""The sections after the main report, in order: (JSON path relative to the report folder, module of
the ``benchmarks`` package whose ``markdown(results: dict) -> str`` renders it). A new stand-alone
benchmark adds one entry."""


def machine(cores: int) -> dict[str, Any]:
    """Cores, memory, CPU model and library versions of this machine."""
    import PIL
    import psutil
    import simplejpeg
    import torch
    import torchvision

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cores": cores, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "cpu": model,
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "simplejpeg": simplejpeg.__version__, "Pillow": PIL.__version__}


def command(module: str, argv: list[str] | None) -> str:
    """The command line of a run of ``python -m benchmarks.MODULE`` (``argv``: its arguments, default
    this process's)."""
    return " ".join(["python", "-m", f"benchmarks.{module}", *(sys.argv[1:] if argv is None else argv)])


def provenance(module: str, argv: list[str] | None) -> dict[str, Any]:
    """What a stand-alone benchmark (``python -m benchmarks.MODULE``) records about its run: command
    line, UTC date and machine."""
    return {"command": command(module, argv),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "machine": machine(len(os.sched_getaffinity(0)))}


def machine_line(box: dict[str, Any] | str) -> str:
    """The machine as recorded: cores, memory, CPU and library versions (or the recorded text)."""
    if isinstance(box, str):
        return f"Machine: {box}"
    versions = ", ".join(f"{k} {box[k]}" for k in ("python", "torch", "torchvision", "simplejpeg", "Pillow")
                         if k in box)
    return f"Machine: {box['cores']} cores, {box['memory_gb']} GB, {box['cpu']}; {versions}"


def provenance_lines(results: dict[str, Any]) -> list[str]:
    """Command, date and machine lines of a stand-alone benchmark's section (what its JSON holds)."""
    lines = [f"Command: `{results['command']}`" if "command" in results else "Command: not recorded in the JSON.", ""]
    if "date" in results:
        lines += [f"Date: {results['date']}", ""]
    if "machine" in results:
        lines += [machine_line(results["machine"]), ""]
    return lines


def report_folder(path: Path) -> Path | None:
    """The report folder that holds ``path`` at a ``SECTIONS`` path and a main run at ``MAIN_RUN``
    (benchmarks/ for a committed JSON), or None."""
    for name, _ in SECTIONS:
        parts = Path(name).parts
        if path.parts[-len(parts):] == parts:
            folder = path.parents[len(parts) - 1]
            if (folder / MAIN_RUN).exists():
                return folder
    return None


def save(results: dict[str, Any], path: Path) -> None:
    """Write a stand-alone benchmark's JSON; where it lies in a report folder at its ``SECTIONS`` path
    beside a main run (as benchmarks/NAME/... does), re-render that folder's RESULTS.md with the new section."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    folder = report_folder(path)
    if folder is not None:
        (folder / "RESULTS.md").write_text(assemble(json.loads((folder / MAIN_RUN).read_text()), folder))
        print(f"re-rendered {folder / 'RESULTS.md'}")


def sections(folder: Path) -> list[str]:
    """The rendered sections of the ``SECTIONS`` whose JSON lies in ``folder``, in registry order."""
    rendered = []
    for name, module in SECTIONS:
        if (folder / name).exists():
            renderer = importlib.import_module(f"benchmarks.{module}")
            rendered.append(renderer.markdown(json.loads((folder / name).read_text())))
    return rendered


def assemble(run: Run, folder: Path) -> str:
    """RESULTS.md: the main report of ``run``, then every section found in ``folder``."""
    return "\n".join([markdown(run), *sections(folder)])


def fmt(value: float) -> str:
    """A number with 3 significant figures."""
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def stats(series: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the finite values (NaNs if none)."""
    finite = [v for v in series if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, math.nan
    return statistics.median(finite), min(finite), max(finite)


def median(series: list[float]) -> float:
    """Median of the finite values (NaN if none)."""
    return stats(series)[0]


def notes(rounds: list[dict[str, Any]], asked_batches: int | None) -> str:
    """Per-case details beyond the value, from the last round."""
    if not rounds:
        return ""
    last = rounds[-1]
    if "error" in last:
        return f"error: {last['error']}"
    parts = []
    if "steady_batches" in last and asked_batches and last["steady_batches"] < asked_batches:
        parts.append(f"only {last['steady_batches']} steady-state batches (asked {asked_batches})")
    if "resident_before" in last:
        parts.append(f"cached {last['resident_before']:.0%} -> {last['resident_after']:.1%}")
    if "mb_per_s" in last and "records" in last and last["records"] > 1:
        parts.append(f"{last['mb_per_s']:.0f} MB/s")
    for key in ("writer_peak_rss_mb", "writer_peak_anon_mb", "writer_anon_growth_mb", "worker_peak_rss_mb",
                "source_mb"):
        if key in last:
            parts.append(f"{key.replace('_mb', '')} {last[key]:.0f} MB")
    if "first_epoch_growth_pct" in last:
        parts.append(f"1st epoch {last['first_epoch_growth_pct']:.0f}% from "
                     + "/".join(f"{v:.0f}" for v in last["uss_first_epoch_start_mb"]) + " MB")
    for key in ("uss_start_mb", "uss_end_mb", "anonymous_end_mb"):
        if key in last:
            parts.append(f"{key.replace('_mb', '')} " + "/".join(f"{v:.0f}" for v in last[key]) + " MB")
    return "; ".join(parts)


def disk_line(meta: dict[str, Any]) -> list[str]:
    """The datasets' sizes on disk against the JPEG files they hold (runs that measured them)."""
    sizes = meta.get("storage_mb")
    if not sizes:
        return []
    jpeg = meta["corpus_mb"]
    parts = [f"`{kind}` {mb:.0f} MB ({mb / jpeg:.1f}x)" for kind, mb in sorted(sizes.items())]
    return [f"Disk: the {meta['images']} JPEG files take {jpeg:.0f} MB; the datasets: " + ", ".join(parts) + ".", ""]


def targets_lines(targets: list[dict[str, Any]]) -> list[str]:
    """The targets table and a count of the met and missed ones."""
    if not targets:
        return ["No target was measured by the selected cases."]
    missed = [t for t in targets if not t["passed"]]
    lines = [f"{len(targets) - len(missed)} of {len(targets)} targets met"
             + (": missed " + "; ".join(f"{t['goal']} ({t['gap']})" for t in missed) if missed else "") + ".", "",
             "Per-round ratios, median [min, max]; pass/fail on the median.", "",
             "| target | measured | value | result | gap |", "|---|---|---|---|---|"]
    for target in targets:
        median, low, high = stats(target["series"])
        unit = "x" if target["at_least"] else "%"
        lines.append(f"| {target['goal']} | {target['measured']} | {fmt(median)}{unit} [{fmt(low)}, {fmt(high)}] | "
                     f"{'pass' if target['passed'] else 'FAIL'} | {target['gap']} |")
    return lines


def markdown(run: Run) -> str:
    """RESULTS.md of a run: setup, disk sizes, targets, then every case."""
    meta = run["meta"]
    batch = meta.get("batch_size", 256)
    lines = ["# Benchmark results", "", f"Command: `{meta['command']}`", "", machine_line(meta["machine"]), "",
             f"Corpus: `{meta['corpus']}` ({meta['images']} images, {meta['corpus_mb']:.0f} MB); "
             f"{meta['rounds']} interleaved round(s); batch {batch}; {meta['wall_s'] / 60:.1f} min.", "",
             *disk_line(meta), "## Targets", "", *targets_lines(run["targets"]), "", "## Cases", "",
             "Median [min, max] over rounds; first batch = worker start-up + one batch.", "",
             "| case | unit | median | min | max | first batch s | notes |", "|---|---|---|---|---|---|---|"]
    for name, case in run["cases"].items():
        median, low, high = stats([r["value"] for r in case["rounds"]])
        first, _, _ = stats([r.get("first_batch_s", math.nan) for r in case["rounds"]])
        lines.append(f"| {name} | {case['unit']} | {fmt(median)} | {fmt(low)} | {fmt(high)} | "
                     f"{fmt(first) if math.isfinite(first) else ''} | {notes(case['rounds'], meta.get('batches'))} |")
    if meta["unavailable_peers"]:
        lines += ["", "## Peers not measured", ""]
        lines += [f"- {name}: {reason}" for name, reason in meta["unavailable_peers"].items()]
    lines += ["", f"![results]({MAIN_PLOT})", ""]
    return "\n".join(lines)


def plot(run: Run, path: Path) -> None:
    """results.png: warm train throughput at 2 workers, and every target's ratio against its bound."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaders = [n for n in run["cases"] if n.startswith("warm/train/w2/")]
    found = run["targets"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, max(4.0, 0.4 * max(len(loaders), len(found), 1))))
    for axis, labels, series in (
            (left, [n.split("/", 3)[3] for n in loaders],
             [[r["value"] for r in run["cases"][n]["rounds"]] for n in loaders]),
            (right, [t["goal"] for t in found], [t["series"] for t in found])):
        summaries = [stats(s) for s in series]
        medians = [s[0] for s in summaries]
        errors = [[m - s[1] for m, s in zip(medians, summaries)], [s[2] - m for m, s in zip(medians, summaries)]]
        axis.barh(range(len(labels)), medians, xerr=errors, color="tab:blue")
        axis.set_yticks(range(len(labels)), labels, fontsize=7)
        axis.invert_yaxis()
    for row, target in enumerate(found):
        right.plot([target["threshold"]] * 2, [row - 0.4, row + 0.4], color="tab:red")
    left.set_xlabel(f"images/s (warm, train, 2 workers, batch {run['meta'].get('batch_size', 256)})")
    right.set_xlabel("measured (x, or % for memory); red: target")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def render(run: Run, out: Path, *, folder: Path | None = None) -> None:
    """Write RESULTS.md (with the sections whose JSON lies in the report folder ``folder``, default
    ``out``) into ``out`` and the plot of a run into ``out/loaders/results.png``."""
    (out / MAIN_PLOT).parent.mkdir(parents=True, exist_ok=True)
    (out / "RESULTS.md").write_text(assemble(run, out if folder is None else folder))
    plot(run, out / MAIN_PLOT)


def write(run: Run, out: Path) -> None:
    """Write a run into the report folder ``out``: ``loaders/results.json``, ``loaders/results.png``
    and RESULTS.md (with the sections found in ``out``)."""
    (out / MAIN_RUN).parent.mkdir(parents=True, exist_ok=True)
    (out / MAIN_RUN).write_text(json.dumps(run, indent=2, default=str) + "\n")
    render(run, out)


def main(argv: list[str] | None = None) -> int:
    """Render a saved run again."""
    parser = argparse.ArgumentParser(description="Render RESULTS.md and loaders/results.png from a saved main run "
                                                 "and the stand-alone benchmarks' JSON of its report folder.")
    parser.add_argument("results", type=Path, help=f"a {MAIN_RUN} written by benchmarks.loaders.run (its report "
                                                   "folder, two levels up, holds the sections' JSON)")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for RESULTS.md and loaders/results.png (benchmarks re-renders the committed ones)")
    args = parser.parse_args(argv)
    render(json.loads(args.results.read_text()), args.out, folder=args.results.resolve().parents[1])
    print(f"wrote {args.out / 'RESULTS.md'} and {args.out / MAIN_PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
