"""Tar archives read as streams, never extracted: ILSVRC2012's train tar and webdataset shards.

``tar`` kind - the ILSVRC2012 train layout: one tar whose members are per-class tars
(``n01440764.tar`` holding ``n01440764_10026.JPEG`` ...). The class names are the inner
tars' names without ``.tar``, sorted (ImageNet's usual label order, as ImageFolder on the
extracted tree); a first, header-only pass lists them (fast on an uncompressed tar: it seeks
from header to header).

``webdataset`` kind - shards whose members are grouped by key: ``<key>.jpg`` (or another
image extension) and ``<key>.cls`` (the integer label as text); the key is the member
name up to the first dot of its base name, as webdataset groups them. SRC is one shard or
a directory of shards (``.tar``, ``.tar.gz``, ``.tgz``), read in name order.

Both are streamed with ``tarfile``'s ``r|*`` mode (gzip and others are decompressed on the
fly), records in archive order. A resumed conversion streams the archive again from its start
and skips the records already converted (reading them, not decoding them). Neither kind knows
its length before the end, so the progress bar counts without a total.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Generator, Iterator
from pathlib import Path

from .base import SourceRecord, parse_label

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif"})


def _stem(name: str) -> str:
    return os.path.basename(name).removesuffix(".tar")


def is_tar_of_tars(path: Path) -> bool:
    """Whether the first file member of the tar at ``path`` is itself a ``.tar``."""
    with tarfile.open(path, mode="r|*") as archive:
        for member in archive:
            if member.isfile():
                return member.name.endswith(".tar")
    return False


def _skip(records: Iterator[SourceRecord], start: int) -> Generator[SourceRecord, None, None]:
    for position, record in enumerate(records):
        if position >= start:
            yield record


class ClassTarsSource:
    """ILSVRC2012's train tar: a tar of per-class tars, streamed; see the module docstring."""

    kind = "tar"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with tarfile.open(self.path, mode="r:*") as archive:
            names = [_stem(m.name) for m in archive.getmembers() if m.isfile() and m.name.endswith(".tar")]
        if not names:
            raise ValueError(f"{str(self.path)!r} holds no per-class .tar members (not the ILSVRC2012 train layout)")
        self.classes = sorted(set(names))
        self._label = {name: i for i, name in enumerate(self.classes)}

    def count(self) -> None:
        """Unknown until streamed (counting would read every inner header)."""
        return None

    def records(self, start: int = 0) -> Generator[SourceRecord, None, None]:
        """Stream the images from position ``start`` on, in archive order."""
        return _skip(self._all(), start)

    def _all(self) -> Iterator[SourceRecord]:
        with tarfile.open(self.path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                if not member.name.endswith(".tar"):
                    yield SourceRecord(member.name, None, -1, f"{member.name}: not a per-class .tar")
                    continue
                label = self._label[_stem(member.name)]
                with tarfile.open(fileobj=archive.extractfile(member), mode="r|") as inner:
                    for image in inner:
                        if image.isfile():
                            file = inner.extractfile(image)
                            assert file is not None  # extractfile is None only for a member that is no file
                            data = file.read()
                            yield SourceRecord(f"{_stem(member.name)}/{image.name}", data, label, "", len(data))


def _split(name: str) -> tuple[str, str]:
    """webdataset's grouping: (key, extension) split at the first dot of the base name."""
    folder, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return os.path.join(folder, stem), extension.lower()


class WebDatasetSource:
    """webdataset shards (``key.jpg`` + ``key.cls``), streamed; see the module docstring."""

    kind = "webdataset"
    classes = None

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.shards = (sorted(p for p in self.path.iterdir() if p.name.endswith(SHARD_SUFFIXES))
                       if self.path.is_dir() else [self.path])
        if not self.shards:
            raise FileNotFoundError(f"{str(self.path)!r} holds no shards ({', '.join(SHARD_SUFFIXES)} files)")

    def count(self) -> None:
        """Unknown until streamed."""
        return None

    def records(self, start: int = 0) -> Generator[SourceRecord, None, None]:
        """Stream the samples from position ``start`` on, shard by shard."""
        return _skip((record for shard in self.shards for record in self._shard(shard)), start)

    def _shard(self, shard: Path) -> Iterator[SourceRecord]:
        group: dict[str, bytes] = {}
        key = None
        with tarfile.open(shard, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                member_key, extension = _split(member.name)
                if key is not None and member_key != key:
                    yield self._sample(shard, key, group)
                    group = {}
                key = member_key
                file = archive.extractfile(member)
                assert file is not None  # extractfile is None only for a member that is no file
                group[extension] = file.read()
        if key is not None:
            yield self._sample(shard, key, group)

    @staticmethod
    def _sample(shard: Path, key: str, group: dict[str, bytes]) -> SourceRecord:
        name = f"{shard.name}/{key}"
        images = [ext for ext in group if ext in IMAGE_EXTENSIONS]
        size = sum(map(len, group.values()))
        if len(images) != 1 or "cls" not in group:
            return SourceRecord(name, None, -1, f"{name}: expected one image and a .cls label, found "
                                                f"{', '.join(sorted(group)) or 'nothing'}", size)
        text = group["cls"].decode("ascii", "replace").strip()
        label = parse_label(text)
        if label is None:
            return SourceRecord(name, None, -1, f"{name}: label {text!r} in {key}.cls is not an integer", size)
        return SourceRecord(name, group[images[0]], label, "", size)  # its range is checked with every source's
