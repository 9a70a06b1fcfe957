"""The node-scale section of RESULTS.md, rendered from the JSON of ``run.py``: every number is that run's.

Pure functions of the results dict (no torch, no psutil), so the section renders anywhere.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

Run = dict[str, Any]

AGGREGATE_MIN = 0.9
"""Target: the ranks' aggregate steady rate is at least this share of one rank's with the same total workers."""
WORKER_PRIVATE_MAX_MIB = 25.0
"""Target: private memory (USS less the mapped data file) of each DataLoader worker, under every start method."""
ASKS_PER_POOL_MAX = 1.0
"""Target: kernel requests (``advise``) per pool and rank, whatever the number of processes: one asker per rank."""


def layout(config: dict[str, Any]) -> str:
    """``RxW``: ranks x workers per rank."""
    return f"{config['ranks']}x{config['workers']}"


def name(config: dict[str, Any]) -> str:
    """``pipeline/reader/RxW[/cold][/start method]``, as run.py prints it."""
    tail = "/cold" if config.get("cold") else ""
    tail += f"/{config['start_method']}" if config.get("start_method", "fork") != "fork" else ""
    return f"{config['pipeline']}/{config['reader']}/{layout(config)}{tail}"


def select(results: dict[str, Any], **wanted: Any) -> list[Run]:
    """The runs whose config has these values (``cold`` and ``start_method`` default to a warm fork run)."""
    wanted = {"cold": False, "start_method": "fork", **wanted}
    return [run for run in results["runs"] if all(run["config"].get(k) == v for k, v in wanted.items())]


def spread(values: Iterable[float], digits: int = 2) -> str:
    """``median [min, max]`` (just the value when there is one)."""
    values = list(values)
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def ratios(results: dict[str, Any], reader: str, pipeline: str) -> list[float]:
    """Per round: aggregate steady rate of ``ranks x workers`` / that of ``1 x ranks*workers`` (rounds with both)."""
    plan = results["plan"]
    found = []
    for round_ in range(plan["rounds"]):
        many = select(results, reader=reader, pipeline=pipeline, ranks=plan["ranks"], workers=plan["workers"])
        one = select(results, reader=reader, pipeline=pipeline, ranks=1, workers=plan["ranks"] * plan["workers"])
        many = [run for run in many if run["round"] == round_]
        one = [run for run in one if run["round"] == round_]
        if many and one and many[0]["rate"] > 0 and one[0]["rate"] > 0:
            found.append(many[0]["rate"] / one[0]["rate"])
    return found


def worst_worker(results: dict[str, Any], reader: str, method: str) -> float | None:
    """Private MiB of the largest worker of the start-method runs of ``reader`` (``bare``: the median worker)."""
    plan = results["plan"]
    runs = [run for run in select(results, reader=reader, start_method=method, ranks=1,
                                  workers=plan["memory_workers"], replicas=plan["ranks"])
            if run["processes"]["worker"]["count"]]
    if not runs:
        return None
    key = "median" if reader == "bare" else "max"
    return max(run["processes"]["worker"]["private_mib"][key] for run in runs)


def pool_costs(run: Run) -> dict[str, float]:
    """The prefetcher's cost per pool, summed over each rank's processes, then the median over ranks.

    ``asks_per_pool``: kernel requests (``advise`` calls) per pool the rank requested;
    ``advise_ms``: time in ``advise`` per call; ``waits_per_pool``: calls of
    ``SharedAsk.asked_elsewhere`` per pool; ``wait_ms``: time per wait; ``read_ms``: time in
    ``read_through`` per call; ``pools``: pools per rank.
    """
    rows = []
    for rank in run["prefetch"]:
        pools = rank["pools"]
        if not pools:
            continue
        advise, waits, reads = rank["advise"], rank["asked_elsewhere"], rank["read_through"]
        rows.append({"pools": pools, "asks_per_pool": advise[0] / pools,
                     "advise_ms": 1e3 * advise[1] / advise[0] if advise[0] else 0.0,
                     "waits_per_pool": waits[0] / pools, "wait_ms": 1e3 * waits[1] / waits[0] if waits[0] else 0.0,
                     "read_ms": 1e3 * reads[1] / reads[0] if reads[0] else 0.0})
    if not rows:
        return {}
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]} | {
        "asks_per_pool_max": max(row["asks_per_pool"] for row in rows)}


def verdict(passed: bool) -> str:
    """``pass`` or ``FAIL``."""
    return "pass" if passed else "FAIL"


def target_rows(results: dict[str, Any]) -> list[str]:
    """The targets table: one row per (reader, pipeline), start method and layout."""
    plan = results["plan"]
    many, one = f"{plan['ranks']}x{plan['workers']}", f"1x{plan['ranks'] * plan['workers']}"
    rows = ["| target | case | measured | verdict |", "|---|---|---|---|"]
    for reader in plan["readers"]:
        for pipeline in plan["pipelines"]:
            found = ratios(results, reader, pipeline)
            measured = f"{spread(found)}x ({len(found)} of {plan['rounds']} rounds with both steady)"
            rows.append(f"| aggregate {many} >= {AGGREGATE_MIN}x {one} | {pipeline}/{reader} | {measured} | "
                        f"{verdict(statistics.median(found) >= AGGREGATE_MIN) if found else 'not measured'} |")
    for method in plan["start_methods"]:
        floor = worst_worker(results, "bare", method)
        for reader in plan["readers"]:
            worst = worst_worker(results, reader, method)
            if worst is None:
                continue
            case = f"{method}/{reader}, {plan['memory_workers']} workers of rank 0 of {plan['ranks']}"
            rows.append(f"| worker private memory < {WORKER_PRIVATE_MAX_MIB:.0f} MiB at {results['records']:,} "
                        f"records | {case} | {worst:.1f} MiB (worst worker) | "
                        f"{verdict(worst < WORKER_PRIVATE_MAX_MIB)} |")
            if floor is not None:
                rows.append(f"| the same less a worker that reads nothing ({floor:.1f} MiB, median), < "
                            f"{WORKER_PRIVATE_MAX_MIB:.0f} MiB | {case} | {worst - floor:.1f} MiB | "
                            f"{verdict(worst - floor < WORKER_PRIVATE_MAX_MIB)} |")
    for run in results["runs"]:
        config = run["config"]
        if config["cold"] or config["start_method"] != "fork" or run["round"] != 0 or config["pipeline"] != "raw":
            continue
        costs = pool_costs(run)
        if costs:
            rows.append(f"| kernel requests per pool and rank <= {ASKS_PER_POOL_MAX:.0f} | {name(config)} | "
                        f"{costs['asks_per_pool']:.2f} (worst rank {costs['asks_per_pool_max']:.2f}) | "
                        f"{verdict(costs['asks_per_pool_max'] <= ASKS_PER_POOL_MAX)} |")
    return rows


def throughput_rows(results: dict[str, Any]) -> list[str]:
    """Rates and first batches of the interleaved layouts."""
    plan = results["plan"]
    rows = ["| case | steady samples/s, median [min, max] over rounds | samples/s over the whole "
            f"{'/'.join(str(s) for s in sorted(set(plan['seconds'].values())))} s (first batches included) | "
            "first batch s (median rank; slowest) | steady window s |", "|---|---|---|---|---|"]
    seen = []
    for run in results["runs"]:
        key = name(run["config"])
        if (key in seen or run["config"]["cold"] or run["config"]["start_method"] != "fork"
                or run["config"]["reader"] == "bare"):
            continue
        seen.append(key)
        runs = [r for r in results["runs"] if name(r["config"]) == key]
        rows.append(f"| {key} | {spread((r['rate'] for r in runs), 0)} | {spread((r['whole_rate'] for r in runs), 0)}"
                    f" | {spread(statistics.median(r['first_batch_s']) for r in runs)}; "
                    f"{max(max(r['first_batch_s']) for r in runs):.2f} | {spread((r['window_s'] for r in runs), 1)} |")
    return rows


def run_table(results: dict[str, Any], header: list[str], cells: Callable[[Run], list[str] | None]) -> list[str]:
    """A markdown table: ``header``, then ``cells(run)`` of each run, in run order (None: left out)."""
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in results["runs"]:
        found = cells(run)
        if found is not None:
            rows.append("| " + " | ".join([name(run["config"]), *found]) + " |")
    return rows


def process_cells(run: Run) -> list[str] | None:
    """Memory, descriptors and threads of every process of a round-0 run."""
    if run["round"] != 0:
        return None
    rank, worker = run["processes"]["rank"], run["processes"]["worker"]
    total = {k: rank[k]["sum"] + (worker[k]["sum"] if worker["count"] else 0) for k in
             ("uss_mib", "pss_mib", "private_mib")}
    if not worker["count"]:
        return [f"{rank['count']}", f"{total['uss_mib']:.0f} / {total['pss_mib']:.0f} / {total['private_mib']:.0f}",
                "-", f"{rank['private_mib']['median']:.1f}", f"{rank['fds']['max']:.0f}; -", "-"]
    return [f"{rank['count'] + worker['count']}",
            f"{total['uss_mib']:.0f} / {total['pss_mib']:.0f} / {total['private_mib']:.0f}",
            f"{worker['private_mib']['median']:.1f}; {worker['private_mib']['max']:.1f}",
            f"{rank['private_mib']['median']:.1f}",
            f"{rank['fds']['max']:.0f}; {worker['fds']['median']:.0f}, {worker['fds']['max']:.0f}",
            f"{rank['threads']['max']:.0f}; {worker['threads']['max']:.0f}"]


def prefetch_cells(run: Run) -> list[str] | None:
    """The prefetcher's cost per pool of a round-0 run (median over ranks)."""
    costs = pool_costs(run)
    if run["round"] != 0 or not costs:
        return None
    return [f"{costs['pools']:.0f}", f"{costs['asks_per_pool']:.2f} ({costs['asks_per_pool_max']:.2f})",
            f"{costs['advise_ms']:.2f}", f"{costs['waits_per_pool']:.2f}", f"{costs['wait_ms']:.1f}",
            f"{costs['read_ms']:.2f}"]


def cold_cells(run: Run) -> list[str] | None:
    """A cold start: first batch and the page cache the ranks brought in."""
    if not run["config"]["cold"]:
        return None
    mib = run["resident_after"] * run["data_file_mib"]
    return [f"{statistics.median(run['first_batch_s']):.2f}; {max(run['first_batch_s']):.2f}",
            f"{run['resident_before']:.3f} -> {run['resident_after']:.3f}",
            f"{mib:.0f} ({mib / run['config']['ranks']:.0f})"]


PROCESS_HEADER = ["case", "processes", "total USS / PSS / private MiB", "per worker private MiB (median; max)",
                  "per rank private MiB", "fds per process: rank; worker (median, max)",
                  "threads: rank; worker (max)"]
PREFETCH_HEADER = ["case", "pools per rank", "kernel requests per pool (worst rank)", "ms per request (advise)",
                   "waits per pool", "ms per wait (asked_elsewhere)", "ms per read-through"]
COLD_HEADER = ["case", "first batch s (median rank; slowest)", "data file resident before -> after",
               "resident after, MiB (per rank)"]


def extrapolation_lines(results: dict[str, Any]) -> list[str]:
    """Node totals at ``ranks x big_workers`` from the per-process costs measured at ``ranks x workers``."""
    plan = results["plan"]
    ranks, workers, big = plan["ranks"], plan["workers"], plan["big_workers"]
    if not big:
        return []
    lines = [f"From the per-process costs of {ranks}x{workers} (round 0, raw), the node at {ranks}x{big} "
             f"({results['records']:,} records), against {ranks}x{big} as run:", "",
             "| reader | private MiB: ranks x (rank + workers x worker median) = predicted; measured | "
             f"fds per worker (median) at {ranks}x{workers}; at {ranks}x{big} | "
             f"kernel requests per pool and rank at {ranks}x{workers}; at {ranks}x{big} |", "|---|---|---|---|"]
    for reader in plan["readers"]:
        small = [r for r in select(results, reader=reader, pipeline="raw", ranks=ranks, workers=workers)
                 if r["round"] == 0]
        large = select(results, reader=reader, pipeline="raw", ranks=ranks, workers=big)
        if not small or not large:
            continue
        small, large = small[0], large[0]
        rank_mib = small["processes"]["rank"]["private_mib"]["median"]
        worker_mib = small["processes"]["worker"]["private_mib"]["median"]
        measured = sum(large["processes"][role]["private_mib"]["sum"] for role in ("rank", "worker")
                       if large["processes"][role]["count"])
        predicted = ranks * (rank_mib + big * worker_mib)
        asks = [pool_costs(run).get("asks_per_pool", float("nan")) for run in (small, large)]
        lines.append(f"| {reader} | {ranks} x ({rank_mib:.1f} + {big} x {worker_mib:.1f}) = {predicted:.0f}; "
                     f"{measured:.0f} | {small['processes']['worker']['fds']['median']:.0f}; "
                     f"{large['processes']['worker']['fds']['median']:.0f} | {asks[0]:.2f}; {asks[1]:.2f} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The section: provenance, targets, then each table."""
    plan, box = results["plan"], results["machine"]
    lines = ["## Node scale: simulated DDP ranks on one machine", "",
             f"Command: `{results['command']}`", "", f"Date: {results['date']}", "",
             f"Machine: {box['cores']} cores, {box['memory_gb']} GB, {box['cpu']}; python {box['python']}, "
             f"torch {box['torch']}. 1-minute load average at the end: {results['load_1min']:.1f}. "
             f"Whole run: {results['wall_s'] / 60:.1f} min.", "",
             f"Dataset: `{results['data']}`, {results['records']:,} records. Every rank is a process with its own "
             f"DataLoader (explicit num_replicas/rank), all released by one barrier, reading for "
             f"{plan['seconds']['raw']} s (raw: output numpy, batch {plan['batch_size']['raw']}) or "
             f"{plan['seconds']['train']} s (train: tensor + train_transform, batch {plan['batch_size']['train']}); "
             f"{plan['rounds']} interleaved rounds of {plan['ranks']}x{plan['workers']} against "
             f"1x{plan['ranks'] * plan['workers']} on a warm page cache, fork.", "",
             "### Targets", "", *target_rows(results), "",
             "### Throughput and first batch", "", *throughput_rows(results), "",
             "### Processes (at the end of each run, every rank and worker alive)", "",
             *run_table(results, PROCESS_HEADER, process_cells), "",
             "### Prefetcher per pool (each rank's processes summed, median over ranks)", "",
             *run_table(results, PREFETCH_HEADER, prefetch_cells), "",
             "### Cold start (data file evicted first)", "", *run_table(results, COLD_HEADER, cold_cells), ""]
    extra = extrapolation_lines(results)
    if extra:
        lines += ["### Scaling arithmetic", "", *extra, ""]
    return "\n".join(lines)
