"""The datasets and the sampler users put in a DataLoader: map-style :class:`LMDBImageDataset`,
:class:`LMDBIterableDataset`, :class:`ChunkShuffleSampler`, what they do with a bad record, and the
worker-process memory hygiene they share.
"""
