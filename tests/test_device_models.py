"""The slow-storage bench's device models (benchmarks/slow_storage/models.py): their arithmetic, exactly."""

from __future__ import annotations

import math
import threading
import time

import pytest

from benchmarks.slow_storage.models import INODE_BYTES, READDIRPLUS_ENTRIES, HddModel, NfsModel

MB = 10**6


def hdd(**options) -> HddModel:
    return HddModel([("/a", 100 * MB), ("/b", 100 * MB)], **options)


def test_hdd_request_continuing_the_last_pays_no_seek_and_a_far_one_pays_seek_plus_half_a_turn():
    model = hdd()
    model._head = 10 * MB
    assert model.service_time(10 * MB, MB) == pytest.approx(MB / 150e6)  # continues: transfer only
    assert model.seeks == 0
    gap = 100 * MB
    expected = 1e-3 + 11e-3 * math.sqrt(gap / model.span) + 60 / 7200 / 2 + MB / 150e6
    assert model.service_time(10 * MB + gap, MB) == pytest.approx(expected)
    assert model.seeks == 1


def test_hdd_request_within_a_revolution_ahead_waits_for_the_bytes_to_pass_instead_of_seeking():
    model = hdd()
    model._head = 0
    ahead = model.revolution_bytes - 1
    assert model.service_time(ahead, 4096) == pytest.approx((ahead + 4096) / 150e6)
    assert model.seeks == 0


def test_hdd_nominal_random_iops_is_the_mean_random_request_cost():
    model = hdd()
    seconds = 1e-3 + 11e-3 * 8 / 15 + 60 / 7200 / 2 + 4096 / 150e6
    assert model.nominal() == {"random_4k_iops": pytest.approx(1 / seconds), "sequential_mb_s": 150.0}


def test_hdd_serves_queued_requests_one_at_a_time_in_c_look_order():
    model = hdd(transfer_rate=1e9)
    model._free_at = time.monotonic() + 1.0  # busy: requests queue up
    model._head = 50 * MB
    served: list[int] = []
    lock = threading.Lock()

    def request(address: int) -> None:
        done = model.read("/a" if address < 100 * MB else "/b", address % (100 * MB), 4096)
        with lock:
            served.append((done, address))

    threads = [threading.Thread(target=request, args=(address,)) for address in (10 * MB, 60 * MB, 150 * MB)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # all three queued before the actuator frees
    for thread in threads:
        thread.join()
    finished = [address for _, address in sorted(served)]
    assert finished == [60 * MB, 150 * MB, 10 * MB]  # from the head upwards, then wrapping to the lowest
    completions = sorted(done for done, _ in served)
    assert all(b > a for a, b in zip(completions, completions[1:]))  # one at a time


def test_hdd_first_lookup_of_a_path_reads_its_inode_once():
    model = hdd()
    before = time.monotonic()
    first = model.metadata("/b")
    assert first > before and model._head == model.inode_of["/b"] + INODE_BYTES
    assert model.metadata("/b") <= time.monotonic()  # cached afterwards


def test_nfs_request_costs_a_round_trip_plus_its_bytes_on_the_shared_link():
    model = NfsModel(rtt=0.5e-3, bandwidth=1e9)
    start = time.monotonic()
    first = model.read("/f", 0, MB)
    second = model.read("/f", MB, MB)  # the link is shared: it queues behind the first's bytes
    assert 1.5e-3 <= first - start < 1.5e-3 + 0.05  # (the upper bound only allows for scheduling delays)
    assert second - first == pytest.approx(1e-3, abs=1e-9)
    now = time.monotonic()
    assert 0.5e-3 <= model.open("/f") - now < 0.5e-3 + 0.05


def test_nfs_listing_costs_a_round_trip_per_reply_and_makes_lookups_of_its_entries_free():
    model = NfsModel(rtt=1e-3)
    entries = [f"/d/{i}" for i in range(2 * READDIRPLUS_ENTRIES + 1)]
    start = time.monotonic()
    done = model.listing("/d", entries)
    assert 4e-3 <= done - start < 4e-3 + 0.05  # the directory's lookup, then 3 replies
    now = time.monotonic()
    assert model.metadata(entries[-1]) - now < 1e-3  # no round trip: its attributes came with the listing
    now = time.monotonic()
    assert 1e-3 <= model.metadata("/elsewhere") - now < 1e-3 + 0.05


def test_hdd_scattered_reads_one_at_a_time_cost_a_mean_random_request_and_a_deeper_queue_reads_faster():
    model = HddModel([("/data", 10_000 * MB)])  # one file: offsets uniform over the whole stroke
    head, seeks = model._head, model.seeks
    alone = model.scattered_reads_per_s("/data", 4096, queued=1, reads=40_000)
    assert alone == pytest.approx(model.nominal()["random_4k_iops"], rel=0.02)
    rates = [model.scattered_reads_per_s("/data", 4096, queued=queued) for queued in (4, 16, 64, 256)]
    assert alone < rates[0] < rates[1] < rates[2] < rates[3]
    # 64 uniform points are Beta(1, 64) of the stroke apart: E[sqrt(gap / span)] = G(1.5) G(65) / G(65.5). C-LOOK
    # does better than seeking such gaps: requests pile up ahead of the head (arrived since it last passed there).
    root_gap = math.exp(math.lgamma(1.5) + math.lgamma(65) - math.lgamma(65.5))
    uniform_gaps = 1 / (1e-3 + 11e-3 * root_gap + 60 / 7200 / 2 + 4096 / 150e6)
    assert uniform_gaps < rates[2] < 1.1 * uniform_gaps
    assert (model._head, model.seeks) == (head, seeks)  # the live model is untouched


def test_hdd_scattered_reads_stay_inside_the_file_so_a_small_file_reads_faster():
    big = HddModel([("/a", 100 * MB), ("/b", 9_900 * MB)])
    # Offsets within /a's 100 MB span 1% of the stroke: seeks are short and the rate beats reads over all of /b.
    assert big.scattered_reads_per_s("/a", 4096, queued=1) > 1.5 * big.scattered_reads_per_s("/b", 4096, queued=1)
    assert big.size_of == {"/a": 100 * MB, "/b": 9_900 * MB}
