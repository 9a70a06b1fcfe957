"""Slow-storage benchmarks: a FUSE passthrough with hdd and nfs device models (see README in benchmarks/)."""
