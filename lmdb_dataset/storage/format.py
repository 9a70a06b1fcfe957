"""The on-disk format of an lmdb_dataset dataset: the one place that defines it.

A dataset split is one LMDB environment (a directory holding ``data.mdb``) with two
named sub-databases::

    train.lmdb/data.mdb
    ├── "records"   key: record index as 8-byte big-endian unsigned integer
    │               (written with append=True, so a cursor walks exactly the records,
    │               in index order 0..N-1)
    │               value: 24-byte header + payload
    │
    │     offset  size  field
    │     0       1     format version (FORMAT_VERSION)
    │     1       1     payload kind: 0 = encoded (original file bytes), 1 = raw pixels
    │     2       1     channels (raw: 1 or 3; encoded: channels of the decoded RGB image, 3)
    │     3       1     reserved, 0
    │     4       8     label, signed little-endian int64 (a class index, 0..2**31-1: label_problem)
    │     12      4     CRC32 of the payload (zlib.crc32)
    │     16      4     height in pixels (of the image as stored/decoded)
    │     20      4     width in pixels
    │     24      ...   payload: encoded bytes as-is (JPEG, PNG, ...) or HxWxC uint8 raw
    │
    └── "meta"      small table of named values, none of them pickled:
          b"info"             JSON object (DatasetInfo): format version, number of records,
                              storage kind, class names, source description, `complete`
                              flag, skipped source files, the converter's settings
                              (and, for another source than a folder, its progress),
                              and `shaping` (absent or null: every image stored as
                              given). With `convert --max-side N` it is
                              {"max_side": N, "quality": Q (null for raw storage),
                              "filter": "lanczos", "resized": R, "kept": K}: R images
                              longer than N were resized to a longer side of exactly N
                              (and, encoded, re-encoded as JPEG at quality Q), K were
                              stored as given; R + K = records written so far
                              (lmdb_dataset.write.shaping documents the rules). Readers need
                              none of it: records hold the stored size in their header
          b"labels"           all labels, packed little-endian int64 (N values)
          b"paths"            relative source paths, UTF-8, joined by NUL bytes
          b"spans"            file offset and length of every record value inside
                              data.mdb, packed little-endian int64, shape (N, 2); lets a
                              reader fetch a record with one pread (written at finalise)
          b"order"            record_of_sample: for logical sample i (the dataset index,
                              ImageFolder's order for a converted folder), the index of the
                              record holding it; a permutation of 0..N-1, packed little-endian
                              int64. Absent means identity (record i holds sample i): datasets
                              written in their logical order, and every 0.1 dataset.
                              b"labels" and b"paths" are in record order.
          b"spans_check"      what proves b"spans" belongs to the file: 12 bytes, the LMDB
                              transaction id that stored the table (uint64 LE; written in the
                              same transaction as b"spans", which must be the file's last
                              write) and the CRC32 of the b"spans" value (uint32 LE). Any
                              later write or a compacted copy changes the file's transaction
                              id, and readers then ignore the table (`lmdb-dataset reindex`)
          b"labels/<start>"   while a conversion runs: the labels of the records committed
          b"paths/<start>"    in one transaction starting at record <start> (16 hex digits);
                              merged into b"labels"/b"paths" by the one transaction that
                              also writes b"spans", b"order" and sets `complete`

Beside ``data.mdb`` are LMDB's own lock file, ``lock.mdb``, and ``writer.lock``, an empty file
that a writer holds an exclusive ``flock`` on for its whole life, so that a second writer of the
dataset fails at once; a reader of an incomplete dataset probes it (a shared, non-blocking
``flock`` released at once) to tell a conversion still running from one that stopped. Readers
need neither file nor write access: they open the data file without a lock file. The kernel drops
the lock when its process dies, so nothing on disk records it. The lock is on a file of its own
because LMDB places ``fcntl`` locks on ``lock.mdb``, and on BSD and macOS ``flock`` and ``fcntl``
locks on one file conflict.

Readers refuse a dataset whose ``info.complete`` is false (the conversion did not finish)
and one whose ``format_version`` they do not know. This module is pure: it packs and
unpacks bytes, and performs no I/O.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any

import numpy as np

try:  # ISA-L's CRC-32 (carry-less multiplication): zlib's value, ~13x faster on 100 KB (2 us against 26 us)
    from isal.isal_zlib import crc32
except ImportError:  # a platform without isal's wheels
    from zlib import crc32

FORMAT_NAME = "lmdb-dataset"
FORMAT_VERSION = 1

RECORDS_DB = b"records"
META_DB = b"meta"
INFO_KEY = b"info"
LABELS_KEY = b"labels"
PATHS_KEY = b"paths"
SPANS_KEY = b"spans"
ORDER_KEY = b"order"
SPANS_CHECK_KEY = b"spans_check"
SPANS_CHECK = struct.Struct("<QI")

KIND_ENCODED = 0
KIND_RAW = 1
STORAGE_KINDS = {"encoded": KIND_ENCODED, "raw": KIND_RAW}

MAX_LABEL = (1 << 31) - 1
"""The largest label a record may have: labels are class indices, read back as int32 or int64."""
MAX_IMPLIED_CLASSES = 1 << 24
"""The most classes a conversion takes from the labels alone, when no class names are given.

Such a dataset's classes are named ``"0"`` .. ``"K-1"``, K being one more than its largest label,
because labels are expected to be class indices 0..N-1. A larger label (past 16,777,216 classes,
far more than any classification dataset has) is more likely an ID, a hash or a damaged value,
and would make K names (a billion strings for a label of 10**9). Past it, pass the class names
(``classes=``, ``--classes``) or remap the labels to 0..N-1.
"""

HEADER = struct.Struct("<BBBxqIII")
HEADER_SIZE = HEADER.size  # 24
KEY_SIZE = 8


@dataclasses.dataclass(frozen=True)
class RecordHeader:
    """The fixed header in front of every record's payload."""

    kind: int
    label: int
    crc32: int
    height: int
    width: int
    channels: int
    version: int = FORMAT_VERSION


def label_problem(label: int, classes: int | None = MAX_LABEL + 1) -> str:
    """Why ``label`` cannot be a record's label, or ``""`` when it can: the one rule every source's labels follow.

    A label is an int in 0..:data:`MAX_LABEL`, and below the number of classes.

    Args:
        label: The label, as read from the source.
        classes: The number of classes: of the class names given, or None when the class names
            come from the labels (then at most :data:`MAX_IMPLIED_CLASSES`). Defaults to no bound
            but :data:`MAX_LABEL`.
    """
    if label < 0:
        return f"label {label} is negative (labels are class indices, 0..2**31-1)"
    if label > MAX_LABEL:
        return f"label {label} is outside 0..2**31-1 (labels are class indices)"
    if classes is None and label >= MAX_IMPLIED_CLASSES:
        return (f"label {label} would make {label + 1} classes, more than the {MAX_IMPLIED_CLASSES} the labels "
                "alone may imply (labels are class indices 0..N-1): pass the class names, classes=FILE "
                "(--classes), or remap the labels to 0..N-1")
    if classes is not None and label >= classes:
        return f"label {label} has no class name (the classes are {classes})"
    return ""


def encode_key(index: int) -> bytes:
    """Key of record ``index``: 8-byte big-endian, so byte order equals index order."""
    return index.to_bytes(KEY_SIZE, "big")


def decode_key(key: bytes) -> int:
    """Inverse of :func:`encode_key`."""
    return int.from_bytes(key, "big")


def encode_record(payload: bytes | memoryview, *, kind: int, label: int, height: int, width: int,
                  channels: int) -> bytes:
    """Header + payload of one record, with the payload's CRC32 in the header."""
    header = HEADER.pack(FORMAT_VERSION, kind, channels, label, crc32(payload), height, width)
    return header + bytes(payload)


def decode_header(value: bytes | memoryview) -> RecordHeader:
    """Parse the header of a record value. Raises ValueError if it is malformed."""
    if len(value) < HEADER_SIZE:
        raise ValueError(f"record is {len(value)} bytes, shorter than its {HEADER_SIZE}-byte header")
    version, kind, channels, label, crc, height, width = HEADER.unpack_from(value)
    if version != FORMAT_VERSION:
        raise ValueError(f"record format version {version}, expected {FORMAT_VERSION}")
    if kind not in (KIND_ENCODED, KIND_RAW):
        raise ValueError(f"unknown payload kind {kind}")
    if channels != 3 and not (kind == KIND_RAW and channels == 1):
        raise ValueError(f"{channels} channels in a record of payload kind {kind}")
    if kind == KIND_RAW and len(value) - HEADER_SIZE != height * width * channels:
        raise ValueError(f"raw payload is {len(value) - HEADER_SIZE} bytes, header says "
                         f"{height}x{width}x{channels}")
    return RecordHeader(kind=kind, label=label, crc32=crc, height=height, width=width,
                        channels=channels, version=version)


def payload_of(value: bytes | memoryview) -> memoryview:
    """The payload part of a record value, without copying."""
    return memoryview(value)[HEADER_SIZE:]


def payload_crc_matches(header: RecordHeader, payload: bytes | memoryview) -> bool:
    """Whether the payload's CRC32 equals the one in the header."""
    return crc32(payload) == header.crc32


@dataclasses.dataclass
class DatasetInfo:
    """The JSON metadata stored under ``meta/info``.

    Attributes:
        num_records: Number of records (committed so far, while ``complete`` is false).
        storage: ``"encoded"`` or ``"raw"``.
        classes: Class names; label ``i`` means ``classes[i]``.
        source: Free-form description of where the images came from.
        complete: Set only when the writer finished; readers refuse datasets without it.
        skipped: Source files left out by a conversion, as ``{"path": ..., "error": ...}``.
        conversion: The settings a converter ran with (checked when it resumes; a record of how
            the dataset was made), with, for another source than an image folder, its progress
            (``next_source``, ``max_label``); or None.
        shaping: Storage shaping (``max_side``, ``quality``, ``filter`` and the ``resized`` /
            ``kept`` counts; see :mod:`lmdb_dataset.write.shaping`), or None when images are stored as given.
        format_version: Version of this format the dataset was written with.
    """

    num_records: int = 0
    storage: str = "encoded"
    classes: list[str] = dataclasses.field(default_factory=list)
    source: str = ""
    complete: bool = False
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    conversion: dict[str, Any] | None = None
    shaping: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        """Serialise to UTF-8 JSON bytes (with a format marker)."""
        return json.dumps({"format": FORMAT_NAME, **dataclasses.asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | memoryview) -> DatasetInfo:
        """Parse JSON bytes written by :meth:`to_json`. Raises ValueError if they are not ours."""
        try:
            obj = json.loads(bytes(data).decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"metadata is not valid JSON: {exc}") from None
        if not isinstance(obj, dict) or obj.pop("format", None) != FORMAT_NAME:
            raise ValueError("metadata does not carry the lmdb-dataset format marker")
        if obj.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {obj.get('format_version')} is not supported "
                             f"(this lmdb_dataset reads version {FORMAT_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in obj.items() if k in known}
        _check_info_fields(fields)
        return cls(**fields)


def _check_info_fields(fields: dict[str, Any]) -> None:
    """Raise ValueError unless every field of a parsed ``meta/info`` has the type the readers rely on."""
    def fail(name: str) -> ValueError:
        return ValueError(f"metadata field {name!r} has an invalid value {fields[name]!r:.80}")

    for name in ("num_records", "format_version"):
        if name in fields and (type(fields[name]) is not int or fields[name] < 0):
            raise fail(name)
    for name in ("storage", "source"):
        if name in fields and not isinstance(fields[name], str):
            raise fail(name)
    if fields.get("storage", "encoded") not in STORAGE_KINDS:
        raise fail("storage")
    if "complete" in fields and not isinstance(fields["complete"], bool):
        raise fail("complete")
    if "classes" in fields and not (isinstance(fields["classes"], list)
                                    and all(isinstance(c, str) for c in fields["classes"])):
        raise fail("classes")
    if "skipped" in fields and not (isinstance(fields["skipped"], list) and all(
            isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("error", ""), str)
            for e in fields["skipped"])):
        raise fail("skipped")
    if "conversion" in fields and not isinstance(fields["conversion"], (dict, type(None))):
        raise fail("conversion")
    if fields.get("shaping") is not None and not _valid_shaping(fields["shaping"]):
        raise fail("shaping")


def _valid_shaping(shaping: Any) -> bool:
    """Whether a parsed ``info.shaping`` has the fields ``info`` and resuming rely on."""
    def count(value: Any, least: int) -> bool:
        return type(value) is int and value >= least

    return (isinstance(shaping, dict) and count(shaping.get("max_side"), 1)
            and (shaping.get("quality") is None or count(shaping["quality"], 1))
            and isinstance(shaping.get("filter"), str)
            and count(shaping.get("resized"), 0) and count(shaping.get("kept"), 0))


def chunk_key(prefix: bytes, start: int) -> bytes:
    """Key of a per-transaction chunk (``labels/<start>`` or ``paths/<start>``)."""
    return prefix + b"/" + f"{start:016x}".encode()


def encode_labels(labels: np.ndarray) -> bytes:
    """Pack labels (or any int64 table: spans, order) as little-endian int64."""
    return np.ascontiguousarray(labels, dtype="<i8").tobytes()


def decode_labels(data: bytes | memoryview) -> np.ndarray:
    """Unpack labels (or any :func:`encode_labels` table) into a (writable) native int64 array."""
    return np.frombuffer(data, dtype="<i8").astype(np.int64)


def invert_order(record_of_sample: np.ndarray) -> np.ndarray:
    """``file_order`` from ``record_of_sample`` (and back: the inverse permutation).

    Raises:
        ValueError: ``record_of_sample`` is not a permutation of ``0..N-1``.
    """
    order = np.asarray(record_of_sample, dtype=np.int64)
    count = len(order)
    if order.ndim != 1 or (count and (order.min() < 0 or order.max() >= count)):
        raise ValueError(f"the order table is not a permutation of 0..{count - 1}: values out of range")
    inverse = np.full(count, -1, dtype=np.int64)
    inverse[order] = np.arange(count, dtype=np.int64)
    if count and inverse.min() < 0:
        raise ValueError(f"the order table is not a permutation of 0..{count - 1}: "
                         f"{int(np.count_nonzero(inverse < 0))} record(s) hold no sample")
    return inverse


def encode_order(record_of_sample: np.ndarray) -> bytes:
    """Pack ``record_of_sample`` (validated as a permutation) for ``meta/order``."""
    invert_order(record_of_sample)
    return encode_labels(record_of_sample)


def decode_order(data: bytes | memoryview, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Unpack ``meta/order`` into ``(record_of_sample, file_order)``, both int64 of length ``count``.

    Raises:
        ValueError: The table has the wrong size or is not a permutation.
    """
    if len(data) != 8 * count:
        raise ValueError(f"the order table is {len(data)} bytes, expected {8 * count} for {count} records")
    record_of_sample = decode_labels(data)
    return record_of_sample, invert_order(record_of_sample)


def encode_paths(paths: list[str]) -> bytes:
    """Join relative paths as NUL-separated UTF-8 (NUL cannot occur in a POSIX path)."""
    return b"\0".join(p.encode("utf-8", "surrogateescape") for p in paths)


class PathTable:
    """Read-only table of relative source paths over one NUL-separated UTF-8 blob.

    Holds the blob plus a numpy array of start offsets (no per-path Python objects), so a
    table of a million paths costs its bytes plus 8 bytes a path.
    """

    def __init__(self, data: bytes | memoryview, count: int) -> None:
        self._blob = bytes(data)
        separators = np.flatnonzero(np.frombuffer(self._blob, dtype=np.uint8) == 0)
        found = len(separators) + 1 if self._blob or count == 1 else 0
        if found != count:
            raise ValueError(f"path table holds {found} paths, expected {count}")
        bounds = [np.zeros(1, np.int64), separators + 1, np.array([len(self._blob) + 1])]
        self._starts = np.concatenate(bounds if count else bounds[:1]).astype(np.int64)

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self._starts[index], self._starts[index + 1] - 1
        return self._blob[start:end].decode("utf-8", "surrogateescape")


def encode_spans(spans: np.ndarray) -> bytes:
    """Pack an (N, 2) array of (offset, length) as little-endian int64."""
    return encode_labels(spans)


def decode_spans(data: bytes | memoryview) -> np.ndarray:
    """Unpack :func:`encode_spans` output into an (N, 2) int64 array. Raises ValueError if malformed."""
    if len(data) % 16:
        raise ValueError(f"offset table is {len(data)} bytes, not a multiple of 16")
    return np.frombuffer(data, dtype="<i8").astype(np.int64).reshape(-1, 2)


def encode_spans_check(txn_id: int, spans: bytes | memoryview) -> bytes:
    """The ``spans_check`` value of an encoded span table stored in transaction ``txn_id``."""
    return SPANS_CHECK.pack(txn_id, crc32(spans))


def decode_spans_check(data: bytes | memoryview) -> tuple[int, int]:
    """``(txn_id, crc32)`` of a ``spans_check`` value. Raises ValueError if malformed."""
    if len(data) != SPANS_CHECK.size:
        raise ValueError(f"spans_check is {len(data)} bytes, expected {SPANS_CHECK.size}")
    return SPANS_CHECK.unpack(data)
