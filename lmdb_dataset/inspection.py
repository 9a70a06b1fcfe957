"""Looking at a dataset without training on it: summary (``info``) and integrity check (``verify``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from tqdm import tqdm

from . import format as fmt
from .decoding import pixels_of
from .environment import begin_read, environments, open_databases, read_info


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
    """What ``lmdb-dataset info`` prints."""

    path: str
    info: fmt.DatasetInfo
    size_bytes: int

    def lines(self) -> list[str]:
        """Human-readable lines."""
        info = self.info
        classes = ", ".join(info.classes[:8]) + (", ..." if len(info.classes) > 8 else "")
        lines = [f"path:      {self.path}",
                 f"records:   {info.num_records}",
                 f"complete:  {'yes' if info.complete else 'NO (resume the conversion with --resume)'}",
                 f"storage:   {info.storage}",
                 f"classes:   {len(info.classes)} ({classes})",
                 f"size:      {self.size_bytes / 1e6:.1f} MB on disk",
                 f"source:    {info.source or '-'}",
                 f"format:    version {info.format_version}"]
        if info.skipped:
            lines.append(f"skipped:   {len(info.skipped)} unreadable source file(s), e.g. {info.skipped[0]['path']}")
        return lines


def summarize(path: str | os.PathLike) -> DatasetSummary:
    """Read a dataset's metadata, complete or not."""
    env, _ = environments.get(path)
    _, meta_db = open_databases(env, path)
    size = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    return DatasetSummary(os.fspath(path), read_info(env, meta_db, path), size)


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """A record that failed verification."""

    index: int
    reason: str


def verify_dataset(path: str | os.PathLike, *, decode: bool = False, progress: bool = True) -> list[BadRecord]:
    """Check every record sequentially: key sequence, header, CRC32 and (``decode``) the image.

    Returns the bad records (empty if all is well). Works on incomplete datasets too.
    """
    env, _ = environments.get(path, readahead=True)
    records_db, meta_db = open_databases(env, path)
    info = read_info(env, meta_db, path)
    bad: list[BadRecord] = []
    expected = 0
    with begin_read(env, buffers=True) as txn, tqdm(total=info.num_records, unit="rec", disable=not progress,
                                                    desc="verify") as bar:
        for key, value in txn.cursor(db=records_db):
            index = fmt.decode_key(bytes(key))
            while expected < index:
                bad.append(BadRecord(expected, "record is missing"))
                expected += 1
            expected = index + 1
            bar.update()
            try:
                header = fmt.decode_header(value)
            except ValueError as exc:
                bad.append(BadRecord(index, f"malformed header: {exc}"))
                continue
            payload = fmt.payload_of(value)
            if not fmt.payload_crc_matches(header, payload):
                bad.append(BadRecord(index, "CRC32 mismatch"))
                continue
            if decode:
                try:
                    pixels_of(header, payload)
                except ValueError as exc:
                    bad.append(BadRecord(index, f"does not decode: {exc}"))
    bad.extend(BadRecord(i, "record is missing") for i in range(expected, info.num_records))
    return bad
