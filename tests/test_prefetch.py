"""Prefetch requests: record spans coalesced into ranges, asked for in pieces the kernel honours; pools read by a
background thread in the order asked."""

from __future__ import annotations

import multiprocessing
import os
import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from support import PROPERTY
from torch.utils.data import DataLoader

from lmdb_dataset import LMDBImageDataset, LMDBIterableDataset
from lmdb_dataset.storage import prefetching, system
from lmdb_dataset.storage.prefetching import PREFETCH_GAP, PREFETCH_PIECE, Prefetcher, SharedAsk, coalesce
from lmdb_dataset.storage.system import PageResidency

spans = st.lists(st.tuples(st.integers(0, 10**7), st.integers(1, 10**6)), max_size=40)


@PROPERTY
@given(spans, st.integers(0, 2 * 10**6))
def test_coalesce_covers_every_span_with_sorted_ranges_at_least_gap_apart(spans, gap):
    ranges = coalesce(spans, gap=gap)
    for offset, length in spans:
        assert any(start <= offset and offset + length <= start + size for start, size in ranges)
    for (start, size), (following, _) in zip(ranges, ranges[1:]):
        assert following - (start + size) >= gap
    covered = sum(size for _, size in ranges)
    assert covered <= sum(length for _, length in spans) + gap * max(len(spans) - 1, 0)


def test_coalesce_keeps_distant_spans_apart_and_joins_near_ones():
    assert coalesce([(5000, 10), (0, 100)], gap=1000) == [(0, 100), (5000, 10)]
    assert coalesce([(0, 100), (600, 50), (2000, 10)], gap=1000) == [(0, 650), (2000, 10)]
    assert coalesce([(0, 100), (10, 20)], gap=0) == [(0, 100)]


def test_a_batch_is_prefetched_in_pieces_covering_its_records(converted, monkeypatch):
    dataset = LMDBImageDataset(converted(num_images=24))
    calls: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            calls.append((offset, length))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    indices = [0, 5, 6, 23]
    values = dict(dataset.reader.values(indices))
    assert sorted(values) == indices
    assert calls and all(0 < length <= PREFETCH_PIECE for _, length in calls)
    spans = dataset._meta.spans[indices].tolist()
    for offset, length in spans:  # every byte of every record was asked for
        for byte in range(offset, offset + length, 4096):
            assert any(start <= byte < start + size for start, size in calls)
    ranges = coalesce(spans, gap=PREFETCH_GAP)
    assert sum(length for _, length in calls) == sum(size for _, size in ranges)


def test_pool_prefetch_requests_every_run_then_reads_it_through_in_storage_order(converted, monkeypatch):
    dataset = LMDBImageDataset(converted(num_images=24))
    events: list[tuple[str, int, int]] = []
    real_fadvise, real_preadv = os.posix_fadvise, os.preadv

    def fadvise(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            events.append(("advise", offset, length))
        return real_fadvise(fd, offset, length, advice)

    def preadv(fd, buffers, offset, *flags):
        got = real_preadv(fd, buffers, offset, *flags)
        events.append(("read", offset, got))
        return got

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    monkeypatch.setattr(os, "preadv", preadv)
    monkeypatch.setattr(PageResidency, "cached", lambda self, offset, length: False)  # as on a cold cache
    runs = [(20, 24), (0, 3), (9, 12)]
    dataset.prefetch(runs, wait=True)
    kinds = [kind for kind, _, _ in events]
    first_read = kinds.index("read")
    assert first_read > kinds.index("advise") and "advise" not in kinds[first_read:]  # asked for, then read
    reads = [(offset, got) for kind, offset, got in events if kind == "read"]
    assert [offset for offset, _ in reads] == sorted(offset for offset, _ in reads)  # storage order
    spans = dataset._meta.spans[[i for start, stop in runs for i in range(start, stop)]].tolist()
    for offset, length in spans:  # every byte of every record was read through
        assert any(start <= offset and offset + length <= start + got for start, got in reads)


def test_pool_prefetch_ends_quietly_on_an_io_error_leaving_it_to_the_record_read(converted, monkeypatch):
    dataset = LMDBImageDataset(converted(num_images=8))

    def failing(fd, buffers, offset, *flags):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing)
    dataset.prefetch([(0, 8)], wait=True)  # does not raise
    monkeypatch.undo()
    assert len(dataset[3]) == 2


def test_pool_prefetch_returns_while_the_kernel_holds_the_request_and_requests_keep_their_order(converted,
                                                                                                  monkeypatch):
    dataset = LMDBImageDataset(converted(num_images=24))
    spans = dataset._meta.spans
    release, made = threading.Event(), []
    real = os.posix_fadvise

    def full_queue(fd, offset, length, advice):  # as WILLNEED does while the device queue is full
        if advice == os.POSIX_FADV_WILLNEED:
            release.wait(timeout=30)
            made.append(offset)
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", full_queue)
    dataset.prefetch([(20, 24)])  # returns although the request is held
    dataset.prefetch([(0, 2)])
    assert made == []
    release.set()
    dataset.reader.prefetch([], wait=True)
    assert made[0] == spans[20][0] and made[-1] == spans[0][0]  # in the order asked


def test_prefetcher_closed_while_its_thread_is_held_drops_the_rest_and_closes_its_descriptor(tmp_path, monkeypatch):
    path = tmp_path / "file"
    path.write_bytes(bytes(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    prefetcher = Prefetcher(fd)
    os.close(fd)  # the owner may close its descriptor: the prefetcher has its own
    release, made = threading.Event(), []
    real = os.posix_fadvise

    def held(fd, offset, length, advice):
        release.wait(timeout=30)
        made.append(offset)
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", held)
    prefetcher.request([(0, 4096)])
    prefetcher.request([(1 << 19, 4096)])
    own = prefetcher._fd
    prefetcher.close()
    release.set()
    prefetcher._thread.join(timeout=30)
    assert not prefetcher._thread.is_alive() and made == [0]  # the second request was dropped
    with pytest.raises(OSError):
        os.fstat(own)
    with pytest.raises(ValueError, match="closed"):
        prefetcher.request([(0, 1)])


def test_record_reads_ask_for_no_readahead_window_past_the_record(converted, monkeypatch):
    dataset = LMDBImageDataset(converted(num_images=4))
    advice: list[int] = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, kind: (advice.append(kind),
                                                                               real(fd, offset, length, kind))[1])
    dataset[0]
    assert advice[0] == os.POSIX_FADV_RANDOM  # on opening the data file, before any read


def _asks(tmp_path, monkeypatch):
    """A prefetcher over a 1 MB file, and the list of spans it asked the kernel for."""
    path = tmp_path / "file"
    path.write_bytes(bytes(1 << 20))
    asked = []
    monkeypatch.setattr(prefetching, "advise", lambda fd, spans: asked.append(np.asarray(spans).tolist()))
    fd = os.open(path, os.O_RDONLY)
    return Prefetcher(fd), fd, asked


def test_a_worker_that_does_not_ask_waits_for_its_ranks_asker_then_reads_without_asking(tmp_path, monkeypatch):
    prefetcher, fd, asked = _asks(tmp_path, monkeypatch)
    marks = torch.full((8,), -1, dtype=torch.int64)
    done = prefetcher.request([(0, 4096)], shared=SharedAsk(marks, slot=5, key=13, asker=False))
    assert not done.wait(0.3)  # the asker has not asked yet
    SharedAsk(marks, slot=3, key=13, asker=True).mark()
    assert not done.wait(0.3)  # another pool's slot
    SharedAsk(marks, slot=5, key=13, asker=True).mark()
    assert done.wait(30) and asked == []  # it read through its spans, asking for nothing
    asker = prefetcher.request([(4096, 4096)], shared=SharedAsk(marks, slot=6, key=22, asker=True))
    assert asker.wait(30) and asked == [[[4096, 4096]]] and int(marks[6]) == 22
    prefetcher.close()
    os.close(fd)


def test_a_worker_whose_asker_is_late_reads_its_records_after_the_timeout_without_asking(tmp_path, monkeypatch):
    prefetcher, fd, asked = _asks(tmp_path, monkeypatch)
    monkeypatch.setattr(prefetching, "ASK_TIMEOUT_S", 0.2)
    read = []
    monkeypatch.setattr(prefetching, "read_through", lambda fd, spans, *_: read.append(spans.tolist()))
    done = prefetcher.request([(0, 8192)], read=[(4096, 4096)],
                              shared=SharedAsk(torch.full((8,), -1), slot=5, key=5, asker=False))
    assert done.wait(30) and asked == [] and read == [[[4096, 4096]]]  # its own records, no request for the pool
    prefetcher.close()
    os.close(fd)


def _count_asks(counter, real_advise):
    def advise(fd, spans):
        with counter.get_lock():
            counter.value += 1
        real_advise(fd, spans)
    return advise


@pytest.mark.parametrize("num_workers", [1, 4])
def test_a_ranks_workers_ask_the_kernel_once_per_pool_not_once_per_worker(converted, monkeypatch, num_workers):
    path = converted(num_images=60, special=False)
    counter = multiprocessing.get_context("fork").Value("i", 0)
    monkeypatch.setattr(prefetching, "advise", _count_asks(counter, prefetching.advise))
    monkeypatch.setattr(prefetching, "ASK_TIMEOUT_S", 600.0)  # a loaded machine's late asker is no extra ask
    dataset = LMDBIterableDataset(path, output="numpy", chunk_size=4, pool_size=16, seed=1, transform=len)
    loader = DataLoader(dataset, batch_size=2, num_workers=num_workers, multiprocessing_context="fork")
    assert sum(len(labels) for _, labels in loader) == 60
    pools = len(dataset._pass_order(()).starts) - 1
    assert pools >= 4
    assert counter.value == pools + 1  # each pool once, and the next epoch's first


def test_page_residency_says_which_ranges_are_cached_without_reading_them(tmp_path, monkeypatch):
    path = tmp_path / "file"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    os.pread(fd, 1 << 20, 0)  # every page cached
    residency = PageResidency(fd)
    assert residency.cached(0, 1 << 20) and residency.cached(4097, 10)
    assert not residency.cached((1 << 20) - 10, 20) and not residency.cached(0, 0)  # past the end; empty
    residency.close()
    residency.close()
    assert not residency.cached(0, 10)  # unmapped: nothing counts as cached
    monkeypatch.setattr(system, "_libc", lambda: None)  # no mincore (or no mmap): read everything through
    assert not PageResidency(fd).cached(0, 10)
    os.close(fd)


def test_read_through_reads_only_the_ranges_not_cached(tmp_path, monkeypatch):
    path = tmp_path / "file"
    path.write_bytes(bytes(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    reads = []
    real_preadv = os.preadv
    def counted(fd, buffers, offset):
        reads.append(offset)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counted)
    residency = PageResidency(fd)
    spans = [(0, 4096), (512 << 10, 4096)]  # two ranges, far apart
    monkeypatch.setattr(residency, "cached", lambda offset, length: offset == 0)
    prefetching.read_through(fd, spans, memoryview(bytearray(1 << 16)), residency)
    assert reads == [512 << 10]
    prefetching.read_through(fd, spans, memoryview(bytearray(1 << 16)))  # without residency: both
    assert reads == [512 << 10, 0, 512 << 10]
    residency.close()
    os.close(fd)
