#!/usr/bin/env bash
# Installs the benchmark dependencies and the peer loaders (see benchmarks/PEERS.md).
#
# Usage:
#   python3 -m venv .venv
#   bash benchmarks/install_peers.sh .venv/bin/pip
# With no argument it uses `python -m pip` of the current python. Safe to re-run.
# FFCV is optional: if it does not build, the script says so and goes on.
set -euo pipefail

if [[ $# -ge 1 ]]; then
  PIP=("$1")
else
  PIP=(python -m pip)
fi

# Benchmark base: this checkout of lmdb-dataset with its `bench` extras (matplotlib,
# scikit-image, psutil).
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"${PIP[@]}" install -e "${repo}[bench]"

# webdataset and litdata: their dependencies leave torch/numpy alone.
"${PIP[@]}" install "webdataset==1.0.2" "litdata==0.2.76"

# mosaicml-streaming pins numpy<2.2 (it would downgrade numpy 2.4 -> 2.1.3 and pull in
# every cloud SDK), so install it without dependencies plus what it imports at load time.
# Cloud SDKs (boto3 comes with litdata; oci, azure, google-cloud-storage, paramiko) are
# only imported for remote storage, which the benchmark does not use.
"${PIP[@]}" install --no-deps "mosaicml-streaming==0.13.0"
"${PIP[@]}" install "transformers>=4.21.3,<5" "catalogue>=2,<3" "Brotli>=1.0.9" \
  "python-snappy>=0.6.1,<1" "zstd>=1.5.2.5,<2" "xxhash>=3,<4"

# apt_install CONSEQUENCE PACKAGE...: installs the Debian packages not yet installed (needs root),
# or says what will not work without them.
apt_install() {
  local consequence="$1"
  shift
  if ! dpkg -s "$@" >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    else
      echo "install_peers.sh: need root to apt-get install $*; ${consequence}" >&2
    fi
  fi
}

# FFCV builds a C extension against Debian's OpenCV and libturbojpeg (found via pkg-config).
apt_install "FFCV may not build" libopencv-dev libturbojpeg0-dev pkg-config
if ! "${PIP[@]}" install "ffcv==1.0.2"; then
  echo "install_peers.sh: FFCV did not build; the ffcv peer will be reported unavailable" >&2
fi

# The CPU anchors of benchmarks/cpu_frontier/run.py: DALI's CPU pipeline (the CUDA 12 wheel from
# PyPI runs CPU-only pipelines without a GPU) and SPDL, whose spdl.io decodes through the
# system's FFmpeg shared libraries (Debian bookworm: FFmpeg 5.1).
"${PIP[@]}" install "nvidia-dali-cuda120==2.4.0" "spdl==0.8.0"
apt_install "SPDL will not decode" libavutil57 libavcodec59 libavformat59 libavfilter8 libswscale6 \
  libswresample4 libavdevice59
