"""The GPU check of the device-decoding path: ``check.sh`` (install, CUDA tests) and ``check.py`` (pixels, memory, speed)."""
