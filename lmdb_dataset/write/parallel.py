"""Running a function over a stream of tasks in worker processes: results in task order, bounded work in flight.

Work is submitted ahead of the consumer as far as a budget of bytes allows (:data:`BYTES_IN_FLIGHT`,
a batch's tasks and results at their mean size so far), between :data:`MIN_BATCHES_PER_WORKER`
and :data:`MAX_BATCHES_PER_WORKER` batches a worker: small tasks and results (a path, a JPEG)
keep the workers busy through a consumer's pause (a writer's fsync'd commit), large ones (an
archive's images, decoded pixels) keep the memory held bounded.

The workers are plain processes, each with a pipe of its own for tasks and one for results
(a thread in the worker drains each, so that neither side waits for the other's computation):
no shared queue, lock or helper thread in the parent, so stopping them can never wait for a
message a dead process was half-way through writing (``multiprocessing.Pool`` can hang there
after Ctrl-C). Workers ignore SIGINT, so a Ctrl-C from the terminal (which signals the whole
process group) interrupts only the parent, which then ends them; SIGTERM ends a worker at once,
silently. A worker that dies (killed, out of memory, or an exception it printed) is reported as an error saying
which, never waited for.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Generator, Iterable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, TypeVar

from ..errors import LMDBDatasetError

Result = TypeVar("Result")

TASKS_PER_BATCH = 16
"""Tasks a worker process runs per submission."""
BYTES_IN_FLIGHT = 64 << 20
"""Bytes of tasks and results submitted ahead of the consumer (about a writer's commit), at their mean size so far."""
MIN_BATCHES_PER_WORKER = 2
"""Submissions kept ahead of the consumer per worker, however large their tasks and results."""
MAX_BATCHES_PER_WORKER = 32
"""Submissions kept ahead of the consumer per worker, however small their tasks and results."""
PIPE_BYTES = 1 << 20
"""Capacity asked for each task and result pipe (Linux's maximum for a user by default; 64 KiB where refused):
a batch of 16 images crosses in two writes instead of ~27, each of which waited for the reading
process to be scheduled."""
STOP_TIMEOUT_S = 2.0
"""Seconds a stopped worker gets to exit after SIGTERM before it is killed."""
PARENT_CHECK_S = 1.0
"""How often an idle worker checks that its parent is still alive (it exits if not)."""

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _run_batch(function: Callable[[Any], Result], batch: list[Any]) -> list[Result]:
    """``function`` over one batch of tasks."""
    return [function(task) for task in batch]


def _receive_tasks(tasks: Connection, inbox: queue.SimpleQueue, parent: int) -> None:
    """Worker thread: move batches from the parent's pipe to ``inbox`` as they come (None: stop).

    Draining the pipe at once means the parent's sends never wait for the worker's computation,
    so a parent sending a large task and a worker sending a large result cannot block each other.
    """
    try:
        while True:
            while not tasks.poll(PARENT_CHECK_S):
                if os.getppid() != parent:  # the parent died without stopping us
                    os._exit(1)
            batch = tasks.recv()
            inbox.put(batch)
            if batch is None:
                return
    except (EOFError, OSError):
        os._exit(1)


def _send_results(results: Connection, outbox: queue.SimpleQueue) -> None:
    """Worker thread: send each pickled batch of results from ``outbox`` to the parent, in order (None: stop).

    The worker goes on computing while the parent is busy (a writer's commit) instead of
    waiting for it to read; what it runs ahead is bounded by the batches the parent submitted.
    """
    try:
        while (message := outbox.get()) is not None:
            results.send_bytes(message)
    except OSError:  # the parent is gone (BrokenPipeError included)
        os._exit(1)


def _worker(function: Callable[[Any], Result], tasks: Connection, results: Connection, parent: int) -> None:
    """Worker process: results of each batch, in the order the batches came."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no tracebacks here
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopped by the parent (or a job's time limit): exit now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the parent while it started us
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive_tasks, args=(tasks, inbox, parent), daemon=True).start()
    sender = threading.Thread(target=_send_results, args=(results, outbox), daemon=True)
    sender.start()
    while (batch := inbox.get()) is not None:
        outbox.put(ForkingPickler.dumps(_run_batch(function, batch)))
    outbox.put(None)
    sender.join()


def _widen(pipe: Connection) -> None:
    """Ask for a pipe of :data:`PIPE_BYTES`; keep the default off Linux or where refused (a user's pipe quota)."""
    try:
        from fcntl import F_SETPIPE_SZ, fcntl
        fcntl(pipe.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, OSError):
        pass


class _Worker:
    """The parent's handle on one worker process and its two pipes."""

    def __init__(self, context: Any, function: Callable[[Any], Result]) -> None:
        task_out, self.tasks = context.Pipe(duplex=False)
        self.results, result_in = context.Pipe(duplex=False)
        _widen(self.tasks)
        _widen(self.results)
        self.process = context.Process(target=_worker, args=(function, task_out, result_in, os.getpid()),
                                       daemon=True)
        self.process.start()
        task_out.close()  # the worker's ends: only the worker holds them now
        result_in.close()

    def receive(self) -> tuple[list[Any], int]:
        """The next batch of results and its size in bytes; raises LMDBDatasetError if the worker died."""
        try:
            message = self.results.recv_bytes()
            return ForkingPickler.loads(message), len(message)
        except (EOFError, OSError):
            self.process.join(STOP_TIMEOUT_S)
            code = self.process.exitcode
            if code is not None and code < 0:  # a signal: the kernel's out-of-memory killer, most often
                how = f"was killed ({signal.Signals(-code).name}, e.g. for lack of memory)"
                advice = ", perhaps with fewer workers"
            else:  # an exception, whose traceback the worker printed: a bug, not the machine
                how, advice = f"failed (exit status {code}; its error is printed above)", ""
            raise LMDBDatasetError(f"a worker process {how} while converting images; what was committed is kept: "
                                   f"run again with resume=True{advice}") from None

    def stop(self, *, finished: bool) -> None:
        """End the worker: after its last batch when ``finished``, else at once (SIGTERM, then SIGKILL)."""
        if finished:
            try:
                self.tasks.send(None)
            except OSError:
                pass
        elif self.process.is_alive():
            self.process.terminate()
        self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.tasks.close()
        self.results.close()


def _start_workers(context: Any, function: Callable[[Any], Result], workers: int, started: list[_Worker]) -> None:
    """Start ``workers`` workers into ``started``, with SIGINT and SIGTERM blocked meanwhile.

    A signal that arrives while a worker is being created waits until the worker has set its
    handlers (it then ignores SIGINT) and is delivered here afterwards: a Ctrl-C at that
    instant interrupts the parent, never a half-started worker.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        for _ in range(workers):
            started.append(_Worker(context, function))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def window(workers: int, batch_bytes: float | None) -> int:
    """Batches to keep submitted ahead of the consumer when a batch's tasks and results take ``batch_bytes``.

    As many as :data:`BYTES_IN_FLIGHT` holds, between :data:`MIN_BATCHES_PER_WORKER` and
    :data:`MAX_BATCHES_PER_WORKER` per worker (the minimum while ``batch_bytes`` is None: no
    result has come yet).
    """
    fitting = 0 if batch_bytes is None else int(BYTES_IN_FLIGHT // max(batch_bytes, 1.0))
    return workers * min(max(fitting // workers, MIN_BATCHES_PER_WORKER), MAX_BATCHES_PER_WORKER)


def ordered_map(function: Callable[[Any], Result], tasks: Iterable[Any], workers: int) -> Generator[Result, None, None]:
    """``map(function, tasks)`` in ``workers`` processes (0: in this process), yielding in task order.

    Batches of :data:`TASKS_PER_BATCH` tasks are submitted ahead of the consumer only as far
    as :func:`window` allows, and ``tasks`` is read only as far as that: a slow consumer (a
    writer on a slow disk) holds the workers back instead of letting results pile up in
    memory, whatever the number of tasks. ``function`` must be picklable (module level).
    Closing the iterator early (an error, Ctrl-C) ends the workers at once.

    Raises:
        LMDBDatasetError: A worker process died.
    """
    if workers == 0:
        yield from map(function, tasks)
        return
    pending = iter(tasks)
    batches = iter(lambda: list(itertools.islice(pending, TASKS_PER_BATCH)), [])
    pool: list[_Worker] = []
    finished = False
    sent, received = [0, 0], [0, 0]  # batches of tasks sent and of results received, and their bytes

    def receive(worker: _Worker) -> list[Result]:
        results, size = worker.receive()
        received[0] += 1
        received[1] += size
        return results

    def batch_bytes(next_tasks: int) -> float | None:
        """A batch's mean bytes of tasks (the next batch's ``next_tasks`` included) and results; None before a
        result."""
        return (sent[1] + next_tasks) / (sent[0] + 1) + received[1] / received[0] if received[0] else None

    try:
        _start_workers(multiprocessing.get_context(), function, workers, pool)
        in_flight: collections.deque[_Worker] = collections.deque()  # the worker of each batch, in order
        for number, batch in enumerate(batches):
            message = ForkingPickler.dumps(batch)
            while len(in_flight) >= window(workers, batch_bytes(len(message))):
                yield from receive(in_flight.popleft())
            worker = pool[number % workers]
            worker.tasks.send_bytes(message)
            sent[0] += 1
            sent[1] += len(message)
            in_flight.append(worker)
        while in_flight:
            yield from receive(in_flight.popleft())
        finished = True
    finally:
        for worker in pool:
            worker.stop(finished=finished)
