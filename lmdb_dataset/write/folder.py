"""The ImageFolder layout (``root/<class>/<image>``): its classes and samples, found as torchvision finds them.

:func:`find_classes` and :func:`make_dataset` follow ``torchvision.datasets.folder`` rule for
rule, without importing torch or torchvision (the conversion path starts at once):

* classes are the names of the entries of ``root`` that are directories (symbolic links to
  directories included), sorted; label ``i`` is ``classes[i]``;
* each class folder is walked recursively (following symbolic links), directories in sorted
  order and files sorted within each directory; a file is a sample when its name ends, in
  any letter case, with one of :data:`IMG_EXTENSIONS`;
* hidden files and folders (names starting with ``.``) are not special: they count like any
  other, exactly as in torchvision;
* a class folder holding no image is an error, as in ``ImageFolder``.

Only the error messages differ: they explain the expected layout, and recognise a source that
is one class folder rather than the root, and a dataset written inside the source.
"""

from __future__ import annotations

import os
from pathlib import Path

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File name endings ``ImageFolder`` takes as images (compared in lower case)."""

LAYOUT = "SRC/<class>/<image> (one sub-folder per class, e.g. train/n01440764/n01440764_10026.JPEG)"
"""The expected layout, as the error messages describe it."""


def is_image_file(name: str) -> bool:
    """Whether a file name ends with one of :data:`IMG_EXTENSIONS`, in any letter case."""
    return name.lower().endswith(IMG_EXTENSIONS)


def find_classes(root: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
    """The class folders of ``root``, sorted, and their labels (torchvision's ``find_classes``).

    Raises:
        FileNotFoundError: ``root`` holds no sub-folder; the message describes the layout, and
            says so when ``root`` looks like a single class folder (it holds images).
    """
    with os.scandir(root) as entries:
        listed = list(entries)
    classes = sorted(entry.name for entry in listed if entry.is_dir())
    if not classes:
        images = sum(1 for entry in listed if is_image_file(entry.name))
        hint = (f" It holds {images} image file(s) directly: it looks like one class folder, not the root of "
                f"the tree; pass the folder above it (its parent, {str(Path(root).resolve().parent)!r}), which "
                "holds one such folder per class." if images else "")
        raise FileNotFoundError(f"found no class folder in {str(root)!r}; an image folder is laid out as "
                                f"{LAYOUT}.{hint}")
    return classes, {name: i for i, name in enumerate(classes)}


def make_dataset(root: str | os.PathLike, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """Every ``(path, label)`` sample under ``root``, in ImageFolder's order (torchvision's ``make_dataset``).

    Paths are ``os.path.join(str(root), class, ...)``, as torchvision builds them.

    Raises:
        FileNotFoundError: A class folder holds no image; the message names it (and says when it
            is a dataset written inside the source).
    """
    root = os.path.expanduser(os.fspath(root))
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    for name in sorted(class_to_idx):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        found = len(samples)
        for directory, _, files in sorted(os.walk(folder, followlinks=True)):
            samples.extend((os.path.join(directory, file), class_to_idx[name])
                           for file in sorted(files) if is_image_file(file))
        if len(samples) == found:
            empty.append(name)
    if empty:
        datasets = [name for name in empty if os.path.exists(os.path.join(root, name, "data.mdb"))]
        hint = (f" {str(os.path.join(root, datasets[0]))!r} is an LMDB dataset, not a class folder: move it "
                "out of the source tree." if datasets else "")
        raise FileNotFoundError(f"found no image file in the class folder(s) {', '.join(sorted(empty))} of "
                                f"{str(root)!r} (images end with {', '.join(IMG_EXTENSIONS)}, in any case); "
                                f"an image folder is laid out as {LAYOUT}.{hint}")
    return samples


def image_folder_samples(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and ``(path, label)`` samples in exactly torchvision ImageFolder's order.

    Sample ``i`` of a converted dataset is ``ImageFolder(root).samples[i]`` (and so is record
    ``i`` of an ``order="folder"`` conversion).

    Raises:
        FileNotFoundError: ``root`` is not a directory, holds no class folder, or a class folder
            holds no image.
    """
    if not Path(root).is_dir():
        raise FileNotFoundError(f"source folder {str(root)!r} does not exist or is not a directory")
    classes, class_to_idx = find_classes(root)
    return classes, make_dataset(root, class_to_idx)
