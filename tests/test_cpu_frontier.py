"""benchmarks/cpu_frontier/run.py: a tiny run works without the peers, and its section follows its numbers.

Speed is never asserted here (benchmarks/ measures it); the run only proves that every case of
ours runs warm and cold on both corpora and that absent peers are reported as not measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
BLOCK_PEERS = "import sys\nfor name in ('nvidia.dali', 'spdl', 'ffcv'):\n    sys.modules[name] = None\n"
OURS = ("imagefolder-pillow", "lmdbloader-random", "lmdbloader-chunk", "lmdbloader-iterable", "lmdb-dataset-v2")


def test_a_tiny_run_without_the_peers_measures_ours_warm_and_cold_and_names_the_peers_not_measured(tmp_path):
    out = tmp_path / "cpu_frontier" / "results.json"
    arguments = ["--quick", "--imagenet-images", "100", "--highres-images", "12", "--batch-size", "4",
                 "--highres-batch-size", "4",
                 "--ceiling-seconds", "0.1", "--data", str(tmp_path), "--out", str(out)]
    code = BLOCK_PEERS + (f"sys.argv = ['run.py', *{arguments!r}]\nimport runpy\n"
                          "runpy.run_module('benchmarks.cpu_frontier.run', run_name='__main__', alter_sys=True)\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=240,
                            cwd=BENCHMARKS.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["command"].startswith("python -m benchmarks.cpu_frontier.run --quick")
    assert set(results["not_measured"]) == {"dali-cpu", "spdl", "ffcv"}
    assert all("does not import" in why for why in results["not_measured"].values())
    measured = {(r["corpus"], r["temperature"], r["split"], r["case"]) for r in results["runs"] if "error" not in r}
    for corpus in ("imagenet", "highres"):
        for temperature in ("warm", "cold"):
            assert {(corpus, temperature, "train", case) for case in OURS} <= measured
    assert {("imagenet", "warm", "val", case) for case in ("imagefolder-pillow", "lmdbloader-random")} <= measured
    cold = [r for r in results["runs"] if r["temperature"] == "cold"]
    assert all(r["resident_after"] <= r["resident_before"] for r in cold)  # the eviction before the second epoch
    assert all(r["first_epoch"]["value"] > 0 for r in results["runs"] if "error" not in r)  # the warm-up, timed
    assert all(r["ceiling_img_s_per_core"] > 0 and r["ceiling_all_cores_img_s"] > 0 and r["loader_bound_img_s"] > 0
               and len(r["ceiling_probes"]) == 2 for r in results["runs"])
    for corpus in ("imagenet", "highres"):  # each probe is the after of one run and the before of the next
        runs = [r for r in results["runs"] if (r["corpus"], r["split"]) == (corpus, "train")]
        assert all(a["ceiling_probes"][1] == b["ceiling_probes"][0] for a, b in zip(runs, runs[1:]))
    assert results["settings"]["ceiling_images"] == 0  # the probes decode every image of the corpus
    cpu = [(r["cpu_ms_per_image"], r["cores_busy"]) for r in results["runs"] if "error" not in r]
    assert all(ms >= 0 and busy >= 0 for ms, busy in cpu) and any(ms > 0 for ms, _ in cpu)  # 10 ms clock ticks
    assert results["corpora"]["highres"]["median_megapixels"] >= 1.0
    from benchmarks.cpu_frontier import run

    section = run.markdown(results)
    assert section in result.stdout and section.startswith("## CPU frontier\n")
    assert "Not measured: `dali-cpu`: does not import" in section
    assert ("Resident in the page cache after the eviction before the second epoch: every case's files under 5%."
            in section)
    assert "| imagenet: lmdbloader-random >= 1.25x dali-cpu | warm | not measured | n/a | not measured |" in section
    assert " measured targets met" in section and "Not measured: 2 (the loader compared with did not run)." in section
    assert all(r["seed"] == r["round"] for r in results["runs"])
    assert "each round's orders and crops drawn from seed 0 + the round, FFCV's by FFCV" in section


def test_each_round_draws_every_loaders_order_and_crops_from_a_seed_of_its_own(monkeypatch):
    import argparse

    from benchmarks.cpu_frontier import run as cpu_frontier

    probe = {"one_core": 1.0, "all_cores": 2.0, "loader_bound": 2.0}
    seen = []

    def measure(case, corpus, split, temperature, corpora, records, before, args):
        seen.append((case, args.seed))
        return {"value": 1.0, "ceiling_img_s_per_core": 1.0, "ceiling_all_cores_img_s": 2.0,
                "loader_bound_img_s": 2.0, "ceiling_probes": [before, probe]}

    monkeypatch.setattr(cpu_frontier, "load_records", lambda files: [])
    monkeypatch.setattr(cpu_frontier, "probe_ceiling", lambda *arguments: probe)
    monkeypatch.setattr(cpu_frontier, "measure", measure)
    corpus = cpu_frontier.Corpus("highres", Path("folder"), Path("lmdb"), ["a.jpg"], 4)
    args = argparse.Namespace(seed=7, rounds=3, temperatures=["warm"], ceiling_images=0, val=True)
    runs = cpu_frontier.run_rounds([corpus], ["imagefolder-pillow", "lmdbloader-random"], args)
    assert sorted(seen) == sorted((case, 7 + r) for r in range(3) for case in ("imagefolder-pillow",
                                                                              "lmdbloader-random"))
    assert [(run["round"], run["seed"]) for run in runs] == [(0, 7), (0, 7), (1, 8), (1, 8), (2, 9), (2, 9)]
    assert args.seed == 7  # the first round's, as the results' settings record it


def synthetic(ours: float, baseline: float, dali: float, per_core: float, cpu_ms: float = 2.1,
              all_cores: float = 950, bound: float | None = None) -> dict:
    """A one-round run of the ImageNet-like corpus, warm, with the given img/s (and our CPU ms an image).

    ``bound``: the loader bound's img/s; None leaves it out, as in runs made before it was probed.
    """
    runs = [{"round": 0, "corpus": "imagenet", "temperature": "warm", "split": "train", "case": case, "value": value,
             "first_batch_s": 1.0, "ceiling_img_s_per_core": per_core, "ceiling_all_cores_img_s": all_cores,
             "cpu_ms_per_image": cpu, "first_epoch": {"value": 0.9 * value},
             "ceiling_probes": [{"one_core": per_core}, {"one_core": 1.1 * per_core}],
             "cores_busy": value * cpu / 1e3, **({} if bound is None else {"loader_bound_img_s": bound})}
            for case, value, cpu in
            (("lmdbloader-random", ours, cpu_ms), ("imagefolder-pillow", baseline, 4.9), ("dali-cpu", dali, 2.4))]
    return {"command": "python -m benchmarks.cpu_frontier.run", "versions": {"DALI": "1"},
            "settings": {"workers": 2, "batch_size": {"imagenet": 128}, "rounds": 1, "temperatures": ["warm"],
                         "ceiling_cores": 2, "ceiling_images": 0, "ceiling_seconds": 0.5},
            "load_average_1min": [0.1, 0.2], "not_measured": {},
            "corpora": {"imagenet": {"images": 10, "median_megapixels": 0.19, "mean_kb": 110, "folder_mb": 1,
                                     "lmdb_mb": 1}},
            "runs": runs}


def test_verdicts_gaps_and_the_ceiling_that_stops_a_target_follow_the_numbers():
    from benchmarks.cpu_frontier import run as cpu_frontier

    text = cpu_frontier.markdown(synthetic(ours=880, baseline=400, dali=800, per_core=500))
    assert "1 of 3 measured targets met: missed imagenet warm vs dali-cpu; imagenet warm vs ceiling." in text
    assert "| imagenet: lmdbloader-random >= 2.0x imagefolder-pillow | warm | 2.20x [2.20, 2.20] | pass |  |" in text
    assert ("| imagenet: lmdbloader-random >= 1.25x dali-cpu | warm | 1.10x [1.10, 1.10] | FAIL | short by 0.15x "
            "(12%); the decode ceiling is 1.250x dali-cpu, so within reach |") in text  # 2 x 500 / 800
    assert ("| imagenet: lmdbloader-random >= 0.9x ceiling | warm | 0.88x [0.88, 0.88] | FAIL | short by 0.02x (2%); "
            "within reach at its CPU time an image: with every core busy it would reach 0.95x the ceiling; the cores "
            "all decoding at once reach 0.95x the ceiling, and the loader 0.93x that rate |"
            ) in text  # 1000 ms / (2.1 ms x 500 img/s); 950 / (2 x 500); 880 / 950
    assert "over whole passes of every image of the corpus" in text
    assert "every round's orders and crops drawn from seed 0, FFCV's by FFCV" in text  # saved before round seeds
    assert "all-cores ceiling 950.0 img/s [950.0, 950.0]" in text
    assert "| 0.88x [0.88, 0.88] | 0.93x [0.93, 0.93] | 2.100 [2.100, 2.100] |" in text  # / ceiling, / all-cores
    assert "whose decode + crop + resize + flip takes 2.000 ms [2.000, 2.000] of CPU an image" in text
    low = cpu_frontier.markdown(synthetic(ours=700, baseline=400, dali=800, per_core=450, cpu_ms=2.5))
    assert "out of reach: the decode ceiling is 1.125x dali-cpu" in low
    assert "out of reach at its CPU time an image: with every core busy it would reach 0.89x the ceiling" in low
    slow_cores = cpu_frontier.markdown(synthetic(ours=700, baseline=400, dali=800, per_core=450, all_cores=800))
    assert ("the cores all decoding at once reach 0.89x the ceiling (so the target is out of reach for any loader), "
            "and the loader 0.88x that rate |") in slow_cores
    assert "| 2.500 [2.500, 2.500] | 1.75 [1.75, 1.75] |" in low  # CPU ms an image, cores busy
    assert "| LMDBLoader(device=\"cpu\"), random | 700.0 [700.0, 700.0] | 1.75x [1.75, 1.75] |" in low
    assert "| 1.00 [1.00, 1.00] | 630.0 [630.0, 630.0] | 0.70x [0.70, 0.70] |" in low  # first batch, first epoch
    assert "the two probes around a run differed by 10.0% [10.0, 10.0]" in low
    untimed = cpu_frontier.markdown(synthetic(ours=700, baseline=400, dali=800, per_core=450, cpu_ms=0.0))
    assert "| imagenet: lmdbloader-random >= 0.9x ceiling | warm | 0.78x [0.78, 0.78] | FAIL | short by 0.12x (14%) |" \
        in untimed  # a window shorter than a CPU clock tick measured no CPU time: no fraction it allows


def test_the_loader_bound_says_whether_any_loader_could_reach_a_target():
    from benchmarks.cpu_frontier import run as cpu_frontier

    text = cpu_frontier.markdown(synthetic(ours=880, baseline=400, dali=800, per_core=500, bound=900))
    assert ("| imagenet: lmdbloader-random >= 1.25x dali-cpu | warm | 1.10x [1.10, 1.10] | FAIL | short by 0.15x "
            "(12%); the decode ceiling is 1.250x dali-cpu; the loader bound reaches 1.12x dali-cpu: out of reach for "
            "any loader that reads, checks, batches and normalises on these cores |") in text  # 900 / 800
    assert ("the cores all decoding at once reach 0.95x the ceiling, and the loader 0.93x that rate; the loader bound "
            "reaches 0.90x the ceiling: within its reach |") in text  # 900 / (2 x 500)
    assert "all-cores ceiling 950.0 img/s [950.0, 950.0]; loader bound 900.0 img/s [900.0, 900.0];" in text
    within = cpu_frontier.markdown(synthetic(ours=880, baseline=400, dali=800, per_core=500, bound=1000))
    assert "the loader bound reaches 1.25x dali-cpu: within its reach |" in within
