#!/bin/sh
# Install what the slow-storage bench needs (run as root on Debian/Ubuntu):
#   sh benchmarks/slow_storage/setup.sh [PYTHON]
# libfuse 3 and its headers, the mfusepy binding into PYTHON's environment (default: python3),
# and the FUSE control filesystem (mount.py raises each mount's queue depth through it).
set -eu
python=${1:-python3}
apt-get update
apt-get install -y fuse3 libfuse3-dev pkg-config
"$python" -m pip install mfusepy
mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections
"$python" -c "import mfusepy; print('mfusepy', mfusepy.__version__ if hasattr(mfusepy, '__version__') else 'ok')"
