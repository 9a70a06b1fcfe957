"""``python -m lmdb_dataset``: the same as the ``lmdb-dataset`` command."""

import signal
import sys

from .write.interrupts import interrupt_behind, raise_terminated

# From here on SIGTERM interrupts like Ctrl-C, as the same exception the command line names (run() installs
# it too, for the lmdb-dataset script): an interrupt while the command line is still being imported ends
# the process quietly with status 130.
signal.signal(signal.SIGTERM, raise_terminated)
try:
    from .tools.cli import run
except BaseException as error:
    if interrupt_behind(error) is None:
        raise
    print("lmdb-dataset: interrupted before it started; nothing was written", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    run()
