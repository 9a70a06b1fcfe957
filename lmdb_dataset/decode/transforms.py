"""Fast image pipelines: uint8 augmentation in workers, normalisation once per batch.

Augmenting uint8 images and normalising a whole batch later (on the GPU if there is one)
keeps DataLoader workers on the cheap integer path and ships 4x less data between
processes than float tensors::

    dataset = LMDBImageDataset(path, transform=train_transform(), output="tensor")
    loader = DataLoader(dataset, batch_size=256, num_workers=8, pin_memory=True)
    normalize = NormalizeBatch().to(device)
    for images, labels in loader:
        images = normalize(images.to(device, non_blocking=True))  # float32, normalised
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(size: int = 224) -> v2.Compose:
    """RandomResizedCrop + horizontal flip on a uint8 CHW tensor (``output="tensor"``)."""
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])


def val_transform(size: int = 224, resize: int = 256) -> v2.Compose:
    """Resize (shorter side) + CenterCrop on a uint8 CHW tensor (``output="tensor"``)."""
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size)])


class NormalizeBatch(nn.Module):
    """Turns a uint8 NCHW batch into normalised float: ``(x / 255 - mean) / std``.

    Runs wherever the batch is (CPU or GPU); move the module with ``.to(device)``.

    Args:
        mean: Per-channel mean in [0, 1]. Defaults to ImageNet's.
        std: Per-channel standard deviation in [0, 1]. Defaults to ImageNet's.
        dtype: Output dtype. Defaults to float32.
        channels_last: Return channels-last memory format (faster convolutions on GPUs).
            Defaults to False.
    """

    scale: torch.Tensor  # buffers, registered in __init__
    shift: torch.Tensor

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, *,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError("mean and std need one value per channel, std > 0")
        scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected a uint8 NCHW batch, got {images.dtype} of shape {tuple(images.shape)}")
        # One float allocation, then in place: ~1.7x faster on CPU than addcmul's temporaries.
        out = images.to(self.scale.dtype).mul_(self.scale).add_(self.shift).to(self.dtype)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out
