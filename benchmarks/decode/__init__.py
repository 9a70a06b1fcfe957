"""Decoding benchmarks: fused crop decoding and storage shaping (resized or raw records against the originals)."""
