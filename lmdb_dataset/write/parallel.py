"""Running a function over a stream of tasks in worker processes: results in task order, bounded work in flight.

The workers are plain processes, each with a pipe of its own for tasks and one for results:
no shared queue, lock or helper thread in the parent, so stopping them can never wait for a
message a dead process was half-way through writing (``multiprocessing.Pool`` can hang there
after Ctrl-C). Workers ignore SIGINT, so a Ctrl-C from the terminal (which signals the whole
process group) interrupts only the parent, which then ends them; SIGTERM ends a worker at once,
silently. A worker that dies (killed, out of memory) is reported as an error, never waited for.
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
from typing import Any, TypeVar

from ..errors import LMDBDatasetError

Result = TypeVar("Result")

TASKS_PER_BATCH = 16
"""Tasks a worker process runs per submission."""
BATCHES_PER_WORKER = 2
"""Submissions kept ahead of the consumer per worker: bounds what is held in memory."""
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


def _worker(function: Callable[[Any], Result], tasks: Connection, results: Connection, parent: int) -> None:
    """Worker process: results of each batch, in the order the batches came."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no tracebacks here
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopped by the parent (or a job's time limit): exit now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the parent while it started us
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive_tasks, args=(tasks, inbox, parent), daemon=True).start()
    try:
        while (batch := inbox.get()) is not None:
            results.send(_run_batch(function, batch))
    except (BrokenPipeError, EOFError):
        os._exit(1)  # the parent is gone


class _Worker:
    """The parent's handle on one worker process and its two pipes."""

    def __init__(self, context: Any, function: Callable[[Any], Result]) -> None:
        task_out, self.tasks = context.Pipe(duplex=False)
        self.results, result_in = context.Pipe(duplex=False)
        self.process = context.Process(target=_worker, args=(function, task_out, result_in, os.getpid()),
                                       daemon=True)
        self.process.start()
        task_out.close()  # the worker's ends: only the worker holds them now
        result_in.close()

    def receive(self) -> list[Any]:
        """The next batch of results; raises LMDBDatasetError if the worker died."""
        try:
            return self.results.recv()
        except (EOFError, OSError):
            self.process.join(STOP_TIMEOUT_S)
            raise LMDBDatasetError(f"a worker process died (exit status {self.process.exitcode}) while converting "
                                   "images, e.g. killed for lack of memory; what was committed is kept: run again "
                                   "with resume=True, perhaps with fewer workers") from None

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


def ordered_map(function: Callable[[Any], Result], tasks: Iterable[Any], workers: int) -> Generator[Result, None, None]:
    """``map(function, tasks)`` in ``workers`` processes (0: in this process), yielding in task order.

    At most ``workers * BATCHES_PER_WORKER`` batches of :data:`TASKS_PER_BATCH` tasks are
    submitted ahead of the consumer, and ``tasks`` is read only as far as that: a slow consumer
    (a writer on a slow disk) holds the workers back instead of letting results pile up in
    memory, whatever the number of tasks. ``function`` must be picklable (module level).
    Closing the iterator early (an error, Ctrl-C) ends the workers at once.

    Raises:
        LMDBDatasetError: A worker process died.
    """
    if workers == 0:
        yield from map(function, tasks)
        return
    window = workers * BATCHES_PER_WORKER
    pending = iter(tasks)
    batches = iter(lambda: list(itertools.islice(pending, TASKS_PER_BATCH)), [])
    pool: list[_Worker] = []
    finished = False
    try:
        _start_workers(multiprocessing.get_context(), function, workers, pool)
        in_flight: collections.deque[_Worker] = collections.deque()  # the worker of each batch, in order
        for number, batch in enumerate(batches):
            if len(in_flight) == window:
                yield from in_flight.popleft().receive()
            worker = pool[number % workers]
            worker.tasks.send(batch)
            in_flight.append(worker)
        while in_flight:
            yield from in_flight.popleft().receive()
        finished = True
    finally:
        for worker in pool:
            worker.stop(finished=finished)
