"""The package's layer order, read from the source with `ast` (every import, also those inside functions):
shared modules at the bottom, then data, grading, model, rollout, evaluation, training, the pre-run checks, and
the doors on top (the API, the command layer, the command line). A module imports only its own floor or lower
ones, so no library package imports the command layer; library modules never print (they report through
`progress.py`, the one module that draws in a terminal or a notebook)."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mathgrpo"

# Lowest first. A unit is a subpackage (data/) or a top-level module (config.py); "mathgrpo" is __init__.py.
FLOORS = [
    ("errors", "diskio", "config", "dist", "progress", "tracking", "runs", "hubcheck"),  # what every stage shares
    ("data",),
    ("grading",),
    ("model",),
    ("rollout",),
    ("evaluation",),
    ("training",),
    ("preflight",),
    ("mathgrpo", "api"),  # the Python API (the package's face hands its names on)
    ("commands",),
    ("cli", "__main__"),
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}
LIBRARY = {unit for units in FLOORS[: FLOOR["preflight"] + 1] for unit in units}
REPORTING = "progress"  # the one library module that draws: notices and progress bars


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """`mathgrpo.training.grpo` -> training; `mathgrpo.config` -> config; `mathgrpo` -> mathgrpo."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imported(path: Path) -> list:
    """(line, module) of every import of a mathgrpo module in `path`, relative ones resolved."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            # `from . import x` may name a module: count x as the module imported
            found += [(node.lineno, f"{base}.{a.name}" if node.module is None else base) for a in node.names]
    return [(line, name) for line, name in found if name == "mathgrpo" or name.startswith("mathgrpo.")]


def sources() -> list:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_floor():
    units = {unit_of(module_name(path)) for path in sources()}
    assert units <= set(FLOOR), f"give {sorted(units - set(FLOOR))} a floor in FLOORS"


def upward_imports(path: Path) -> list:
    """The imports of `path` that reach a higher floor than its own."""
    own = unit_of(module_name(path))
    return [f"{path.relative_to(PACKAGE)}:{line} imports {name}" for line, name in imported(path)
            if FLOOR.get(unit_of(name), -1) > FLOOR.get(own, len(FLOORS))]


def test_no_module_imports_a_higher_floor():
    """No import runs back up: data and grading know nothing of models, rollout nothing of training, training nothing
    of the checks or the doors, and no library module anything of the command layer."""
    found = [line for path in sources() for line in upward_imports(path)]
    assert not found, "\n".join(found)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """A data module that imported training (planted in a copy) would be named with its line."""
    planted = tmp_path / "mathgrpo" / "data" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("def f():\n    from ..training.grpo import GRPORun\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "mathgrpo")
    assert upward_imports(planted) == ["data/planted.py:2 imports mathgrpo.training.grpo"]


def printing_calls(path: Path) -> list:
    """Lines of `path` that call print() or import rich (drawing in the terminal)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            out.append(f"{path.relative_to(PACKAGE)}:{node.lineno} calls print")
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        out += [f"{path.relative_to(PACKAGE)}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "rich"]
    return out


def test_library_modules_neither_print_nor_draw():
    """Below the API, lines go through progress.notice and bars through progress: results are printed by the
    command layer only."""
    library = [p for p in sources() if unit_of(module_name(p)) in LIBRARY and unit_of(module_name(p)) != REPORTING]
    found = [line for path in library for line in printing_calls(path)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("print('x')\n", ["calls print"]), ("from rich.table import Table\n", ["imports rich.table"]),
    ("console.print(x)\nnotice('x')\n", []),
])
def test_the_print_check_reads_calls_and_imports(tmp_path, monkeypatch, source, expected):
    path = tmp_path / "mathgrpo" / "model" / "m.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "mathgrpo")
    assert [line.split(" ", 1)[1] for line in printing_calls(path)] == expected
