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


def imports_of(source: str, name: str, is_package: bool = False) -> set[str]:
    """Absolute names of what the module ``name`` (its ``source``) imports, relative imports
    resolved."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            imported = ".".join(base + ([node.module] if node.module else []))
            found.add(imported)
            found |= {f"{imported}.{alias.name}" for alias in node.names}  # `from . import metrics` names a module
    return found


MODULES = sorted(SEGX.rglob("*.py"))
MODULE_NAMES = {module_name(path) for path in MODULES}


def upward_imports(source: str, name: str, is_package: bool = False) -> list[str]:
    """The segx modules ``name`` imports from rooms after its own."""
    allowed = ROOMS[: ROOMS.index(room_of(name)) + 1]
    return sorted(n for n in imports_of(source, name, is_package) if n in MODULE_NAMES and n != "segx" and room_of(n) not in allowed)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SEGX)))
def test_no_import_runs_back_up(path):
    name = module_name(path)
    wrong = upward_imports(path.read_text(), name, path.name == "__init__.py")
    assert not wrong, f"{name} (room {room_of(name) or 'segx'}) imports {wrong} from a later room; the order is {ROOMS}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SEGX)))
def test_the_core_imports_neither_monai_label_nor_slicer_nor_the_server_app(path):
    """...but for the replayed annotation sessions, whose subject is MONAI Label's own client."""
    name = module_name(path)
    names = imports_of(path.read_text(), name, path.name == "__init__.py")
    exempt = lambda n: name == "segx.demo.sessions" and n.startswith(OFFICIAL_CLIENT)  # noqa: E731
    assert not {n for n in names if n.split(".")[0] in ("monailabel", "slicer", "lib", "vtk", "qt") and not exempt(n)}, names


#: What segx.demo.sessions may import of MONAI Label: its official client, nothing else.
OFFICIAL_CLIENT = ("monailabel.client",)


def test_the_check_sees_a_wrong_import():
    """Control: the engine's source with one import of the evaluation room (at the top and
    inside a function) is caught; the unchanged engine is not."""
    engine = (SEGX / "engine.py").read_text()
    assert upward_imports(engine, "segx.engine") == []
    assert upward_imports(engine + "\nfrom .evaluation import metrics\n", "segx.engine") == ["segx.evaluation", "segx.evaluation.metrics"]
    assert upward_imports(engine + "\ndef f():\n    from .evaluation.rows import RowFile\n", "segx.engine") == ["segx.evaluation.rows"]
