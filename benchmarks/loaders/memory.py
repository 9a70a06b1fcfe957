"""Memory cases: do DataLoader workers' private pages grow over an epoch of persistent workers?"""

from __future__ import annotations

import psutil

from ..common.harness import MB, Case, Context, Result, warm
from .dataloader_cases import LoaderSpec, make_loader


def worker_memory(pid: int) -> dict[str, float]:
    """USS and anonymous memory (smaps_rollup ``Anonymous:``) of a process, in MB."""
    uss = psutil.Process(pid).memory_full_info().uss / MB
    anonymous = 0.0
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            if line.startswith("Anonymous:"):
                anonymous = int(line.split()[1]) * 1024 / MB
    return {"uss_mb": uss, "anonymous_mb": anonymous}


def memory_case(spec: LoaderSpec) -> Case:
    """Per-worker USS over two epochs of persistent workers; the target is the second epoch's growth.

    Growth is measured from the moment every worker delivered its first batch to the epoch's
    last batch. The first epoch includes the allocator's warm-up (its high-water mark rises as
    ever larger images are decoded); the second shows whether memory stays flat.
    """
    def run(ctx: Context) -> Result:
        warm(spec.files(ctx))
        loader = make_loader(spec, ctx, persistent=True)
        epochs = []
        for _ in range(2):
            iterator = iter(loader)
            start: list[dict[str, float]] = []
            end: list[dict[str, float]] = []
            for step, _ in enumerate(iterator):
                if step == spec.workers - 1:  # every worker has delivered a batch this epoch
                    pids = [worker.pid for worker in iterator._workers]
                    start = [worker_memory(pid) for pid in pids]
                if step == len(iterator) - 1:
                    end = [worker_memory(pid) for pid in pids]
            epochs.append((start, end, [100 * (e["uss_mb"] / s["uss_mb"] - 1) for s, e in zip(start, end)]))
        (first_start, _, first_growth), (start, end, growth) = epochs
        return {"value": max(growth), "first_epoch_growth_pct": round(max(first_growth), 1),
                "uss_first_epoch_start_mb": [round(s["uss_mb"]) for s in first_start],
                "uss_start_mb": [s["uss_mb"] for s in start], "uss_end_mb": [e["uss_mb"] for e in end],
                "anonymous_end_mb": [e["anonymous_mb"] for e in end]}
    return Case(f"memory/{spec.label}", "% USS growth, 2nd epoch", run,
                lambda c: 3.0 + c.args.images_in_corpus / 200.0, once=True)


# --------------------------------------------------------------------------- registry
