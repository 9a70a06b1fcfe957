"""The GPU check of the device-decoding path.

``check.sh`` installs and runs the CUDA tests; ``check.py`` measures pixels, memory and speed.
"""
