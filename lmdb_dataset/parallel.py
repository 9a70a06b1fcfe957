"""Running a function over a stream of tasks in worker processes: results in task order, bounded work in flight."""

from __future__ import annotations

import collections
import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

Result = TypeVar("Result")

TASKS_PER_BATCH = 16
"""Tasks a worker process runs per submission."""
BATCHES_PER_WORKER = 2
"""Submissions kept ahead of the consumer per worker: bounds what is held in memory."""


def _run_batch(function: Callable[[Any], Result], batch: list[Any]) -> list[Result]:
    """Worker: ``function`` over one batch of tasks."""
    return [function(task) for task in batch]


def ordered_map(function: Callable[[Any], Result], tasks: Iterable[Any], workers: int) -> Iterator[Result]:
    """``map(function, tasks)`` in ``workers`` processes (0: in this process), yielding in task order.

    At most ``workers * BATCHES_PER_WORKER`` batches of :data:`TASKS_PER_BATCH` tasks are
    submitted ahead of the consumer, and ``tasks`` is read only as far as that: a slow consumer
    (a writer on a slow disk) holds the workers back instead of letting results pile up in
    memory, whatever the number of tasks. ``function`` must be picklable (module level).
    """
    if workers == 0:
        yield from map(function, tasks)
        return
    window = workers * BATCHES_PER_WORKER
    batches = iter(lambda it=iter(tasks): list(itertools.islice(it, TASKS_PER_BATCH)), [])
    with multiprocessing.get_context().Pool(workers) as pool:
        in_flight: collections.deque = collections.deque()
        for batch in batches:
            if len(in_flight) == window:
                yield from in_flight.popleft().get()
            in_flight.append(pool.apply_async(_run_batch, (function, batch)))
        while in_flight:
            yield from in_flight.popleft().get()
