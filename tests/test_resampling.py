"""Batched crop + antialiased resize: the worker path's pixels within a grey level, in a fixed number of ops."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.io import decode_jpeg
from torchvision.transforms.v2 import functional as F

from lmdb_dataset import LMDBImageDataset
from lmdb_dataset.decode.crop import CenterCropDecode, CropBox, CropDecoder, RandomResizedCropDecode
from lmdb_dataset.decode.device import device_decodable
from lmdb_dataset.decode.resampling import antialias_weights, crop_resize, resampling_geometry
from lmdb_dataset.storage.format import decode_header, payload_of
from lmdb_dataset.tools.photo_folders import make_photo_folder


@pytest.fixture(scope="module")
def fixture_images(dataset_path) -> list[torch.Tensor]:
    """The fixture corpus's colour JPEGs, decoded at full size (what nvJPEG hands the device path)."""
    images = []
    for _, value in LMDBImageDataset(dataset_path).reader.values(list(range(32))):
        header, payload = decode_header(value), bytes(payload_of(value))
        if device_decodable(header, payload):
            images.append(decode_jpeg(torch.frombuffer(bytearray(payload), dtype=torch.uint8)))
    return images


@pytest.fixture(scope="module")
def imagenet_images(tmp_path_factory) -> list[torch.Tensor]:
    """16 ImageNet-sized photos (median 500x375)."""
    root = tmp_path_factory.mktemp("imagenet")
    make_photo_folder(root, num_images=16, num_classes=2, size_profile="imagenet", seed=0)
    return [decode_jpeg(torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8))
            for f in sorted(root.rglob("*.JPEG"))]


def _both(crop: CropDecoder, images: list[torch.Tensor], seed: int = 0, *, finish_dtype=torch.uint8):
    """(batched, image-by-image ``crop.finish``) outputs under the same boxes."""
    torch.manual_seed(seed)
    boxes = [crop.box(*image.shape[-2:]) for image in images]
    geometry = torch.tensor([resampling_geometry(crop, box, full_height=image.shape[-2], full_width=image.shape[-1])
                             for image, box in zip(images, boxes)])
    expected = torch.stack([
        crop.finish(image.to(finish_dtype), box, full_height=image.shape[-2], full_width=image.shape[-1])
        .round().clamp(0, 255).to(torch.uint8) for image, box in zip(images, boxes)])
    return crop_resize(images, geometry, size=crop.size), expected


DECODERS = {"train": lambda size: RandomResizedCropDecode(size), "val": lambda size: CenterCropDecode(size)}


@pytest.mark.parametrize("split", ["train", "val"])
def test_batched_equals_the_worker_paths_uint8_finish_within_one_grey_level(split, fixture_images, imagenet_images):
    """torchvision's uint8 CPU kernel rounds its weights to fixed point: values 1 apart at most.

    Measured: 16% of values off by one (mean 0.16) on the ImageNet-sized photos at 224,
    the fixture corpus at 32 alike.
    """
    for images, size in ((fixture_images, 32), (imagenet_images, 224)):
        batched, expected = _both(DECODERS[split](size), images)
        difference = (batched.int() - expected.int()).abs()
        assert difference.max() <= 1
        assert difference.float().mean() < 0.25


@pytest.mark.parametrize("split", ["train", "val"])
def test_batched_equals_torchvisions_float_resize_but_for_rounding_ties(split, imagenet_images):
    """The float path (what ``finish`` runs on CUDA tensors): equal but for float32 rounding at .5."""
    batched, expected = _both(DECODERS[split](224), imagenet_images, finish_dtype=torch.float32)
    difference = (batched.int() - expected.int()).abs()
    assert difference.max() <= 1 and difference.float().mean() < 1e-4  # measured 2e-5 (train), 7e-6 (val)


def test_weights_are_pytorchs_antialias_weights_for_up_and_down_scaling():
    """One image, every length pair: the weights reproduce ``interpolate(antialias=True)`` on a float image."""
    for length, resized in ((7, 3), (3, 7), (100, 33), (33, 100), (5, 5), (224, 224), (1, 4), (500, 224)):
        image = torch.rand(1, 1, length, 2, dtype=torch.float64)  # width 2: PyTorch averages a width-1 column
        expected = torch.nn.functional.interpolate(image, size=(resized, 2), mode="bilinear", antialias=True,
                                                   align_corners=False)[0, 0, :, 0]
        weights = antialias_weights(torch.tensor([length]), torch.tensor([resized]), torch.tensor([0]),
                                    torch.tensor([0]), size=resized, padded=length + 3)[0]
        assert torch.allclose(weights.double() @ torch.cat([image[0, 0, :, 0], torch.rand(3).double()]), expected,
                              atol=1e-5)


def test_flip_reverses_the_columns_exactly(imagenet_images):
    crop = RandomResizedCropDecode(64)
    boxes = [CropBox(10, 20, 200, 150, flip) for flip in (False, True)]
    geometry = torch.tensor([resampling_geometry(crop, box, full_height=375, full_width=500) for box in boxes])
    image = next(image for image in imagenet_images if tuple(image.shape[-2:]) == (375, 500))
    plain, flipped = crop_resize([image, image], geometry, size=64)
    assert torch.equal(flipped, plain.flip(-1)) and not torch.equal(flipped, plain)


def test_chunks_give_the_same_pixels_in_the_same_order(fixture_images):
    crop = RandomResizedCropDecode(32)
    torch.manual_seed(3)
    geometry = torch.tensor([resampling_geometry(crop, crop.box(*image.shape[-2:]), full_height=image.shape[-2],
                                                 full_width=image.shape[-1]) for image in fixture_images])
    whole = crop_resize(fixture_images, geometry, size=32)
    assert torch.equal(crop_resize(fixture_images, geometry, size=32, max_elements=1), whole)  # one image a chunk
    assert torch.equal(crop_resize(fixture_images, geometry, size=32, max_elements=3 * 60 * 60 * 4), whole)
    assert torch.equal(crop_resize(fixture_images[::-1], geometry.flip(0), size=32), whole.flip(0))


def test_the_geometry_of_another_decoder_is_refused():
    class Custom(CropDecoder):
        pass

    with pytest.raises(TypeError, match="Custom has no batched resampling"):
        resampling_geometry(Custom(8), CropBox(0, 0, 4, 4), full_height=4, full_width=4)


VIEWS = {f"aten.{name}" for name in ("view", "reshape", "_unsafe_view", "permute", "unsqueeze", "expand",
                                     "transpose", "as_strided", "select", "unbind", "lift_fresh")}
"""Operations that make views (or wrap a Python list): no kernel runs."""


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def test_the_operations_run_do_not_grow_with_the_batch(fixture_images):
    """4 images or 29: the same tensor operations, each once per chunk (CUDA: one launch each; ``cat`` of
    more than 128 inputs takes one launch per 128)."""
    crop = RandomResizedCropDecode(32)
    counts = []
    for count in (4, len(fixture_images)):
        images = fixture_images[:count]
        torch.manual_seed(0)
        geometry = torch.tensor([resampling_geometry(crop, crop.box(*image.shape[-2:]), full_height=image.shape[-2],
                                                     full_width=image.shape[-1]) for image in images])
        with _CountOps() as ops:
            crop_resize(images, geometry, size=32)
        counts.append({name: n for name, n in ops.calls.items() if name not in VIEWS})
    assert len(fixture_images) == 29
    assert counts[0] == counts[1]
    assert counts[0]["aten.cat"] == 2 and counts[0]["aten.bmm"] == 2  # geometry columns, images; two matmuls


def test_center_crop_geometry_is_torchvisions(imagenet_images):
    """``Resize(256) + CenterCrop(224)`` of a 375x500 image keeps rows 16.. of 256 and columns 58.. of 341."""
    assert resampling_geometry(CenterCropDecode(224), CropBox(0, 0, 375, 500), full_height=375, full_width=500) == [
        0, 0, 375, 500, 256, 341, 16, 58, 0]
    image = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8)
    expected = F.center_crop(F.resize(image.float(), [256, 341], antialias=True), [224, 224]).round()
    batched = crop_resize([image], torch.tensor([[0, 0, 375, 500, 256, 341, 16, 58, 0]]), size=224)[0]
    assert (batched.float() - expected).abs().max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("split", ["train", "val"])
def test_cuda_batched_equals_the_cpu_batched_but_for_float_rounding(split, imagenet_images):
    crop = DECODERS[split](224)
    torch.manual_seed(0)
    geometry = torch.tensor([resampling_geometry(crop, crop.box(*image.shape[-2:]), full_height=image.shape[-2],
                                                 full_width=image.shape[-1]) for image in imagenet_images])
    on_cpu = crop_resize(imagenet_images, geometry, size=224)
    on_gpu = crop_resize([image.cuda() for image in imagenet_images], geometry, size=224)
    difference = (on_gpu.cpu().int() - on_cpu.int()).abs()
    assert on_gpu.is_cuda and difference.max() <= 1 and difference.float().mean() < 1e-3
