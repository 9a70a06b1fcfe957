"""Node-scale benchmark: 8 simulated DDP ranks, each with its own DataLoader, on one machine (see ``run.py``)."""
