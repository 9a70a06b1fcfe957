"""uint8 pipelines and per-batch normalisation."""

from __future__ import annotations

import pytest
import torch
from torchvision import transforms as v1

from lmdb_dataset.decode.transforms import IMAGENET_MEAN, IMAGENET_STD, NormalizeBatch, train_transform, val_transform


def test_normalize_batch_equals_to_tensor_then_normalize():
    batch = torch.randint(0, 256, (4, 3, 8, 9), dtype=torch.uint8)
    expected = torch.stack([v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)(img.float() / 255) for img in batch])
    assert torch.allclose(NormalizeBatch()(batch), expected, atol=1e-5)


def test_normalize_batch_channels_last_and_dtype():
    out = NormalizeBatch(dtype=torch.float16, channels_last=True)(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    assert out.dtype == torch.float16 and out.is_contiguous(memory_format=torch.channels_last)


def test_normalize_batch_rejects_float_or_unbatched_input():
    with pytest.raises(ValueError, match="uint8 NCHW"):
        NormalizeBatch()(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 NCHW"):
        NormalizeBatch()(torch.zeros(1, 3, 4, 4))


def test_uint8_pipelines_keep_uint8_and_output_size():
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    for transform in (train_transform(), val_transform()):
        out = transform(image)
        assert out.dtype == torch.uint8 and out.shape == (3, 224, 224)
