"""Static checks of the 3D Slicer extension: what Slicer's build and the extension index
need, checked without Slicer (which cannot be installed here)."""

import ast
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from PIL import Image as PILImage

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "SegXSlicer"
LIB = MODULE / "SegXSlicerLib"

#: Categories of the Slicer extensions index (a subset: the plausible ones for SegX).
ACCEPTED_CATEGORIES = {"Segmentation", "Informatics", "Quantification", "Utilities", "Active Learning", "Examples"}
#: Third-party modules Slicer 5.8 ships that SegXSlicerLib may import.
SLICER_PROVIDES = {"numpy", "requests", "vtk", "slicer", "qt", "ctk"}


def cmake_list(text: str, variable: str) -> list:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    return [item.replace("${MODULE_NAME}", "SegXSlicer") for item in match.group(1).split()]


def test_module_cmakelists_lists_every_script_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert re.search(r"set\(MODULE_NAME SegXSlicer\)", text)
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}\s*SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}\s*RESOURCES \$\{MODULE_PYTHON_RESOURCES\}", text)
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    on_disk_scripts = {str(p.relative_to(MODULE)) for p in [MODULE / "SegXSlicer.py", *LIB.glob("*.py")]}
    on_disk_resources = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert set(scripts) == on_disk_scripts
    assert set(resources) == on_disk_resources
    assert "add_subdirectory(Testing)" in text


def test_testing_cmakelists_register_the_in_slicer_test():
    assert "add_subdirectory(Python)" in (MODULE / "Testing" / "CMakeLists.txt").read_text()
    registered = re.findall(r"slicer_add_python_unittest\(SCRIPT (\S+)\)", (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text())
    assert registered == [p.name for p in (MODULE / "Testing" / "Python").glob("*.py")] == ["SegXSlicerSelfTest.py"]
    module = ast.parse((MODULE / "SegXSlicer.py").read_text())
    test_classes = [n for n in module.body if isinstance(n, ast.ClassDef) and any(getattr(b, "id", "") == "ScriptedLoadableModuleTest" for b in n.bases)]
    assert [c.name for c in test_classes] == ["SegXSlicerTest"]
    assert "SEGX_SERVER_URL" in (MODULE / "SegXSlicer.py").read_text()


def test_icon_is_a_128_pixel_png():
    with PILImage.open(MODULE / "Resources" / "Icons" / "SegXSlicer.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


def ui_widgets() -> dict:
    root = ElementTree.parse(MODULE / "Resources" / "UI" / "SegXSlicer.ui").getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_widget_names_used_in_code_exist_in_the_ui():
    widgets = ui_widgets()
    code = (LIB / "widget.py").read_text()
    used = set(re.findall(r"\bui\.(\w+)", code))
    assert used, "the panel uses no widget?"
    assert used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"
    for required in ("serverComboBox", "connectButton", "modelComboBox", "classComboBox", "methodComboBox", "runButton",
                     "cancelButton", "progressBar", "segxLayerRadioButton", "rawLayerRadioButton", "opacitySlider",
                     "thresholdSlider", "colourMapComboBox", "render3DCheckBox", "predictionLabel", "certaintyLabel",
                     "reasonLabel", "probabilityTable", "nextSampleButton", "submitLabelButton", "trainButton", "statusLabel",
                     "logTextEdit", "regionEditorCollapsibleButton"):  # fmt: skip
        assert required in used, f"{required} is not wired"


def test_ui_declares_its_custom_widgets_and_scene_connection():
    root = ElementTree.parse(MODULE / "Resources" / "UI" / "SegXSlicer.ui").getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {cls for cls in ui_widgets().values() if not cls.startswith("Q")}
    assert used <= declared
    assert root.find("widget").get("class") == "qMRMLWidget"
    connection = root.find("connections/connection")
    assert connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and connection.findtext("receiver") == "inputVolumeSelector"
    assert 'loadUI(self.resourcePath("UI/SegXSlicer.ui"))' in (MODULE / "SegXSlicer.py").read_text()


def imported_modules(tree: ast.AST) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_lib_is_python_3_9_with_only_what_slicer_ships():
    for path in sorted([MODULE / "SegXSlicer.py", *LIB.glob("*.py")]):
        source = path.read_text()
        tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
        unions = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) and _in_annotation(tree, n)]
        assert not unions, f"{path.name}: 'X | Y' annotations need Python 3.10"
        third_party = imported_modules(tree) - set(sys.stdlib_module_names) - {"SegXSlicerLib"}
        assert third_party <= SLICER_PROVIDES, f"{path.name} imports {third_party - SLICER_PROVIDES}"
        assert "cgi" not in imported_modules(tree)
        if path.name not in ("widget.py", "settings.py"):
            assert not {"qt", "ctk"} & imported_modules(tree), f"{path.name}: only the panel and its settings page may import Qt"


def _in_annotation(tree: ast.AST, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations = [a.annotation for a in node.args.args + node.args.kwonlyargs] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        if any(a is not None and any(n is target for n in ast.walk(a)) for a in annotations):
            return True
    return False


def test_worker_side_modules_never_touch_qt_or_mrml():
    """Jobs run in threads: the client, jobs and worker modules import neither Qt nor Slicer."""
    for name in ("client.py", "jobs.py", "worker.py", "results.py", "volumeio.py", "display.py"):
        modules = imported_modules(ast.parse((LIB / name).read_text()))
        assert not modules & {"qt", "slicer", "vtk"}, f"{name} imports {modules & {'qt', 'slicer', 'vtk'}}"
