"""SegX: where a classifier looked, aligned to the anatomy, with a certainty score.

A thin 3D Slicer module over ``SegXSlicerLib`` (client, jobs, display maths, MRML
helpers, panel), which is tested outside Slicer.
"""

import importlib
import inspect
import os
import sys
import time

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from SegXSlicerLib import jobs, mrml
from SegXSlicerLib.client import SegXClient
from SegXSlicerLib.logic import SegXLogic
from SegXSlicerLib.results import segx_models
from SegXSlicerLib.worker import JobRunner


class SegXSlicer(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegX"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegX-Slicer team"]
        self.parent.helpText = (
            "Shows where a classifier looked (SegX: its explanation map restricted to the clinical region found by a "
            "segmentation model) as a colour layer over the image, with the prediction, class probabilities and the SegU "
            "certainty, from a SegX MONAI Label server. Connect to the server, choose a model, Run on the current volume."
        )
        self.parent.acknowledgementText = (
            "SegX: Zhang, Zhu, Luo, 'SegX: Improving Interpretability of Clinical Image Diagnosis with Segmentation-based "
            "Enhancement', PMLR 281, 2025. Served by MONAI Label."
        )
        slicer.app.connect("startupCompleted()", self.initializeAfterStartup)

    def initializeAfterStartup(self):
        """Add the SegX page to *Edit > Application Settings* (with a main window only)."""
        if not slicer.app.commandOptions().noMainWindow:
            from SegXSlicerLib.settings import SegXSettingsPanel  # Qt: imported inside Slicer only

            self.settingsPanel = SegXSettingsPanel()
            slicer.app.settingsDialog().addPanel("SegX", self.settingsPanel)


class SegXSlicerWidget(ScriptedLoadableModuleWidget):
    """Loads the panel from ``Resources/UI/SegXSlicer.ui``; behaviour in ``SegXSlicerLib.widget``."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from SegXSlicerLib.widget import SegXPanel  # Qt: imported inside Slicer only

        panel = slicer.util.loadUI(self.resourcePath("UI/SegXSlicer.ui"))
        self.layout.addWidget(panel)
        panel.setMRMLScene(slicer.mrmlScene)
        self.logic = SegXSlicerLogic()
        self.panel = SegXPanel(slicer.util.childWidgetVariables(panel), self.logic.scene_logic, self.parent)
        self.panel.add_segment_editor(slicer.qMRMLSegmentEditorWidget())
        # effects an extension registers later appear in the embedded editor, as in
        # Slicer's own Segment Editor module (Modules/Scripted/SegmentEditor/SegmentEditor.py)
        self.effects = slicer.qSlicerSegmentEditorEffectFactory.instance()
        self.effects.effectRegistered.connect(self.panel.segment_editor.updateEffectList)

    def enter(self):
        self.panel.enter()

    def exit(self):
        self.panel.exit()

    def cleanup(self):
        self.effects.effectRegistered.disconnect(self.panel.segment_editor.updateEffectList)
        self.panel.cleanup()

    def onReload(self):
        """Reload ``SegXSlicerLib`` too (Slicer's Reload re-imports only this file), as
        MONAIAuto3DSeg does, leaf first (:func:`reload_order`), then the module."""
        for name in reload_order("SegXSlicerLib"):
            importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)


def reload_order(package: str) -> list:
    """The loaded modules of ``package``, each after the package modules it takes names
    from (a class, function or module in its namespace defined in another one): reloading
    in this order rebinds ``from .client import ServerError`` to the *new* class, where a
    module reloaded before its source keeps the old one and stops catching its errors."""
    names = [n for n in sys.modules if n == package or n.startswith(package + ".")]

    def sources(name):
        found = {getattr(value, "__name__", None) if inspect.ismodule(value) else getattr(value, "__module__", None)
                 for value in vars(sys.modules[name]).values()}  # fmt: skip
        return sorted(n for n in found if n in names and n != name)

    order, seen = [], set()

    def visit(name):
        if name not in seen:
            seen.add(name)
            for source in sources(name):
                visit(source)
            order.append(name)

    for name in sorted(names):
        visit(name)
    return order


class SegXSlicerLogic(ScriptedLoadableModuleLogic):
    """The module's logic: Slicer's base class (parameter node) with the scene logic of
    ``SegXSlicerLib`` on ``slicer.mrmlScene`` and Slicer's volume rendering.

    Composition, not a second base class: ``ScriptedLoadableModuleLogic.__init__`` calls
    ``super().__init__()`` without arguments (``Base/Python/slicer/ScriptedLoadableModule.py``),
    which would reach a second base's ``__init__`` without its arguments.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene_logic = SegXLogic(slicer.mrmlScene, slicer.modules.volumerendering.logic())


class SegXSlicerTest(ScriptedLoadableModuleTest):
    """Round trip against a running SegX server whose URL is in ``SEGX_SERVER_URL``
    (e.g. ``make serve``: http://127.0.0.1:8000), on a synthetic volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_run_on_synthetic_volume()

    def test_run_on_synthetic_volume(self):
        url = os.environ.get("SEGX_SERVER_URL")
        if not url:
            self.delayDisplay("SEGX_SERVER_URL is not set: skipping the server round trip")
            return
        client = SegXClient(url)
        models = segx_models(client.info())
        self.assertTrue(models, f"{url} offers no SegX model")
        model = ([m for m in models if m.dimension == 3] or models)[0]  # a 3D model if there is one
        shape = (1, 128, 128) if model.dimension == 2 else (48, 64, 64)
        k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        voxels = (1000 * np.exp(-4 * (i**2 + j**2 + k**2))).astype(np.int16)
        volume = slicer.util.addVolumeFromArray(voxels, ijkToRAS=np.diag([-0.8, -0.8, 2.0, 1.0]), name="SegX synthetic")

        runner = JobRunner()
        job = runner.submit("run", jobs.explain, client, model.name, mrml.volume_data(volume))
        deadline = time.time() + 600
        while not runner.poll():  # the GUI keeps processing events while the server works
            self.assertLess(time.time(), deadline, "no answer within 600 s")
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertIsNone(job.error, f"run failed: {job.error}")

        logic = SegXSlicerLogic().scene_logic
        logic.show(volume, job.result)
        heatmap = logic.current_heatmap
        self.assertEqual(heatmap.GetImageData().GetScalarTypeAsString(), "float")
        np.testing.assert_allclose(mrml.ijk_to_ras(heatmap), mrml.ijk_to_ras(volume))
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            self.assertEqual(composite.GetForegroundVolumeID(), heatmap.GetID())
        segments = logic.region.GetSegmentation()
        names = {segments.GetNthSegment(n).GetName() for n in range(segments.GetNumberOfSegments())}
        self.assertEqual(names, set(model.segment_names.values()))
        self.assertEqual(logic.table.GetNumberOfRows(), len(model.classes))
        self.delayDisplay(f"{model.name}: {job.result.readout.prediction_text()}, SegU {job.result.readout.certainty_text()}")
