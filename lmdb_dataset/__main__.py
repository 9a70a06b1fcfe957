"""``python -m lmdb_dataset``: the same as the ``lmdb-dataset`` command."""

import signal
import sys

# From here on SIGTERM interrupts like Ctrl-C (the command line then names it); an interrupt
# while the command line is still being imported ends the process quietly with status 130.
signal.signal(signal.SIGTERM, signal.default_int_handler)
try:
    from .tools.cli import main
except KeyboardInterrupt:
    print("lmdb-dataset: interrupted before it started; nothing was written", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
