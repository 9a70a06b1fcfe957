"""List files: one ``path,label`` line per image (CSV, TSV or whitespace-separated), paths relative to a root.

Examples: Caffe-style ``val.txt`` (``ILSVRC2012_val_00000001.JPEG 65``), a CSV with a header
``path,label``, a TSV of ``images/cat/1.jpg<TAB>cat``. Per line, the separator is a comma if
the line has one, else a tab, else the last run of whitespace (so paths may contain spaces).
Labels are integers (:func:`.base.parse_label`; one out of range is a bad record), or class
names: then the classes are the sorted distinct names (as ImageFolder sorts folders) and each
label is its name's index. A first line whose first field is ``path``, ``file``, ``filename``,
``image`` or ``image_id`` is a header and skipped; blank lines and lines starting with ``#``
are ignored. Records keep the file's line order.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Generator
from pathlib import Path

from .base import SourceRecord, parse_label

HEADER_FIELDS = frozenset({"path", "file", "filename", "image", "image_id", "imageid"})


def parse_line(line: str, *, where: str) -> tuple[str, str]:
    """Split one line into (path, label text).

    Raises:
        ValueError: The line has no separator (names ``where``).
    """
    if "," in line:
        fields = next(csv.reader(io.StringIO(line)))
    elif "\t" in line:
        fields = line.split("\t")
    else:
        fields = line.rsplit(None, 1)
    fields = [field.strip() for field in fields]
    if len(fields) < 2 or not fields[0] or not fields[1]:
        raise ValueError(f"{where}: expected 'path,label' (or tab/space separated), got {line!r}")
    return fields[0], fields[1]


def read_list(path: str | os.PathLike) -> tuple[list[tuple[str, str]], list[str] | None]:
    """The (path, label text) entries of a list file, and the class names when labels are names.

    Raises:
        ValueError: A line cannot be split, or integer and name labels are mixed.
    """
    entries: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            entry = parse_line(line, where=f"{path}:{number}")
            if not entries and entry[0].lower() in HEADER_FIELDS:
                continue
            entries.append(entry)
    numeric = [parse_label(label) is not None for _, label in entries]
    if all(numeric):
        return entries, None
    if any(numeric):
        first = entries[numeric.index(True)][1]
        raise ValueError(f"{path}: labels mix integers ({first!r}) and class names; use one or the other")
    return entries, sorted({label for _, label in entries})


class ListFileSource:
    """Images named by a list file; see the module docstring.

    Args:
        path: The list file.
        root: Folder the listed paths are relative to. Defaults to the list file's folder.
    """

    kind = "list"

    def __init__(self, path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path.parent
        if not self.root.is_dir():
            raise FileNotFoundError(f"image root {str(self.root)!r} of list file {str(self.path)!r} is not a folder")
        self._entries, self.classes = read_list(self.path)
        self._index = {name: i for i, name in enumerate(self.classes or [])}

    def count(self) -> int:
        """Number of listed images."""
        return len(self._entries)

    def records(self, start: int = 0) -> Generator[SourceRecord, None, None]:
        """Read the listed files from entry ``start`` on; a missing file is a bad record."""
        for name, text in self._entries[start:]:
            label = self._index[text] if self.classes else parse_label(text)
            assert label is not None  # read_list found every label an integer
            try:
                data = (self.root / name).read_bytes()
            except OSError as exc:
                yield SourceRecord(name, None, -1, f"{name}: cannot read {str(self.root / name)!r}: "
                                                   f"{exc.strerror or exc}")
                continue
            yield SourceRecord(name, data, label, "", len(data))
