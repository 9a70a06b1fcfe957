#!/usr/bin/env bash
# One command checks and measures LMDBLoader's device decoding on a CUDA machine
# (benchmarks/README.md, "GPU check"):
#   bash benchmarks/gpu/check.sh          # a fresh CUDA machine: installs into .venv, runs everything
#   bash benchmarks/gpu/check.sh --cpu    # the dry run: everything but CUDA, on the CPU
# Steps: install (lmdb-dataset, pytest, hypothesis, psutil; DALI for this torch's CUDA), the
# device-decoding tests (CUDA ones included), then python -m benchmarks.gpu.check: pixels against the
# CPU path, memory over epochs, throughput against ImageFolder + DataLoader and DALI.
# Options: --python PY (use that environment, install nothing), --cpu, --no-tests,
# --out FILE (default on CUDA: benchmarks/gpu/results.json, which re-renders benchmarks/RESULTS.md;
# with --cpu: benchmarks/data/gpu/gpu_check.json); anything else goes to check.py (--help there).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
cpu=0
python=""
tests=1
out=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) cpu=1 ;;
    --python) python="$2"; shift ;;
    --no-tests) tests=0 ;;
    --out) out="$2"; shift ;;
    -h | --help) sed -n '2,13p' "$0" | cut -c3-; exit 0 ;;
    *) extra+=("$1") ;;
  esac
  shift
done
start=$SECONDS

if [[ -z "$python" ]]; then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  python=.venv/bin/python
  "$python" -m pip install -q -e . pytest hypothesis psutil
  if [[ $cpu -eq 0 ]]; then
    cuda=$("$python" -c 'import torch; print((torch.version.cuda or "").split(".")[0])')
    if [[ -z "$cuda" ]]; then
      echo "check.sh: the torch installed has no CUDA build; install a CUDA torch into .venv and run again" >&2
      exit 2
    fi
    # DALI's decoders run on nvImageCodec, a package of its own in some DALI releases
    "$python" -m pip install -q --extra-index-url https://pypi.nvidia.com "nvidia-dali-cuda${cuda}0" \
      "nvidia-nvimgcodec-cu${cuda}"
  fi
  echo "check.sh: installed in $((SECONDS - start)) s"
fi

if [[ $cpu -eq 1 ]]; then
  device=cpu
else
  device=cuda
  out=${out:-benchmarks/gpu/results.json}
  if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "check.sh: CUDA is not available to $python; on a machine without a GPU use --cpu (the dry run)" >&2
    exit 2
  fi
fi

outcome="not run"
if [[ $tests -eq 1 ]]; then
  if "$python" -m pytest -q tests/test_resampling.py tests/test_device_stage.py tests/test_loader.py; then
    outcome=passed
  else
    outcome=failed
  fi
  echo "check.sh: tests $outcome after $((SECONDS - start)) s"
fi

status=0
"$python" -m benchmarks.gpu.check --device "$device" --tests "$outcome" ${out:+--out "$out"} "${extra[@]}" || status=$?
echo "check.sh: done in $((SECONDS - start)) s"
if [[ $outcome == failed ]]; then
  exit 1
fi
exit $status
