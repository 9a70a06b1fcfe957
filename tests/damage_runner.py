"""Reads damaged copies of a dataset in a child process and reports each outcome as a JSON line.

LMDB has no checksums on its own pages: a damaged B-tree page can make it read through a
wild pointer and kill the process (SIGSEGV/SIGBUS). The fault tests therefore run the reads
here, in a child, one damaged copy after another: before each case the child prints
``start <id>``, so the parent knows which case a dead child was on and starts a new child
for the rest.

Usage: ``python damage_runner.py PRISTINE_DATASET WORKDIR CASES_JSON``; each case is
``{"id": str, "truncate": int}`` or ``{"id": str, "flips": [[offset, bit], ...]}``.
Output, per case: ``result <json>`` with, for each access mode, ``open`` (the exception
class name, or "ok"), ``fallback`` (the offset table was ignored with a warning) and
``records``: ``ok`` / ``wrong`` / an exception class name per record; and ``verify``:
"ok", "flagged" or an exception class name.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
import zlib

import numpy as np


def _identity(sample) -> tuple[int, int]:
    image, label = sample
    return int(label), zlib.crc32(np.ascontiguousarray(image).tobytes())


def _read_all(path: str, access: str, reference: list[tuple[int, int]]) -> dict:
    from lmdb_dataset import LMDBDatasetError, LMDBImageDataset, StaleOffsetsWarning

    outcome: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = LMDBImageDataset(path, output="numpy", access=access)
        except LMDBDatasetError as exc:
            return {"open": type(exc).__name__}
    outcome["open"] = "ok"
    outcome["fallback"] = any(issubclass(w.category, StaleOffsetsWarning) for w in caught)
    records = []
    for index, expected in enumerate(reference[:len(ds)]):
        try:
            records.append("ok" if _identity(ds[index]) == tuple(expected) else "wrong")
        except LMDBDatasetError as exc:
            records.append(type(exc).__name__)
    outcome["records"] = records + ["absent"] * (len(reference) - len(ds))
    return outcome


def _verify(path: str) -> str:
    from lmdb_dataset import LMDBDatasetError, verify_dataset

    try:
        return "ok" if verify_dataset(path, progress=False).ok else "flagged"
    except LMDBDatasetError as exc:
        return type(exc).__name__


def main(pristine: str, workdir: str, cases_file: str) -> None:
    from lmdb_dataset import LMDBImageDataset
    from lmdb_dataset.storage.environment import environments

    original = LMDBImageDataset(pristine, output="numpy")
    reference = [_identity(original[i]) for i in range(len(original))]
    data = open(os.path.join(pristine, "data.mdb"), "rb").read()
    with open(cases_file) as f:
        cases = json.load(f)
    for case in cases:
        print(f"start {case['id']}", flush=True)
        target = os.path.join(workdir, case["id"])
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target)
        damaged = bytearray(data)
        for offset, bit in case.get("flips", []):
            damaged[offset] ^= 1 << bit
        if "truncate" in case:
            del damaged[case["truncate"]:]
        with open(os.path.join(target, "data.mdb"), "wb") as f:
            f.write(damaged)
        result = {"id": case["id"], "verify": _verify(target)}
        for access in ("pread", "mmap"):
            result[access] = _read_all(target, access, reference)
        print("result " + json.dumps(result), flush=True)
        environments.release(target)
        shutil.rmtree(target)


if __name__ == "__main__":
    main(*sys.argv[1:4])
