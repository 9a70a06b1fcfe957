"""The package's layout stays what its docstring says: stages import only from the stages above them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import lmdb_dataset

PACKAGE = Path(lmdb_dataset.__file__).parent
STAGES = ["errors", "storage", "order", "decode", "read", "loader", "write", "sources", "tools", "integrations"]
"""Top to bottom, as the package docstring's map lists them; ``__init__``/``__main__`` may import anything."""


def _stage_of(path: Path) -> str:
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def _imported_stages(path: Path) -> set[tuple[str, int]]:
    """(stage, line) of every import of another part of the package in ``path``, relative or absolute."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                parts = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "lmdb_dataset":
                parts = node.module.split(".")[1:]
            else:
                continue
            targets = [parts[0]] if parts else [alias.name for alias in node.names]
            found |= {(target, node.lineno) for target in targets}
        elif isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[1], node.lineno) for alias in node.names
                      if alias.name.startswith("lmdb_dataset.")}
    return found


def test_every_stage_imports_only_from_the_stages_above_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        stage = _stage_of(path)
        if stage in {"__init__", "__main__"}:
            continue
        assert stage in STAGES, f"{path} is in no stage of the map: add it to the docstring and STAGES"
        for target, line in _imported_stages(path):
            if target in {"__init__", "__version__"} and stage == "tools":
                continue  # the command prints the version
            if target != stage and (target not in STAGES or STAGES.index(target) > STAGES.index(stage)):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({stage}) imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_docstring_map_names_every_stage_and_nothing_else():
    doc = lmdb_dataset.__doc__
    mapped = re.findall(r"^    (\w+)(?:/|\.py) ", doc, re.M)
    assert mapped == STAGES
    on_disk = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
               if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name not in {"__init__.py", "__main__.py"}}
    assert on_disk == set(STAGES)


def test_the_public_names_resolve_and_the_moved_helpers_say_where_they_went():
    for name in lmdb_dataset.__all__:
        assert getattr(lmdb_dataset, name) is not None
    import pytest

    for name, module in (("make_photo_folder", "tools.photo_folders"), ("order_quality", "order.quality")):
        assert name not in lmdb_dataset.__all__
        with pytest.warns(DeprecationWarning, match=f"lmdb_dataset.{module}"):
            getattr(lmdb_dataset, name)
