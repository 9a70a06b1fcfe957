"""Fault injection on the read side: failing reads, damaged and truncated files, read-only storage.

The outcome matrix these tests establish is written up in tests/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from support import failing_pread
from torch.utils.data import DataLoader

from lmdb_dataset import (
    CorruptDatasetError,
    CorruptRecordError,
    DatasetChangedError,
    LMDBDatasetError,
    LMDBImageDataset,
    LMDBIterableDataset,
    NotADatasetError,
    RecordReadError,
    reindex,
    verify_dataset,
)
from lmdb_dataset.storage import format as fmt
from lmdb_dataset.storage.environment import environments
from lmdb_dataset.tools.inspection import summarize

RUNNER = Path(__file__).with_name("damage_runner.py")
ACCESS = ["pread", "mmap"]


# --- failing reads: EIO and short reads on one record ----------------------------------------------------

@pytest.mark.parametrize("failure, message", [("eio", r"failed \(\[Errno 5\] Input/output error\)"),
                                              ("short", r"returned \d+: the data file is shorter")])
def test_failing_pread_of_one_record_raises_record_read_error_naming_it(converted, monkeypatch, failure, message):
    ds = LMDBImageDataset(converted(), output="numpy")
    offset = int(ds._meta.spans[7][0])
    failing_pread(monkeypatch, offset, failure)
    with pytest.raises(RecordReadError, match=rf"record 7 \(source file '.+'\): reading its \d+ bytes at offset "
                                              rf"{offset} {message}") as caught:
        ds[7]
    assert isinstance(caught.value, CorruptRecordError) and caught.value.index == 7
    assert ds[6][1] == ds.targets[6] and ds[8][1] == ds.targets[8]  # the neighbours read on


def test_failing_read_in_a_dataloader_worker_reaches_the_loop_as_corrupt_record_error(converted, monkeypatch):
    ds = LMDBImageDataset(converted(), output="numpy")
    failing_pread(monkeypatch, int(ds._meta.spans[5][0]), "eio")
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork",
                        collate_fn=lambda batch: [label for _, label in batch])
    with pytest.raises(CorruptRecordError, match=r"record 5 .*Input/output error"):
        list(loader)


@pytest.mark.parametrize("access", ACCESS)
def test_file_truncated_under_a_live_dataset_raises_instead_of_reading_past_the_end(converted, tmp_path, access):
    path = shutil.copytree(converted(), tmp_path / "ds")
    ds = LMDBImageDataset(path, output="numpy", access=access)
    ds[0]
    size = (path / "data.mdb").stat().st_size
    os.truncate(path / "data.mdb", size // 2)  # what a full disk during a copy or a careless tool leaves
    with pytest.raises(DatasetChangedError):
        ds[len(ds) - 1]
    with pytest.raises(CorruptDatasetError, match=rf"is truncated: LMDB's pages end at byte {size}, the file at "):
        LMDBImageDataset(path)


# --- damaged data.mdb files, read in a child process --------------------------------------------------------

def _run_cases(pristine: Path, cases: list[dict], workdir: Path) -> dict[str, dict | str]:
    """Outcome of each case (see damage_runner.py); a case that killed its child is ``"crash:<signal>"``."""
    results: dict[str, dict | str] = {}
    remaining = cases
    workdir.mkdir(exist_ok=True)
    while remaining:
        cases_file = workdir / "cases.json"
        cases_file.write_text(json.dumps(remaining))
        child = subprocess.run([sys.executable, str(RUNNER), str(pristine), str(workdir), str(cases_file)],
                               capture_output=True, text=True, timeout=600,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join([str(RUNNER.parents[1]), *sys.path])})
        started = None
        for line in child.stdout.splitlines():
            if line.startswith("start "):
                started = line[len("start "):]
            elif line.startswith("result "):
                result = json.loads(line[len("result "):])
                results[result["id"]] = result
        if child.returncode == 0:
            break
        assert started is not None and started not in results, child.stderr[-3000:]
        results[started] = f"crash:{child.returncode}"
        remaining = remaining[[c["id"] for c in remaining].index(started) + 1:]
    assert len(results) == len(cases)
    return results


def _record_regions(path: Path) -> tuple[np.ndarray, int]:
    spans = LMDBImageDataset(path)._meta.spans
    return spans, (path / "data.mdb").stat().st_size


HEADER_FIELDS = {"version": 0, "kind": 1, "channels": 2, "reserved": 3, "label": 4, "crc32": 12, "height": 16,
                 "width": 20}
IGNORED_BY_READERS = {"reserved", "height", "width"}
"""Header bytes an encoded record's reader does not use: its pixels come from the payload."""


def _flip_cases(file: Path, spans: np.ndarray, size: int, rng: np.random.Generator) -> list[dict]:
    cases = []
    for index in rng.choice(len(spans), 6, replace=False):
        offset = int(spans[index][0])
        for field, start in HEADER_FIELDS.items():
            cases.append({"id": f"header-{field}-r{index}", "region": f"header:{field}",
                          "flips": [[offset + start, int(rng.integers(8))]]})
    for index in rng.choice(len(spans), 12, replace=False):
        offset, length = (int(x) for x in spans[index])
        position = int(rng.integers(offset + fmt.HEADER_SIZE, offset + length))
        cases.append({"id": f"payload-r{index}-{position}", "region": "payload",
                      "flips": [[position, int(rng.integers(8))]]})
    return cases + _lmdb_page_cases(file, spans, size, rng)


PAGE = 4096
"""LMDB's page size on Linux x86-64 and arm64 (the OS page size)."""


def _lmdb_page_cases(file: Path, spans: np.ndarray, size: int, rng: np.random.Generator) -> list[dict]:
    """Flips in LMDB's own structures: meta pages, branch and leaf pages (node pointers, keys, sizes,
    page numbers, and the small values stored inline: info, label/path/offset tables of a small
    dataset) and the headers of records' overflow pages."""
    inside = np.zeros(size, dtype=bool)
    for offset, length in spans.tolist():
        inside[offset:offset + length] = True
    data = file.read_bytes()
    pages: dict[str, list[tuple[int, int]]] = {}
    for start in range(0, size, PAGE):
        if inside[start]:
            continue  # the continuation of a record's overflow run: record bytes, no header
        flags = int.from_bytes(data[start + 10:start + 12], "little")
        if start < 2 * PAGE:
            kind, used = "meta page", (start, start + 152)
        elif flags & 0x04:
            kind, used = "overflow header", (start, start + 16)
        elif flags & 0x03:
            lower, upper = (int.from_bytes(data[start + k:start + k + 2], "little") for k in (12, 14))
            kind = "branch page" if flags & 0x01 else "leaf page"
            used = (start, start + lower) if rng.integers(2) else (start + upper, start + PAGE)
        else:
            continue  # free page
        pages.setdefault(kind, []).append(used)
    cases = []
    for kind, areas in sorted(pages.items()):
        for n, k in enumerate(rng.choice(len(areas), 12, replace=len(areas) < 12)):
            low, high = areas[k]
            position = int(rng.integers(low, high))
            cases.append({"id": f"lmdb-{kind.replace(' ', '-')}-{n}-{position}", "region": f"lmdb:{kind}",
                          "flips": [[position, int(rng.integers(8))]]})
    return cases


def test_bit_flips_in_records_are_caught_and_elsewhere_never_kill_the_caller(converted, tmp_path):
    pristine = converted()
    spans, size = _record_regions(pristine)
    cases = _flip_cases(pristine / "data.mdb", spans, size, np.random.default_rng(9))
    results = _run_cases(pristine, cases, tmp_path / "work")
    matrix: Counter = Counter()
    for case in cases:
        result = results[case["id"]]
        region = case["region"]
        if isinstance(result, str):
            matrix[(region, "crash")] += 1
            assert region.startswith("lmdb"), f"{case['id']}: damage to a record value killed the reader ({result})"
            continue
        for access in ACCESS:
            outcome = result[access]
            records = outcome.get("records", [])
            kind = (f"open:{outcome['open']}" if outcome["open"] != "ok" else
                    "all ok" if set(records) == {"ok"} else "wrong" if "wrong" in records else "error")
            matrix[(region if region.startswith("lmdb") else region.split(":")[0], access, kind,
                    result["verify"])] += 1
            assert "wrong" not in records, (case["id"], access, outcome)
            if region.startswith("lmdb"):
                continue  # LMDB's pages carry no checksum: no promise beyond "no wrong sample" here (README)
            assert outcome["open"] == "ok", (case["id"], access, outcome)
            field = region.split(":")[-1]
            damaged = [i for i, r in enumerate(records) if r != "ok"]
            assert len(damaged) == (0 if field in IGNORED_BY_READERS else 1), (case["id"], access, outcome)
        if not region.startswith("lmdb") and region.split(":")[-1] not in IGNORED_BY_READERS:
            assert result["verify"] == "flagged", case["id"]
    print("\nbit-flip matrix:\n" + "\n".join(f"{v:3d} {' | '.join(k)}" for k, v in sorted(matrix.items())))


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.5, 0.9, 0.999])
def test_truncated_data_file_is_refused_cleanly(converted, tmp_path, fraction):
    pristine = converted()
    size = (pristine / "data.mdb").stat().st_size
    keep = int(size * fraction)
    result = _run_cases(pristine, [{"id": f"truncate-{keep}", "truncate": keep}], tmp_path / "work")
    outcome = result[f"truncate-{keep}"]
    assert not isinstance(outcome, str), outcome
    for access in ACCESS:
        assert outcome[access]["open"] in ("CorruptDatasetError", "NotADatasetError"), outcome
    assert outcome["verify"] in ("CorruptDatasetError", "NotADatasetError")


# --- read-only storage ---------------------------------------------------------------------------------------

def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {done.stderr.strip()}")


def _read_everything(path: Path, reference: list) -> None:
    for access in ACCESS:
        ds = LMDBImageDataset(path, output="numpy", access=access)
        assert ds.reader.access == access
        for i, (image, label) in enumerate(reference):
            got, got_label = ds[i]
            assert got_label == label and np.array_equal(got, image)
        ds.reader.close()
    iterable = LMDBIterableDataset(path, output="numpy", shuffle=False)
    assert [label for _, label in iterable] == [label for _, label in reference]
    assert verify_dataset(path, progress=False).ok
    assert summarize(path).info.complete
    environments.release(path)


def _unmount(path: Path) -> None:
    environments.release(path)
    subprocess.run(["umount", "--lazy", str(path)], check=True)


@pytest.fixture
def reference_samples(converted):
    ds = LMDBImageDataset(converted(), output="numpy")
    return [ds[i] for i in range(len(ds))]


def test_read_only_bind_mount_reads_and_reindex_says_why_it_cannot_write(converted, tmp_path, reference_samples):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    source = shutil.copytree(converted(), tmp_path / "source")
    mounted = tmp_path / "ro"
    mounted.mkdir()
    _mount("--bind", str(source), str(mounted))
    try:
        _mount("-o", "remount,bind,ro", str(mounted))
        before = sorted(os.listdir(mounted))
        _read_everything(mounted, reference_samples)
        assert sorted(os.listdir(mounted)) == before  # no lock file, nothing written
        with pytest.raises(LMDBDatasetError, match="run reindex where the dataset is writable"):
            reindex(mounted)
    finally:
        _unmount(mounted)


def test_read_only_filesystem_reads(converted, tmp_path, reference_samples):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    mounted = tmp_path / "tmpfs"
    mounted.mkdir()
    _mount("-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mounted))
    try:
        shutil.copytree(converted(), mounted / "ds")
        _mount("-o", "remount,ro", str(mounted))
        _read_everything(mounted / "ds", reference_samples)
    finally:
        environments.release(mounted / "ds")
        _unmount(mounted)


def test_read_only_permissions_and_no_files_written_beside_the_data(converted, tmp_path, reference_samples):
    path = shutil.copytree(converted(), tmp_path / "ds")
    (path / "lock.mdb").unlink()  # a dataset shipped as its data file alone
    (path / "writer.lock").unlink()
    os.chmod(path / "data.mdb", 0o444)
    os.chmod(path, 0o555)
    try:
        _read_everything(path, reference_samples)
        assert os.listdir(path) == ["data.mdb"]
    finally:
        environments.release(path)
        os.chmod(path, 0o755)


def test_a_file_that_is_no_dataset_is_refused_in_one_line(tmp_path):
    bogus = tmp_path / "data.mdb"
    bogus.write_bytes(b"\0" * 10000)
    for target in (tmp_path, bogus):
        with pytest.raises(NotADatasetError) as caught:
            LMDBImageDataset(target)
        assert "\n" not in str(caught.value)


def test_damaged_record_key_is_reported_by_verify_and_the_mmap_reader(converted, tmp_path):
    path = shutil.copytree(converted(), tmp_path / "ds")
    spans = LMDBImageDataset(path)._meta.spans
    data = bytearray((path / "data.mdb").read_bytes())
    key = fmt.encode_key(5)
    # In leaf pages, not in records: every copy, the live leaf page's and those of pages freed by later
    # transactions (which still hold old bytes), so that the live one is hit whatever the page layout.
    positions = [p for p in range(len(data)) if data[p:p + 8] == key
                 and not any(o <= p < o + n for o, n in spans.tolist())]
    assert positions
    for position in positions:
        data[position] ^= 0x80  # record 5's key now reads 2**63 + 5
    (path / "data.mdb").write_bytes(data)
    report = verify_dataset(path, progress=False)
    assert [(r.index, r.reason.split(":")[0]) for r in report.bad] == [
        (2**63 + 5, "unexpected key after record 4"), (5, "record is missing")]
    with pytest.raises(CorruptRecordError, match="record 5 .*the record is missing"):
        LMDBImageDataset(path, access="mmap")[5]
    # pread (both readers' default): the offset table, no B-tree walk, so the record reads back intact
    assert LMDBImageDataset(path, output="numpy")[5][1] == LMDBImageDataset(converted())[5][1]
    assert [label for _, label in LMDBIterableDataset(path, shuffle=False)] == LMDBImageDataset(path).targets.tolist()
