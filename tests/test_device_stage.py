"""The device-decode stage: stream ordering (on a fake caching allocator), the thread, its queue and shutdown.

CUDA is not needed: :class:`FakeCuda` replays on the CPU what the CUDA caching allocator and
streams do to the stage's tensors. It hands a freed block to the next allocation on the same
stream's pool at once (most recently freed first), runs work queued on the work stream only
when the loop waits for it, and lets the decoder write its outputs at once, on a stream of its
own that waits for nothing: the three facts that make the first version's ordering race.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from unittest import mock

import pytest
import torch
from torchvision.io import decode_jpeg

from lmdb_dataset import LMDBImageDataset, LMDBLoader
from lmdb_dataset.decode import device as device_decode
from lmdb_dataset.decode.crop import RandomResizedCropDecode
from lmdb_dataset.decode.device import SplitDecoder, collate_mixed, decode_batch
from lmdb_dataset.decode.device_stage import CudaStreams, DeviceDecodeStage, HostStreams, Pending, prepare_batch
from lmdb_dataset.errors import CorruptRecordError
from lmdb_dataset.storage.format import decode_header, payload_of

SIZE = 24


class FakeCuda(HostStreams):
    """CUDA's ordering on the CPU: a caching allocator with per-stream pools, a work stream that runs late.

    Args:
        decode_stream: Decode with a stream of its own current (else the work stream, as the
            first version did under the loader's side stream).
        record_stream: Mark the decoded images used by the work stream when handing them over
            (``Tensor.record_stream``), so their blocks wait for its queued work.
    """

    def __init__(self, *, decode_stream: bool, record_stream: bool) -> None:
        self.decode_stream, self.record_stream = decode_stream, record_stream
        self.pools: dict[str, list[torch.Tensor]] = {"decode": [], "work": []}
        self.owner: dict[int, tuple[torch.Tensor, str]] = {}  # id(decoded image) -> (block, pool)
        self.marked: set[int] = set()
        self.queued: list[tuple] = []
        self.waiting: list[tuple[torch.Tensor, str, int]] = []  # freed, reusable after launch n ran
        self.launched = self.ran = self.reused = 0
        self.current = "work"

    def decode(self, fn, *args, **kwargs):
        self.current = "decode" if self.decode_stream else "work"
        try:
            return fn(*args, **kwargs)
        finally:
            self.current = "work"

    def allocate(self, pixels: torch.Tensor) -> torch.Tensor:
        """The decoder's output: a block from the current stream's pool, written at once."""
        pool = self.pools[self.current]
        block = next((b for b in reversed(pool) if b.numel() >= pixels.numel()), None)
        if block is None:
            block = torch.empty(pixels.numel(), dtype=torch.uint8)
        else:
            del pool[next(i for i, candidate in enumerate(pool) if candidate is block)]
            self.reused += 1
        image = block[:pixels.numel()].view(pixels.shape)
        image.copy_(pixels)
        self.owner[id(image)] = (block, self.current)
        weakref.finalize(image, self._free, id(image))
        return image

    def _free(self, key: int) -> None:
        block, pool = self.owner.pop(key)
        if key in self.marked:
            self.marked.discard(key)
            self.waiting.append((block, pool, self.launched))
        else:
            self.pools[pool].append(block)

    def launch(self, fn, inputs, *args) -> Pending:
        blocks = [(self.owner[id(image)][0], image.shape) for image in inputs]  # addresses, not the tensors
        if self.record_stream:
            self.marked.update(id(image) for image in inputs)
        self.launched += 1
        pending = Pending((), self.launched)
        self.queued.append((fn, blocks, args, pending))
        return pending

    def hand_over(self, pending: Pending) -> tuple[torch.Tensor, ...]:
        while self.ran < pending.event:
            fn, blocks, args, queued = self.queued.pop(0)
            queued.result = fn([block[:shape.numel()].view(shape) for block, shape in blocks], *args)
            self.ran += 1
            for entry in [entry for entry in self.waiting if entry[2] <= self.ran]:
                self.waiting.remove(entry)
                self.pools[entry[1]].append(entry[0])
        return pending.result


@pytest.fixture(scope="module")
def batches(dataset_path) -> list:
    """Four MixedBatches of 8 from the fixture corpus (train crops, seed 0)."""
    dataset = LMDBImageDataset(dataset_path)
    split = SplitDecoder(RandomResizedCropDecode(SIZE))
    torch.manual_seed(0)
    samples = []
    for index, value in dataset.reader.values(list(range(32))):
        header = decode_header(value)
        image = split(header, payload_of(value))
        if isinstance(image, device_decode.EncodedImage):
            image.record = index
        samples.append((image, header.label))
    return [collate_mixed(samples[i:i + 8]) for i in range(0, 32, 8)]


def _run(streams: FakeCuda, batches: list, monkeypatch) -> list[torch.Tensor]:
    """Prepare every batch before the loop waits for the first (the stage runs ahead), then hand them over."""
    def fake_decode_jpeg(jpegs, mode, device):
        return [streams.allocate(decode_jpeg(data, mode=mode).contiguous()) for data in jpegs]

    monkeypatch.setattr(device_decode, "decode_jpeg", fake_decode_jpeg)
    pending = [prepare_batch(batch, streams, size=SIZE, normalize=lambda images: images, device=torch.device("cpu"),
                             path="/data.lmdb") for batch in batches]
    return [streams.hand_over(p)[0] for p in pending]


def test_the_first_versions_ordering_gives_wrong_pixels_on_an_eagerly_recycling_allocator(batches, monkeypatch):
    """Decode on the work stream, images dropped with their crops still queued: batch k+1 overwrites them."""
    expected = [decode_batch(batch, SIZE, torch.device("cpu"), path="/data.lmdb") for batch in batches]
    streams = FakeCuda(decode_stream=False, record_stream=False)
    got = _run(streams, batches, monkeypatch)
    assert streams.reused > 0
    assert not all(torch.equal(a, b) for a, b in zip(got, expected))
    assert torch.equal(got[-1], expected[-1])  # the last batch's images were not recycled before it ran


def test_a_decode_stream_alone_still_races(batches, monkeypatch):
    expected = [decode_batch(batch, SIZE, torch.device("cpu"), path="/data.lmdb") for batch in batches]
    got = _run(FakeCuda(decode_stream=True, record_stream=False), batches, monkeypatch)
    assert not all(torch.equal(a, b) for a, b in zip(got, expected))


def test_the_stages_ordering_gives_exact_pixels_and_reuses_blocks_once_read(batches, monkeypatch):
    """Decode stream + record_stream (what CudaStreams does): every batch exact; blocks come back after use."""
    expected = [decode_batch(batch, SIZE, torch.device("cpu"), path="/data.lmdb") for batch in batches]
    streams = FakeCuda(decode_stream=True, record_stream=True)
    got = _run(streams, batches, monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert streams.reused == 0 and not streams.waiting  # all queued before any ran: nothing reusable in time
    assert len(streams.pools["decode"]) == sum(len(batch.jpegs()) for batch in batches)  # all returned after
    _run(streams, batches, monkeypatch)
    assert streams.reused > 0  # and reused by the next epoch


def test_cuda_streams_order_the_work_after_the_decode_and_keep_its_inputs(monkeypatch):
    """CudaStreams' calls, with torch.cuda mocked: what the fake above stands for."""
    calls = []
    streams_made = iter([mock.MagicMock(name="decoding"), mock.MagicMock(name="work")])
    current = mock.MagicMock(name="current")
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: next(streams_made))
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: (calls.append(("stream", stream)),
                                                              contextlib.nullcontext())[1])
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: current)
    streams = CudaStreams(torch.device("cuda"))
    streams.work.wait_stream.side_effect = lambda other: calls.append(("wait_stream", other))
    inputs = [mock.MagicMock(name=f"image{i}") for i in range(2)]
    for i, tensor in enumerate(inputs):
        tensor.record_stream.side_effect = lambda stream, i=i: calls.append((f"image{i}.record_stream", stream))
    result = (mock.MagicMock(name="images"), mock.MagicMock(name="labels"))
    pending = streams.launch(lambda images, extra: calls.append(("work", images, extra)) or result, inputs, 7)
    assert calls == [("wait_stream", streams.decoding), ("image0.record_stream", streams.work),
                     ("image1.record_stream", streams.work), ("stream", streams.work), ("work", inputs, 7)]
    assert pending.event is streams.work.record_event.return_value
    assert streams.hand_over(pending) is result
    current.wait_event.assert_called_once_with(pending.event)
    for tensor in result:
        tensor.record_stream.assert_called_once_with(current)
    assert streams.decode(lambda x: x + 1, 1) == 2 and calls[-1] == ("stream", streams.decoding)


# --------------------------------------------------------------------------- the thread


def _stage(source, **options) -> DeviceDecodeStage:
    return DeviceDecodeStage(source, size=SIZE, normalize=lambda images: images, device=torch.device("cpu"),
                             path="/data.lmdb", **options)


def _stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lmdb-dataset-device-decode"]


def test_batches_come_out_in_order_and_equal_a_synchronous_decode(batches):
    with _stage(iter(batches)) as stage:
        got = list(stage)
    assert len(got) == 4
    for (images, labels), batch in zip(got, batches):
        assert torch.equal(images, decode_batch(batch, SIZE, torch.device("cpu"), path="/data.lmdb"))
        assert torch.equal(labels, batch.labels)
    assert not stage._thread.is_alive()


def test_an_error_in_the_source_is_raised_by_the_next_batch_after_the_good_ones(batches):
    def source():
        yield batches[0]
        yield batches[1]
        raise OSError("worker died")

    stage = _stage(source())
    assert torch.equal(next(stage)[1], batches[0].labels) and torch.equal(next(stage)[1], batches[1].labels)
    with pytest.raises(OSError, match="worker died"):
        next(stage)
    assert not stage._thread.is_alive()
    with pytest.raises(StopIteration):
        next(stage)


def test_a_record_nothing_decodes_is_raised_on_its_batch_naming_it(batches, monkeypatch):
    real = device_decode.decode_jpeg
    bad = batches[1].jpegs()[0].numpy().tobytes()

    def picky(data, **options):
        items = data if isinstance(data, list) else [data]
        if any(item.numpy().tobytes() == bad for item in items):
            raise RuntimeError("simulated: unsupported JPEG")
        return real(data, **options)

    monkeypatch.setattr(device_decode, "decode_jpeg", picky)
    monkeypatch.setattr(device_decode, "decode_image", mock.Mock(side_effect=ValueError("not a JPEG")))
    with pytest.warns(RuntimeWarning, match="rejected it"):  # warned on the stage's thread, whenever it gets there
        stage = _stage(iter(batches))
        next(stage)
        with pytest.raises(CorruptRecordError) as error:
            next(stage)
    assert error.value.index == int(batches[1].records[0])
    assert not stage._thread.is_alive()


def test_the_queue_is_bounded_and_filled_before_the_loop_asks(batches):
    pulled = []

    def source():
        for i in range(50):
            pulled.append(i)
            yield batches[i % 4]

    with _stage(source(), ahead=2):
        deadline = time.monotonic() + 10
        while len(pulled) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert len(pulled) == 3  # two batches queued, a third prepared and waiting for room; no more


def test_leaving_early_stops_the_thread_and_closes_the_source(batches):
    closed = threading.Event()

    def source():
        try:
            while True:
                yield batches[0]
        finally:
            closed.set()

    with _stage(source(), ahead=1) as stage:
        next(stage)
    assert not stage._thread.is_alive() and closed.wait(5)
    with pytest.raises(StopIteration):
        next(stage)


def test_ahead_must_be_positive(batches):
    with pytest.raises(ValueError, match="ahead=0"):
        _stage(iter(batches), ahead=0)


def test_a_loader_loop_that_breaks_leaves_no_thread_behind(dataset_path):
    loader = LMDBLoader(dataset_path, batch_size=4, num_workers=1, size=SIZE, decode="device")
    before = len(_stage_threads())
    for _ in loader:
        assert len(_stage_threads()) == before + 1
        break
    deadline = time.monotonic() + 10
    while len(_stage_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_stage_threads()) == before
    assert sum(len(labels) for _, labels in loader) == 32  # and the next pass starts afresh


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_decoded_ahead_for_three_epochs_each_match_the_cpu(dataset_path):
    """The real streams and nvJPEG: a batch with another batch's pixels (the race) would be ~1.0 off."""
    options = {"batch_size": 8, "num_workers": 2, "size": SIZE, "decode": "device", "train": True, "shuffle": True,
               "seed": 5}
    on_gpu, on_cpu = LMDBLoader(dataset_path, device="cuda", **options), LMDBLoader(dataset_path, **options)
    for epoch in range(3):
        on_gpu.set_epoch(epoch)
        on_cpu.set_epoch(epoch)
        for (gpu_images, gpu_labels), (cpu_images, cpu_labels) in zip(on_gpu, on_cpu, strict=True):
            assert gpu_images.is_cuda and torch.equal(gpu_labels.cpu(), cpu_labels)
            assert (gpu_images.cpu() - cpu_images).abs().mean() < 0.05  # nvJPEG vs libjpeg-turbo, not yet measured
