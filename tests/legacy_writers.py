"""Legacy sources written the way earlier tools write them, and helpers shared by the source tests.

tensorpack's ``LMDBSerializer.save`` runs for real (in a subprocess, since tensorpack picks
its serializer from the environment at import time). The folder2lmdb scripts are not
packages: :func:`write_folder2lmdb` repeats their few writing lines (Lyken17/Efficient-PyTorch
``tools/folder2lmdb.py``). Caffe does not install here: :func:`caffe_datum` lays out a
``Datum`` byte for byte as ``convert_imageset`` writes it (see ``sources/caffe.py``).
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import lmdb
import numpy as np

import lmdb_dataset
from lmdb_dataset import LMDBImageDataset
from lmdb_dataset.storage import format as fmt
from lmdb_dataset.write.convert import image_folder_samples

TENSORPACK_SCRIPT = """
import sys, numpy as np
from tensorpack.dataflow import DataFromList, LMDBSerializer
from lmdb_dataset.write.convert import image_folder_samples
root, target, mode = sys.argv[1:4]
_, samples = image_folder_samples(root)
def image(path):
    data = open(path, "rb").read()
    if mode == "numpy":  # cjsg's numpy mode: decoded pixels, CHW
        from lmdb_dataset.decode.image import decode_image
        return np.ascontiguousarray(decode_image(data).transpose(2, 0, 1))
    return np.frombuffer(data, dtype=np.uint8)  # BinaryILSVRC12: the file's bytes as a uint8 array
LMDBSerializer.save(DataFromList([[image(p), label] for p, label in samples], shuffle=False), target)
"""


def source_images(root: Path) -> list[tuple[str, bytes, int]]:
    """(relative path, file bytes, label) of an ImageFolder tree, in ImageFolder order."""
    _, samples = image_folder_samples(root)
    return [(os.path.relpath(p, root), Path(p).read_bytes(), label) for p, label in samples]


def write_tensorpack(root: Path, target: Path, *, serializer: str = "pickle", mode: str = "jpeg") -> Path:
    """Run tensorpack 0.11's ``LMDBSerializer.save`` on the images (a directory target: subdir=True)."""
    package_root = str(Path(lmdb_dataset.__file__).parent.parent)
    env = {**os.environ, "TENSORPACK_SERIALIZE": serializer, "PYTHONPATH": package_root}
    subprocess.run([sys.executable, "-c", TENSORPACK_SCRIPT, str(root), str(target), mode], env=env,
                   check=True, capture_output=True)
    return target


def write_folder2lmdb(root: Path, target: Path, *, protocol: int) -> Path:
    """folder2lmdb.py's writer: ``(bytes, label)`` pickles under unpadded keys, ``__keys__``, ``__len__``."""
    db = lmdb.open(str(target), subdir=False, map_size=1 << 28, readonly=False, meminit=False, map_async=True)
    with db.begin(write=True) as txn:
        images = source_images(root)
        for idx, (_, data, label) in enumerate(images):
            txn.put(f"{idx}".encode("ascii"), pickle.dumps((data, label), protocol=protocol))
        keys = [f"{k}".encode("ascii") for k in range(len(images))]
        txn.put(b"__keys__", pickle.dumps(keys, protocol=protocol))
        txn.put(b"__len__", pickle.dumps(len(keys), protocol=protocol))
    db.sync()
    db.close()
    return target


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def caffe_datum(*, label: int, data: bytes | None = None, pixels: np.ndarray | None = None) -> bytes:
    """A Datum as convert_imageset serialises it: encoded (file bytes) or raw (planar BGR)."""
    if pixels is None:
        return b"\x22" + _varint(len(data)) + data + b"\x28" + _varint(label) + b"\x38\x01"
    height, width, channels = pixels.shape
    planar = pixels[:, :, ::-1].transpose(2, 0, 1).tobytes()
    return (b"\x08" + _varint(channels) + b"\x10" + _varint(height) + b"\x18" + _varint(width)
            + b"\x22" + _varint(len(planar)) + planar + b"\x28" + _varint(label) + b"\x38\x00")


def write_caffe(root: Path, target: Path, *, encoded: bool) -> Path:
    """convert_imageset's output: ``%08d_<path>`` keys, Datum values, subdir=True."""
    from lmdb_dataset.decode.image import decode_image

    db = lmdb.open(str(target), map_size=1 << 28)
    with db.begin(write=True) as txn:
        for idx, (path, data, label) in enumerate(source_images(root)):
            if encoded:
                value = caffe_datum(label=label, data=data)
            else:
                value = caffe_datum(label=label, pixels=decode_image(data))
            txn.put(f"{idx:08d}_{path}".encode(), value)
    db.close()
    return target


class RunsCommand:
    """Unpickling this runs ``touch <marker>`` (what a hostile LMDB would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def stored_payloads(path: Path) -> list[bytes]:
    """The payloads of a dataset's records, in record order."""
    dataset = LMDBImageDataset(path)
    return [bytes(fmt.payload_of(value)) for _, value in dataset.reader.values(range(len(dataset)))]


def poison(path: Path, key: bytes, value: bytes) -> None:
    """Put ``value`` under ``key`` in a source LMDB (a damaged or hostile record)."""
    env = lmdb.open(str(path), subdir=path.is_dir(), map_size=1 << 28)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar holding ``(name, data)`` members, in that order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ilsvrc_train_tar(images, target: Path, class_order: list[str]) -> list[tuple[str, bytes, int]]:
    """ILSVRC2012_img_train.tar's layout: one tar of per-class tars; returns the images in archive order."""
    members, order = [], []
    for folder in class_order:
        inside = [(Path(p).name, data, label) for p, data, label in images if p.startswith(folder + "/")]
        members.append((f"{folder}.tar", tar_bytes([(name, data) for name, data, _ in inside])))
        order += inside
    target.write_bytes(tar_bytes(members))
    return order


def write_shards(images, folder: Path, per_shard: int = 5) -> None:
    """webdataset's TarWriter layout: members <key>.<ext> grouped by key, here .jpg/.png + .cls."""
    folder.mkdir()
    for shard in range(0, len(images), per_shard):
        members = []
        for index, (path, data, label) in enumerate(images[shard:shard + per_shard], start=shard):
            members += [(f"sample{index:06d}.{Path(path).suffix[1:].lower()}", data),
                        (f"sample{index:06d}.cls", str(label).encode())]
        (folder / f"shard-{shard // per_shard:05d}.tar").write_bytes(tar_bytes(members))
