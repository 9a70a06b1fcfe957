"""The image pipelines the cases compare: uint8 v2 (lmdb_dataset's), float v2, classic v1 PIL, and loaders."""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


def dali_iterator(folder: str | Path, *, train: bool, decoder: str, device_id: int | None, batch_size: int,
                  num_threads: int, size: int = 224, seed: int = -1) -> Iterable:
    """DALI's ImageNet pipeline (NVIDIA's ResNet-50 recipe) over an ImageFolder, as a ``DALIGenericIterator``.

    ``fn.readers.file`` (shuffled when ``train``) -> ``fn.decoders.image_random_crop`` (train:
    torchvision's area and aspect ranges) or ``fn.decoders.image`` (val) on ``decoder``
    (``"cpu"`` or ``"mixed"``) -> ``fn.resize`` (train: to ``size`` x ``size``; val: shorter side
    ``round(size * 256 / 224)``) -> ``fn.crop_mirror_normalize`` (float CHW, ImageNet mean/std,
    random mirror when ``train``, centre crop ``size``). ``device_id=None`` builds a CPU-only
    pipeline; ``seed=-1`` (the default) is DALI's random seed. Yields one epoch per iteration of
    the iterator (last partial batch dropped); each item is ``[{"images": ..., "labels": ...}]``.
    """
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    mean = [255 * m for m in IMAGENET_MEAN]
    std = [255 * s for s in IMAGENET_STD]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def pipeline():
        jpegs, labels = fn.readers.file(file_root=str(folder), random_shuffle=train, name="reader")
        if train:
            images = fn.decoders.image_random_crop(jpegs, device=decoder, output_type=types.RGB,
                                                   random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
            images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=round(size * 256 / 224), antialias=True)
            mirror = 0
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          crop=(size, size), mean=mean, std=std, mirror=mirror)
        return images, (labels if decoder == "cpu" else labels.gpu())

    pipe = pipeline()
    pipe.build()
    return DALIGenericIterator(pipe, ["images", "labels"], reader_name="reader", auto_reset=True,
                               last_batch_policy=LastBatchPolicy.DROP)


# --------------------------------------------------------------------------- decode ceilings
