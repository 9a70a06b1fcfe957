"""benchmarks/gpu/check.sh: its dry run (``--cpu``) goes through every step but CUDA, in seconds.

The GPU run itself needs a CUDA machine (and installs DALI there); here the script runs with
this interpreter (``--python``), without its pytest step (``--no-tests``: these tests are that
step) and on a tiny corpus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "benchmarks" / "gpu" / "check.sh"
TINY = ["--images", "24", "--batch-size", "8", "--epochs", "1", "--size", "32", "--workers", "1"]


def _check(*arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["bash", str(CHECK), "--python", sys.executable, *arguments], check=False,
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_the_dry_run_checks_pixels_memory_and_throughput_and_writes_its_section(tmp_path):
    result = _check("--cpu", "--no-tests", "--data", str(tmp_path), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["device"] == "cpu" and results["checks"]["tests"] == "not run"
    assert results["checks"]["pixels"] == "passed", results["pixels"]
    assert results["checks"]["memory"] == "passed", results["memory"]
    assert not results["passed"]  # a dry run proves nothing about a GPU
    assert [(row["split"], row["against"], row["images"], row["labels_equal"]) for row in results["pixels"]] == [
        (split, against, 32, True) for split in ("train", "val")
        for against in ("device path on the CPU", "worker path on the CPU")]
    assert all(row["mean"] == 0 for row in results["pixels"] if row["against"] == "device path on the CPU")
    assert results["memory"]["epochs"] == 4 and len(results["memory"]["series"]["rss_mb"]) == 4
    assert [(row["split"], row["loader"]) for row in results["throughput"]] == [
        (split, loader) for split in ("train", "val")
        for loader in ("lmdb-device-decode", "lmdb-worker-decode", "imagefolder+DataLoader")]
    assert all(row["img_s"] > 0 for row in results["throughput"])
    assert results["not_measured"] == {"dali-mixed": "DALI's mixed decoder needs CUDA (dry run on the CPU)"}
    assert "## GPU check: device decoding" in result.stdout and "Device: CPU (dry run: --cpu)" in result.stdout
    assert "Verdict: dry run" in result.stdout

    from benchmarks import report

    assert ("gpu/results.json", "gpu.check") in report.SECTIONS
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu_check.json").rename(tmp_path / "gpu" / "results.json")  # where a committed run lies
    assert report.sections(tmp_path)[-1].startswith("## GPU check: device decoding")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_without_cuda_the_gpu_run_stops_at_once_and_names_the_dry_run(tmp_path):
    result = _check("--no-tests", "--data", str(tmp_path), *TINY, timeout=60)
    assert result.returncode == 2 and "use --cpu (the dry run)" in result.stderr
    assert not any(tmp_path.iterdir())


def test_help_names_the_steps_and_options():
    result = subprocess.run(["bash", str(CHECK), "--help"], check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "--cpu" in result.stdout and "DALI" in result.stdout and "--python PY" in result.stdout
    help_text = subprocess.run([sys.executable, "-m", "benchmarks.gpu.check", "--help"],
                               check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert help_text.returncode == 0 and "--images" in help_text.stdout
