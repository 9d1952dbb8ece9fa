"""The SegXSlicer module's own classes (``SegXSlicer.py`` and ``SegXSlicerLib``, unchanged)
driven through whole sessions in ``slicer_harness``: a stand-in of 3D Slicer that follows
Slicer's sources (module base classes, widgets and signals from the ``.ui``, real
``slicer.util`` and MRML from ``slicer-core``), against a live ``monailabel start_server``.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import requests

import slicer
import vtk
from slicer_harness import QMessageBox, QSettings, QShortcut, SlicerHarness

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "SegXSlicer"))
from SegXSlicerLib.jobs import STRATEGY  # noqa: E402

CT = "test3d_11_0000.nii.gz"


@pytest.fixture
def harness(tmp_path):
    harness = SlicerHarness(tmp_path)
    yield harness
    harness.close()


def composites(scene):
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def count(scene, class_name):
    return scene.GetNodesByClass(class_name).GetNumberOfItems()


def connect(harness, url, model_name="slicer3d"):
    ui = harness.ui
    ui.serverComboBox.currentText = url
    ui.connectButton.click()
    harness.wait_for_job()
    ui.modelComboBox.currentIndex = ui.modelComboBox.findText(f"{model_name} ({2 if model_name.endswith('2d') else 3}D)")
    assert harness.widget.panel.model.name == model_name


def run(harness, volume):
    harness.ui.inputVolumeSelector.setCurrentNode(volume)
    harness.ui.runButton.click()
    harness.wait_for_job()


def test_the_module_loads_reloads_and_unloads_under_slicers_base_classes(harness):
    """Slicer's generic module test: construct, set up, reload, unload. Before the fix the
    logic's second base class got ``super().__init__()`` without its scene: TypeError."""
    widget = harness.load_module()
    logic = widget.logic
    assert logic.moduleName == "SegXSlicer"
    assert logic.getParameterNode() is logic.scene_logic.parameter_node  # Slicer's and ours: one node
    ui = harness.ui
    for button in ("connectButton", "runButton", "cancelButton", "nextSampleButton", "skipSampleButton", "submitLabelButton", "trainButton"):
        assert getattr(ui, button).clicked.slots, f"{button} is not connected"
    assert not ui.runButton.enabled and not ui.opacitySlider.enabled  # nothing to run or style yet
    assert widget.panel.segment_editor.parent() is ui.regionEditorCollapsibleButton
    assert slicer.selfTests["SegXSlicer"]

    widget.onReload()
    assert harness.widget is not widget and harness.widget.panel.ui.connectButton.clicked.slots
    assert not widget.panel.timer.active and not widget.panel.Observations  # the old panel let go of the scene
    harness.close_scene()  # only the new panel reacts
    assert harness.ui.statusLabel.text == "scene closed"
    harness.unload_module()
    assert not harness.widget.panel.Observations


def test_a_whole_session_connect_run_every_control_close_run_again_reload(harness, slicer_server):
    url, studies = slicer_server
    widget = harness.load_module()
    panel, ui, scene = widget.panel, harness.ui, harness.scene
    connect(harness, url)
    assert QSettings.store["SegX/serverUrl"] == url and QSettings.store["SegX/serverUrlHistory"].split(";")[0] == url
    assert [ui.serverComboBox.itemText(i) for i in range(ui.serverComboBox.count)][0] == url
    assert [ui.classComboBox.itemText(i) for i in range(ui.classComboBox.count)] == ["predicted class", "cyst", "tumour"]

    volume = slicer.util.loadVolume(str(studies / CT))
    harness.app.answers.append((QMessageBox.Ok, True))  # consent, and do not ask again
    run(harness, volume)
    assert harness.app.dialogs[-1]["title"] == "Send the image to the SegX server?" and url in harness.app.dialogs[-1]["text"]
    logic = panel.logic
    readout = logic.readout
    assert ui.predictionLabel.text == readout.prediction_text() and readout.predicted in ("cyst", "tumour")
    assert ui.certaintyLabel.text == f"SegU {readout.certainty_text()}" and readout.level_colour() in ui.certaintyLabel.styleSheet
    assert ui.probabilityTable.rowCount() == 2 and ui.probabilityTable.item(0, 0).text().startswith(readout.predicted)
    assert ui.progressBar.value == 100 and ui.opacitySlider.enabled and ui.submitLabelButton.enabled
    assert "done in" in ui.logTextEdit.plainText
    segx = logic.current_heatmap
    assert all(c.GetForegroundVolumeID() == segx.GetID() and c.GetBackgroundVolumeID() == volume.GetID() for c in composites(scene))
    assert logic.heatmap("explanation") is None  # fetched only when shown
    assert panel.segment_editor.segmentationNode() is logic.region and panel.segment_editor.sourceVolumeNode() is volume
    assert segx not in ui.inputVolumeSelector.nodes() and volume in ui.inputVolumeSelector.nodes()

    ui.rawLayerRadioButton.click()  # the raw explanation: fetched from the Run's session
    harness.wait_for_job()
    raw = logic.heatmap("explanation")
    assert raw is not None and not ui.segxLayerRadioButton.checked
    assert all(c.GetForegroundVolumeID() == raw.GetID() for c in composites(scene))
    assert raw not in ui.inputVolumeSelector.nodes()
    ui.opacitySlider.value = 0.4
    assert all(c.GetForegroundOpacity() == pytest.approx(0.4) for c in composites(scene))
    ui.thresholdSlider.value = 50
    low, high = logic.window("explanation")
    assert raw.GetDisplayNode().GetLowerThreshold() == pytest.approx(low + 0.5 * (high - low))
    ui.colourMapComboBox.currentIndex = ui.colourMapComboBox.findText("Viridis")
    assert raw.GetDisplayNode().GetColorNode().GetName() == "SegX Viridis"
    ui.render3DCheckBox.click()
    assert logic.volume_rendering_logic.GetFirstVolumeRenderingDisplayNode(raw).GetVisibility()
    panel.shortcut.activated.emit()
    assert all(c.GetForegroundOpacity() == 0.0 for c in composites(scene))
    panel.shortcut.activated.emit()
    assert all(c.GetForegroundOpacity() == pytest.approx(0.4) for c in composites(scene))
    ui.segxLayerRadioButton.click()
    assert all(c.GetForegroundVolumeID() == segx.GetID() for c in composites(scene))

    harness.close_scene()
    assert logic.source is None and ui.predictionLabel.text == "-" and ui.probabilityTable.rowCount() == 0
    assert not ui.opacitySlider.enabled and not ui.submitLabelButton.enabled
    assert panel.segment_editor.segmentationNode() is None
    assert ui.opacitySlider.value == pytest.approx(0.7)  # the controls show the reset scene's settings

    volume = slicer.util.loadVolume(str(studies / CT))
    dialogs = len(harness.app.dialogs)
    run(harness, volume)
    assert len(harness.app.dialogs) == dialogs  # consent was given for good
    assert ui.predictionLabel.text == logic.readout.prediction_text()
    nodes = {kind: count(scene, kind) for kind in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode")}

    widget.onReload()  # Reload: a new panel and logic on the same scene
    assert harness.ui.predictionLabel.text == harness.widget.panel.logic.readout.prediction_text()  # restored from the scene
    connect(harness, url)
    run(harness, volume)
    assert {kind: count(scene, kind) for kind in nodes} == nodes  # the reloaded logic reused the nodes
    assert not harness.app.dialogs[dialogs:]  # no error along the way
    harness.unload_module()


def test_a_volume_loaded_from_dicom_is_explained_on_its_own_geometry(harness, slicer_server, tmp_path):
    """A CT series loaded as Slicer loads DICOM (one file, the whole series, geometry from
    ImagePositionPatient / ImageOrientationPatient): the heatmap and region lie on it."""
    from monai.transforms import LoadImage

    from segx.formats.dicom import write_series

    url, studies = slicer_server
    loaded = LoadImage(image_only=True)(str(studies / CT))
    files = write_series(np.asarray(loaded), np.asarray(loaded.affine), tmp_path / "series")
    widget = harness.load_module()
    connect(harness, url)
    volume = slicer.util.loadVolume(str(files[0]))
    assert slicer.util.arrayFromVolume(volume).shape[0] == len(files)  # the whole series, not one slice
    harness.app.answers.append((QMessageBox.Ok, True))
    run(harness, volume)
    logic = widget.panel.logic
    assert logic.readout.predicted in ("cyst", "tumour") and not harness.app.dialogs[1:]
    matrices = []
    for node in (volume, logic.current_heatmap):
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        matrices.append(slicer.util.arrayFromVTKMatrix(matrix))
    np.testing.assert_allclose(matrices[0], matrices[1], atol=1e-4)
    assert slicer.util.arrayFromVolume(logic.current_heatmap).shape == slicer.util.arrayFromVolume(volume).shape
    harness.unload_module()


def test_closing_the_scene_during_a_run_drops_its_answer(harness, slicer_server):
    url, studies = slicer_server
    harness.load_module()
    connect(harness, url)
    volume = slicer.util.loadVolume(str(studies / CT))
    harness.ui.inputVolumeSelector.setCurrentNode(volume)
    harness.ui.runButton.click()
    panel = harness.widget.panel
    job = panel.job
    harness.close_scene()
    assert panel.job is None and job.cancelled and harness.ui.connectButton.enabled
    harness.process_events_until(lambda: not panel.runner.running)
    assert count(harness.scene, "vtkMRMLScalarVolumeNode") == 0 and panel.logic.source is None
    assert len(harness.app.dialogs) == 1  # the consent only: no error, nothing applied


def test_application_settings_page_edits_what_the_panel_uses(harness):
    widget = harness.load_module()
    page = harness.app.settings_dialog.panels["SegX"]
    page.askCheckBox.click()  # do not ask before sending images
    assert int(QSettings.store["SegX/dontAskBeforeUploading"]) == QMessageBox.Ok
    page.askCheckBox.click()
    assert "SegX/dontAskBeforeUploading" not in QSettings.store
    server = next(c for c in page.children() if c.className() == "QLineEdit")
    server.text = "http://10.0.0.5:8000"
    assert QSettings.store["SegX/serverUrl"] == "http://10.0.0.5:8000"
    widget.onReload()  # a new panel starts from the settings
    assert harness.ui.serverComboBox.currentText == "http://10.0.0.5:8000"


def test_no_upload_without_consent(harness, slicer_server):
    url, studies = slicer_server
    harness.load_module()
    connect(harness, url)
    harness.app.answers.append((QMessageBox.Cancel, False))
    volume = slicer.util.loadVolume(str(studies / CT))
    harness.ui.inputVolumeSelector.setCurrentNode(volume)
    harness.ui.runButton.click()
    assert harness.widget.panel.job is None and "no consent" in harness.ui.statusLabel.text
    harness.ui.runButton.click()  # asked again: not told to stop asking
    assert len(harness.app.dialogs) == 2


def test_failures_show_an_error_dialog_with_details_and_the_panel_recovers(harness, slicer_server, monkeypatch):
    url, studies = slicer_server
    harness.load_module()
    ui, panel = harness.ui, harness.widget.panel
    ui.serverComboBox.currentText = "http://127.0.0.1:9"  # nothing listens on the discard port
    ui.connectButton.click()
    harness.wait_for_job()
    error = harness.app.dialogs[-1]
    assert error["text"].startswith("connect failed: cannot reach the server at http://127.0.0.1:9") and "ServerError" in error["details"]
    assert ui.connectButton.enabled and not ui.cancelButton.enabled and "c62828" in ui.statusLabel.styleSheet
    assert "127.0.0.1:9" not in QSettings.store.get("SegX/serverUrlHistory", "")  # only servers that answered

    connect(harness, url)
    volume = slicer.util.loadVolume(str(studies / CT))
    run(harness, volume)
    volume.SetAttribute("SegX.imageId", "test3d_11_0000")
    monkeypatch.setattr(panel.logic, "edited_labels", lambda: (_ for _ in ()).throw(RuntimeError("export failed")))
    ui.submitLabelButton.click()  # an unexpected error: shown, not raised
    assert harness.app.dialogs[-1]["text"] == "submit label failed: RuntimeError: export failed"

    ui.inputVolumeSelector.setCurrentNode(panel.logic.current_heatmap)  # not offered: stays on the volume
    assert ui.inputVolumeSelector.currentNode() is volume


def test_next_sample_edit_and_submit_label(harness, slicer_server):
    url, studies = slicer_server
    harness.load_module()
    connect(harness, url)
    ui, panel = harness.ui, harness.widget.panel
    ui.nextSampleButton.click()
    harness.wait_for_job()  # downloads, loads, then runs on it
    harness.wait_for_job()
    source = panel.logic.source
    image_id = source.GetAttribute("SegX.imageId")
    assert image_id and image_id in ui.sampleLabel.text and Path(harness.app.temporaryPath, "SegX", f"{image_id}.nii.gz").is_file()
    ui.submitLabelButton.click()
    harness.wait_for_job()
    assert ui.statusLabel.text == f"label of {image_id} saved as final"
    labels = requests.get(f"{url}/datastore/?output=all", timeout=10).json()["objects"][image_id]["labels"]
    assert "final" in labels


@pytest.fixture
def own_slicer_server(tmp_path):
    """A server like ``slicer_server`` whose images no earlier test holds (holds last 15
    minutes, and every test's harness is another annotator)."""
    from conftest import write_models, write_phantom_studies

    from segx.demo import running_server

    studies = write_phantom_studies(tmp_path)
    with running_server(studies, "slicer3d", tmp_path / "server.log", models_dir=write_models(tmp_path / "models")) as server:
        yield server.url, studies


def test_skip_gives_the_image_back_and_loads_another(harness, own_slicer_server):
    """An annotator skips the image Next sample gave: another loads, and the skipped one is
    free for the next annotator at once (not held for the hold time). Next sample asks the
    strategy chosen in the settings (an unknown one: the server's message is shown)."""
    url, studies = own_slicer_server
    QSettings.store["SegX/activeLearningStrategy"] = "no_such_strategy"
    harness.load_module()
    connect(harness, url)
    ui, panel = harness.ui, harness.widget.panel
    assert not ui.skipSampleButton.enabled  # nothing to skip yet
    ui.nextSampleButton.click()
    harness.wait_for_job()
    assert "no_such_strategy" in ui.statusLabel.text and panel.logic.source is None, ui.statusLabel.text
    del QSettings.store["SegX/activeLearningStrategy"]  # the default
    ui.nextSampleButton.click()
    harness.wait_for_job()
    harness.wait_for_job()
    skipped = panel.logic.source.GetAttribute("SegX.imageId")
    assert ui.skipSampleButton.enabled
    given_by = requests.get(f"{url}/datastore/image/info", params={"image": skipped}, timeout=10).json()["strategy"]
    assert list(given_by) == [STRATEGY] == ["random"], given_by  # the default the replayed sessions chose
    assert skipped.startswith("test3d"), "a volume for the 3D model (random itself does not look at the model)"
    ui.skipSampleButton.click()
    harness.wait_for_job()
    harness.wait_for_job()
    shown = panel.logic.source.GetAttribute("SegX.imageId")
    assert shown and shown != skipped and shown in ui.sampleLabel.text
    other = requests.post(f"{url}/activelearning/first", json={"client_id": "another-annotator"}, timeout=60).json()
    free = requests.post(f"{url}/activelearning/segu_lowest_certainty", json={"client_id": "a-third", "model": "slicer3d"}, timeout=300).json()
    assert skipped in (other.get("id"), free.get("id"))  # released: given out again at once


def test_the_modules_own_self_test_passes_in_the_harness(harness, slicer_server, monkeypatch):
    """``SegXSlicerTest`` (what *Reload and Test* and ctest run) against the live server."""
    monkeypatch.setenv("SEGX_SERVER_URL", slicer_server[0])
    harness.load_module()
    slicer.selfTests["SegXSlicer"]()
    assert any("SegU" in message for message in harness.delays)


def test_local_file_names_never_leave_the_folder():
    from SegXSlicerLib.client import local_file_name

    assert local_file_name("ct_001", "ct_001.nii.gz") == "ct_001.nii.gz"
    assert local_file_name("../../etc/passwd", "../../.bashrc") == "etc_passwd.nii.gz"
    assert local_file_name("x", "C:\\evil\\a.nrrd") == "x.nrrd"
    assert local_file_name("..", "") == "image.nii.gz"
    assert np.all(["/" not in local_file_name(i, "a/b.png") for i in ("a/b", "/", "a\\b")])


def test_ok_without_dont_ask_again_keeps_asking_and_the_settings_page_shows_it(harness, slicer_server):
    """CTK's message box writes -1 (QMessageBox::InvalidRole) to its key when Ok is clicked
    without ticking "don't show again" (``Libs/Widgets/ctkMessageBox.cpp``, ``writeSettings``)
    and reads -1 as "ask"; the settings page must read it so too, and show what the
    settings hold when it is opened, not what they held at start-up."""
    url, studies = slicer_server
    harness.load_module()
    connect(harness, url)
    volume = slicer.util.loadVolume(str(studies / CT))
    harness.app.answers.append((QMessageBox.Ok, False))
    run(harness, volume)
    assert int(QSettings.store["SegX/dontAskBeforeUploading"]) == -1
    assert harness.app.settings_dialog.show_panel("SegX").askCheckBox.checked  # -1: asked
    harness.app.answers.append((QMessageBox.Ok, True))
    run(harness, volume)
    assert len(harness.app.dialogs) == 2  # asked again, this time ticked
    assert not harness.app.settings_dialog.show_panel("SegX").askCheckBox.checked  # refreshed when shown
    run(harness, volume)
    assert len(harness.app.dialogs) == 2


def test_one_upload_per_run_and_none_for_a_layer_of_it(harness, slicer_server, monkeypatch):
    """The Run's volume leaves the computer once (a MONAI Label session); showing the raw
    layer of that Run asks the session, it does not send the volume again. Every request
    the module makes passes its client's ``_request``; those carrying the volume are counted."""
    url, studies = slicer_server
    harness.load_module()
    connect(harness, url)
    uploads = []
    client_class = type(harness.widget.panel.client)
    request = client_class._request

    def counting(client, method, path, timeout, **kwargs):
        if any(b"NRRD000" in content[:16] for _name, content, _kind in (kwargs.get("files") or {}).values()):  # the volume, as the module encodes it
            uploads.append(path)
        return request(client, method, path, timeout, **kwargs)

    monkeypatch.setattr(client_class, "_request", counting)
    volume = slicer.util.loadVolume(str(studies / CT))
    harness.app.answers.append((QMessageBox.Ok, True))
    run(harness, volume)
    assert len(uploads) == 1, uploads
    harness.ui.rawLayerRadioButton.click()
    harness.wait_for_job()
    assert len(uploads) == 1, uploads
    run(harness, volume)
    assert len(uploads) == 2, uploads  # a new Run: a new upload


def test_maps_come_back_outside_slicers_process(harness, slicer_server, monkeypatch):
    """Slicer's main thread holds the GIL while idle, so a reply received by a thread of its
    process waits for it chunk by chunk; the module receives maps in a child process. Here
    any reply of more than 64 KiB received in this process fails, and a Run and the raw
    layer still arrive (the harness's event loop holds the GIL between its turns)."""
    url, studies = slicer_server
    harness.load_module()
    connect(harness, url)
    send = requests.Session.send

    def small_replies_only(session, prepared, **kwargs):
        response = send(session, prepared, **kwargs)
        if len(response.content) > 65536:
            raise AssertionError(f"{prepared.method} {prepared.url} brought {len(response.content)} bytes into Slicer's process")
        return response

    monkeypatch.setattr(requests.Session, "send", small_replies_only)
    volume = slicer.util.loadVolume(str(studies / CT))
    harness.app.answers.append((QMessageBox.Ok, True))
    run(harness, volume)
    assert harness.widget.panel.logic.readout is not None and "done in" in harness.ui.logTextEdit.plainText
    harness.ui.rawLayerRadioButton.click()
    harness.wait_for_job()
    assert harness.widget.panel.logic.heatmap("explanation") is not None


def test_a_reload_rebinds_names_taken_from_other_modules_of_the_library(harness):
    """Slicer's Reload re-imports ``SegXSlicerLib`` module by module: a module reloaded
    before the one it imports from keeps the old class (``jobs.ServerError`` no longer
    ``client.ServerError``, and the expired-session retry stops catching)."""
    widget = harness.load_module()
    widget.onReload()
    assert sys.modules["SegXSlicerLib.jobs"].ServerError is sys.modules["SegXSlicerLib.client"].ServerError
    assert sys.modules["SegXSlicerLib.results"].ServerError is sys.modules["SegXSlicerLib.client"].ServerError


def test_without_a_main_window_the_shortcut_has_the_module_widget_as_parent(harness):
    """Slicer's ``py_nomainwindow_...GenericTest`` builds the widget with no main window."""
    harness.app.no_main_window = True
    widget = harness.load_module()
    assert slicer.util.mainWindow() is None
    assert widget.panel.shortcut.parent() is not None and QShortcut.unparented == []


def test_leaving_the_module_deactivates_the_embedded_editors_effect(harness):
    """Slicer's Segment Editor module sets no active effect and removes its view
    observations on ``exit()``; so must the editor embedded here, or Paint keeps painting
    in the slice views of whatever module the reader opens next."""
    widget = harness.load_module()
    harness.enter_module()
    editor = widget.panel.segment_editor
    editor.setActiveEffectByName("Paint")
    assert editor.observesViews()
    harness.exit_module()
    assert editor.activeEffectName() is None and not editor.observesViews()


def test_a_reload_leaves_no_old_editor_bound_or_painting(harness):
    widget = harness.load_module()
    old = widget.panel.segment_editor
    old.setActiveEffectByName("Paint")
    assert old.segmentEditorNode() is not None
    widget.onReload()
    assert old.activeEffectName() is None and not old.observesViews() and old.segmentEditorNode() is None
    assert harness.widget.panel.segment_editor is not old


def test_effects_registered_later_appear_in_the_embedded_editor(harness):
    """An extension's effect registered after the module was set up (Slicer's Segment Editor
    listens to ``effectRegistered``): it can be chosen in the embedded editor; after a
    reload the old widget no longer listens."""
    widget = harness.load_module()
    factory = slicer.qSlicerSegmentEditorEffectFactory.instance()
    factory.registerEffect("Local Threshold")
    widget.panel.segment_editor.setActiveEffectByName("Local Threshold")
    assert widget.panel.segment_editor.activeEffectName() == "Local Threshold"
    old = widget.panel.segment_editor
    widget.onReload()
    factory.registerEffect("Grow from seeds")
    assert old.updateEffectList not in factory.effectRegistered.slots  # the reloaded-away widget stopped listening
    harness.widget.panel.segment_editor.setActiveEffectByName("Grow from seeds")


def test_one_error_dialog_at_a_time_while_its_nested_event_loop_runs(harness, slicer_server):
    """An error dialog runs a nested event loop (QDialog::exec) in which the module's 20 ms
    timer fires: the poll it calls must not apply results inside the one being applied."""
    url, studies = slicer_server
    harness.load_module()
    connect(harness, url)
    panel = harness.widget.panel
    depth, deepest = [0], [0]
    apply = panel._poll

    def measured():
        depth[0] += 1
        deepest[0] = max(deepest[0], depth[0])
        try:
            apply()
        finally:
            depth[0] -= 1

    panel._poll = measured
    harness.ui.serverComboBox.currentText = "http://127.0.0.1:9"  # nothing listens there: the connect job fails
    harness.ui.connectButton.click()
    harness.wait_for_job()
    assert len(harness.app.dialogs) == 1 and "failed" in harness.app.dialogs[0]["text"]
    assert deepest[0] == 1  # the poll inside the dialog's loop returned at once
