"""LMDBImageDataset: contract, pixel equality with ImageFolder, errors, processes."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from conftest import copy_dataset
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from torchvision import transforms as v1
from torchvision.datasets import ImageFolder

from lmdb_dataset import (
    ChunkShuffleSampler,
    CorruptRecordError,
    DatasetChangedError,
    DatasetNotFoundError,
    IncompleteDatasetError,
    LMDBImageDataset,
    LMDBIterableDataset,
    LMDBWriter,
    NotADatasetError,
    StaleOffsetsWarning,
    convert_image_folder,
    reindex,
    verify_dataset,
)
from lmdb_dataset.decode.transforms import train_transform
from lmdb_dataset.storage import format as fmt
from lmdb_dataset.storage.environment import environments
from lmdb_dataset.tools.inspection import summarize
from lmdb_dataset.write.writer import build_record

START_METHODS = ["fork", "spawn", "forkserver"]


def record_id(sample):
    """Picklable collate element: (label, checksum of pixels) identifies a record."""
    image, label = sample
    return label, int(np.asarray(image, dtype=np.int64).sum())


def collate_ids(batch):
    return [record_id(sample) for sample in batch]


def expected_ids(path):
    ds = LMDBImageDataset(path, output="numpy")
    return sorted(record_id(ds[i]) for i in range(len(ds)))


# --- contract -------------------------------------------------------------------------------------------

def test_len_classes_targets_and_repr_like_image_folder(image_folder, converted):
    reference = ImageFolder(str(image_folder()))
    ds = LMDBImageDataset(converted(), transform=v1.ToTensor())
    assert len(ds) == len(reference) == 29
    assert ds.classes == reference.classes and ds.class_to_idx == reference.class_to_idx
    assert isinstance(ds.targets, np.ndarray) and ds.targets.dtype == np.int64
    assert ds.targets.tolist() == reference.targets
    text = repr(ds)
    assert text.startswith("Dataset LMDBImageDataset\n    Number of datapoints: 29\n    Root location: ")
    assert "ToTensor()" in text and "Storage: encoded" in text


@pytest.mark.parametrize("output, kind, shape", [("pil", Image.Image, None), ("tensor", torch.Tensor, (3,)),
                                                 ("numpy", np.ndarray, None)])
def test_output_types(converted, output, kind, shape):
    image, label = LMDBImageDataset(converted(), output=output)[0]
    assert isinstance(image, kind) and isinstance(label, int)
    if output == "pil":
        assert image.mode == "RGB"
    elif output == "tensor":
        assert image.dtype == torch.uint8 and image.shape[0] == 3
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_transform_and_target_transform_are_applied(converted):
    ds = LMDBImageDataset(converted(), transform=lambda im: ("t", im.size), target_transform=lambda y: y + 100)
    (tag, size), target = ds[5]
    assert tag == "t" and target == ds.targets[5] + 100 and len(size) == 2


def test_indices_behave_like_a_sequence(converted):
    ds = LMDBImageDataset(converted(), output="numpy")
    assert np.array_equal(ds[-1][0], ds[len(ds) - 1][0])
    assert np.array_equal(ds[np.int64(3)][0], ds[3][0])
    for bad in (len(ds), -len(ds) - 1):
        with pytest.raises(IndexError, match=f"index {bad} is out of range"):
            ds[bad]


def test_getitems_returns_the_batch_in_request_order_with_duplicates(converted):
    ds = LMDBImageDataset(converted(), output="numpy")
    batch = ds.__getitems__([7, 2, 7, 0])
    for (image, label), index in zip(batch, [7, 2, 7, 0]):
        assert np.array_equal(image, ds[index][0]) and label == ds.targets[index]


@pytest.mark.parametrize("storage", ["encoded", "raw"])
@pytest.mark.parametrize("access", ["pread", "mmap"])
def test_pixels_equal_torchvision_image_folder_including_gray_cmyk_png(image_folder, converted, storage, access):
    reference = ImageFolder(str(image_folder()))
    ds = LMDBImageDataset(converted(storage=storage), output="numpy", access=access)
    for i in range(len(ds)):
        expected, label = reference[i]
        image, target = ds[i]
        assert target == label
        assert image.shape == np.asarray(expected).shape
        assert np.abs(image.astype(int) - np.asarray(expected, dtype=int)).max() <= 1, reference.samples[i][0]


def test_shipped_photo_jpegs_decode_bit_exactly_like_pillow(converted, image_folder):
    reference = ImageFolder(str(image_folder()))
    ds = LMDBImageDataset(converted(), output="numpy")
    plain = [i for i, (p, _) in enumerate(reference.samples) if p.endswith(".JPEG")]
    assert len(plain) == 24
    for i in plain:
        assert np.array_equal(ds[i][0], np.asarray(reference[i][0]))


# --- errors ---------------------------------------------------------------------------------------------

def test_missing_path_raises_dataset_not_found(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist") as excinfo:
        LMDBImageDataset(tmp_path / "missing.lmdb")
    assert isinstance(excinfo.value, FileNotFoundError)


def test_directory_without_dataset_raises_not_a_dataset(tmp_path):
    with pytest.raises(NotADatasetError, match="lmdb-dataset convert"):
        LMDBImageDataset(tmp_path)


def test_foreign_lmdb_environment_raises_not_a_dataset(tmp_path):
    import lmdb

    env = lmdb.open(str(tmp_path / "foreign"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    with pytest.raises(NotADatasetError, match="not an lmdb_dataset dataset"):
        LMDBImageDataset(tmp_path / "foreign")


def test_bad_arguments_raise_value_error(converted):
    with pytest.raises(ValueError, match="output='jpeg'"):
        LMDBImageDataset(converted(), output="jpeg")
    with pytest.raises(ValueError, match="access='disk'"):
        LMDBImageDataset(converted(), access="disk")


def _damage(path, index, offset_in_payload=40):
    ds = LMDBImageDataset(path)
    offset, _ = ds._meta.spans[index]
    with open(path / "data.mdb", "r+b") as f:
        f.seek(int(offset) + 24 + offset_in_payload)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("access", ["pread", "mmap"])
def test_crc_mismatch_names_path_record_and_source_file(converted, tmp_path, access):
    path = tmp_path / "damaged.lmdb"
    shutil.copytree(converted(), path)
    _damage(path, 4)
    ds = LMDBImageDataset(path, access=access)
    with pytest.raises(CorruptRecordError, match=r"record 4 \(source file 'class_000/.*'\): CRC32 mismatch") as e:
        ds[4]
    assert e.value.index == 4 and e.value.path == str(path)
    ds[5]  # the neighbours are fine
    assert LMDBImageDataset(path, verify_checksums=False)[5]


def test_undecodable_record_names_path_and_record(tmp_path):
    with LMDBWriter(tmp_path / "ds") as writer:
        writer.add(b"\xff\xd8\xff\xe0 garbage that is no image", 0, path="a/broken.jpg", check=False)
    with pytest.raises(CorruptRecordError, match=r"record 0 \(source file 'a/broken.jpg'\): the image does not "):
        LMDBImageDataset(tmp_path / "ds")[0]


def test_incomplete_dataset_is_refused_with_resume_hint(tmp_path):
    with pytest.raises(KeyError):
        with LMDBWriter(tmp_path / "ds"):
            raise KeyError
    with pytest.raises(IncompleteDatasetError, match="--resume"):
        LMDBImageDataset(tmp_path / "ds")


# --- processes and pickling -----------------------------------------------------------------------------

def test_pickle_round_trip_drops_the_reader_and_reads_again(converted):
    ds = LMDBImageDataset(converted(), output="numpy")
    first = ds[3][0]
    assert ds._reader is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._reader is None and "_reader" in clone.__dict__
    assert np.array_equal(clone[3][0], first)


@pytest.mark.parametrize("start_method", START_METHODS)
@pytest.mark.parametrize("persistent", [False, True])
def test_dataloader_workers_after_parent_peek_read_every_record_once(converted, start_method, persistent):
    path = converted()
    ds = LMDBImageDataset(path, output="numpy")
    ds[0]  # the parent reads before the workers start
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, collate_fn=collate_ids,
                        multiprocessing_context=start_method, persistent_workers=persistent)
    for _ in range(2):
        assert sorted(i for batch in loader for i in batch) == expected_ids(path)
    ds[1]  # and again afterwards


def test_pin_memory_and_random_sampler_with_transforms(converted):
    ds = LMDBImageDataset(converted(), transform=train_transform(32), output="tensor")
    loader = DataLoader(ds, batch_size=8, sampler=RandomSampler(ds), num_workers=2, pin_memory=True)
    shapes = [images.shape[1:] for images, _ in loader]
    assert sum(1 for _ in shapes) == 4 and all(s == (3, 32, 32) for s in shapes)


def test_two_datasets_over_one_path_in_one_process_share_it(converted):
    train = LMDBImageDataset(converted(), transform=v1.ToTensor())
    evaluation = LMDBImageDataset(converted(), output="numpy")
    assert torch.equal(train[2][0], torch.from_numpy(evaluation[2][0]).permute(2, 0, 1).float() / 255)
    assert train.reader is not evaluation.reader


def test_reconverted_dataset_is_seen_by_new_objects_and_refused_by_stale_ones(image_folder, tmp_path):
    path = tmp_path / "ds"
    convert_image_folder(image_folder(), path, workers=0, progress=False)
    old = LMDBImageDataset(path, access="mmap")
    old[0]
    convert_image_folder(image_folder(12, special=False), path, workers=0, overwrite=True, progress=False)
    new = LMDBImageDataset(path)
    assert len(new) == 12 and new[11]
    with pytest.raises(DatasetChangedError, match="create the dataset object again"):
        LMDBImageDataset.__getitem__(pickle.loads(pickle.dumps(old)), 0)


def test_long_lived_process_opens_a_dataset_again_after_another_process_resumed_it(image_folder, tmp_path):
    path = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with LMDBWriter(path) as writer:
            writer.add((image_folder() / "class_000" / "gray.jpg").read_bytes(), 0)
            raise RuntimeError("interrupted")
    with pytest.raises(IncompleteDatasetError):
        LMDBImageDataset(path)  # this process now holds the environment open
    script = ("import sys, numpy as np\nfrom lmdb_dataset import LMDBWriter\n"
              "with LMDBWriter(sys.argv[1], storage='encoded', resume=True) as w:\n"
              "    for i in range(300):\n"
              "        w.add(open(sys.argv[2], 'rb').read(), 1)\n")
    big = next((image_folder() / "class_001").glob("*.JPEG"))
    subprocess.run([sys.executable, "-c", script, str(path), str(big)], check=True, timeout=120)
    ds = LMDBImageDataset(path, access="mmap")
    assert len(ds) == 301 and ds[300][1] == 1 and ds[0][1] == 0


def _ddp_worker(rank: int, world: int, path: str, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ds = LMDBImageDataset(path, output="numpy")
    sampler = DistributedSampler(ds, shuffle=True, seed=3)
    sampler.set_epoch(1)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, collate_fn=collate_ids)
    ids = [i for batch in loader for i in batch]
    gathered = [None] * world
    dist.all_gather_object(gathered, ids)
    if rank == 0:
        with open(out, "wb") as f:
            pickle.dump(gathered, f)
    dist.destroy_process_group()


def test_distributed_sampler_under_two_process_gloo_ddp_covers_each_record_once(converted, tmp_path):
    path = converted(num_images=25)  # 30 records with the special images: divisible by 2
    out = tmp_path / "ids.pkl"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_ddp_worker, args=(r, 2, str(path), str(tmp_path / "init"), str(out)))
                 for r in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=180)
        assert p.exitcode == 0
    per_rank = pickle.loads(out.read_bytes())
    assert len(per_rank[0]) == len(per_rank[1]) == 15
    assert sorted(per_rank[0] + per_rank[1]) == expected_ids(path)


# --- the record offset table: trusted only when proven -------------------------------------------------

ACCESS = ["pread", "mmap"]


def _samples(ds):
    return [(ds[i][0], ds[i][1]) for i in range(len(ds))]


def _assert_same_samples(ds, reference):
    assert len(ds) == len(reference)
    for i in range(len(reference)):
        (image, label), (expected, expected_label) = ds[i], reference[i]
        assert label == expected_label and np.array_equal(image, expected), i


def _open_quietly(path, **kwargs):
    """Open a dataset, failing the test on any warning (a proven offset table raises none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return LMDBImageDataset(path, **kwargs)


def _compacted_copy(source: Path, target: Path) -> Path:
    environments.release(source)
    env = lmdb.open(str(source), readonly=True, lock=False, max_dbs=2)
    target.mkdir()
    env.copy(str(target), compact=True)
    env.close()
    return target


def _put_record(path: Path, index: int, value: bytes) -> None:
    """Rewrite one record with py-lmdb after conversion, as a user's script would."""
    environments.release(path)
    env = lmdb.open(str(path), max_dbs=2)
    records_db = env.open_db(fmt.RECORDS_DB)
    with env.begin(write=True) as txn:
        txn.put(fmt.encode_key(index), value, db=records_db)
    env.close()


def test_fresh_conversion_has_a_proven_offset_table_and_reads_with_pread(converted):
    ds = _open_quietly(converted(), output="numpy")
    assert ds.reader.access == "pread" and ds._meta.spans is not None
    assert verify_dataset(converted(), progress=False).ok


@pytest.mark.parametrize("access", ACCESS)
def test_compacted_copy_gives_the_original_samples_with_a_warning_until_reindexed(converted, tmp_path, access):
    original = converted()
    reference = LMDBImageDataset(original, output="numpy")
    copy = _compacted_copy(original, tmp_path / "compact.lmdb")
    moved = [i for i, (offset, length) in enumerate(reference._meta.spans.tolist())
             if open(copy / "data.mdb", "rb").read()[offset:offset + length] != bytes(reference.reader.values([i])
                                                                                       .__next__()[1])]
    assert len(moved) > len(reference) // 2  # the old offsets really point at other bytes in the copy
    with pytest.warns(StaleOffsetsWarning, match=r"transaction \d+ but the file is at transaction 1.*"
                                                 r"lmdb-dataset reindex"):
        ds = LMDBImageDataset(copy, output="numpy", access=access)
    assert ds.reader.access == "mmap"
    _assert_same_samples(ds, reference)
    report = verify_dataset(copy, progress=False)
    assert not report.ok and not report.bad and "reindex" in report.problems[0]
    assert reindex(copy) == len(reference)
    fixed = _open_quietly(copy, output="numpy", access=access)
    assert fixed.reader.access == access and verify_dataset(copy, progress=False).ok
    _assert_same_samples(fixed, reference)


@pytest.mark.parametrize("access", ACCESS)
def test_record_rewritten_after_conversion_reads_the_new_bytes_and_verify_flags_the_table(
        converted, image_folder, tmp_path, access):
    path = shutil.copytree(converted(), tmp_path / "rewritten.lmdb")
    live = LMDBImageDataset(path, output="numpy", access=access)
    before = {i: live[i][0] for i in (0, 3, 4, len(live) - 1)}
    label = int(live.targets[3])
    new_image = (image_folder() / "class_002" / "alpha.png").read_bytes()
    _put_record(path, 3, build_record(new_image, label, storage="encoded"))
    with pytest.raises(DatasetChangedError):
        live[3]  # an object opened before the write never returns the old bytes
    with pytest.warns(StaleOffsetsWarning, match="written to"):
        ds = LMDBImageDataset(path, output="numpy", access=access)
    image, target = ds[3]
    assert target == label and image.shape == (64, 64, 3) and not np.array_equal(image, before[3])
    for i in (0, 4, len(ds) - 1):
        assert np.array_equal(ds[i][0], before[i])
    report = verify_dataset(path, progress=False)
    assert not report.ok and any("offset table" in p for p in report.problems)


@pytest.mark.parametrize("access", ACCESS)
def test_record_rewritten_with_garbage_fails_loudly_in_readers_and_verify(converted, tmp_path, access):
    path = shutil.copytree(converted(), tmp_path / "garbage.lmdb")
    _put_record(path, 5, b"\x01" * 300)
    with pytest.warns(StaleOffsetsWarning):
        ds = LMDBImageDataset(path, output="numpy", access=access)
    with pytest.raises(CorruptRecordError, match="record 5 .*malformed record header"):
        ds[5]
    bad = verify_dataset(path, progress=False).bad
    assert [r.index for r in bad] == [5] and bad[0].source == ds.source_path(5)


def _store_spans(path: Path, spans: np.ndarray) -> None:
    from lmdb_dataset.storage.environment import store_spans

    environments.release(path)
    env = lmdb.open(str(path), max_dbs=2)
    meta_db = env.open_db(fmt.META_DB)
    with env.begin(write=True) as txn:
        store_spans(txn, meta_db, spans)
    env.close()


def test_spot_check_at_open_catches_a_wrong_table_that_carries_a_valid_check(converted, tmp_path):
    path = shutil.copytree(converted(), tmp_path / "swapped.lmdb")
    spans = LMDBImageDataset(path)._meta.spans.copy()
    spans[[0, -1]] = spans[[-1, 0]]  # first and last are always spot-checked
    _store_spans(path, spans)
    with pytest.warns(StaleOffsetsWarning, match="record 0's bytes at its recorded offset differ"):
        assert LMDBImageDataset(path).reader.access == "mmap"


def test_verify_compares_every_span_with_the_record_it_should_hold(converted, tmp_path):
    path = shutil.copytree(converted(), tmp_path / "swapped.lmdb")
    spans = LMDBImageDataset(path)._meta.spans.copy()
    spans[[1, 2]] = spans[[2, 1]]  # between the spot checks: readers trust the table
    _store_spans(path, spans)
    assert _open_quietly(path).reader.access == "pread"
    report = verify_dataset(path, progress=False)
    assert [r.index for r in report.bad] == [1, 2] and "offset table" in report.bad[0].reason
    assert "reindex" in report.problems[-1]
    reindex(path)
    assert verify_dataset(path, progress=False).ok


def test_offset_table_without_a_check_is_ignored_with_a_warning(converted, tmp_path):
    path = shutil.copytree(converted(), tmp_path / "v01.lmdb")
    environments.release(path)
    env = lmdb.open(str(path), max_dbs=2)
    meta_db = env.open_db(fmt.META_DB)
    with env.begin(write=True) as txn:
        txn.delete(fmt.SPANS_CHECK_KEY, db=meta_db)
    env.close()
    with pytest.warns(StaleOffsetsWarning, match="no record of the file state"):
        LMDBImageDataset(path)


# --- a dataset replaced under a live object ------------------------------------------------------------

def _held_deleted(path: Path) -> list[str]:
    """This process's open files and mappings of a deleted data file under ``path``."""
    target = os.path.realpath(path / "data.mdb") + " (deleted)"
    fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
           if os.path.exists(f"/proc/self/fd/{fd}") or os.path.islink(f"/proc/self/fd/{fd}")]
    maps = [line.split(None, 5)[-1].strip() for line in open("/proc/self/maps")]
    return [name for name in fds + maps if name == target]


@pytest.mark.parametrize("in_process", [True, False], ids=["same-process", "other-process"])
@pytest.mark.parametrize("access", ACCESS)
def test_reconverted_under_a_live_object_raises_and_releases_the_old_file(image_folder, tmp_path, access,
                                                                          in_process):
    path = tmp_path / "ds"
    convert_image_folder(image_folder(), path, workers=0, progress=False)
    old = LMDBImageDataset(path, access=access, output="numpy")
    old[0], old.__getitems__([1, 2])
    args = dict(workers=0, overwrite=True, progress=False)
    if in_process:
        convert_image_folder(image_folder(12, special=False), path, **args)
    else:
        script = ("import sys\nfrom lmdb_dataset import convert_image_folder\n"
                  "convert_image_folder(sys.argv[1], sys.argv[2], workers=0, overwrite=True, progress=False)")
        subprocess.run([sys.executable, "-c", script, str(image_folder(12, special=False)), str(path)],
                       check=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    with pytest.raises(DatasetChangedError, match="create the dataset object again"):
        old[0]
    assert _held_deleted(path) == []
    with pytest.raises(DatasetChangedError):
        old.__getitems__([3])
    assert len(LMDBImageDataset(path)) == 12


# --- samples belong to the caller ----------------------------------------------------------------------

@pytest.mark.parametrize("storage", ["encoded", "raw"])
@pytest.mark.parametrize("output", ["numpy", "tensor"])
def test_every_sample_is_writable_and_owned_by_the_caller_whatever_the_format(converted, storage, output):
    ds = LMDBImageDataset(converted(storage=storage), output=output)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on non-writable numpy arrays
        for i in range(len(ds)):  # JPEG (colour, gray, CMYK, progressive, 1x1) and PNG
            image, _ = ds[i]
            if output == "numpy":
                assert image.flags.writeable, i
            before = image.clone() if output == "tensor" else image.copy()
            image += 1
            again, _ = ds[i]
            assert (again == before).all(), i  # nothing shared with the reader or a later sample


# --- indices, names, paths ------------------------------------------------------------------------------

def test_source_path_takes_negative_indices_and_rejects_out_of_range(converted, image_folder):
    ds = LMDBImageDataset(converted())
    reference = ImageFolder(str(image_folder()))
    assert ds.source_path(-1) == ds.source_path(len(ds) - 1) != ""
    assert str(image_folder() / ds.source_path(-1)) == reference.samples[-1][0]
    for bad in (len(ds), -len(ds) - 1):
        with pytest.raises(IndexError, match=f"index {bad} is out of range"):
            ds.source_path(bad)


def test_non_utf8_class_and_file_names_read_and_print(image_folder, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(image_folder(12, special=False), src)
    os.rename(src / "class_001", os.path.join(os.fsencode(src), b"caf\xe9"))
    jpeg = next((src / "class_000").iterdir())
    os.rename(jpeg, os.path.join(os.fsencode(src / "class_000"), b"\xff.jpg"))
    convert_image_folder(src, tmp_path / "ds", workers=0, progress=False)
    ds = LMDBImageDataset(tmp_path / "ds")
    assert "caf\udce9" in ds.classes and "class_000/\udcff.jpg" in [ds.source_path(i) for i in range(len(ds))]
    text = "\n".join(summarize(tmp_path / "ds").lines())
    assert "caf\\xe9" in text
    text.encode("utf-8")  # printable on a strict UTF-8 stdout


# --- the data file's path, single-file LMDBs ------------------------------------------------------------

def test_path_to_the_data_file_is_the_dataset(converted):
    file = converted() / "data.mdb"
    reference = LMDBImageDataset(converted(), output="numpy")
    _assert_same_samples(_open_quietly(file, output="numpy"), reference)
    assert summarize(file).info.num_records == len(reference)
    assert verify_dataset(file, progress=False).ok


@pytest.mark.parametrize("access", ACCESS)
def test_single_file_lmdb_is_read(converted, tmp_path, access):
    single = tmp_path / "train.mdb"
    shutil.copyfile(converted() / "data.mdb", single)
    env = lmdb.open(str(single), subdir=False, max_dbs=2)  # as py-lmdb writes it: file + file-lock
    env.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.mdb", "train.mdb-lock"]
    reference = LMDBImageDataset(converted(), output="numpy")
    _assert_same_samples(_open_quietly(single, output="numpy", access=access), reference)
    iterable = LMDBIterableDataset(single, output="numpy", shuffle=False)
    assert [label for _, label in iterable] == reference.targets.tolist()
    assert verify_dataset(single, progress=False).ok and summarize(single).size_bytes == single.stat().st_size


def test_a_file_that_is_not_an_lmdb_gets_a_one_line_error(image_folder):
    jpeg = next((image_folder() / "class_000").iterdir())
    for call in (LMDBImageDataset, summarize, verify_dataset):
        with pytest.raises(NotADatasetError, match=r"is not a readable LMDB environment.*lmdb-dataset convert"):
            call(jpeg)


def test_verify_reports_an_incomplete_dataset_with_the_resume_advice(image_folder, tmp_path, capsys):
    from lmdb_dataset.tools.cli import main

    with pytest.raises(KeyError):
        with LMDBWriter(tmp_path / "ds") as writer:
            writer.add((image_folder() / "class_000" / "gray.jpg").read_bytes(), 0)
            raise KeyError
    report = verify_dataset(tmp_path / "ds", progress=False)
    assert not report.ok and not report.bad and report.num_records == 1
    assert "incomplete" in report.problems[0] and "--resume" in report.problems[0]
    assert main(["verify", str(tmp_path / "ds"), "--quiet"]) == 1
    assert "all records OK" not in capsys.readouterr().out


def test_reindex_command_rebuilds_the_table_of_a_compacted_copy(converted, tmp_path, capsys):
    from lmdb_dataset.tools.cli import main

    copy = _compacted_copy(converted(), tmp_path / "compact.lmdb")
    assert main(["verify", str(copy), "--quiet"]) == 1
    assert "lmdb-dataset reindex" in capsys.readouterr().out
    assert main(["reindex", str(copy)]) == 0
    assert f"indexed {len(LMDBImageDataset(converted()))} records" in capsys.readouterr().out
    assert main(["verify", str(copy), "--quiet"]) == 0
    assert _open_quietly(copy).reader.access == "pread"


def _open_files_under(root: Path) -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [target for target in targets if target.startswith(str(root))]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists descriptors through /proc")
@pytest.mark.parametrize("reader", ["map", "sampler", "iterable"])
def test_datasets_let_go_of_their_file_once_nothing_uses_them(converted, tmp_path, reader):
    """A process that makes and deletes datasets (a sweep, a test suite) keeps no descriptor, no deleted file."""
    for round_ in range(3):
        path = copy_dataset(converted(num_images=12, special=False), tmp_path / f"copy{round_}")
        sampler = None
        if reader == "iterable":
            dataset = LMDBIterableDataset(path, output="numpy", chunk_size=4, pool_size=8)
            assert len(list(dataset)) == 12
        else:
            dataset = LMDBImageDataset(path, output="numpy")
            sampler = ChunkShuffleSampler(dataset, chunk_size=4, pool_size=8) if reader == "sampler" else None
            assert len(list(DataLoader(dataset, sampler=sampler, collate_fn=list))) == 12
            twin = LMDBImageDataset(path, output="numpy")
            twin[0]
            assert twin.reader._environment()[0] is dataset.reader._environment()[0]  # one per file and process
            del twin
        assert _open_files_under(tmp_path)  # open while in use
        dataset = sampler = None
        gc.collect()
        assert _open_files_under(tmp_path) == []
        shutil.rmtree(path)
