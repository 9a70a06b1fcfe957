"""The lmdb-dataset command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import add_corrupt_image

import lmdb_dataset
from lmdb_dataset import LMDBImageDataset
from lmdb_dataset.tools.bench import BenchTiming, report_lines, warmup_batches
from lmdb_dataset.tools.cli import build_parser, cli_words, main, user_error


def run_cli(*args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """``python -m lmdb_dataset ARGS`` in a fresh interpreter (what a user's shell runs)."""
    return subprocess.run([sys.executable, "-m", "lmdb_dataset", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120)


def test_convert_info_verify_round_trip(image_folder, tmp_path, capsys):
    target = tmp_path / "train.lmdb"
    assert main(["convert", str(image_folder()), str(target), "--workers", "2", "--order", "folder", "--quiet"]) == 0
    assert "wrote 29 records" in capsys.readouterr().out
    assert main(["info", str(target)]) == 0
    info = capsys.readouterr().out
    assert "records:   29" in info and "complete:  yes" in info and "classes:   3" in info
    assert main(["verify", str(target), "--decode", "--quiet"]) == 0
    assert "all records OK" in capsys.readouterr().out


def test_verify_lists_bad_records_and_exits_nonzero(converted, tmp_path, capsys):
    path = shutil.copytree(converted(), tmp_path / "copy.lmdb")
    offset, _ = LMDBImageDataset(path)._meta.spans[6]
    with open(path / "data.mdb", "r+b") as f:
        f.seek(int(offset) + 100)
        f.write(b"\x00\x01\x02\x03")
    assert main(["verify", str(path), "--quiet"]) == 1
    out = capsys.readouterr().out
    source = LMDBImageDataset(path).source_path(6)
    assert source.startswith("class_") and f"record 6 ({source}): CRC32 mismatch" in out
    assert "1 bad record(s)" in out


def test_convert_bad_file_exits_2_naming_it_and_skip_bad_succeeds(image_folder, tmp_path, capsys):
    src = image_folder(12, special=False, corrupt=True)
    assert main(["convert", str(src), str(tmp_path / "a"), "--quiet", "--workers", "0"]) == 2
    assert "class_001/broken.jpg" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "a"), "--resume", "--skip-bad", "--quiet"]) == 0
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "a")]) == 0
    assert "skipped:   1" in capsys.readouterr().out


def test_convert_a_tar_of_an_image_folder_and_wrong_kinds_say_the_fix_not_skip_bad(image_folder, tmp_path, capsys):
    src = image_folder(12, special=False)
    with tarfile.open(tmp_path / "train.tar", "w") as archive:
        archive.add(src, arcname="src")  # tar cf train.tar src
    assert main(["convert", str(tmp_path / "train.tar"), str(tmp_path / "a"), "--workers", "0", "--quiet"]) == 0
    assert "wrote 12 records" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "f"), "--workers", "0", "--quiet"]) == 0
    assert LMDBImageDataset(tmp_path / "a").samples == LMDBImageDataset(tmp_path / "f").samples  # ImageFolder's
    capsys.readouterr()
    for kind, fix in [("webdataset", "a tar of an image folder: convert it with kind='folder-tar' (--from folder-tar)"),
                      ("tar", "holds no per-class .tar members")]:
        assert main(["convert", str(tmp_path / "train.tar"), str(tmp_path / "b"), "--quiet", "--from", kind]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fix in err and "--skip-bad" not in err, err
        assert not (tmp_path / "b").exists()


def test_every_record_skipped_in_a_new_destination_leaves_nothing_behind(image_folder, tmp_path, capsys):
    src = tmp_path / "src"
    add_corrupt_image(src, folder="a")
    add_corrupt_image(src, folder="b")
    with tarfile.open(tmp_path / "bad.tar", "w") as archive:
        archive.add(src, arcname="src")
    for source in (src, tmp_path / "bad.tar"):
        target = tmp_path / f"{source.name}.lmdb"
        assert main(["convert", str(source), str(target), "--resume", "--skip-bad", "--workers", "0", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "every one of the 2" in err and "nothing is left there" in err and "--overwrite" not in err, err
        assert not target.exists()


def test_info_on_incomplete_and_missing_datasets(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_dash_m_entry_point_prints_help():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("convert", "info", "verify", "demo", "bench"):
        assert command in result.stdout


@pytest.mark.parametrize("loader", ["random", "chunk", "iterable"])
def test_bench_reads_the_dataset(converted, capsys, loader):
    assert main(["bench", str(converted()), "--loader", loader, "--workers", "1", "--batch-size", "8",
                 "--pipeline", "val", "--cold"]) == 0
    out = capsys.readouterr().out
    assert "evicted" in out and "time to first batch" in out
    # 32 records in batches of 8 are 4 batches: too few for a steady-state figure, and it says so.
    assert "steady state: not measured" in out and "too small" in out


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--num-images", "48", "--workers", "1",
                 "--batch-size", "16"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert captured.err.lstrip("\r").startswith("build images:"), "the first progress bar has a label"
    assert "equal torchvision's ImageFolder on sampled records: yes" in out
    assert out.count("x, 48 images)") == 3


def test_demo_with_fewer_images_than_its_six_classes_runs(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path), "--num-images", "3", "--workers", "0"]) == 0
    assert capsys.readouterr().out.count("x, 3 images)") == 3


def test_version_matches_the_package():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"lmdb-dataset {lmdb_dataset.__version__}"


def test_changelog_opens_with_this_version():
    """A version bump comes with its CHANGELOG.md section, and the newest section is the package's version."""
    changelog = Path(__file__).resolve().parent.parent / "CHANGELOG.md"
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog.read_text(), flags=re.MULTILINE)
    assert releases and releases[0] == lmdb_dataset.__version__, f"CHANGELOG.md's newest release: {releases[:1]}"


def test_every_option_has_help_text():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"lmdb-dataset {name} {action.dest} has no help text"


def test_metadata_commands_do_not_import_torch(converted):
    """`info`, `verify`, `--help` and `--version` start fast: they never import torch (checked, not timed)."""
    script = f"""
import sys
from lmdb_dataset.tools.cli import main
assert main(["info", {str(converted())!r}]) == 0
assert main(["verify", {str(converted())!r}, "--decode", "--quiet"]) == 0
for flag in ("--help", "--version"):
    try:
        main([flag])
    except SystemExit:
        pass
import lmdb_dataset
lmdb_dataset.LMDBDatasetError  # the lazy re-exports of light modules stay light
print("torch imported:", "torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout


def test_package_names_import_lazily_and_completely():
    for name in lmdb_dataset.__all__:
        assert getattr(lmdb_dataset, name).__name__ == name
    assert set(lmdb_dataset.__all__) <= set(dir(lmdb_dataset))
    with pytest.raises(AttributeError, match="no_such_name"):
        lmdb_dataset.no_such_name  # noqa: B018


def test_info_into_a_closed_pipe_is_quiet(converted):
    """`lmdb-dataset info PATH | head -3`: the reader has gone; no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, deterministically
    try:
        result = run_cli("info", str(converted()), stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert result.stderr == ""


@pytest.mark.parametrize("case", ["data.mdb", "a file", "missing", "not a dataset", "file as parent"])
def test_wrong_paths_give_one_line_naming_the_path(converted, image_folder, tmp_path, capsys, case):
    """In-process: a traceback would propagate out of main() and fail the test."""
    (tmp_path / "file.txt").write_text("not a dataset")
    path = {"data.mdb": converted() / "data.mdb", "a file": tmp_path / "file.txt", "missing": tmp_path / "nope",
            "not a dataset": image_folder(), "file as parent": tmp_path / "file.txt" / "train.lmdb"}[case]
    for command in (["info"], ["verify", "--quiet"], ["bench", "--workers", "0", "--batches", "1"]):
        status = main([command[0], str(path), *command[1:]])
        err = capsys.readouterr().err
        if case == "data.mdb" and status == 0:
            continue  # the library accepts the data file itself
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"lmdb-dataset {command[0]}: error: ")
        assert str(path.parent if case == "file as parent" else path) in lines[0]


@pytest.mark.parametrize("content", [b"", b"\x07" * 65536], ids=["empty", "garbage"])
def test_a_damaged_lmdb_file_gives_one_line(tmp_path, capsys, content):
    (tmp_path / "bad.lmdb").mkdir()
    (tmp_path / "bad.lmdb" / "data.mdb").write_bytes(content)
    for command in ("info", "verify"):
        assert main([command, str(tmp_path / "bad.lmdb")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "not a readable LMDB" in err and "bad.lmdb" in err


@pytest.mark.parametrize("dst", ["file", "file as parent"])
def test_convert_to_a_wrong_destination_gives_one_line(image_folder, tmp_path, capsys, dst):
    (tmp_path / "file.txt").write_text("x")
    target = tmp_path / "file.txt" if dst == "file" else tmp_path / "file.txt" / "train.lmdb"
    assert main(["convert", str(image_folder()), str(target), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "file.txt" in err, err


@pytest.mark.parametrize("kind", [PermissionError, NotADirectoryError, IsADirectoryError, FileNotFoundError])
def test_os_errors_become_one_line_naming_the_file(kind):
    message = user_error(kind(13, "os says no", "/data/train.lmdb"))
    assert message is not None and "/data/train.lmdb" in message and "\n" not in message


def test_a_bug_keeps_its_traceback():
    assert user_error(RuntimeError("internal")) is None


def test_flag_errors_are_one_line(converted, capsys):
    for args in (["bench", str(converted()), "--batches", "0"], ["bench", str(converted()), "--workers", "-1"],
                 ["demo", "--num-images", "zero"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        last_line = capsys.readouterr().err.strip().splitlines()[-1]
        assert last_line.startswith(f"lmdb-dataset {args[0]}: error: argument --")


def test_cli_errors_speak_flags_not_keyword_arguments(image_folder, converted, capsys):
    assert main(["convert", str(image_folder()), str(converted()), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" in err and "=True" not in err


@pytest.mark.parametrize("message, expected", [
    ("run again with resume=True (--resume), or pass skip_bad=True (--skip-bad).",
     "run again with --resume, or pass --skip-bad."),
    ("it was started with seed=0, now seed=3. Start over with overwrite=True.",
     "it was started with --seed 0, now --seed 3. Start over with --overwrite."),
    ("started with skip_bad=False, now skip_bad=True", "started with no --skip-bad, now --skip-bad"),
    ("Finish it with `lmdb-dataset convert SRC x --resume` (or convert_image_folder(..., resume=True)).",
     "Finish it with `lmdb-dataset convert SRC x --resume`."),
    ("source_count=514, now 513", "source_count=514, now 513"),
    ("it stores pixels (storage='encoded'); pass storage='raw'",
     "it stores pixels (--storage encoded); pass --storage raw"),
    ("reader='random' takes none", "reader='random' takes none"),  # no command's option: as written
])
def test_cli_words(message, expected):
    assert cli_words(message, build_parser()) == expected


def test_interrupted_convert_says_how_to_resume(image_folder, tmp_path, monkeypatch, capsys):
    import lmdb_dataset.write.convert

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lmdb_dataset.write.convert, "convert_image_folder", interrupted)
    assert main(["convert", str(image_folder()), str(tmp_path / "t.lmdb")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command with --resume" in err


def test_bench_batches_zero_is_an_error_in_python_too(converted):
    from lmdb_dataset.tools.bench import run_bench

    with pytest.raises(ValueError, match="batches=0"):
        run_bench(converted(), batches=0, workers=0)


def test_bench_steady_state_excludes_warm_up_and_first_batch():
    # 2 workers prefetch 2 batches each: 4 warm-up batches. The first batch took 5 s, the prefetched
    # ones came at once, then one batch of 10 images every 0.5 s: the steady figure is 20 images/s.
    warmup = warmup_batches(2)
    done = [5.0, 5.0, 5.0, 5.0] + [5.0 + 0.5 * k for k in range(1, 13)]
    timing = BenchTiming(done, [10] * len(done), warmup=warmup)
    assert warmup == 4 and timing.first_batch_s == 5.0 and timing.steady_batches == 12
    assert timing.steady_images_per_s == pytest.approx(20.0)
    assert timing.end_to_end_images_per_s == pytest.approx(160 / 11.0)
    lines = report_lines(timing, mean_record_bytes=1e5)
    assert any("steady state: 20 images/s (2.0 MB/s" in line for line in lines)


@pytest.mark.parametrize("measured, steady", [(9, False), (10, True)])
def test_bench_needs_enough_batches_after_warm_up(measured, steady):
    done = [1.0 + k for k in range(warmup_batches(0) + measured)]
    timing = BenchTiming(done, [4] * len(done), warmup=warmup_batches(0))
    assert (timing.steady_images_per_s is not None) == steady
    assert any("too small for a steady-state figure" in line for line in report_lines(timing, 1.0)) != steady


def test_bench_reports_steady_state_on_enough_batches(converted, capsys):
    assert main(["bench", str(converted()), "--loader", "chunk", "--workers", "0", "--batch-size", "2",
                 "--pipeline", "none", "--batches", "12"]) == 0
    out = capsys.readouterr().out
    assert "over 11 batches after 1 warm-up batches" in out and "time to first batch" in out


def test_bench_mistakes_are_told_in_bench_words(converted, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", str(converted()), "--quit"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage: lmdb-dataset bench" in err
    assert err.strip().splitlines()[-1] == "lmdb-dataset bench: error: unrecognized arguments: --quit"
    from lmdb_dataset import LMDBWriter

    with LMDBWriter(tmp_path / "empty.lmdb", classes=["a"]):
        pass  # a dataset of 0 records (convert never writes one)
    assert main(["bench", str(tmp_path / "empty.lmdb"), "--workers", "0", "--quiet"]) == 2
    assert "empty.lmdb' holds 0 records: there is nothing to read" in capsys.readouterr().err


@pytest.mark.parametrize("workers, batch_size, batches, cause", [
    (32, 8, None, "--workers 11 or fewer (the warm-up is the 2 batches each worker prefetches: 64 here, for 32 "
                  "batches read)"),
    (0, 16, None, "--batch-size 2 or less"),
    (2, 2, 5, "--batches 5 stopped the run early: pass --batches 14 or more"),
])
def test_bench_too_few_batches_names_the_cause(workers, batch_size, batches, cause):
    """A DataLoader's batches for 32 images (``--batches`` may stop it early)."""
    epoch = -(-256 // batch_size) if workers == 32 else -(-32 // batch_size)
    read = min(epoch, batches or epoch)
    timing = BenchTiming([1.0 + k for k in range(read)], [batch_size] * read, warmup=warmup_batches(workers),
                         epoch_batches=epoch)
    (line,) = [line for line in report_lines(timing, 1.0) if line.startswith("steady state: not measured")]
    assert cause in line


def test_convert_prints_the_commands_wall_time(image_folder, tmp_path, monkeypatch, capsys):
    """Not the library's own figure, which leaves out what happened before it was called."""
    import time

    import lmdb_dataset.write.convert

    def slow(src, dst, **options):
        time.sleep(0.3)
        return lmdb_dataset.write.convert.ConversionReport(dst, 7, [], 7, 0.0, 0)

    monkeypatch.setattr(lmdb_dataset.write.convert, "convert_image_folder", slow)
    assert main(["convert", str(image_folder()), str(tmp_path / "t.lmdb"), "--quiet"]) == 0
    seconds = float(capsys.readouterr().out.split(" in ")[1].split(" s")[0])
    assert 0.3 <= seconds < 5


@pytest.mark.parametrize("workers", ["0", "1"])
@pytest.mark.parametrize("label", ["99999999999999999999999", "1000000000"])
def test_convert_with_an_unusable_label_gives_one_line(image_folder, tmp_path, capsys, workers, label):
    """A label past int64 crashed a worker ("killed for lack of memory"); 10**9 asked for a billion class names."""
    listing = tmp_path / "list.txt"
    listing.write_text(f"class_000/class_000_000000.JPEG {label}\n")
    status = main(["convert", str(listing), str(tmp_path / "out"), "--root", str(image_folder()), "--quiet",
                   "--workers", workers])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"list.txt: record 'class_000/class_000_000000.JPEG': label {label} " in err and "memory" not in err
    assert ("--classes FILE" if label == "1000000000" else "outside 0..2**31-1") in err
