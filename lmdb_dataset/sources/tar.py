"""Tar archives read as streams, never extracted: ILSVRC2012's train tar, a tar of an image folder, webdataset shards.

``tar`` kind - the ILSVRC2012 train layout: one tar whose members are per-class tars
(``n01440764.tar`` holding ``n01440764_10026.JPEG`` ...). The class names are the inner
tars' names without ``.tar``, sorted (ImageNet's usual label order, as ImageFolder on the
extracted tree); a first, header-only pass lists them (fast on an uncompressed tar: it seeks
from header to header).

``folder-tar`` kind - a tar of an ImageFolder tree (``tar cf train.tar train``): members
``<root>/<class>/.../<image>`` below one common folder ``<root>`` (any depth, or none). The
root is the deepest folder that holds every image and no image directly; its sub-folders are
the classes, and the samples are torchvision ``ImageFolder``'s on the extracted tree: classes
sorted, files ending with one of its extensions (:data:`~lmdb_dataset.write.folder.IMG_EXTENSIONS`,
any case) walked folder by folder in sorted order; other members are ignored. A tar whose images
include links (hard-linked files, ``tar -h``) or whose class folders include an empty one is
refused. The root is a guess where the tar holds one class folder whose images all lie in
sub-folders (``train/a/s1/x.jpg``, ``train/a/s2/y.jpg``): the sub-folders are taken as the
classes; extract such a tar and convert the folder you mean.
A first, header-only pass lists the members; the records are then streamed in archive order
and the dataset stores ImageFolder's order as its sample order, so ``LMDBImageDataset(dst)[i]``
is ``ImageFolder(extracted root)[i]``.

``webdataset`` kind - shards whose members are grouped by key: ``<key>.jpg`` (or another
image extension) and ``<key>.cls`` (the integer label as text); the key is the member
name up to the first dot of its base name, as webdataset groups them. SRC is one shard or
a directory of shards (``.tar``, ``.tar.gz``, ``.tgz``), read in name order.

All are streamed with ``tarfile``'s ``r|*`` mode (gzip and others are decompressed on the
fly), records in archive order. A resumed conversion streams the archive again from its start
and skips the records already converted (reading them, not decoding them). Only a folder tar knows
its length before the end (from its header pass); the others' progress bar counts without a total.

:func:`tar_kind` tells the three apart from the first members: a ``.tar`` member first is ILSVRC's
layout, a ``<key>.cls`` label among them webdataset, images in folders and no label a folder tar.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tarfile
from collections.abc import Generator, Iterator
from pathlib import Path

from ..write.folder import IMG_EXTENSIONS, LAYOUT, is_image_file
from .base import SourceRecord, parse_label

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif"})


def _stem(name: str) -> str:
    return os.path.basename(name).removesuffix(".tar")


PEEK_MEMBERS = 64
"""File members :func:`tar_kind` reads before it decides."""


def tar_kind(path: Path) -> str:
    """``"tar"`` (a tar of per-class tars), ``"folder-tar"`` or ``"webdataset"``: the layout of the tar at ``path``.

    Decided from the first :data:`PEEK_MEMBERS` file members: ILSVRC's layout when the first is a
    ``.tar``; webdataset when one is a ``<key>.cls`` label (webdataset groups each sample's members
    by key); a folder tar when one is an image inside a folder, and none a label; else webdataset
    (whose reader then says what it found).
    """
    return _kind_of(_first_files(path))


def _kind_of(names: list[str]) -> str:
    """:func:`tar_kind` from the names of a tar's first file members."""
    if names and names[0].endswith(".tar"):
        return "tar"
    if _has_label(names):
        return "webdataset"
    return "folder-tar" if any(is_image_file(name) and len(_parts(name)) >= 2 for name in names) else "webdataset"


def _first_files(path: Path) -> list[str]:
    """The names of the first :data:`PEEK_MEMBERS` file members of the tar at ``path``."""
    with tarfile.open(path, mode="r|*") as archive:
        return [member.name for member in itertools.islice((m for m in archive if m.isfile()), PEEK_MEMBERS)]


def _has_label(names: list[str]) -> bool:
    """Whether one of these member names is a webdataset ``<key>.cls`` label."""
    return any(_split(name)[1] == "cls" for name in names)


def _parts(name: str) -> list[str]:
    """A member name's path components, without ``.`` and empty ones (``./a//b`` is ``a/b``)."""
    return [part for part in name.split("/") if part not in ("", ".")]


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


class FolderTarSource:
    """A tar of an ImageFolder tree, streamed; see the module docstring."""

    kind = "folder-tar"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        with tarfile.open(self.path, mode="r:*") as archive:
            members = archive.getmembers()
        names = ["/".join(_parts(m.name)) for m in members if m.isfile()]
        links = [m.name for m in members if (m.issym() or m.islnk()) and is_image_file(m.name)]
        if links:  # a stream cannot go back to a link's target; dropping them would shift the labels
            raise ValueError(f"{str(self.path)!r} holds images stored as links (e.g. {links[0]!r}; `tar -h` or "
                             "hard-linked files make them): extract it and convert the folder (lmdb-dataset "
                             "convert DIR DST)")
        labels = [name for name in names if _split(name)[1] == "cls"]
        if labels:
            raise ValueError(f"{str(self.path)!r} holds .cls label members (e.g. {labels[0]!r}): it is a webdataset "
                             "shard, not a tar of an image folder; convert it with kind='webdataset' "
                             "(--from webdataset)")
        images = [name for name in names if is_image_file(name)]
        self.root = self._root(images)
        root = _parts(self.root)
        depth = len(root)
        below = [name.split("/")[depth:] for name in images]
        self.classes = sorted({parts[0] for parts in below})  # every image is in a class folder of the root
        folders = {parts[depth] for m in members if m.isdir()
                   and len(parts := _parts(m.name)) > depth and parts[:depth] == root}
        if empty := sorted(folders - set(self.classes)):  # as ImageFolder and the folder conversion refuse them
            raise ValueError(f"{str(self.path)!r}: found no image file in the class folder(s) "
                             f"{', '.join(empty)} of {self.root or 'its top level'!r}; remove them or add images")
        label = {name: i for i, name in enumerate(self.classes)}
        # ImageFolder's order: classes sorted, then sorted(os.walk(class folder)) - folders by path, files by name.
        samples = sorted((label[parts[0]], "/".join(parts[:-1]), parts[-1]) for parts in below)
        self.samples = [(f"{folder}/{file}", target) for target, folder, file in samples]
        """(path below the root, label) of every image, in ImageFolder's order: the dataset's sample order."""
        self._label = dict(self.samples)

    def _root(self, images: list[str]) -> str:
        """The deepest folder holding every image and none directly (``""``: the tar's top level)."""
        if not images:
            raise ValueError(f"{str(self.path)!r} holds no image file (ending with one of "
                             f"{', '.join(IMG_EXTENSIONS)}): not a tar of an image folder")
        if len(set(images)) != len(images):
            twice = next(name for name in images if images.count(name) > 1)
            raise ValueError(f"{str(self.path)!r} holds {twice!r} twice (appended): extract it and convert the "
                             "folder (lmdb-dataset convert DIR DST)")
        folders = [_parts(name)[:-1] for name in images]
        common = os.path.commonprefix(folders)
        if any(len(folder) == len(common) for folder in folders):
            if not common:
                raise ValueError(f"{str(self.path)!r} holds images at its top level, not in class folders: not a "
                                 f"tar of an image folder (laid out as {LAYOUT})")
            common = common[:-1]  # an image directly in it: it is a class folder (or holds stray images)
        return "/".join(common)

    def count(self) -> int:
        """The number of images (known from the header pass)."""
        return len(self.samples)

    def records(self, start: int = 0) -> Generator[SourceRecord, None, None]:
        """Stream the images from position ``start`` on, in archive order."""
        return _skip(self._all(), start)

    def _all(self) -> Iterator[SourceRecord]:
        prefix = f"{self.root}/" if self.root else ""
        with tarfile.open(self.path, mode="r|*") as archive:
            for member in archive:
                name = "/".join(_parts(member.name))
                if not member.isfile() or not name.startswith(prefix) or name[len(prefix):] not in self._label:
                    continue
                file = archive.extractfile(member)
                assert file is not None  # extractfile is None only for a member that is no file
                data = file.read()
                yield SourceRecord(name[len(prefix):], data, self._label[name[len(prefix):]], "", len(data))


def _split(name: str) -> tuple[str, str]:
    """webdataset's grouping: (key, extension) split at the first dot of the base name."""
    folder, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return os.path.join(folder, stem), extension.lower()


def _groups(shard: Path) -> Generator[tuple[str, dict[str, bytes]], None, None]:
    """A shard's samples as (key, {extension: bytes}): consecutive file members of one key (webdataset's grouping)."""
    group: dict[str, bytes] = {}
    key = None
    with tarfile.open(shard, mode="r|*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            member_key, extension = _split(member.name)
            if key is not None and member_key != key:
                yield key, group
                group = {}
            key = member_key
            file = archive.extractfile(member)
            assert file is not None  # extractfile is None only for a member that is no file
            group[extension] = file.read()
    if key is not None:
        yield key, group


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
        self._check_first_sample()

    def _check_first_sample(self) -> None:
        """Refuse a tar with no ``.cls`` label in its first sample nor its first members: it is no webdataset shard.

        Raises:
            ValueError: The message says what the first sample holds, and what the tar is when it is
                a tar of an image folder or of class tars.
        """
        shard = self.shards[0]
        with contextlib.closing(_groups(shard)) as groups:
            key, group = next(groups, ("", {"cls": b""}))
        if "cls" in group:
            return
        names = _first_files(shard)
        if _has_label(names):
            return  # a labelled shard whose first sample lacks its label: a bad record (skip_bad)
        kind = _kind_of(names)
        what = {"folder-tar": "it is a tar of an image folder: convert it with kind='folder-tar' (--from folder-tar)",
                "tar": "it is a tar of class tars: convert it with kind='tar' (--from tar)"}.get(
            kind, "webdataset shards hold <key>.jpg + <key>.cls members")
        raise ValueError(f"{str(shard)!r} is not a webdataset shard: its first sample {key!r} holds "
                         f"{', '.join(sorted(group))} and no {os.path.basename(key)}.cls label; {what}")

    def count(self) -> None:
        """Unknown until streamed."""
        return None

    def records(self, start: int = 0) -> Generator[SourceRecord, None, None]:
        """Stream the samples from position ``start`` on, shard by shard."""
        return _skip((record for shard in self.shards for record in self._shard(shard)), start)

    def _shard(self, shard: Path) -> Iterator[SourceRecord]:
        return (self._sample(shard, key, group) for key, group in _groups(shard))

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
