"""The order of samples: pure ordering maths (chunk grid, epoch order, rank shares, mixing pools,
the rest of an interrupted epoch), the epoch and resume state built on it, the DDP world,
order-quality metrics and the per-record augmentation draws.
"""
