"""The CPU frontier: LMDBLoader(device="cpu") against the strongest CPU loaders and the decode ceiling."""
