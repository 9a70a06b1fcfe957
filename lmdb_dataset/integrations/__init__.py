"""Glue for training frameworks; each module imports its framework, so import only the one you use.

* :mod:`lmdb_dataset.integrations.lightning` - :class:`SetEpochCallback` for PyTorch Lightning.
* :mod:`lmdb_dataset.integrations.timm` - :class:`ReaderLMDB` for timm's datasets and loaders.
"""
