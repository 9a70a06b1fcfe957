"""The main suite: lmdb_dataset against ImageFolder and the peer loaders (run.py), and its cases and targets."""
