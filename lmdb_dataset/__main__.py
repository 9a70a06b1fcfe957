"""``python -m lmdb_dataset``: the same as the ``lmdb-dataset`` command."""

import signal
import sys

# From here on SIGTERM interrupts like Ctrl-C, as the same exception the command line names (run() installs
# it too, for the lmdb-dataset script): an interrupt while the command line is still being imported, or
# while this handler is being installed, ends the process quietly with status 130.
try:
    from .write.interrupts import raise_terminated

    signal.signal(signal.SIGTERM, raise_terminated)
    from .tools.cli import run
except BaseException as error:
    from .write.interrupts import interrupt_behind

    if interrupt_behind(error) is None:
        raise
    print("lmdb-dataset: interrupted before it started; nothing was written", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    run()
