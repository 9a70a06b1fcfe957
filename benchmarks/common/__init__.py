"""Modules shared by several benchmarks: the harness, corpora, pipelines, peer loaders and child-process sampling."""
