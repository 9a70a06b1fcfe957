"""LMDBLoader on the CPU: pixels, merge of CPU-decoded images, readers, workers, resume, DDP shards.

The device-decoding path runs here with ``device="cpu"`` (``torchvision.io.decode_jpeg`` on the
CPU): the same code as on CUDA but for the decoder library. Tests marked ``cuda`` run only
where CUDA is present.
"""

from __future__ import annotations

import collections
import datetime
import json
import multiprocessing
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from lmdb_dataset import LMDBImageDataset, LMDBLoader, NormalizeBatch
from lmdb_dataset.decode.crop import CenterCropDecode
from lmdb_dataset.decode.device import EncodedImage, collate_mixed, decode_batch, device_decodable
from lmdb_dataset.errors import CorruptRecordError
from lmdb_dataset.loader import SideStream
from lmdb_dataset.storage.format import decode_header, payload_of

SIZE, RESIZE = 32, 40
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _checksum(image: torch.Tensor) -> int:
    return zlib.crc32(image.detach().cpu().float().contiguous().numpy().tobytes())


def _samples(loader) -> list[tuple[int, int]]:
    """``(label, image checksum)`` of every sample, in the order the loader yields them."""
    return [(int(label), _checksum(image)) for images, labels in loader for image, label in zip(images, labels)]


def _images(loader) -> list[tuple[int, torch.Tensor]]:
    """``(label, image)`` of every sample, on the CPU, in the order the loader yields them."""
    return [(int(label), image.cpu()) for images, labels in loader for image, label in zip(images, labels)]


GREY_LEVEL = NormalizeBatch().scale.max().item() + 1e-6
"""One grey level (of 255) after ImageNet normalisation, in the channel with the smallest std."""


def _assert_one_to_one_within_a_grey_level(samples: list[tuple[int, torch.Tensor]],
                                           reference: list[tuple[int, torch.Tensor]]) -> None:
    """Each sample is a distinct reference sample with its label, every value within one grey level.

    The device path's batched resize computes in float32 where torchvision's uint8 CPU kernel
    rounds its weights to fixed point (:mod:`lmdb_dataset.decode.resampling`): values one grey level apart.
    """
    assert len(samples) == len(reference)
    references = torch.stack([image for _, image in reference])
    unused = set(range(len(reference)))
    for label, image in samples:
        distance = (references - image).abs().flatten(1).amax(1)
        match = [i for i in sorted(unused, key=lambda i: distance[i]) if distance[i] <= GREY_LEVEL
                 and reference[i][0] == label]
        assert match, f"no reference sample within a grey level (nearest {distance.min():.4f})"
        unused.remove(match[0])


@pytest.fixture(scope="module")
def path(converted):
    """32 records: photos plus grayscale, CMYK, PNG (alpha), 1x1 and progressive JPEGs."""
    return converted(num_images=27, special=True)


@pytest.fixture(scope="module")
def reference(path) -> list[tuple[int, torch.Tensor]]:
    """``(label, image)`` of torchvision's Resize + CenterCrop on ImageFolder-equal pixels, normalised."""
    dataset = LMDBImageDataset(path, output="tensor",
                               transform=v2.Compose([v2.Resize(RESIZE, antialias=True), v2.CenterCrop(SIZE)]))
    normalize = NormalizeBatch()
    return [(int(label), normalize(image[None])[0]) for image, label in dataset]


def _loader(path, **options) -> LMDBLoader:
    settings = {"batch_size": 5, "num_workers": 0, "size": SIZE, "resize": RESIZE, "train": False} | options
    return LMDBLoader(path, **settings)


def test_reader_options_reach_the_reader(path):
    assert _loader(path, reader="chunk", reader_options={"chunk_size": 7}).dataloader.sampler.chunk_size == 7
    assert _loader(path, reader="iterable", reader_options={"chunk_size": 9}).dataset.chunk_size == 9
    assert _loader(path, reader="random").dataloader.sampler.chunk_size == 1


@pytest.mark.parametrize("reader, num_workers", [("random", 0), ("chunk", 2), ("iterable", 2)])
def test_device_decode_val_equals_torchvision_with_cpu_decoded_images_merged(path, reference, reader, num_workers):
    """Colour JPEGs decoded in the main process, the others in workers: every sample torchvision's."""
    loader = _loader(path, decode="device", reader=reader, num_workers=num_workers)
    samples = _images(loader)
    _assert_one_to_one_within_a_grey_level(samples, reference)
    assert len(samples) == 32 and len(loader) == 7


def test_device_decode_really_splits_the_batch(path):
    dataset = LMDBImageDataset(path)
    kinds = collections.Counter()
    for _, value in dataset.reader.values(list(range(len(dataset)))):
        kinds[device_decodable(decode_header(value), payload_of(value))] += 1
    assert kinds == {True: 29, False: 3}  # grayscale, CMYK and PNG go to the workers' CPU decode
    loader = _loader(path, decode="device", batch_size=32)
    batch = next(iter(loader.dataloader))
    assert len(batch.jpegs()) == 29 and batch.decoded.shape == (3, 3, SIZE, SIZE)
    assert batch.encoded.numel() == batch.lengths.sum()  # one tensor: one shared-memory segment
    assert sorted(batch.encoded_at.tolist() + batch.decoded_at.tolist()) == list(range(32))


def test_worker_decode_val_yields_every_record_once_with_fused_pixels(path):
    dataset = LMDBImageDataset(path)
    crop, normalize = CenterCropDecode(SIZE, resize=RESIZE), NormalizeBatch()
    expected = collections.Counter()
    for _index, value in dataset.reader.values(list(range(len(dataset)))):
        header = decode_header(value)
        expected[(header.label, _checksum(normalize(crop(header, payload_of(value))[None])[0]))] += 1
    loader = _loader(path, decode="worker", reader="chunk", num_workers=2)
    assert collections.Counter(_samples(loader)) == expected
    assert len(loader._ring._mapped) == 2  # the batches came through each worker's ring of shared memory
    assert collections.Counter(_samples(loader)) == expected  # and again, in the same slots


def test_train_boxes_shipped_to_the_device_are_the_ones_drawn(path):
    """Same seed, one process: the device path applies the worker path's boxes and flips.

    The two differ only by the DCT-scaled decode; a misapplied box (swapped axes, lost flip)
    would differ like unrelated crops (mean ~1.0 in normalised units).
    """
    batches = {}
    for decode in ("worker", "device"):
        torch.manual_seed(0)
        batches[decode] = next(iter(_loader(path, decode=decode, train=True, batch_size=32, shuffle=False)))
    (worker_images, worker_labels), (device_images, device_labels) = batches["worker"], batches["device"]
    assert torch.equal(worker_labels, device_labels)
    assert (worker_images - device_images).abs().mean() < 0.06  # measured 0.027


def test_train_batches_shapes_dtype_labels(path):
    loader = _loader(path, train=True, decode="device", batch_size=8, dtype=torch.bfloat16, channels_last=True)
    labels = []
    for images, targets in loader:
        assert images.shape == (8, 3, SIZE, SIZE) and images.dtype == torch.bfloat16
        assert images.is_contiguous(memory_format=torch.channels_last)
        assert -2.2 <= images.min() and images.max() <= 2.7  # normalised with ImageNet's statistics
        labels.extend(targets.tolist())
    assert len(labels) == len(loader) * 8 == 32  # drop_last: 32 = 4 full batches
    assert sorted(labels) == sorted(LMDBImageDataset(path).targets.tolist())


def test_set_epoch_changes_the_order_and_starts_the_count_again(path):
    loader = _loader(path, train=True, batch_size=32)
    first = next(iter(loader))[1].tolist()
    assert loader.state_dict()["position"]["samples_consumed"] == 32
    loader.set_epoch(1)
    assert loader.epoch == 1 and loader.state_dict()["position"] == {**loader.state_dict()["position"],
                                                                      "epoch": 1, "samples_consumed": 0}
    assert next(iter(loader))[1].tolist() != first


@pytest.mark.parametrize("reader, num_workers", [("random", 0), ("chunk", 0), ("iterable", 2)])
@pytest.mark.parametrize("decode", ["worker", "device"])
def test_resume_mid_epoch_yields_exactly_the_rest(path, reader, num_workers, decode):
    options = {"reader": reader, "num_workers": num_workers, "decode": decode, "shuffle": True, "seed": 3}
    whole = _samples(_loader(path, **options))
    interrupted = _loader(path, **options)
    consumed = []
    for step, (images, labels) in enumerate(interrupted):
        consumed.extend((int(label), _checksum(image)) for image, label in zip(images, labels))
        if step == 1:
            break
    state = interrupted.state_dict()
    assert state["position"]["samples_consumed"] == 10  # what the loop received, not what was prefetched
    resumed = _loader(path, **options)
    resumed.load_state_dict(state)
    assert consumed + _samples(resumed) == whole


def test_load_state_dict_refuses_another_reader_and_resumes_with_another_batch_size(path):
    state = _loader(path, reader="random").state_dict()
    with pytest.raises(ValueError, match="reader='random'"):
        _loader(path, reader="chunk").load_state_dict(state)
    with pytest.raises(ValueError, match="seed=0"):
        _loader(path, reader="random", seed=1).load_state_dict(state)
    options = {"reader": "chunk", "train": True, "seed": 3}
    whole = _samples(_loader(path, drop_last=False, **options))
    interrupted = iter(_loader(path, **options))
    consumed = _samples([next(interrupted), next(interrupted)])
    resumed = _loader(path, batch_size=4, drop_last=False, **options)
    resumed.load_state_dict(interrupted.gi_frame.f_locals["self"].state_dict())
    assert consumed + _samples(resumed) == whole  # the same samples, crops and flips, in batches of 4


@pytest.mark.parametrize("reader, num_workers", [("random", 0), ("iterable", 2)])
@pytest.mark.parametrize("drop_last", [True, False])
def test_state_after_the_last_batch_resumes_at_the_next_epoch_whole_in_either_call_order(path, reader,
                                                                                         num_workers, drop_last):
    options = {"reader": reader, "num_workers": num_workers, "train": True, "drop_last": drop_last,
               "batch_size": 3, "persistent_workers": False}
    loader = _loader(path, **options)
    loader.set_epoch(1)
    delivered = _samples(loader)
    assert len(delivered) == (30 if drop_last else 32) and len(loader) * 3 >= len(delivered)
    state = loader.state_dict()  # an end-of-epoch checkpoint (Lightning's default)
    reference = _loader(path, **options)
    reference.set_epoch(2)
    epoch_two = _samples(reference)
    for set_first in (True, False):
        resumed = _loader(path, **options)
        if set_first:
            resumed.set_epoch(2)
        resumed.load_state_dict(state)
        if not set_first:
            resumed.set_epoch(2)
        assert resumed.epoch == 2 and len(resumed) == len(reference)
        assert _samples(resumed) == epoch_two  # epoch 2 whole, not epoch 1 again and not empty


@pytest.mark.parametrize("reader", ["random", "iterable"])
def test_ddp_ranks_share_the_dataset_exactly_once(path, reference, reader):
    shards = [_images(_loader(path, reader=reader, decode="device", num_replicas=2, rank=rank, shuffle=True))
              for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 16
    _assert_one_to_one_within_a_grey_level(shards[0] + shards[1], reference)


def _ddp_rank(rank: int, init_file: str, path: str, out_dir: str) -> None:
    """One rank of a two-rank gloo group: the loader takes its world from torch.distributed."""
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=60))
        loader = _loader(path, decode="device", shuffle=True)
        samples, batches = _images(loader), len(loader)  # the world is read from the live process group
        dist.barrier()
        dist.destroy_process_group()
        torch.save(samples, Path(out_dir, f"rank{rank}.pt"))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"batches": batches}))
    except BaseException:
        Path(out_dir, f"rank{rank}.error").write_text(traceback.format_exc())
        raise SystemExit(1) from None


def test_ddp_process_group_two_ranks_share_the_dataset_exactly_once(path, reference, tmp_path):
    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=_ddp_rank, args=(rank, str(tmp_path / "store"), str(path), str(tmp_path)))
             for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(120)
    for process in ranks:
        if process.is_alive():
            process.kill()
    errors = "\n".join(p.read_text() for p in tmp_path.glob("rank*.error"))
    assert [process.exitcode for process in ranks] == [0, 0], errors
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert results[0]["batches"] == results[1]["batches"] == 4  # 16 samples a rank, batches of 5
    shards = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 16
    _assert_one_to_one_within_a_grey_level(shards[0] + shards[1], reference)


def test_spawned_workers_decode_on_the_device_path(path, reference):
    loader = _loader(path, decode="device", num_workers=1, multiprocessing_context="spawn", batch_size=16)
    _assert_one_to_one_within_a_grey_level(_images(loader), reference)


def test_side_stream_on_the_cpu_is_a_plain_hand_over():
    side = SideStream(torch.device("cpu"))
    assert side.stream is None
    tensors = (torch.ones(2), torch.zeros(3))
    with side.context():
        pass
    handed = side.hand_over(*tensors)
    assert all(a is b for a, b in zip(handed, tensors))


def test_a_jpeg_nothing_decodes_is_a_corrupt_record_naming_it():
    garbage = b"\xff\xd8\xff\xdb" + bytes(range(200)) + b"\xff\xd9"
    good = EncodedImage(torch.frombuffer(bytearray(garbage), dtype=torch.uint8),
                        torch.tensor([0, 0, 10, 10, 8, 8, 1, 1, 0]), record=17)
    batch = collate_mixed([(good, 3)])
    with pytest.raises(CorruptRecordError, match=r"/data.lmdb: record 17: the image does not decode") as error, \
            pytest.warns(RuntimeWarning, match="record 17: torchvision's decode_jpeg on cpu rejected it"):
        decode_batch(batch, 8, torch.device("cpu"), path="/data.lmdb")
    assert error.value.index == 17


def test_a_jpeg_the_device_decoder_rejects_is_decoded_on_the_cpu_and_merged(path, reference, monkeypatch):
    """Simulates nvJPEG refusing one file: the batch call fails, the others decode alone, it on the CPU."""
    from lmdb_dataset.decode import device as device_decode

    real = device_decode.decode_jpeg
    rejected = bytes(payload_of(next(LMDBImageDataset(path).reader.values([3]))[1]))

    def picky(data, **options):
        items = data if isinstance(data, list) else [data]
        if any(item.numpy().tobytes() == rejected for item in items):
            raise RuntimeError("simulated: unsupported JPEG")
        return real(data, **options)

    monkeypatch.setattr(device_decode, "decode_jpeg", picky)
    with pytest.warns(RuntimeWarning, match="rejected it"):
        samples = _images(_loader(path, decode="device", batch_size=8))
    _assert_one_to_one_within_a_grey_level(samples, reference)


def test_truncated_jpegs_are_left_to_the_cpu_decoder(path):
    dataset = LMDBImageDataset(path)
    value = bytes(next(dataset.reader.values([0]))[1])
    header, payload = decode_header(value), bytes(payload_of(value))
    assert device_decodable(header, payload)
    assert not device_decodable(header, payload[:-100])


@pytest.mark.parametrize("options, message", [
    ({"reader": "sequential"}, "reader='sequential'"),
    ({"decode": "gpu"}, "decode='gpu'"),
    ({"dtype": torch.int8}, "dtype=torch.int8"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"num_workers": -1}, "num_workers=-1"),
    ({"reader_options": {"chunk_size": 4}}, "reader='random' takes none"),
    ({"reader": "chunk", "reader_options": {"chunk_size": 0}}, "chunk_size=0"),
    ({"train": True, "scale": (0.1,)}, r"scale=\(0.1,\) .* must each be \(min, max\)"),
    ({"mean": (0.5, 0.5), "std": (0.5, 0.5)}, "one value per channel of the RGB images"),
    ({"mean": (123.7, 116.3, 103.5), "std": (58.4, 57.1, 57.4)}, "in \\[0, 1\\] .* divide values for 0-255 pixels"),
])
def test_bad_options_are_value_errors(path, options, message):
    with pytest.raises(ValueError, match=message):
        _loader(path, **options)


@pytest.mark.parametrize("reader", ["random", "iterable"])
def test_numpy_integer_counts_are_accepted(path, reader):
    loader = _loader(path, reader=reader, batch_size=np.int64(4), num_workers=np.int64(0), size=np.int64(16))
    assert [len(labels) for _, labels in loader][0] == 4


@pytest.mark.parametrize("options", [{"batch_size": "8"}, {"num_workers": "2"}, {"num_workers": 2.0}, {"size": "32"},
                                     {"resize": 36.5}, {"batch_size": True}, {"seed": 1.5}, {"seed": "0"},
                                     {"rank": True, "num_replicas": 2}, {"num_replicas": 2.0, "rank": 0}])
def test_options_of_another_type_are_type_errors_naming_them(path, options):
    (name, value), *_ = options.items()
    with pytest.raises(TypeError, match=rf"{name}={value!r} must be an integer"):
        _loader(path, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_cuda_without_cuda_is_a_clear_error(path):
    with pytest.raises(ValueError, match="CUDA is not available"):
        _loader(path, device="cuda")


def test_validation_resize_defaults_to_imagenet_proportions(path):
    assert LMDBLoader(path, size=32, train=False, num_workers=0).crop.resize == 37  # 256/224 x 32
    assert LMDBLoader(path, train=False, num_workers=0).crop.resize == 256


def test_repr_names_the_setup(path):
    text = repr(_loader(path, decode="device", reader="iterable"))
    assert "reader='iterable'" in text and "decode='device'" in text and "batches=7" in text


@cuda
def test_device_decode_is_opt_in_on_cuda_until_measured_on_a_gpu(path):
    assert _loader(path, device="cuda").decode == "worker"


@cuda
def test_mixed_batches_are_pinned_by_the_dataloader(path):
    batch = next(iter(_loader(path, decode="device", device="cuda", num_workers=1).dataloader))
    assert batch.labels.is_pinned() and batch.decoded.is_pinned() and batch.encoded.is_pinned()


@cuda
def test_cuda_device_decode_matches_the_cpu_decode(path):
    """nvJPEG's IDCT and upsampling differ from libjpeg-turbo's by a grey level or two."""
    on_cpu = _loader(path, decode="device", batch_size=32)
    on_gpu = _loader(path, decode="device", batch_size=32, device="cuda")
    (cpu_images, cpu_labels), (gpu_images, gpu_labels) = next(iter(on_cpu)), next(iter(on_gpu))
    assert gpu_images.is_cuda and torch.equal(gpu_labels.cpu(), cpu_labels)
    assert (gpu_images.cpu() - cpu_images).abs().mean() < 0.05


@cuda
def test_cuda_worker_decode_equals_cpu_and_uses_a_side_stream(path):
    on_cpu = _samples(_loader(path, decode="worker"))
    loader = _loader(path, decode="worker", device="cuda")
    assert SideStream(loader.device).stream is not None
    batches = [(images.cpu(), labels.cpu()) for images, labels in loader]
    assert [int(label) for _, labels in batches for label in labels] == [label for label, _ in on_cpu]
    assert torch.allclose(torch.cat([images for images, _ in batches]),
                          torch.cat([images for images, _ in _loader(path, decode="worker")]), atol=1e-5)


@pytest.mark.parametrize("reader", ["random", "chunk", "iterable"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_validation_reads_in_storage_order_as_documented(converted, reader, num_workers):
    """``train=False`` on one rank: the k-th sample is ``dataset.file_order[k]`` (a shuffled conversion: not k)."""
    path = converted(num_images=24, order="shuffled", special=False)
    dataset = LMDBImageDataset(path)
    assert list(dataset.file_order) != sorted(dataset.file_order)
    loader = LMDBLoader(path, train=False, reader=reader, batch_size=5, size=16, num_workers=num_workers,
                        multiprocessing_context="fork" if num_workers else None)
    labels = [int(label) for _, batch in loader for label in batch]
    assert labels == [dataset.targets[i] for i in dataset.file_order]
    assert [int(label) for _, batch in loader for label in batch] == labels  # every pass the same
