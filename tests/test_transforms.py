"""uint8 pipelines and per-batch normalisation."""

from __future__ import annotations

import copy
import pickle
import shutil

import pytest
import torch
from torchvision import transforms as v1

from lmdb_dataset.decode import transforms
from lmdb_dataset.decode.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NormalizeBatch,
    RecycledHostBatches,
    train_transform,
    val_transform,
)

needs_one_pass = pytest.mark.skipif(transforms.normalize_in_one_pass is None,
                                    reason="the _normalize extension is not built")


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
    with pytest.raises(ValueError, match=r"the batch has 4 channels \(shape \(2, 4, 8, 8\)\); mean and std have 3"):
        NormalizeBatch()(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("mean, std", [((124, 116, 104), (58, 57, 57)), ((0.5,) * 3, (0,) * 3),
                                       ((0.5,) * 2, (0.5,) * 3)])
def test_normalize_batch_refuses_mean_and_std_outside_0_1_or_of_other_lengths(mean, std):
    with pytest.raises(ValueError, match=r"need one value per channel, in \[0, 1\]"):
        NormalizeBatch(mean, std)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_batch_of_no_images_is_an_empty_batch_like_the_torch_ops(dtype, channels_last):
    out = NormalizeBatch(dtype=dtype, channels_last=channels_last)(torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    assert out.shape == (0, 3, 8, 8) and out.dtype == dtype


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


def test_one_pass_kernel_is_built_where_a_c_compiler_is():
    """CI builds the package with a compiler: a silently failed build of the optional piece must show up here."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: NormalizeBatch uses torch ops")
    assert transforms.normalize_in_one_pass is not None


@needs_one_pass
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_pass_kernel_is_bit_identical_to_the_torch_ops_for_every_value(monkeypatch, dtype, channels_last):
    # Every uint8 value in every channel, a non-contiguous input, and other statistics than ImageNet's.
    values = torch.arange(256, dtype=torch.uint8)
    batch = torch.stack([values.roll(k).view(16, 16).expand(4, 16, 16) for k in range(6)])[:, :, :, 3:]
    batch = batch.transpose(2, 3)
    assert not batch.is_contiguous()
    normalize = NormalizeBatch(mean=(0.5, 0.25, 0.125, 0.7), std=(0.2, 0.3, 0.9, 0.05), dtype=dtype,
                               channels_last=channels_last)
    fast = normalize(batch).clone()
    monkeypatch.setattr(transforms, "normalize_in_one_pass", None)
    reference = normalize(batch)
    assert fast.dtype == reference.dtype == dtype
    assert fast.stride() == reference.stride()
    assert torch.equal(fast.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       reference.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))  # bit for bit


@needs_one_pass
def test_one_pass_kernel_refuses_buffers_of_the_wrong_size():
    kernel = transforms.normalize_in_one_pass
    assert kernel is not None
    src, dst = bytes(2 * 3 * 4), bytearray(2 * 3 * 4 * 4)
    kernel(src, dst, [1.0] * 3, [0.0] * 3, 2, 3, 4, 0, False)
    assert dst == bytes(len(dst))
    with pytest.raises(ValueError, match="dst"):
        kernel(src, bytearray(len(dst) - 1), [1.0] * 3, [0.0] * 3, 2, 3, 4, 0, False)
    with pytest.raises(ValueError, match="one value per channel"):
        kernel(src, dst, [1.0] * 2, [0.0] * 3, 2, 3, 4, 0, False)
    with pytest.raises(ValueError, match="kind"):
        kernel(src, dst, [1.0] * 3, [0.0] * 3, 2, 3, 4, 2, False)


@needs_one_pass
def test_a_normalize_batch_moved_to_float64_keeps_the_torch_ops_float64_arithmetic():
    batch = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    normalize = NormalizeBatch().to(torch.float64)  # its statistics in float64: so is the arithmetic
    expected = (batch.double() * normalize.scale + normalize.shift).float()
    assert torch.equal(normalize(batch), expected)
