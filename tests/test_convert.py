"""convert_image_folder: ImageFolder order, shuffle, bad files, kill-and-resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from torchvision.datasets import ImageFolder

from lmdb_dataset import (
    IncompleteDatasetError,
    LMDBDatasetError,
    LMDBImageDataset,
    SourceImageError,
    convert_image_folder,
)
from lmdb_dataset import format as fmt
from lmdb_dataset.environment import begin_read, environments, open_databases
from lmdb_dataset.inspection import summarize


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


def test_convert_shuffle_writes_a_seeded_permutation_that_maps_back_to_sources(image_folder, converted):
    src = image_folder()
    reference = ImageFolder(str(src))
    by_path = {os.path.relpath(p, src): i for i, (p, _) in enumerate(reference.samples)}
    ds = LMDBImageDataset(converted(shuffle=True), output="numpy")
    sources = [by_path[ds.source_path(i)] for i in range(len(ds))]
    assert sorted(sources) == list(range(len(reference)))
    assert sources != sorted(sources)
    for i in (0, 7, len(ds) - 1):
        assert np.array_equal(ds[i][0], np.asarray(reference[sources[i]][0]))
        assert ds[i][1] == reference.targets[sources[i]]


def test_convert_bad_file_stops_with_error_naming_the_file_and_keeps_prior_records(image_folder, tmp_path):
    src = image_folder(12, special=False, corrupt=True)
    with pytest.raises(SourceImageError, match=r"class_001/broken\.jpg.*--skip-bad") as excinfo:
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


@pytest.mark.parametrize("storage", ["encoded", "raw"])
def test_convert_worker_processes_give_the_same_dataset_as_in_process(image_folder, tmp_path, storage):
    src = image_folder()
    convert_image_folder(src, tmp_path / "a", storage=storage, workers=0, progress=False)
    convert_image_folder(src, tmp_path / "b", storage=storage, workers=2, progress=False)
    assert logical_content(tmp_path / "a") == logical_content(tmp_path / "b")


KILLER = textwrap.dedent("""
    import os, signal, sys
    from lmdb_dataset import writer, convert_image_folder
    writer.LMDBWriter.__init__.__kwdefaults__["commit_records"] = 4
    added = 0
    original = writer.LMDBWriter.add_record
    def add_then_die(self, *args, **kwargs):
        global added
        added += 1
        if added == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)
    writer.LMDBWriter.add_record = add_then_die
    convert_image_folder(sys.argv[1], sys.argv[2], workers=2, shuffle=True, seed=5, skip_bad=True, progress=False)
""")


@pytest.mark.parametrize("kill_after", [1, 6, 11])
def test_convert_killed_mid_way_resumes_to_the_same_dataset_as_an_uninterrupted_run(image_folder, tmp_path,
                                                                                      kill_after):
    src = image_folder(12, corrupt=True)
    result = subprocess.run([sys.executable, "-c", KILLER, str(src), str(tmp_path / "killed"), str(kill_after)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    committed = summarize(tmp_path / "killed").info
    assert not committed.complete and committed.num_records == 4 * ((kill_after - 1) // 4)
    with pytest.raises(IncompleteDatasetError, match="resume"):
        LMDBImageDataset(tmp_path / "killed")
    report = convert_image_folder(src, tmp_path / "killed", workers=2, shuffle=True, seed=5, skip_bad=True,
                                  resume=True, progress=False)
    assert report.converted == 18 - committed.conversion["next_source"]
    convert_image_folder(src, tmp_path / "whole", workers=2, shuffle=True, seed=5, skip_bad=True, progress=False)
    assert logical_content(tmp_path / "killed") == logical_content(tmp_path / "whole")


def test_convert_resume_with_other_seed_is_refused(image_folder, tmp_path):
    src = image_folder(12, special=False, corrupt=True)
    with pytest.raises(SourceImageError):
        convert_image_folder(src, tmp_path / "ds", shuffle=True, seed=1, workers=0, progress=False)
    with pytest.raises(LMDBDatasetError, match="seed=1.*seed=2"):
        convert_image_folder(src, tmp_path / "ds", shuffle=True, seed=2, resume=True, workers=0, progress=False)


def test_convert_refuses_to_overwrite_without_flag_and_missing_source(image_folder, converted, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_image_folder(image_folder(), converted(), progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_image_folder(tmp_path / "nope", tmp_path / "ds", progress=False)
