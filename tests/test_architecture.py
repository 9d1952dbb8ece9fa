"""The rooms of ``segx`` keep their import rules (see ``segx/__init__.py``): every import
of every module, at the top or inside a function, read from the source with ``ast``."""

import ast
from pathlib import Path

import pytest

SEGX = Path(__file__).resolve().parent.parent / "monailabel_app" / "segx"

#: Rooms in order: a module may import its own room and the rooms before it.
ROOMS = ["", "formats", "evaluation", "training", "demo", "cli"]


def room_of(module: str) -> str:
    """``segx.evaluation.metrics`` -> ``evaluation``; ``segx.engine`` -> ``""``; ``segx.cli`` -> ``cli``."""
    parts = module.split(".")[1:]
    if parts and parts[0] in ROOMS[1:]:
        return parts[0]
    return ""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SEGX.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of what ``path`` imports (relative imports resolved)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.add(name)
            found |= {f"{name}.{alias.name}" for alias in node.names}  # `from . import metrics` names a module
    return found


MODULES = sorted(SEGX.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SEGX)))
def test_no_import_runs_back_up(path):
    own = room_of(module_name(path))
    allowed = ROOMS[: ROOMS.index(own) + 1]
    modules = {p.relative_to(SEGX.parent).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__") for p in MODULES}
    wrong = sorted(name for name in imports_of(path) if name in modules and name != "segx" and room_of(name) not in allowed)
    assert not wrong, f"{module_name(path)} (room {own or 'segx'}) imports {wrong}; it may import rooms {allowed}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SEGX)))
def test_the_core_imports_neither_monai_label_nor_slicer_nor_the_server_app(path):
    names = imports_of(path)
    assert not {n for n in names if n.split(".")[0] in ("monailabel", "slicer", "lib", "vtk", "qt")}, names


def test_the_check_sees_a_wrong_import(tmp_path):
    """Control: a method module importing the evaluation room is caught."""
    bad = SEGX / "engine.py"
    text = bad.read_text() + "\nfrom .evaluation import metrics\n"
    probe = SEGX / "_probe_engine.py"
    probe.write_text(text)
    try:
        assert "segx.evaluation.metrics" in imports_of(probe)
        own = room_of(module_name(probe))
        assert own == "" and room_of("segx.evaluation.metrics") not in ROOMS[:1]
    finally:
        probe.unlink()
