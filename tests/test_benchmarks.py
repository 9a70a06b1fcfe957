"""benchmarks/: runnable by a newcomer, and its report says only what the run measured.

The suite itself is never run here (speed is measured in benchmarks/, not asserted in tests);
these tests check its command line and the report it renders.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
BLOCK_EXTRAS = "import sys\nfor name in ('psutil', 'matplotlib', 'skimage'):\n    sys.modules[name] = None\n"


def run_script(arguments: list[str]) -> subprocess.CompletedProcess:
    """``python -m benchmarks.loaders.run ARGUMENTS`` in a fresh interpreter where the bench extras are not
    installed."""
    code = BLOCK_EXTRAS + (f"sys.argv = ['run.py', *{arguments!r}]\nimport runpy\n"
                           "runpy.run_module('benchmarks.loaders.run', run_name='__main__', alter_sys=True)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=BENCHMARKS.parent)


def test_help_works_without_the_bench_extras_and_says_what_to_install():
    result = run_script(["--help"])
    assert result.returncode == 0, result.stderr
    assert '.[bench]' in result.stdout and "--quick" in result.stdout


def test_a_run_without_the_bench_extras_names_them_and_the_install_command(tmp_path):
    result = run_script(["--quick", "--data", str(tmp_path)])
    assert result.returncode == 2
    assert "missing psutil, matplotlib, skimage" in result.stderr and 'pip install -e ".[bench]"' in result.stderr
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


def test_output_goes_to_a_scratch_folder_unless_asked(tmp_path):
    from benchmarks.loaders import run

    args = run.parse_args(["--data", str(tmp_path)])
    assert args.out == tmp_path / "results" and args.out != BENCHMARKS
    assert (args.rounds, args.batch_size, args.corpus_images) == (3, 256, 10_000)
    assert run.parse_args(["--out", str(BENCHMARKS)]).out == BENCHMARKS


def test_quick_defaults_give_way_to_explicit_options():
    from benchmarks.loaders import run

    quick = run.parse_args(["--quick", "--rounds", "2"])
    assert quick.rounds == 2 and quick.corpus_images == run.QUICK["corpus_images"] < run.FULL["corpus_images"]
    assert quick.batch_size == run.QUICK["batch_size"]


def synthetic_run(**meta) -> dict:
    """A results.json of two cases and one missed target, with made-up numbers."""
    return {
        "meta": {"command": "python -m benchmarks.loaders.run --quick", "images": 1200, "corpus_mb": 130.0,
                 "corpus": "/tmp/corpus", "rounds": 1, "wall_s": 180.0, "batch_size": 64, "batches": 12,
                 "unavailable_peers": {"peer:ffcv": "not installed"},
                 "machine": {"cores": 2, "memory_gb": 8.0, "cpu": "a CPU", "python": "3.11", "torch": "2",
                             "torchvision": "0", "simplejpeg": "1", "Pillow": "10"}, **meta},
        "cases": {"warm/train/w2/lmdb-chunk/uint8": {"unit": "img/s", "rounds": [
                      {"value": 512.0, "first_batch_s": 0.8, "steady_batches": 7}]},
                  "decode/simplejpeg": {"unit": "img/s", "rounds": [{"value": 300.0}]}},
        "targets": [{"goal": "4 conversion >= 0.9x simplejpeg ceiling x 2 workers",
                     "measured": "convert/encoded / decode/simplejpeg x 2", "series": [0.8], "threshold": 0.9,
                     "at_least": True, "passed": False, "gap": "short by 0.1x (11%)"}],
    }


def test_report_is_built_from_the_run_numbers_only():
    from benchmarks import report

    text = report.markdown(synthetic_run(storage_mb={"encoded": 131.0, "raw": 858.0}))
    assert "Why" not in text and "profiled" not in text.lower()
    assert ("0 of 1 targets met: missed 4 conversion >= 0.9x simplejpeg ceiling x 2 workers "
            "(short by 0.1x (11%))") in text
    assert "the 1200 JPEG files take 130 MB; the datasets: `encoded` 131 MB (1.0x), `raw` 858 MB (6.6x)" in text
    assert ("| warm/train/w2/lmdb-chunk/uint8 | img/s | 512 | 512 | 512 | 0.8 | "
            "only 7 steady-state batches (asked 12) |") in text
    assert "- peer:ffcv: not installed" in text and "batch 64" in text


def test_committed_results_md_is_the_assembled_render_of_every_committed_json():
    from benchmarks import report

    run = json.loads((BENCHMARKS / report.MAIN_RUN).read_text())
    text = (BENCHMARKS / "RESULTS.md").read_text()
    assert text == report.assemble(run, BENCHMARKS)
    assert text.startswith(report.markdown(run))
    present = [name for name, _ in report.SECTIONS if (BENCHMARKS / name).exists()]
    assert len(report.sections(BENCHMARKS)) == len(present) >= 6
    # Every JSON of benchmarks/ and its sub-folders is the main run's or a registered section's: none is left
    # out of RESULTS.md (benchmarks/data/ is the ignored scratch folder).
    committed = [*BENCHMARKS.glob("*.json"), *(p for p in BENCHMARKS.glob("*/*.json") if p.parent.name != "data")]
    assert {p.relative_to(BENCHMARKS).as_posix() for p in committed} == {report.MAIN_RUN, *present}
    assert report.report_folder(BENCHMARKS / "cpu_frontier" / "results.json") == BENCHMARKS  # re-renders RESULTS.md


def test_sections_are_skipped_when_absent_and_follow_the_registry_order(tmp_path):
    from benchmarks import report

    run = synthetic_run()
    assert report.assemble(run, tmp_path) == report.markdown(run)
    for name in ("decode/fused_decode.json", "order/order_quality.json"):  # written out of registry order
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text((BENCHMARKS / name).read_text())
    text = report.assemble(run, tmp_path)
    assert text.index("\n## Order quality\n") < text.index("\n## Fused crop decoding\n")
    assert "## Training A/B" not in text and "## Re-packing" not in text


@pytest.mark.parametrize("name,module", [
    ("order/order_quality.json", "order.order_quality"), ("order/order_quality_corpus.json", "order.order_quality"),
    ("order/train_ab.json", "order.train_ab"), ("decode/fused_decode.json", "decode.fused_decode"),
    ("cpu_frontier/results.json", "cpu_frontier.run"), ("conversion/legacy_repack.json", "conversion.legacy_repack"),
    ("conversion/legacy_repack_cold.json", "conversion.legacy_repack"),
    ("conversion/conversion_memory.json", "conversion.conversion_memory"),
    ("slow_storage/results.json", "slow_storage.report"), ("slow_storage/scale.json", "slow_storage.report"),
    ("node_scale/results.json", "node_scale.report")])
def test_each_section_renders_its_committed_json_and_only_its_numbers(name, module):
    import importlib

    from benchmarks import report

    assert (name, module) in report.SECTIONS
    renderer = importlib.import_module(f"benchmarks.{module}")
    results = json.loads((BENCHMARKS / name).read_text())
    text = renderer.markdown(results)
    assert text == renderer.markdown(json.loads((BENCHMARKS / name).read_text()))
    assert text.startswith("## ") and text.count("\n## ") == 0 and text.endswith("\n")
    assert "Command: `" in text or "Command: not recorded in the JSON." in text
    for word in ("because", "Why", "Hence", "(issue", "0.1's"):
        assert word not in text, f"{name}: hand-written explanation {word!r} belongs in NOTES.md"


def test_section_verdicts_follow_the_numbers():
    from benchmarks.decode import fused_decode
    from benchmarks.order import order_quality, train_ab

    fused = json.loads((BENCHMARKS / "decode" / "fused_decode.json").read_text())
    for row in fused["rows"]:
        if row["corpus"] == "highres":
            row["ratio_median"] = 1.2
    assert "Target fused / full >= 1.3x on `highres` (median): missed: train 1.2x" in fused_decode.markdown(fused)

    ab = {"settings": {"epochs": 1, "batch_size": 8, "chunk_size": 4, "pool_size": 8, "seeds": 2}, "runs": [
        {"layout": train_ab.SHUFFLED, "reader": "random", "pool_size": 8, "accuracy": [90.0, 92.0]},
        {"layout": train_ab.SHUFFLED, "reader": "chunk sampler", "pool_size": 8, "accuracy": [88.0, 89.0]},
        {"layout": train_ab.SHUFFLED, "reader": "iterable", "pool_size": 8, "accuracy": [91.0, 91.0]}]}
    text = train_ab.markdown(ab)
    assert "Command: not recorded in the JSON." in text
    assert "): missed: chunk sampler -2.50, iterable +0.00." in text
    assert "| default conversion (shuffled) | chunk sampler | 8 | 88.0, 89.0 | 88.50 | -2.50 |" in text

    quality = json.loads((BENCHMARKS / "order" / "order_quality.json").read_text())
    text = order_quality.markdown(quality)
    assert re.search(r"missed: distinct_classes 0\.\d\dx \(target >= 0\.9x\)", text) and "| chunk sampler |" in text


def test_conversion_memory_verdicts_follow_the_numbers():
    from benchmarks.conversion import conversion_memory

    results = json.loads((BENCHMARKS / "conversion" / "conversion_memory.json").read_text())
    text = conversion_memory.markdown(results)
    assert "- `bounded`: independent of the dataset size: " in text
    assert "- `unbounded-imap`: grows with the dataset size: " in text
    large = max((row for row in results["rows"] if row["feeder"] == "bounded"), key=lambda row: row["images"])
    kept, large["peak_tasks_ahead"] = large["peak_tasks_ahead"], results["bound_tasks"] + 1  # beyond the bound
    assert "- `bounded`: grows with the dataset size: " in conversion_memory.markdown(results)
    large["peak_tasks_ahead"] = kept
    small = min((row for row in results["rows"] if row["feeder"] == "bounded"), key=lambda row: row["images"])
    large["parent_peak_anon_mb"] = small["parent_peak_anon_mb"] + 0.06 * (large["source_mb"] - small["source_mb"])
    assert "- `bounded`: grows with the dataset size: " in conversion_memory.markdown(results)  # 6% > 5%


def test_a_stand_alone_run_records_its_provenance_and_re_renders_only_beside_a_main_run(tmp_path, monkeypatch):
    from benchmarks import report
    from benchmarks.order import order_quality

    monkeypatch.setattr(report, "machine", lambda cores: {"cores": cores, "memory_gb": 8.0, "cpu": "a CPU"})
    out = tmp_path / "order" / "order_quality.json"  # its SECTIONS path in the report folder tmp_path
    arguments = ["--classes", "6", "--per-class", "50", "--ranks", "2", "--workers", "2", "--batch-size", "8",
                 "--chunk-size", "4", "--pool-size", "16", "--output", str(out)]
    assert order_quality.main(arguments) == 0
    results = json.loads(out.read_text())
    assert results["command"].startswith("python -m benchmarks.order.order_quality --classes 6")
    assert results["machine"]["cpu"] == "a CPU" and results["date"][:2] == "20" and len(results["date"]) == 10
    assert not (tmp_path / "RESULTS.md").exists()  # no main run in that folder: nothing re-rendered
    (tmp_path / report.MAIN_RUN).parent.mkdir()
    (tmp_path / report.MAIN_RUN).write_text(json.dumps(synthetic_run()))
    order_quality.main(arguments)
    assert (tmp_path / "RESULTS.md").read_text() == report.assemble(synthetic_run(), tmp_path)
    assert "## Order quality\n" in (tmp_path / "RESULTS.md").read_text()
    assert report.SCRATCH.parent.name == "data" and report.SCRATCH.parent.parent == BENCHMARKS




@pytest.mark.parametrize("name", ["NOTES.md", "slow_storage/NOTES.md", "node_scale/NOTES.md"])
def test_hand_written_notes_are_dated_and_name_their_command(name):
    notes = (BENCHMARKS / name).read_text()
    sections = [s for s in notes.split("\n## ")[1:]]
    assert sections
    for section in sections:
        assert section[:10].count("-") == 2 and section[:4].isdigit(), f"undated notes section: {section[:60]!r}"
        assert "Command: `" in section, f"notes section without its command: {section[:60]!r}"


def test_readme_slow_storage_block_is_generated_from_the_committed_runs():
    from benchmarks.slow_storage import report as slow

    results = json.loads((BENCHMARKS / "slow_storage" / "results.json").read_text())
    scale = json.loads((BENCHMARKS / "slow_storage" / "scale.json").read_text())
    readme = (BENCHMARKS.parent / "README.md").read_text()
    regenerate = "regenerate it: python -m benchmarks.slow_storage.report README.md"
    assert slow.readme_block(results, scale) in readme, regenerate


def _run(model, loader, pipeline, samples_per_s, mb_per_s=None, workers=8):
    return {"model": model, "loader": loader, "pipeline": pipeline, "workers": workers, "batch_size": 32,
            "samples": 4096, "open_s": 0.1, "first_batch_s": 1.0, "samples_per_s": samples_per_s, "mb_per_s": mb_per_s,
            "load_1min": 0.5, "cores_busy": 1.5, "server_cores": 0.5}


def test_ceilings_are_the_lowest_bound_of_each_case():
    from benchmarks.slow_storage import report as slow

    validation = {"nfs": {"nominal_sequential_mb_s": 1000.0}, "hdd": {"simulated_records_per_s": 150.0}}
    # hdd random access: the disk's simulated rate for records at random offsets, over ImageFolder's 100/s
    base, run = _run("hdd", "imagefolder", "raw", 100, 10), _run("hdd", "lmdb-random", "raw", 120, 12)
    value, reason = slow.ceiling(run, base, [base, run], validation)
    assert value == 1.5 and reason.startswith("disk: 150 records/s")
    chunk = _run("hdd", "lmdb-chunk", "raw", 1200, 120)  # sequential: the disk bound does not apply
    assert slow.ceiling(chunk, base, [base, chunk], validation) is None
    # nfs: 1000 MB/s over 0.1 MB a sample = 10,000 samples/s, against ImageFolder's 4,000
    base, run = _run("nfs", "imagefolder", "raw", 4000, 400), _run("nfs", "lmdb-chunk", "raw", 5000, 500)
    assert slow.ceiling(run, base, [base, run], validation) == (2.5, "link: 1000 MB/s")
    warm = _run("local", "lmdb-chunk", "raw", 6000)  # the CPU is lower still
    assert slow.ceiling(run, base, [base, run, warm], validation) == (1.5, "CPU: the same run, warm")
    train = _run("nfs", "lmdb-chunk", "train", 900)
    assert slow.ceiling(train, base, [base, train], validation) is None  # no bytes, no warm run: unbounded
    check = slow.CheckResult("nfs", ">= 3x", "lmdb-chunk", "raw", 8, 1.25, 3, False, "speedup", (2.5, "link"))
    assert check.beyond_ceiling and not dataclasses.replace(check, ceiling=(3.5, "link")).beyond_ceiling


def test_repeated_cases_are_checked_on_the_median_of_ratios_paired_by_round():
    from benchmarks.slow_storage import report as slow

    def run(loader, rate, round_=None):
        return {**_run("nfs", loader, "raw", rate, rate / 10), **({} if round_ is None else {"round": round_})}

    # Round 1 ran on a busier machine: both loaders slower. Paired by round the ratios are 3.0, 3.2
    # and 2.5; pooled medians would give 600 / 200 = 3.0 as well, but pairing across rounds (600 / 100) would not.
    runs = [run("imagefolder", 200, 0), run("lmdb-chunk", 600, 0), run("imagefolder", 100, 1),
            run("lmdb-chunk", 320, 1), run("imagefolder", 240, 2), run("lmdb-chunk", 600, 2)]
    [check] = [c for c in slow.target_checks(runs, {"nfs": {"nominal_sequential_mb_s": 1e4}}) if c.kind == "speedup"]
    assert check.values == (3.0, 3.2, 2.5) and check.value == 3.0 and check.passed
    assert slow.spread(list(check.values)) == "3.00x (2.50-3.20x, 3 runs)" and slow.spread([1.5]) == "1.50x"
    summary = slow.summarize(runs[1::2])
    assert summary["samples_per_s"] == 600 and summary["rate_range"] == (320, 600) and summary["repeats"] == 3
    # A run from an earlier command, without a round, is compared with ImageFolder's median (200).
    [(lone, base)] = slow.paired([run("lmdb-random", 500)], runs[0::2])
    assert base["samples_per_s"] == 200 and slow.speedup(lone, base, {}) == 2.5
    table = slow.run_table(runs, "nfs")
    row = ("| raw | 8 | lmdb-chunk | 3 | 4096 | 1.00 | 600 (320-600) | 3.00x (2.50-3.20x, 3 runs) | "
           "527 | 52.7 | 1.5 (0.5) | 0.5 |")
    assert row in table


def test_experiment_runs_every_case_once_per_round_and_replaces_the_cases_it_reruns(tmp_path, monkeypatch):
    from benchmarks.slow_storage import experiment

    calls = []

    def fake_case(source, model, loader, pipeline, *, workers, batch_size, samples, rtt_ms, round_):
        calls.append((round_, workers, loader))
        return {**_run(model, loader, pipeline, 100.0, workers=workers), "round": round_}

    monkeypatch.setattr(experiment, "run_case", fake_case)
    monkeypatch.setattr(experiment, "validate", lambda *args, **kwargs: {"nominal_sequential_mb_s": 1000.0})
    monkeypatch.setattr(experiment, "plot", lambda runs, path: None)
    out = tmp_path / "results.json"
    common = [str(tmp_path), "--models", "nfs", "--pipelines", "raw", "--out", str(out)]
    experiment.main([*common, "--workers", "4", "8", "--loaders", "imagefolder", "lmdb-chunk"])
    calls.clear()
    experiment.main([*common, "--workers", "4", "--loaders", "lmdb-chunk", "--repeats", "2"])
    assert calls == [(0, 4, "lmdb-chunk"), (1, 4, "lmdb-chunk")]
    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["workers"], r["loader"], r["round"]) for r in runs) == [
        (4, "imagefolder", 0), (4, "lmdb-chunk", 0), (4, "lmdb-chunk", 1), (8, "imagefolder", 0), (8, "lmdb-chunk", 0)]
    with pytest.raises(SystemExit, match="--repeats 0"):
        experiment.main([*common, "--repeats", "0"])


def test_node_scale_quick_run_measures_every_process_and_renders_its_section(tmp_path):
    """The smallest configuration (2 ranks x 1 worker, a 2,000-record dataset, fork): seconds."""
    out = tmp_path / "node_scale.json"
    command = [sys.executable, "-m", "benchmarks.node_scale.run", "--quick", "--readers", "iterable", "map-chunk",
               "--pipelines", "raw", "--out", str(out)]
    result = subprocess.run(command, cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert results["command"].startswith("python -m benchmarks.node_scale.run --quick")
    assert results["records"] == 2000 and results["plan"]["ranks"] == 2 and results["plan"]["workers"] == 1
    names = [(run["config"]["reader"], run["config"]["ranks"], run["config"]["workers"]) for run in results["runs"]]
    assert {("iterable", 2, 1), ("iterable", 1, 2), ("map-chunk", 2, 1), ("map-chunk", 1, 2)} <= set(names)
    for run in results["runs"]:
        assert run["rate"] >= 0 and len(run["first_batch_s"]) == run["config"]["ranks"]
        assert run["processes"]["rank"]["count"] == run["config"]["ranks"]
        assert set(run["processes"]["rank"]) >= {"count", "uss_mib", "pss_mib", "private_mib", "fds", "threads"}
        assert len(run["prefetch"]) == run["config"]["ranks"]
        assert all(set(rank) >= {"pools", "advise", "asked_elsewhere", "read_through"} for rank in run["prefetch"])
        if run["config"]["reader"] != "bare":  # the floor: a DataLoader that reads nothing, so asks for no pool
            assert all(rank["pools"] >= 1 and rank["advise"][0] >= 1 for rank in run["prefetch"])
    from benchmarks.node_scale import report as node_report

    text = node_report.markdown(results)
    assert "### Targets" in text and "| raw/iterable/2x1 |" in text and "kernel requests per pool" in text
    assert text in result.stdout
