"""uint8 pipelines and per-batch normalisation."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torchvision import transforms as v1

from lmdb_dataset.decode.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NormalizeBatch,
    RecycledHostBatches,
    train_transform,
    val_transform,
)


def test_normalize_batch_equals_to_tensor_then_normalize():
    batch = torch.randint(0, 256, (4, 3, 8, 9), dtype=torch.uint8)
    expected = torch.stack([v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)(img.float() / 255) for img in batch])
    assert torch.allclose(NormalizeBatch()(batch), expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_batch_channels_last_and_dtype(dtype, channels_last):
    batch = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    normalize = NormalizeBatch(dtype=dtype, channels_last=channels_last)
    for _ in range(3):  # fresh, then recycled memory
        out = normalize(batch)
        assert out.dtype == dtype and out.shape == batch.shape
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert torch.equal(out, NormalizeBatch()(batch).to(dtype))


def _normalized(value: int) -> torch.Tensor:
    return NormalizeBatch()(torch.full((2, 3, 4, 4), value, dtype=torch.uint8))


def test_normalize_batch_recycles_memory_only_when_nothing_refers_to_it():
    normalize = NormalizeBatch()
    first = normalize(torch.full((2, 3, 4, 4), 1, dtype=torch.uint8))
    address = first.data_ptr()
    kept = {"tensor": first, "view": first[1:], "numpy": first.numpy(), "reshaped": first.view(-1)}
    del first
    for name in list(kept):
        for value in (2, 3, 4, 5, 6):  # more batches than the pool tracks
            assert normalize(torch.full((2, 3, 4, 4), value, dtype=torch.uint8)).data_ptr() != address
        held = kept.pop(name)
        expected = _normalized(1)[1:] if name == "view" else _normalized(1)
        assert torch.equal(torch.as_tensor(held).reshape(expected.shape), expected), name  # never overwritten
        del held
    # Nothing refers to the first batches any more: their memory is written again.
    again = [normalize(torch.full((2, 3, 4, 4), 7, dtype=torch.uint8)) for _ in range(2)]
    assert all(torch.equal(batch, _normalized(7)) for batch in again)
    assert len({batch.data_ptr() for batch in again}) == 2


def test_normalize_batch_reuses_a_released_batch():
    normalize = NormalizeBatch()
    batch = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    address = normalize(batch).data_ptr()
    assert normalize(batch).data_ptr() == address


def test_recycled_host_batches_pickle_and_copy_without_their_buffers():
    normalize = NormalizeBatch()
    normalize(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    for clone in (copy.deepcopy(normalize), pickle.loads(pickle.dumps(normalize))):
        assert clone.host.keep == RecycledHostBatches().keep and not clone.host._buffers
        assert torch.equal(clone(torch.zeros(2, 3, 4, 4, dtype=torch.uint8)), _normalized(0))


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


def test_normalize_batch_works_through_a_large_batch_a_few_images_at_a_time():
    batch = torch.randint(0, 256, (3, 3, 600, 600), dtype=torch.uint8)  # 4.3 MB of floats an image: one at a time
    expected = torch.stack([v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)(img.float() / 255) for img in batch])
    for channels_last in (False, True):
        assert torch.allclose(NormalizeBatch(channels_last=channels_last)(batch), expected, atol=1e-5)
