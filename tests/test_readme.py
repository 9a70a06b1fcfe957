"""Every code block of README.md and benchmarks/README.md runs as written.

How each fenced block is checked (one test per block, named after its line number):

* ```` ```python ````: run as a script in a fresh interpreter (this checkout's ``lmdb_dataset``
  first on ``PYTHONPATH``), in a scratch directory, on CPU. It must exit 0.
* ```` ```bash ````: each command line is checked:
  ``lmdb-dataset ARGS`` runs as ``python -m lmdb_dataset ARGS`` and must exit 0;
  a ``python3 -m venv .venv && .venv/bin/pip install -e ...`` line must use exactly the set-up
  commands of ``.ci/run`` (what CI runs on a fresh machine), name only extras that setup.cfg
  defines, and whatever it runs afterwards is either ``.ci/run``'s own test command or an
  ``lmdb-dataset`` command, run as above (``demo`` with ``--num-images 24 --workers 1``, small);
  ``[.venv/bin/]python -m benchmarks.loaders.run ARGS``: ARGS must parse (the suite takes minutes;
  it is not run here); ``bash SCRIPT ARGS``: SCRIPT must exist and pass ``bash -n``;
  ``[.venv/bin/]python -m pytest ARGS``: either ``.ci/run``'s own test command (the whole suite,
  of which this test is a part: not run again), or ARGS must collect at least one test
  (``--collect-only``: the files and ``-k``/``-m`` expressions exist; the tests are not run).
  Any other command fails the test: teach this file how to check it, or mark the block.
* A block without a language must be marked (below).

The data. Before running a block, every ``/data/`` in it is replaced by a scratch directory that
holds tiny real datasets (the only substitution made without a marker):

* ``/data/imagenet/train`` and ``/data/imagenet/val``: ImageFolder trees of real JPEGs (3 classes;
  train with grayscale, CMYK, PNG and 1x1 images);
* ``/data/train.lmdb`` and ``/data/val.lmdb``: their conversions (python blocks only; bash blocks
  start without them, so that their ``lmdb-dataset convert`` commands create them);
* the working directory holds ``cat.jpg`` and ``dog.jpg``, real JPEGs.

Markers. An HTML comment on the line right before a block changes how it is checked (it does not
show on GitHub). Directives are separated by ``;``:

* ``<!-- readme-test: torchrun -->``: a python block that also runs under
  ``python -m torch.distributed.run --standalone --nproc_per_node=2`` (gloo on CPU), besides
  single-process.
* ``<!-- readme-test: replace "OLD" "NEW" -->``: replace the text OLD with NEW before running
  (e.g. fewer epochs); OLD must occur in the block.
* ``<!-- readme-test: excerpt REASON -->``: lines that cannot run alone (from inside a loop): the
  block is only compiled (python syntax).
* ``<!-- readme-test: synopsis -->``: a command-line synopsis: every ``lmdb-dataset`` command and
  ``--flag`` in it must exist, and every option of every command must appear in it.
* ``<!-- readme-test: skip REASON -->``: not checked; REASON is required (e.g. needs a GPU cluster).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
READMES = (README, ROOT / "benchmarks" / "README.md")
CI_SCRIPT = ROOT / ".ci" / "run"
DEMO_SIZE = ["--num-images", "24", "--workers", "1"]
TIMEOUT = 600


@dataclass
class Block:
    """One fenced code block of the README and the marker directives before it."""

    line: int
    language: str
    code: str
    directives: dict[str, list[str]] = field(default_factory=dict)
    file: str = "README.md"

    @property
    def name(self) -> str:
        return f"{self.file}:L{self.line}-{self.language or 'text'}"


_MARKER = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
_DIRECTIVES = ("torchrun", "replace", "excerpt", "synopsis", "skip")


def parse_blocks(text: str, file: str = "README.md") -> list[Block]:
    """The fenced blocks of a markdown text, with the directives of the marker line before each."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = re.match(r"^```(\w*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        marker = _MARKER.match(lines[index - 1]) if index else None
        blocks.append(Block(index + 1, opening.group(1), "\n".join(lines[index + 1:end]) + "\n",
                            parse_directives(marker.group(1)) if marker else {}, file))
        index = end + 1
    return blocks


def parse_directives(text: str) -> dict[str, list[str]]:
    """``'torchrun; replace "a" "b"'`` -> ``{"torchrun": [], "replace": ["a", "b"]}``."""
    directives: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, *arguments = shlex.split(part)
        if name not in _DIRECTIVES:
            raise ValueError(f"unknown readme-test directive {name!r}; use one of {', '.join(_DIRECTIVES)}")
        directives.setdefault(name, []).extend(arguments)
    return directives


BLOCKS = [block for readme in READMES for block in parse_blocks(readme.read_text(), str(readme.relative_to(ROOT)))]


def prepared(block: Block, data: Path) -> str:
    """The block's code with its replace directives applied and ``/data/`` pointing at ``data``."""
    code = block.code
    replacements = block.directives.get("replace", [])
    assert len(replacements) % 2 == 0, f"{block.name}: replace takes pairs of strings"
    for old, new in zip(replacements[::2], replacements[1::2]):
        assert old in code, f"{block.name}: replace {old!r}: not in the block"
        code = code.replace(old, new)
    return code.replace("/data/", f"{data}/")


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture
def scratch(tmp_path: Path, image_folder, converted) -> tuple[Path, Path]:
    """(working directory, the data directory that ``/data/`` stands for)."""
    data = tmp_path / "data"
    (data / "imagenet").mkdir(parents=True)
    shutil.copytree(image_folder(24), data / "imagenet" / "train")
    shutil.copytree(image_folder(12, special=False), data / "imagenet" / "val")
    photos = sorted((ROOT / "lmdb_dataset" / "photos").glob("*.jpg"))
    shutil.copy(photos[0], tmp_path / "cat.jpg")
    shutil.copy(photos[1], tmp_path / "dog.jpg")
    return tmp_path, data


def ci_commands() -> list[str]:
    """The ``&&``-separated commands of .ci/run's set-up-and-test line."""
    line = next(line for line in CI_SCRIPT.read_text().splitlines() if "pip install" in line)
    return [part.strip() for part in line.split("&&")]


def setup_extras() -> set[str]:
    text = (ROOT / "setup.cfg").read_text()
    section = text.split("[options.extras_require]")[1].split("\n[")[0]
    return set(re.findall(r"^(\w+)\s*=", section, flags=re.MULTILINE))


def check_bash_line(line: str, cwd: Path) -> None:
    """Check one command line of a bash block (see the module docstring)."""
    words = shlex.split(line, comments=True)
    if words[0] == "lmdb-dataset":
        run([sys.executable, "-m", "lmdb_dataset", *words[1:]], cwd)
        return
    if words[0] in ("python", ".venv/bin/python") and words[1:3] == ["-m", "benchmarks.loaders.run"]:
        run([sys.executable, "-c", f"from benchmarks.loaders import run; run.parse_args({words[3:]!r})"], ROOT)
        return
    if words[0] == "bash":
        script = ROOT / words[1]
        assert script.is_file(), f"{line!r}: no {words[1]}"
        run(["bash", "-n", str(script)], ROOT)
        return
    if words[0] in ("python", ".venv/bin/python") and words[1:3] == ["-m", "pytest"]:
        if words not in [shlex.split(command) for command in ci_commands()]:
            run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *words[3:]], ROOT)
        return
    assert "pip install" in line, f"no rule checks this README command: {line!r}"
    ci = ci_commands()
    parts = [part.strip() for part in line.split("&&")]
    assert parts[0] == ci[0], f"{parts[0]!r} is not .ci/run's {ci[0]!r}"
    install = shlex.split(parts[1])
    assert install[:-1] == shlex.split(ci[1])[:-1], f"{parts[1]!r} installs unlike .ci/run's {ci[1]!r}"
    extras = re.fullmatch(r"\.(?:\[([\w,]+)\])?", install[-1])
    assert extras, f"{install[-1]!r} is not this checkout"
    assert set(filter(None, (extras.group(1) or "").split(","))) <= setup_extras()
    for command in parts[2:]:
        if command in ci:
            continue
        program, *arguments = shlex.split(command)
        assert program == ".venv/bin/lmdb-dataset", f"no rule checks {command!r}"
        run([sys.executable, "-m", "lmdb_dataset", *arguments, *(DEMO_SIZE if arguments == ["demo"] else [])], cwd)


def command_lines(code: str) -> list[str]:
    """Non-comment lines, backslash continuations joined."""
    text = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def check_synopsis(code: str) -> None:
    from lmdb_dataset.tools.cli import build_parser, commands_of

    parser = build_parser()
    commands = commands_of(parser)
    shown: dict[str, set[str]] = {}
    for line in re.sub(r"\n\s+\[", " [", code).splitlines():
        words = line.split("#")[0].split()
        if not words:
            continue
        assert words[0] == "lmdb-dataset", f"synopsis line does not start with lmdb-dataset: {line!r}"
        name = words[1] if words[1] in commands else ""
        shown.setdefault(name, set()).update(re.findall(r"--[\w-]+", line))
    for name, flags in shown.items():
        command = commands[name] if name else parser
        known = {option for action in command._actions for option in action.option_strings}
        assert flags <= known, f"lmdb-dataset {name}: {flags - known} in the README but not in the CLI"
        if name:
            assert known - {"-h", "--help"} <= flags, f"lmdb-dataset {name}: {known - flags} missing in the README"
    assert set(commands) <= set(shown), f"commands missing from the synopsis: {set(commands) - set(shown)}"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_readme_block(block: Block, scratch: tuple[Path, Path], converted) -> None:
    cwd, data = scratch
    if "skip" in block.directives:
        assert block.directives["skip"], f"{block.name}: skip needs a reason"
        pytest.skip(" ".join(block.directives["skip"]))
    if "synopsis" in block.directives:
        check_synopsis(block.code)
    elif "excerpt" in block.directives:
        assert block.language == "python", f"{block.name}: only python blocks can be excerpts"
        compile(block.code, block.name, "exec")
    elif block.language == "python":
        shutil.copytree(converted(24), data / "train.lmdb")
        shutil.copytree(converted(12, special=False), data / "val.lmdb")
        script = cwd / f"readme_{block.name}.py"
        script.write_text(prepared(block, data))
        run([sys.executable, str(script)], cwd)
        if "torchrun" in block.directives:
            run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                cwd)
    elif block.language in ("bash", "sh", "shell"):
        for line in command_lines(prepared(block, data)):
            check_bash_line(line, cwd)
    else:
        pytest.fail(f"{block.name}: a {block.language or 'plain'} block needs a readme-test marker")


def test_markers_are_understood() -> None:
    assert parse_blocks('<!-- readme-test: torchrun; replace "range(90)" "range(2)" -->\n```python\nx\n```\n') == [
        Block(2, "python", "x\n", {"torchrun": [], "replace": ["range(90)", "range(2)"]})]
    assert [block.language for block in parse_blocks("```bash\na\n```\ntext\n```\nb\n```\n")] == ["bash", ""]
    with pytest.raises(ValueError, match="unknown readme-test directive 'torchrn'"):
        parse_directives("torchrn")


@pytest.mark.parametrize("readme", READMES, ids=lambda path: path.name)
def test_every_marker_precedes_a_block(readme: Path) -> None:
    lines = readme.read_text().splitlines()
    for number, line in enumerate(lines[:-1], start=1):
        if _MARKER.match(line):
            assert lines[number].startswith("```"), f"{readme} line {number}: a readme-test marker must precede a block"


def test_performance_table_states_storage_for_every_row() -> None:
    text = README.read_text()
    section = text[text.index("## Benchmarks"):]
    table = section[:section.index("\n## ", 1)].split("\n\n")  # the Benchmarks section only
    rows = [line for part in table if part.startswith("|") for line in part.splitlines()[2:]]
    assert rows, "the Benchmarks section has no table"
    for row in rows:
        storage = row.split("|")[2]
        assert re.search(r"`(raw|encoded)` \(\d+(\.\d+)?x\)", storage), f"row states no storage and disk cost: {row}"
