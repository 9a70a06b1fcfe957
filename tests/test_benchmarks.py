"""benchmarks/: runnable by a newcomer, and its report says only what the run measured.

The suite itself is never run here (speed is measured in benchmarks/, not asserted in tests);
these tests check its command line and the report it renders.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
BLOCK_EXTRAS = "import sys\nfor name in ('psutil', 'matplotlib', 'skimage'):\n    sys.modules[name] = None\n"


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def run_script(arguments: list[str]) -> subprocess.CompletedProcess:
    """``benchmarks/run.py ARGUMENTS`` in a fresh interpreter where the bench extras are not installed."""
    code = BLOCK_EXTRAS + (f"sys.argv = ['run.py', *{arguments!r}]\nimport runpy\n"
                           f"runpy.run_path({str(BENCHMARKS / 'run.py')!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_help_works_without_the_bench_extras_and_says_what_to_install():
    result = run_script(["--help"])
    assert result.returncode == 0, result.stderr
    assert '.[bench]' in result.stdout and "--quick" in result.stdout


def test_a_run_without_the_bench_extras_names_them_and_the_install_command(tmp_path):
    result = run_script(["--quick", "--data", str(tmp_path)])
    assert result.returncode == 2
    assert "missing psutil, matplotlib, skimage" in result.stderr and 'pip install -e ".[bench]"' in result.stderr
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


def test_output_goes_to_a_scratch_folder_unless_asked(bench_modules, tmp_path):
    import run

    args = run.parse_args(["--data", str(tmp_path)])
    assert args.out == tmp_path / "results" and args.out != BENCHMARKS
    assert (args.rounds, args.batch_size, args.corpus_images) == (3, 256, 10_000)
    assert run.parse_args(["--out", str(BENCHMARKS)]).out == BENCHMARKS


def test_quick_defaults_give_way_to_explicit_options(bench_modules):
    import run

    quick = run.parse_args(["--quick", "--rounds", "2"])
    assert quick.rounds == 2 and quick.corpus_images == run.QUICK["corpus_images"] < run.FULL["corpus_images"]
    assert quick.batch_size == run.QUICK["batch_size"]


def synthetic_run(**meta) -> dict:
    """A results.json of two cases and one missed target, with made-up numbers."""
    return {
        "meta": {"command": "python benchmarks/run.py --quick", "images": 1200, "corpus_mb": 130.0,
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


def test_report_is_built_from_the_run_numbers_only(bench_modules):
    import report

    text = report.markdown(synthetic_run(storage_mb={"encoded": 131.0, "raw": 858.0}))
    assert "Why" not in text and "profiled" not in text.lower()
    assert "0 of 1 targets met: missed 4 conversion >= 0.9x simplejpeg ceiling x 2 workers (short by 0.1x (11%))" in text
    assert "the 1200 JPEG files take 130 MB; the datasets: `encoded` 131 MB (1.0x), `raw` 858 MB (6.6x)" in text
    assert "| warm/train/w2/lmdb-chunk/uint8 | img/s | 512 | 512 | 512 | 0.8 | only 7 steady-state batches (asked 12) |" in text
    assert "- peer:ffcv: not installed" in text and "batch 64" in text


def test_committed_results_md_is_what_the_report_renders_from_results_json(bench_modules):
    import report

    run = json.loads((BENCHMARKS / "results.json").read_text())
    assert (BENCHMARKS / "RESULTS.md").read_text() == report.markdown(run)


def test_hand_written_notes_are_dated_and_name_their_command():
    notes = (BENCHMARKS / "NOTES.md").read_text()
    sections = [s for s in notes.split("\n## ")[1:]]
    assert sections
    for section in sections:
        assert section[:10].count("-") == 2 and section[:4].isdigit(), f"undated notes section: {section[:60]!r}"
        assert "Command: `" in section, f"notes section without its command: {section[:60]!r}"
