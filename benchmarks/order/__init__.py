"""Ordering benchmarks: order quality of the readers and its training A/B in accuracy."""
