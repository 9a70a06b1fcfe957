"""convert_image_folder: ImageFolder index, shuffled physical order, bad files, kill-and-resume, back-pressure."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import lmdb
import numpy as np
import pytest
from conftest import copy_dataset
from hypothesis import given
from hypothesis import strategies as st
from support import PROPERTY, pixel_checksum
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from lmdb_dataset import (
    IncompleteDatasetError,
    LMDBDatasetError,
    LMDBImageDataset,
    LMDBWriter,
    NotADatasetError,
    SourceImageError,
    convert_image_folder,
)
from lmdb_dataset.storage import format as fmt
from lmdb_dataset.storage.environment import begin_read, environments, open_databases
from lmdb_dataset.tools.inspection import summarize
from lmdb_dataset.write import parallel, writer
from lmdb_dataset.write.convert import build_records, write_plan
from lmdb_dataset.write.parallel import (
    MAX_BATCHES_PER_WORKER,
    MIN_BATCHES_PER_WORKER,
    TASKS_PER_BATCH,
    ordered_map,
    window,
)


def raw_records(path) -> list[dict]:
    """Every record in file order, as its header fields plus its value."""
    env, _ = environments.get(path)
    records_db, _ = open_databases(env, path)
    with begin_read(env) as txn:
        return [{"label": fmt.decode_header(v).label, "value": bytes(v)} for _, v in txn.cursor(db=records_db)]


def logical_content(path) -> dict:
    """Everything a reader can observe: records, labels, paths and info (not the page layout)."""
    env, _ = environments.get(path)
    records_db, meta_db = open_databases(env, path)
    with begin_read(env) as txn:
        records = [bytes(v) for _, v in txn.cursor(db=records_db)]
        meta = {bytes(k): bytes(v) for k, v in txn.cursor(db=meta_db)
                if bytes(k) not in (fmt.SPANS_KEY, fmt.SPANS_CHECK_KEY)}
    return {"records": records, "meta": meta}


def test_convert_matches_image_folder_classes_order_labels_and_paths(image_folder, converted):
    src, path = image_folder(), converted()
    reference = ImageFolder(str(src))
    ds = LMDBImageDataset(path)
    assert ds.classes == reference.classes and ds.class_to_idx == reference.class_to_idx
    assert ds.targets.tolist() == reference.targets
    assert [ds.source_path(i) for i in range(len(ds))] == [os.path.relpath(p, src) for p, _ in reference.samples]


def pixels_and_label(sample):
    """Picklable collate element: a sample's (pixel checksum, label)."""
    image, label = sample
    return pixel_checksum(np.asarray(image)), int(label)


def collate_pixels(batch):
    return [pixels_and_label(sample) for sample in batch]


def image_folder_ids(src, skipped=()) -> list[tuple[int, int]]:
    """(pixel checksum, label) of ``ImageFolder(src)[i]`` for every i, leaving out ``skipped`` paths."""
    reference = ImageFolder(str(src))
    return [pixels_and_label(reference[i]) for i, (p, _) in enumerate(reference.samples)
            if os.path.relpath(p, src) not in skipped]


def test_convert_default_is_physically_shuffled_with_the_image_folder_index(image_folder, tmp_path):
    src = image_folder()
    convert_image_folder(src, tmp_path / "ds", workers=2, progress=False)
    reference = ImageFolder(str(src))
    ds = LMDBImageDataset(tmp_path / "ds", output="numpy")
    assert [pixels_and_label(ds[i]) for i in range(len(ds))] == image_folder_ids(src)
    assert ds.targets.tolist() == reference.targets
    assert [ds.source_path(i) for i in range(len(ds))] == [os.path.relpath(p, src) for p, _ in reference.samples]
    assert ds.source_path(-1) == ds.source_path(len(ds) - 1)
    assert sorted(ds.file_order.tolist()) == list(range(len(ds)))
    assert ds.file_order.tolist() != sorted(ds.file_order.tolist())  # records lie shuffled in the file
    in_file = [r["label"] for r in raw_records(tmp_path / "ds")]
    assert in_file == ds.targets[ds.file_order].tolist() and in_file != sorted(in_file)
    assert ds._meta.record_of_sample[ds.file_order].tolist() == list(range(len(ds)))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_convert_default_dataloader_workers_yield_image_folder_samples_in_index_order(image_folder, tmp_path,
                                                                                        start_method):
    src = image_folder(30)
    convert_image_folder(src, tmp_path / "ds", workers=0, seed=3, progress=False)
    ds = LMDBImageDataset(tmp_path / "ds", output="numpy")
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate_pixels,
                        multiprocessing_context=start_method)
    assert [item for batch in loader for item in batch] == image_folder_ids(src)


def test_convert_folder_order_writes_no_order_table_and_reads_as_identity(image_folder, converted):
    path = converted()  # order="folder"
    env, _ = environments.get(path)
    _, meta_db = open_databases(env, path)
    with begin_read(env) as txn:
        assert txn.get(fmt.ORDER_KEY, db=meta_db) is None  # what every 0.1 dataset looks like
    ds = LMDBImageDataset(path, output="numpy")
    assert ds.file_order.tolist() == list(range(len(ds)))
    assert [pixels_and_label(ds[i]) for i in range(len(ds))] == image_folder_ids(image_folder())


def test_convert_seeds_give_different_physical_orders_of_the_same_samples(image_folder, tmp_path):
    src = image_folder()
    for seed in (1, 2):
        convert_image_folder(src, tmp_path / f"s{seed}", seed=seed, workers=0, progress=False)
    one, two = (LMDBImageDataset(tmp_path / f"s{seed}", output="numpy") for seed in (1, 2))
    assert one.file_order.tolist() != two.file_order.tolist()
    assert [pixels_and_label(one[i]) for i in range(len(one))] == [pixels_and_label(two[i]) for i in range(len(two))]


def test_convert_damaged_order_table_is_refused_naming_the_dataset(converted, tmp_path):
    path = copy_dataset(converted(order="shuffled"), tmp_path / "ds")
    environments.release(path)
    env = lmdb.open(str(path), max_dbs=2)
    with env.begin(write=True) as txn:
        meta_db = env.open_db(fmt.META_DB, txn=txn)
        order = fmt.decode_labels(txn.get(fmt.ORDER_KEY, db=meta_db))
        order[0] = order[1]
        txn.put(fmt.ORDER_KEY, fmt.encode_labels(order), db=meta_db)
    env.close()
    with pytest.raises(NotADatasetError, match="not a permutation.*re-convert"):
        LMDBImageDataset(path)


@PROPERTY
@given(names=st.lists(st.text(alphabet="abc/é\udcff", min_size=1, max_size=8), unique=True, max_size=60),
       seed=st.integers(0, 2**64 - 1), data=st.data())
def test_write_plan_is_a_seeded_permutation_stable_under_removal(names, seed, data):
    plan = write_plan(names, order="shuffled", seed=seed)
    assert sorted(plan.tolist()) == list(range(len(names)))
    assert plan.tolist() == write_plan(list(names), order="shuffled", seed=seed).tolist()
    assert write_plan(names, order="folder", seed=seed).tolist() == list(range(len(names)))
    removed = set(data.draw(st.sets(st.sampled_from(names)) if names else st.just(set())))
    kept = [n for n in names if n not in removed]
    assert [kept[i] for i in write_plan(kept, order="shuffled", seed=seed)] == [
        names[i] for i in plan if names[i] not in removed]


def test_write_plan_shuffles_and_rejects_bad_arguments():
    names = [f"c/{i}.jpg" for i in range(200)]
    plan = write_plan(names, order="shuffled", seed=0)
    assert plan.tolist() != list(range(200))
    assert plan.tolist() != write_plan(names, order="shuffled", seed=1).tolist()
    with pytest.raises(ValueError, match="order='random'"):
        write_plan(names, order="random", seed=0)
    with pytest.raises(ValueError, match="seed=-1"):
        write_plan(names, order="shuffled", seed=-1)


def test_convert_bad_file_stops_with_error_naming_the_file_and_keeps_prior_records(image_folder, tmp_path):
    src = image_folder(12, special=False, corrupt=True)
    with pytest.raises(SourceImageError, match=r"class_001/broken\.jpg.*skip_bad=True") as excinfo:
        convert_image_folder(src, tmp_path / "ds", workers=2, progress=False)
    assert excinfo.value.source.endswith("class_001/broken.jpg")
    done = summarize(tmp_path / "ds").info
    assert not done.complete
    with pytest.raises(IncompleteDatasetError):
        LMDBImageDataset(tmp_path / "ds")


def test_convert_skip_bad_leaves_the_file_out_and_reports_it(image_folder, tmp_path, capsys):
    src = image_folder(12, special=False, corrupt=True)
    report = convert_image_folder(src, tmp_path / "ds", workers=2, skip_bad=True)
    assert [entry["path"] for entry in report.skipped] == ["class_001/broken.jpg"]
    assert "class_001/broken.jpg" in capsys.readouterr().out
    ds = LMDBImageDataset(tmp_path / "ds")
    assert len(ds) == 12 and summarize(tmp_path / "ds").info.skipped == report.skipped
    assert "class_001/broken.jpg" not in {ds.source_path(i) for i in range(len(ds))}
    pixels = LMDBImageDataset(tmp_path / "ds", output="numpy")
    assert [pixels_and_label(pixels[i]) for i in range(len(ds))] == image_folder_ids(src, {"class_001/broken.jpg"})


def test_convert_two_identical_runs_write_identical_metadata_for_unreadable_files(image_folder, tmp_path):
    src = copy_dataset(image_folder(12, special=False, corrupt=True), tmp_path / "src")
    (src / "class_000" / "notes.png").write_text("not an image at all")
    for name in ("a", "b"):
        convert_image_folder(src, tmp_path / name, workers=2, skip_bad=True, progress=False)
    assert logical_content(tmp_path / "a") == logical_content(tmp_path / "b")
    errors = {entry["path"]: entry["error"] for entry in summarize(tmp_path / "a").info.skipped}
    assert set(errors) == {"class_000/notes.png", "class_001/broken.jpg"}
    assert "no known image format" in errors["class_000/notes.png"] and " at 0x" not in errors["class_000/notes.png"]


@pytest.mark.parametrize("storage", ["encoded", "raw"])
def test_convert_worker_processes_give_the_same_dataset_as_in_process(image_folder, tmp_path, storage):
    src = image_folder()
    convert_image_folder(src, tmp_path / "a", storage=storage, workers=0, progress=False)
    convert_image_folder(src, tmp_path / "b", storage=storage, workers=2, progress=False)
    assert logical_content(tmp_path / "a") == logical_content(tmp_path / "b")


def stepped_conversion(src, dst, kill_at: int, total, options: dict) -> None:
    """Runs in a forked child: a conversion with numbered steps (before and after each record added,
    each transaction, its body and the offset scan) that SIGKILLs itself at step ``kill_at``
    (0: never; the number of steps goes to ``total``); ``options`` are more keyword arguments of it."""
    steps = 0

    def step():
        nonlocal steps
        steps += 1
        if steps == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def stepped(function):
        def run(*args, **kwargs):
            step()
            result = function(*args, **kwargs)
            step()
            return result
        return run

    write = writer.LMDBWriter._write
    writer.LMDBWriter._write = stepped(lambda self, body: write(self, stepped(body)))
    writer.LMDBWriter.add_record = stepped(writer.LMDBWriter.add_record)
    writer.record_spans = stepped(writer.record_spans)
    writer.LMDBWriter.__init__.__kwdefaults__["commit_records"] = 4
    convert_image_folder(src, dst, workers=2, seed=5, skip_bad=True, progress=False, **options)
    total.value = steps


def run_stepped(src, dst, kill_at: int, total=None, options: dict | None = None):
    context = multiprocessing.get_context("fork")
    child = context.Process(target=stepped_conversion,
                            args=(src, dst, kill_at, total or context.Value("i"), options or {}))
    child.start()
    return child


def is_complete(path) -> bool:
    """Whether a dataset's metadata says complete (False when it has none yet)."""
    env, _ = environments.get(path)
    _, meta_db = open_databases(env, path)
    with begin_read(env) as txn:
        info = txn.get(fmt.INFO_KEY, db=meta_db)
    return info is not None and fmt.DatasetInfo.from_json(info).complete


def assert_spans_valid(path) -> None:
    """Every stored (offset, length) reads exactly its record's value from data.mdb."""
    ds = LMDBImageDataset(path)
    assert ds._meta.spans is not None
    values = [r["value"] for r in raw_records(path)]
    with open(os.path.join(path, "data.mdb"), "rb") as data:
        for (offset, length), value in zip(ds._meta.spans.tolist(), values):
            assert os.pread(data.fileno(), length, offset) == value


@pytest.mark.parametrize("options", [{}, {"max_side": 64, "quality": 80}], ids=["as-given", "max-side"])
def test_convert_killed_at_any_step_including_finalisation_resumes_to_the_uninterrupted_dataset(image_folder,
                                                                                                  tmp_path, options):
    src = image_folder(12, corrupt=True)
    total = multiprocessing.get_context("fork").Value("i")
    whole = run_stepped(src, tmp_path / "whole", 0, total, options)
    whole.join(300)
    assert whole.exitcode == 0
    total = total.value
    points = range(1, total + 1)  # every step, those of finalisation included
    for group in points[::8]:
        children = [run_stepped(src, tmp_path / f"killed{k}", k, options=options) for k in points[group - 1:group + 7]]
        for child in children:
            child.join(300)
            assert child.exitcode == -signal.SIGKILL
    expected = logical_content(tmp_path / "whole")
    for k in points:
        path = tmp_path / f"killed{k}"
        if not is_complete(path):
            with pytest.raises((IncompleteDatasetError, NotADatasetError)):  # the latter: before the 1st commit
                LMDBImageDataset(path)
        convert_image_folder(src, path, workers=0, seed=5, skip_bad=True, resume=True, progress=False, **options)
        assert logical_content(path) == expected, f"killed at step {k} of {total}"  # shaping's counts included
        assert_spans_valid(path)
    shaping = summarize(tmp_path / "whole").info.shaping
    assert shaping is None if not options else shaping["resized"] > 0 and shaping["kept"] > 0


def test_convert_bad_file_deleted_then_resume_finishes_as_if_it_never_existed(image_folder, tmp_path):
    src = copy_dataset(image_folder(12, special=False, corrupt=True), tmp_path / "src")
    with pytest.raises(SourceImageError, match="Delete or replace the file and run again with resume=True"):
        convert_image_folder(src, tmp_path / "ds", workers=2, progress=False)
    (src / "class_001" / "broken.jpg").unlink()
    report = convert_image_folder(src, tmp_path / "ds", workers=2, resume=True, progress=False)
    assert 0 < report.converted < 12 and report.num_records == 12
    convert_image_folder(src, tmp_path / "whole", workers=2, progress=False)
    assert logical_content(tmp_path / "ds") == logical_content(tmp_path / "whole")
    ds = LMDBImageDataset(tmp_path / "ds", output="numpy")
    assert [pixels_and_label(ds[i]) for i in range(len(ds))] == image_folder_ids(src)


@pytest.mark.parametrize("order", ["shuffled", "folder"])
def test_convert_resume_refuses_a_source_changed_in_the_converted_part(image_folder, tmp_path, order):
    src = copy_dataset(image_folder(12, special=False, corrupt=True), tmp_path / "src")
    with pytest.raises(SourceImageError):
        convert_image_folder(src, tmp_path / "ds", workers=0, order=order, progress=False)
    with LMDBWriter(tmp_path / "ds", resume=True) as peek:
        done = peek.record_paths()
        peek.close(complete=False)
    (src / done[0]).rename(tmp_path / "aside.jpg")
    with pytest.raises(LMDBDatasetError, match=f"{done[0]}.*no longer in the source.*overwrite=True"):
        convert_image_folder(src, tmp_path / "ds", workers=0, order=order, resume=True, progress=False)
    (tmp_path / "aside.jpg").rename(src / done[0])
    relative = [os.path.relpath(p, src) for p, _ in ImageFolder(str(src)).samples]
    new = next(f"{done[0].split('/')[0]}/a{k}.jpg" for k in range(1000)
               if relative_position(relative, f"{done[0].split('/')[0]}/a{k}.jpg", order) <
               relative_position(relative, done[-1], order))
    (src / new).write_bytes((src / done[0]).read_bytes())
    with pytest.raises(LMDBDatasetError, match=f"{new}.*is new.*overwrite=True"):
        convert_image_folder(src, tmp_path / "ds", workers=0, order=order, resume=True, progress=False)


def relative_position(relative: list[str], path: str, order: str) -> int:
    """Where ``path`` lands in the write plan of ``relative`` plus ``path`` (in ImageFolder order)."""
    paths = sorted({*relative, path})
    return write_plan(paths, order=order, seed=0).tolist().index(paths.index(path))


def test_convert_resume_with_other_seed_or_order_is_refused(image_folder, tmp_path):
    src = image_folder(12, special=False, corrupt=True)
    with pytest.raises(SourceImageError):
        convert_image_folder(src, tmp_path / "ds", seed=1, workers=0, progress=False)
    with pytest.raises(LMDBDatasetError, match="seed=1, now seed=2"):
        convert_image_folder(src, tmp_path / "ds", seed=2, resume=True, workers=0, progress=False)
    with pytest.raises(LMDBDatasetError, match="order='shuffled', now order='folder'"):
        convert_image_folder(src, tmp_path / "ds", order="folder", seed=1, resume=True, workers=0, progress=False)


def test_convert_refuses_to_overwrite_without_flag_and_missing_source(image_folder, converted, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_image_folder(image_folder(), converted(), progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_image_folder(tmp_path / "nope", tmp_path / "ds", progress=False)


@pytest.mark.parametrize("workers", [1, 3])
def test_build_records_keeps_in_flight_work_bounded_whatever_the_dataset_size(tmp_path, workers):
    bound = workers * MAX_BATCHES_PER_WORKER * TASKS_PER_BATCH + TASKS_PER_BATCH
    for count in (bound, 6 * bound):
        submitted = 0

        def tasks(count=count):
            nonlocal submitted
            for i in range(count):
                submitted += 1
                yield str(tmp_path / f"missing{i}.jpg"), 0, "encoded", None

        peak = 0
        results = build_records(tasks(), workers)
        for consumed, (record, _, error, _) in enumerate(results, start=1):
            assert record is None and f"missing{consumed - 1}.jpg" in error  # in order
            peak = max(peak, submitted - consumed)
            time.sleep(0.001)  # a slow writer: finished records must not pile up
        assert consumed == count and peak <= bound


@PROPERTY
@given(workers=st.integers(1, 64), batch_bytes=st.none() | st.floats(0, 1 << 40))
def test_window_submits_what_the_byte_budget_holds_within_its_bounds(workers, batch_bytes):
    ahead = window(workers, batch_bytes)
    assert workers * MIN_BATCHES_PER_WORKER <= ahead <= workers * MAX_BATCHES_PER_WORKER and ahead % workers == 0
    if batch_bytes is None:
        assert ahead == workers * MIN_BATCHES_PER_WORKER  # nothing known of the results yet
    else:
        if ahead > workers * MIN_BATCHES_PER_WORKER:
            assert ahead * batch_bytes <= parallel.BYTES_IN_FLIGHT
        if ahead < workers * MAX_BATCHES_PER_WORKER:
            assert (ahead + workers) * batch_bytes > parallel.BYTES_IN_FLIGHT  # a batch a worker more would not fit


def _sized_result(task: tuple[int, int, bytes]) -> bytes:
    return bytes(task[1])


@pytest.mark.parametrize("task_bytes, result_bytes, opens", [(0, 1 << 20, False), (1 << 20, 16, False),
                                                             (16, 16, True)])
def test_ordered_map_holds_less_ahead_as_tasks_or_results_grow(monkeypatch, task_bytes, result_bytes, opens):
    monkeypatch.setattr(parallel, "BYTES_IN_FLIGHT", 8 << 20)  # 8 batches of 16 tasks of 64 KiB
    workers, count, submitted, peak = 2, 40 * TASKS_PER_BATCH, 0, 0

    def tasks():
        nonlocal submitted
        for i in range(count):
            submitted += 1
            yield i, result_bytes, bytes(task_bytes)  # an archive's image, say

    for consumed, result in enumerate(ordered_map(_sized_result, tasks(), workers), start=1):
        assert len(result) == result_bytes
        peak = max(peak, submitted - consumed)
        time.sleep(0.001)  # a slow consumer: the window fills
    least = workers * MIN_BATCHES_PER_WORKER * TASKS_PER_BATCH + TASKS_PER_BATCH
    assert consumed == count
    assert (peak > least) if opens else (peak <= least)  # 1 MiB tasks or results: 2 batches a worker


@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_GETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_ordered_map_workers_pipes_hold_a_batch_of_images_in_two_writes():
    import fcntl

    worker = parallel._Worker(multiprocessing.get_context(), _sized_result)
    try:
        sizes = {fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) for pipe in (worker.tasks, worker.results)}
    finally:
        worker.stop(finished=True)
    assert sizes == {parallel.PIPE_BYTES} and parallel.PIPE_BYTES >= TASKS_PER_BATCH * 110_000 / 2


def _record_done(task: tuple[str, int]) -> tuple[int, bytes]:
    folder, number = task
    open(os.path.join(folder, str(number)), "w").close()
    return number, bytes(1 << 15)  # a batch of results is half a (widened) pipe; the window is its largest


def test_ordered_map_workers_run_on_while_the_consumer_pauses(tmp_path):
    """A writer's commit must not stop the workers after one batch each (the 0.1 feeder never did)."""
    results = ordered_map(_record_done, ((str(tmp_path), i) for i in range(2000)), 2)
    assert [next(results)[0] for _ in range(5 * TASKS_PER_BATCH)] == list(range(5 * TASKS_PER_BATCH))
    time.sleep(2.0)  # the consumer commits
    # Every task submitted is done: the four batches received before the fifth, and a whole window ahead of it
    # (a worker that waits for the consumer to read each batch stopped at 9 batches, its pipe full).
    assert len(os.listdir(tmp_path)) == (4 + 2 * MAX_BATCHES_PER_WORKER) * TASKS_PER_BATCH
    assert [number for number, _ in results] == list(range(5 * TASKS_PER_BATCH, 2000))


def test_convert_resume_of_a_complete_dataset_is_a_no_op_only_with_the_same_settings(image_folder, tmp_path):
    src = image_folder(12, special=False)
    first = convert_image_folder(src, tmp_path / "ds", seed=1, workers=0, progress=False)
    before = logical_content(tmp_path / "ds")
    again = convert_image_folder(src, tmp_path / "ds", seed=1, workers=0, resume=True, progress=False)
    assert (again.converted, again.num_records, first.num_records) == (0, 12, 12)
    assert logical_content(tmp_path / "ds") == before
    with pytest.raises(LMDBDatasetError, match="already complete, converted with other settings.*overwrite=True"):
        convert_image_folder(src, tmp_path / "ds", seed=2, workers=0, resume=True, progress=False)
