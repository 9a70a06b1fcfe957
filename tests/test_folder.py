"""Class discovery without torchvision: the same classes, samples and order as ImageFolder, on tricky trees."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import PROPERTY
from torchvision.datasets import folder as tv

from lmdb_dataset import convert_image_folder
from lmdb_dataset.write.folder import IMG_EXTENSIONS, image_folder_samples

_STEMS = st.sampled_from(["a", "B", ".hidden", "_x", "z.jpg", "JPG", "img 1", "é", ".", ".."])
_ENDINGS = st.sampled_from(["", ".jpg", ".JPG", ".Jpeg", ".png", ".PNG", ".webp", ".tif", ".TIFF", ".pgm",
                            ".gif", ".txt", ".jpg.txt", ".jpg~", ".npy", ".heic", ".JPEG"])
_NAMES = st.builds(lambda stem, end: stem + end, _STEMS, _ENDINGS).filter(lambda n: n not in (".", ".."))
_TREES = st.recursive(st.dictionaries(_NAMES, st.just(None), max_size=4),
                      lambda children: st.dictionaries(_NAMES, children, max_size=4), max_leaves=14)


def _build(root: Path, tree: dict) -> None:
    for name, child in tree.items():
        if child is None:
            (root / name).write_bytes(b"")
        else:
            (root / name).mkdir()
            _build(root / name, child)


def _torchvision(root: Path):
    try:
        classes, class_to_idx = tv.find_classes(str(root))
        return classes, tv.make_dataset(str(root), class_to_idx, extensions=tv.IMG_EXTENSIONS)
    except FileNotFoundError:
        return FileNotFoundError


def _ours(root: Path):
    try:
        return image_folder_samples(root)
    except FileNotFoundError:
        return FileNotFoundError


def test_image_extensions_are_torchvisions():
    assert IMG_EXTENSIONS == tv.IMG_EXTENSIONS


@PROPERTY
@given(tree=_TREES)
def test_classes_and_samples_equal_torchvisions_on_any_tree(tree):
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "src"
        root.mkdir()
        _build(root, tree)
        assert _ours(root) == _torchvision(root)


def test_symbolic_links_hidden_entries_and_letter_case_as_torchvision(tmp_path):
    root, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    for folder in (root / "b" / "sub" / ".deeper", root / ".hidden_class", elsewhere / "inner"):
        folder.mkdir(parents=True)
    for path in (root / "b" / "x.JPEG", root / "b" / ".dot.jpg", root / "b" / "sub" / ".deeper" / "y.Png",
                 root / ".hidden_class" / "z.webp", elsewhere / "inner" / "w.jpg", root / "b" / "notes.txt",
                 root / "stray.jpg"):
        path.write_bytes(b"")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # a class folder through a link
    (root / "b" / "loop").symlink_to(elsewhere / "inner", target_is_directory=True)  # followed inside a class
    classes, samples = image_folder_samples(root)
    assert (classes, samples) == _torchvision(root)
    assert classes == [".hidden_class", "b", "linked"] and len(samples) == 6


def test_one_class_folder_as_source_gets_the_layout_hint(image_folder, tmp_path):
    one_class = image_folder(12, special=False) / "class_000"
    with pytest.raises(FileNotFoundError, match=r"found no class folder in .*class_000.*SRC/<class>/<image>.*"
                                                r"holds 4 image file\(s\) directly.*one class folder.*parent"):
        convert_image_folder(one_class, tmp_path / "out.lmdb", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="found no class folder") as error:
        image_folder_samples(tmp_path / "empty")
    assert "directly" not in str(error.value)
    assert not (tmp_path / "out.lmdb").exists()


def test_convert_imports_neither_torch_nor_torchvision(image_folder, tmp_path):
    script = ("import sys; from lmdb_dataset.tools.cli import main; "
              "status = main(['convert', sys.argv[1], sys.argv[2], '--workers', '2', '--quiet']); "
              "assert status == 0, status; "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    result = subprocess.run([sys.executable, "-c", script, str(image_folder()), str(tmp_path / "out.lmdb")],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]" and "wrote 29 records" in result.stdout
