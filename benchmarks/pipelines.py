"""The image pipelines the cases compare: uint8 v2 (lmdb_dataset's), float v2, classic v1 PIL, and loaders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms as v1
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from lmdb_dataset.decode.image import decode_image
from lmdb_dataset.decode.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform, val_transform


class HWCToCHW:
    """Wraps a uint8 CHW transform so it takes an HWC numpy array (the peers' interface)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.transform(torch.from_numpy(image).permute(2, 0, 1))


def uint8_pipeline(kind: str) -> v2.Compose:
    """The v2 uint8 pipeline: ``train`` (RandomResizedCrop 224 + flip) or ``val`` (Resize 256 + CenterCrop)."""
    return train_transform() if kind == "train" else val_transform()


def float_v2_pipeline(kind: str) -> v2.Compose:
    """The uint8 pipeline followed by float conversion and normalisation in the worker."""
    return v2.Compose([uint8_pipeline(kind), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def classic_pipeline(kind: str) -> v1.Compose:
    """torchvision's classic PIL pipeline with float output (the ImageNet example's)."""
    head = ([v1.RandomResizedCrop(224), v1.RandomHorizontalFlip()] if kind == "train"
            else [v1.Resize(256), v1.CenterCrop(224)])
    return v1.Compose([*head, v1.ToTensor(), v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def simplejpeg_loader(path: str) -> torch.Tensor:
    """ImageFolder loader: file -> CHW uint8 tensor (simplejpeg, Pillow fallback for non-JPEG)."""
    with open(path, "rb") as file:
        return torch.from_numpy(decode_image(file.read())).permute(2, 0, 1)


class SimplejpegImageFolder(ImageFolder):
    """ImageFolder whose loader decodes with simplejpeg into CHW uint8 tensors."""

    def __init__(self, root: str | Path, transform: Callable) -> None:
        super().__init__(str(root), transform=transform, loader=simplejpeg_loader)


# --------------------------------------------------------------------------- decode ceilings
