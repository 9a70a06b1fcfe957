"""Ctrl-C and SIGTERM during a conversion: a prompt stop, one line, status 130, and a resumable dataset.

The signals go to the whole process group, as a terminal's Ctrl-C and a cluster's time limit send
them, so worker processes get them too.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import numpy as np
import pytest
from legacy_writers import source_images, write_shards
from test_convert import logical_content

from lmdb_dataset import LMDBDatasetError, convert_image_folder, convert_source
from lmdb_dataset.tools.inspection import summarize
from lmdb_dataset.write import writer
from lmdb_dataset.write.interrupts import (
    Terminated,
    deferred_interrupts,
    interrupt_behind,
    raise_terminated,
    terminate_as_interrupt,
)
from lmdb_dataset.write.parallel import ordered_map

ROOT = Path(__file__).parents[1]

# The real command line, with a commit every 24 records so that a small run holds many commits.
# A signal that comes while the imports run is held until they are done and then ends the process as
# "interrupted before it started": cut inside a C extension's import, numpy reports an ImportError
# instead (CI saw one), which no program can tell from a broken install.
CLI = textwrap.dedent("""
    import os, runpy, signal, sys
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # until lmdb_dataset/__main__.py installs its own
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    os.write(int(sys.argv.pop(1)), b"ready")  # the interpreter has started: from now on every instant counts
    try:
        from lmdb_dataset.write import writer
        import lmdb_dataset.tools.cli
        writer.LMDBWriter.__init__.__kwdefaults__["commit_records"] = 24
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # one held is raised here
    except KeyboardInterrupt:
        print("lmdb-dataset: interrupted before it started; nothing was written", file=sys.stderr)
        sys.exit(130)
    runpy.run_module("lmdb_dataset", run_name="__main__", alter_sys=True)
""")


def start_convert(src: Path, dst: Path, workers: int = 2) -> tuple[subprocess.Popen, float]:
    """The command line converting ``src`` into ``dst``, and the instant its interpreter had started.

    The interpreter's own start-up (before any Python code runs) is left out: no program can
    handle a signal there.
    """
    ready, ready_in_child = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", CLI, str(ready_in_child), "convert", str(src), str(dst),
                              "--workers", str(workers), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             pass_fds=(ready_in_child,))
    os.close(ready_in_child)
    with os.fdopen(ready, "rb") as pipe:
        assert pipe.read(5) == b"ready"
    return child, time.monotonic()


def cut_at(src: Path, target: Path, instant: float, sig: signal.Signals, *, workers: int, expected: dict,
           resume: Callable[[Path], object]) -> tuple[str, int, float]:
    """Convert ``src`` into ``target`` on the command line, send ``sig`` to its process group ``instant`` s after
    its start, check what it printed, and ``resume`` it in this process to the ``expected`` content.

    Returns the outcome (``finished``, ``interrupted``, ``not started``: before the command line was
    imported), the records committed when it stopped (-1 if none could be read) and its stop time.
    """
    child, started = start_convert(src, target, workers)
    time.sleep(max(0.0, started + instant - time.monotonic()))
    sent = time.monotonic()
    with contextlib.suppress(ProcessLookupError):  # it may have finished, and its workers with it
        os.killpg(child.pid, sig)
    out, err = child.communicate(timeout=60)
    stop_s = time.monotonic() - sent
    where = f"{sig.name} at {instant:.3f} s: status {child.returncode}, stderr {err!r}"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, where  # the workers' included
    if child.returncode == 130:
        assert err.count("\n") == 1 and "interrupted" in err, where
        outcome = "not started" if "before it started" in err else "interrupted"
        if outcome == "not started":
            assert not target.exists(), where
        else:
            assert "run the same command with --resume" in err, where
            assert ("(SIGTERM)" in err) == (sig == signal.SIGTERM), where
    else:  # done; the signal may have come as the interpreter was exiting, after the conversion
        assert child.returncode in (0, -sig) and f"wrote {len(expected['records'])} records" in out, where
        outcome = "finished"
    committed = -1
    if target.exists():
        with contextlib.suppress(LMDBDatasetError):  # cut before its first commit: nothing to read
            committed = summarize(target).info.num_records
        resume(target)
        assert logical_content(target) == expected, where
    return outcome, committed, stop_s


def test_convert_stops_at_any_instant_of_sigint_or_sigterm_and_resumes_to_the_same_dataset(image_folder,
                                                                                            tmp_path):
    src = image_folder(360, special=False)
    reference, started = start_convert(src, tmp_path / "whole.lmdb")
    out, err = reference.communicate(timeout=120)
    whole_s = time.monotonic() - started
    assert reference.returncode == 0 and "wrote 360 records" in out, err
    expected = logical_content(tmp_path / "whole.lmdb")
    rng = np.random.default_rng(20)
    instants = (np.arange(16) + rng.uniform(size=16)) / 16 * whole_s * 1.1  # stratified over the whole run

    def resume(target: Path) -> None:
        convert_image_folder(src, target, workers=0, resume=True, progress=False)

    runs = [cut_at(src, tmp_path / f"cut{k}.lmdb", instant, (signal.SIGINT, signal.SIGTERM)[k % 2],
                   workers=(2, 2, 0, 0)[k % 4], expected=expected, resume=resume)
            for k, instant in enumerate(instants.tolist())]
    # A busy machine stretches start-up (most early instants then come before it): until four runs were cut
    # after the start, one of them with part of its records committed, aim later.
    for k in range(12):
        if (sum(outcome == "interrupted" for outcome, _, _ in runs) >= 4
                and any(outcome == "interrupted" and 0 < committed < 360 for outcome, committed, _ in runs)):
            break
        runs.append(cut_at(src, tmp_path / f"late{k}.lmdb", whole_s * rng.uniform(0.5, 1.0),
                           (signal.SIGINT, signal.SIGTERM)[k % 2], workers=2, expected=expected, resume=resume))
    outcomes = [outcome for outcome, _, _ in runs]
    assert outcomes.count("interrupted") >= 4 and any(
        outcome == "interrupted" and 0 < committed < 360 for outcome, committed, _ in runs), runs
    stop_s = [seconds for _, _, seconds in runs]
    assert max(stop_s) < 5.0, stop_s  # measured on a busy 2-core box: under 0.2 s
    print(f"{len(runs)} runs, stop times (s): {sorted(round(t, 3) for t in stop_s)}; {runs}")


def test_convert_of_another_source_kind_stops_at_any_instant_too(image_folder, tmp_path):
    """The same on webdataset shards (the path of every --from kind), 6 instants."""
    src = tmp_path / "shards"
    write_shards(source_images(image_folder(360, special=False)), src, per_shard=40)
    reference, started = start_convert(src, tmp_path / "whole.lmdb")
    out, err = reference.communicate(timeout=120)
    whole_s = time.monotonic() - started
    assert reference.returncode == 0 and "wrote 360 records" in out, err
    expected = logical_content(tmp_path / "whole.lmdb")

    def resume(target: Path) -> None:
        convert_source(src, target, workers=0, resume=True, progress=False)

    instants = (np.arange(6) + np.random.default_rng(6).uniform(size=6)) / 6 * whole_s
    runs = [cut_at(src, tmp_path / f"cut{k}.lmdb", instant, (signal.SIGINT, signal.SIGTERM)[k % 2],
                   workers=(2, 0)[k % 2], expected=expected, resume=resume) for k, instant in enumerate(instants)]
    assert max(seconds for _, _, seconds in runs) < 5.0, runs


@pytest.mark.parametrize("how", ["raised", "signalled"])
def test_an_interrupt_right_after_a_commit_lands_keeps_the_writer_consistent(image_folder, tmp_path, monkeypatch,
                                                                               how):
    """The transaction is the point of no return: an interrupt just after it must not make the writer commit
    the same records again when it closes ('record 0 already exists')."""
    monkeypatch.setitem(writer.LMDBWriter.__init__.__kwdefaults__, "commit_records", 4)
    write, calls = writer.LMDBWriter._write, []

    def interrupted_after_writing(self, body):
        write(self, body)
        calls.append(1)
        if len(calls) == 3:  # the second commit of records
            if how == "raised":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C at the worst instant

    monkeypatch.setattr(writer.LMDBWriter, "_write", interrupted_after_writing)
    src = image_folder(12, special=False)
    with pytest.raises(KeyboardInterrupt):
        convert_image_folder(src, tmp_path / "cut.lmdb", workers=0, progress=False)
    monkeypatch.undo()
    convert_image_folder(src, tmp_path / "cut.lmdb", workers=0, resume=True, progress=False)
    convert_image_folder(src, tmp_path / "whole.lmdb", workers=0, progress=False)
    assert logical_content(tmp_path / "cut.lmdb") == logical_content(tmp_path / "whole.lmdb")


def test_deferred_interrupts_deliver_the_signal_when_the_section_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler would have run by now
            done.append("the whole section")
    assert done == ["the whole section"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_nested_deferred_section_leaves_the_signal_to_the_outer_one():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            with deferred_interrupts():  # e.g. a commit inside the converter's record section
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                done.append("the inner section")
            done.append("the rest of the outer one")
    assert done == ["the inner section", "the rest of the outer one"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):  # and the next section holds signals again
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append("a later section")
    assert done[-1] == "a later section"


def test_terminate_as_interrupt_turns_sigterm_into_keyboard_interrupt_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_python_m_lmdb_dataset_names_sigterm_from_its_first_line_to_its_exit():
    """``python -m lmdb_dataset`` installs the handler raising :class:`Terminated` once, before the command
    line is imported, so no instant of its start (or its end, after the command's own block) turns a
    SIGTERM into a plain interrupt (CI once saw one, sent between two lines of that block's entry)."""
    before = signal.getsignal(signal.SIGTERM)
    try:
        runpy.run_module("lmdb_dataset", run_name="imported")  # its code, short of calling main()
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_program_ignores_signals_once_its_command_is_done(monkeypatch):
    """A signal after the command (during the interpreter's exit, in a worker pool's finalizer) has nothing
    left to stop: CI saw one print a traceback from multiprocessing's finalizer after a finished conversion."""
    from lmdb_dataset.tools import cli

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(cli, "main", lambda: 3)
    try:
        with pytest.raises(SystemExit) as exited:
            cli.run()
        assert exited.value.code == 3
        assert all(signal.getsignal(signum) == signal.SIG_IGN for signum in before)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_an_interrupt_python_re_raised_as_another_error_ends_the_command_as_that_interrupt(monkeypatch, capsys,
                                                                                           tmp_path):
    """CI saw a SIGTERM land in a class body of a module the command imports lazily: Python 3.11 re-raised
    it as "RuntimeError: Error calling __set_name__", which went out of main() as a traceback."""
    from lmdb_dataset.tools import cli

    class Cut:
        def __set_name__(self, owner: type, name: str) -> None:
            raise Terminated("received SIGTERM")

    def cut_import(args: object) -> int:
        type("Report", (), {"field": Cut()})  # a class created while the signal comes
        return 0

    monkeypatch.setattr(cli, "_convert", cut_import)
    assert cli.main(["convert", str(tmp_path), str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err == ("lmdb-dataset convert: interrupted (SIGTERM); everything committed is kept: "
                                       "run the same command with --resume to continue\n")
    caused = RuntimeError("Error calling __set_name__")
    caused.__cause__ = KeyboardInterrupt()
    assert isinstance(interrupt_behind(ImportError("numpy")), type(None))
    assert interrupt_behind(caused) is caused.__cause__


def _die_on_seven(task: int) -> int:
    if task == 7:
        os.kill(os.getpid(), signal.SIGKILL)  # e.g. the kernel's out-of-memory killer
    return task * 2


def _pid(task: int) -> int:
    return os.getpid()


def _fail_on_seven(task: int) -> int:
    if task == 7:
        raise RuntimeError("a bug in the conversion")
    return task * 2


def test_a_worker_that_dies_is_an_error_not_a_hang():
    with pytest.raises(LMDBDatasetError, match=r"worker process was killed \(SIGKILL, e.g. for lack of memory\).*"
                                               r"resume=True, perhaps with fewer workers"):
        list(ordered_map(_die_on_seven, range(100), 2))


def test_a_worker_that_raises_is_reported_as_failed_not_as_short_of_memory(capfd):
    with pytest.raises(LMDBDatasetError, match=r"worker process failed \(exit status 1; its error is printed "
                                               r"above\).*resume=True$") as raised:
        list(ordered_map(_fail_on_seven, range(100), 2))
    assert "memory" not in str(raised.value)
    assert "RuntimeError: a bug in the conversion" in capfd.readouterr().err


def test_workers_ignore_sigint_and_are_gone_once_the_map_is_closed():
    results = ordered_map(_pid, range(200), 2)
    pids = {next(results) for _ in range(40)}
    for pid in pids:
        os.kill(pid, signal.SIGINT)  # ignored: a terminal's Ctrl-C is the parent's to handle
    assert sum(1 for _ in results) == 160
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("made", [(), (b"records",), (b"records", b"meta")])
def test_resume_after_a_cut_before_the_first_commit_starts_afresh(image_folder, tmp_path, made):
    """Cut while the writer was creating its files: a lock file, an empty LMDB, one sub-database of two."""
    target = tmp_path / "cut.lmdb"
    target.mkdir()
    (target / "lock.mdb").write_bytes(b"")
    if made:
        env = lmdb.open(str(target), max_dbs=2)
        for name in made:
            env.open_db(name)
        env.close()
    src = image_folder(12, special=False)
    convert_image_folder(src, target, workers=0, resume=True, progress=False)
    convert_image_folder(src, tmp_path / "whole.lmdb", workers=0, progress=False)
    assert logical_content(target) == logical_content(tmp_path / "whole.lmdb")


def test_a_source_conversion_cut_before_it_saved_its_settings_resumes(image_folder, tmp_path):
    """Cut right after the writer's first commit, before the conversion's own: --resume starts it afresh."""
    src = tmp_path / "val.txt"
    src.write_text("".join(f"{path} {k % 2}\n" for k, path in enumerate(sorted(image_folder(12, special=False)
                                                                              .rglob("*.JPEG")))))
    writer.LMDBWriter(tmp_path / "cut.lmdb", source=f"list:{src}").close(complete=False)  # as convert_source starts
    convert_source(src, tmp_path / "cut.lmdb", workers=0, resume=True, progress=False)
    convert_source(src, tmp_path / "whole.lmdb", workers=0, progress=False)
    assert logical_content(tmp_path / "cut.lmdb") == logical_content(tmp_path / "whole.lmdb")


def test_a_signal_between_a_records_progress_and_the_record_loses_no_record(image_folder, tmp_path, monkeypatch):
    """Ctrl-C right after the converter saved its progress past a record, before adding that record (CI saw a
    SIGTERM land there: the resumed dataset lacked the record). The two are kept together: nothing is lost."""
    src = tmp_path / "shards"
    write_shards(source_images(image_folder(48, special=False)), src, per_shard=16)
    convert_source(src, tmp_path / "whole.lmdb", workers=0, progress=False)
    expected = logical_content(tmp_path / "whole.lmdb")
    original = writer.LMDBWriter.set_conversion_state

    def save_then_interrupt(self, state):
        original(self, state)
        if state["next_source"] == 30:  # counts record 29, which is not added yet
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(writer.LMDBWriter, "set_conversion_state", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert_source(src, tmp_path / "cut.lmdb", workers=0, progress=False)
    monkeypatch.undo()
    assert summarize(tmp_path / "cut.lmdb").info.num_records == 30  # record 29 came with its progress
    convert_source(src, tmp_path / "cut.lmdb", workers=0, resume=True, progress=False)
    assert logical_content(tmp_path / "cut.lmdb") == expected
