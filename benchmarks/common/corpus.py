"""The data measured: the generated photo corpus, evenly spread subsets of it, and its cached conversions.

Everything goes under the ``--data`` folder (default ``benchmarks/data``, ignored by git): a corpus is
generated once per size, subsets are folders of symlinks, conversions are cached by the corpus's
file names and sizes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from torchvision.datasets import ImageFolder

from lmdb_dataset import LMDBImageDataset, convert_image_folder
from lmdb_dataset.storage.environment import environments

from .harness import CORES, MB, child_env


def corpus_key(files: list[str]) -> str:
    """A short key naming a corpus (its files and their sizes) for cached conversions."""
    digest = hashlib.sha1()
    for path in files:
        digest.update(f"{path}:{os.path.getsize(path)}\n".encode())
    return digest.hexdigest()[:12]


def default_corpus(data: Path, num_images: int) -> Path:
    """``DATA/corpus-N/train``: a generated corpus of ``num_images`` images, made with make_corpus.py if missing."""
    root = data / f"corpus-{num_images}"
    if not (root / "corpus_stats.json").exists():
        minutes = num_images / 50 / 60
        print(f"generating a {num_images}-image corpus in {root} (~{minutes:.1f} min on 2 cores)", flush=True)
        subprocess.run([sys.executable, "-m", "benchmarks.common.make_corpus", str(root), "--num-images",
                        str(num_images), "--workers", str(CORES)], check=True, env=child_env())
    return root / "train"


def limited_folder(data: Path, folder: Path, limit: int | None) -> Path:
    """An ImageFolder of symlinks to ``limit`` images spread evenly over ``folder`` (or ``folder`` itself)."""
    files = [path for path, _ in ImageFolder(str(folder)).samples]
    if limit is None or limit >= len(files):
        return folder
    chosen = files[:: len(files) // limit][:limit]
    subset = data / "subsets" / f"{corpus_key(chosen)}-{limit}"
    if not subset.exists():
        staging = subset.with_suffix(".partial")
        for path in chosen:
            link = staging / Path(path).parent.name / Path(path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(path).resolve())
        staging.rename(subset)
    return subset


def converted(data: Path, folder: Path, files: list[str], storage: str) -> Path:
    """The cached conversion of ``folder`` with ``storage``, converted now if missing."""
    path = data / "lmdb" / f"{corpus_key(files)}-{storage}.lmdb"
    try:
        if len(LMDBImageDataset(path)) == len(files):
            return path
    except Exception:
        pass
    print(f"converting {folder} ({storage}) into {path}", flush=True)
    convert_image_folder(folder, path, storage=storage, workers=CORES, overwrite=True)
    environments.release(path)
    return path


def disk_mb(path: Path) -> float:
    """Size in MB of a file, or of the files directly in a directory (a dataset's data.mdb and lock.mdb)."""
    path = Path(path)
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files) / MB
