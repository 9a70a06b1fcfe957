"""``python -m lmdb_dataset``: the same as the ``lmdb-dataset`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
