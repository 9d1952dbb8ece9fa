"""The module panel (Qt; inside Slicer only). Wires the widgets of
``Resources/UI/SegXSlicer.ui`` to background jobs (:mod:`.jobs`, run by a
:class:`~.worker.JobRunner`) and to the scene logic (:class:`~.logic.SegXLogic`).

HTTP never runs on the main thread: each button submits a job, a ``qt.QTimer`` polls the
runner, shows progress with the elapsed time and applies finished results to the scene.
Closing the scene cancels the running job and clears the readouts.
"""

import logging
import os
import time
import traceback
from typing import Optional

import qt
import slicer
from slicer.util import VTKObservationMixin

from . import jobs, mrml
from .client import METHODS, SegXClient, ServerError
from .display import COLOUR_MAPS
from .logic import MODULE_NAME, SegXLogic
from .results import segx_models, unavailable_models
from .settings import client_id, strategy, SETTINGS_CONSENT, SETTINGS_HISTORY, SETTINGS_TOKEN, SETTINGS_URL
from .worker import JobRunner

#: Volume attribute that holds the datastore id of an image loaded by Next sample.
IMAGE_ID_ATTRIBUTE = "SegX.imageId"
PREDICTED = "predicted class"
DEFAULT_URL = "http://127.0.0.1:8000"

HISTORY_LENGTH = 10

#: Keyboard shortcut that shows or hides the heatmap in every slice view.
TOGGLE_SHORTCUT = "Ctrl+Shift+X"

#: Poll interval of the timer: fast while a job runs (Slicer's event loop holds the GIL
#: while idle, so the worker thread advances mainly while the main thread runs Python).
POLL_MS = 20


def server_history() -> list:
    """The servers used before, newest first (QSettings)."""
    return [url for url in str(qt.QSettings().value(SETTINGS_HISTORY, "") or "").split(";") if url]


class SegXPanel(VTKObservationMixin):
    """Behaviour of the panel.

    Args:
        ui: the named child widgets of the loaded ``.ui`` (``slicer.util.childWidgetVariables``).
        logic: the scene logic.
    """

    def __init__(self, ui, logic: SegXLogic, module_widget=None):
        VTKObservationMixin.__init__(self)
        self.ui = ui
        self.logic = logic
        self.runner = JobRunner()
        self.client: Optional[SegXClient] = None
        self.models = {}
        self.job = None
        self.started = 0.0
        self.last_run: Optional[jobs.Explanation] = None
        self.callbacks = {}
        self._polling = False
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        # the main window when there is one; Slicer's generic tests build the widget without
        # one, and a QShortcut without a parent does nothing: the module's own widget then
        self.shortcut = qt.QShortcut(qt.QKeySequence(TOGGLE_SHORTCUT), slicer.util.mainWindow() or module_widget)
        self.shortcut.activated.connect(self.on_toggle_heatmap)
        self.segment_editor = None
        self._setup()
        scene = logic.scene
        self.addObserver(scene, scene.StartCloseEvent, self.on_scene_start_close)
        self.addObserver(scene, scene.EndCloseEvent, self.on_scene_end_close)
        self.addObserver(scene, scene.NodeAddedEvent, self.on_node_added)
        self._show_readouts()

    def _setup(self) -> None:
        ui = self.ui
        history = server_history()
        ui.serverComboBox.addItems(history or [DEFAULT_URL])
        ui.serverComboBox.currentText = str(qt.QSettings().value(SETTINGS_URL, "") or (history[0] if history else DEFAULT_URL))
        ui.methodComboBox.addItems(list(METHODS))
        ui.colourMapComboBox.addItems(list(COLOUR_MAPS))
        self._show_settings()
        ui.connectButton.clicked.connect(self.on_connect)
        ui.modelComboBox.currentIndexChanged.connect(self.on_model_changed)
        ui.runButton.clicked.connect(self.on_run)
        ui.cancelButton.clicked.connect(self.on_cancel)
        ui.segxLayerRadioButton.toggled.connect(self.on_layer_toggled)
        ui.opacitySlider.valueChanged.connect(lambda value: self.logic.update(opacity=float(value)))
        ui.thresholdSlider.valueChanged.connect(lambda value: self.logic.update(threshold=float(value) / 100.0))
        ui.colourMapComboBox.currentTextChanged.connect(lambda name: self.logic.update(colour_map=name))
        ui.render3DCheckBox.toggled.connect(lambda checked: self.logic.update(render_3d=bool(checked)))
        ui.nextSampleButton.clicked.connect(self.on_next_sample)
        ui.skipSampleButton.clicked.connect(self.on_skip_sample)
        ui.submitLabelButton.clicked.connect(self.on_submit_label)
        ui.trainButton.clicked.connect(self.on_train)
        ui.probabilityTable.setColumnCount(3)
        ui.probabilityTable.setHorizontalHeaderLabels(["class", "probability", "SegU certainty"])
        ui.segxLayerRadioButton.toolTip += f" ({TOGGLE_SHORTCUT} shows or hides the heatmap)"
        self._hide_outputs_from_input_selector()
        self._update_buttons()

    def enter(self) -> None:
        """The module is opened: the embedded editor's keyboard shortcuts on."""
        if self.segment_editor is not None:
            self.segment_editor.installKeyboardShortcuts()

    def exit(self) -> None:
        """The module is left: no effect stays active in the slice views (Paint would keep
        painting in another module), as Slicer's Segment Editor module does on exit."""
        if self.segment_editor is not None:
            self.segment_editor.setActiveEffect(None)
            self.segment_editor.uninstallKeyboardShortcuts()
            self.segment_editor.removeViewObservations()

    def cleanup(self) -> None:
        """Stop polling, cancel running jobs, stop observing the scene, deactivate and
        unbind the embedded editor (the module is closing or being reloaded: a hidden old
        editor must not stay bound to the scene's editor node)."""
        self.exit()
        if self.segment_editor is not None:
            self.segment_editor.setMRMLSegmentEditorNode(None)
        self.timer.stop()
        self.runner.cancel_all()
        self.removeObservers()
        self.shortcut.activated.disconnect(self.on_toggle_heatmap)
        self.shortcut.setParent(None)

    # --- the scene ----------------------------------------------------------------------

    def on_scene_start_close(self, caller=None, event=None) -> None:
        """The scene is closing: its nodes are going away; drop the job that would use them."""
        if self.job is not None:
            self.job.cancel()  # the timer keeps polling until its thread ends, then drops it
            self.job = None
        self.last_run = None

    def on_scene_end_close(self, caller=None, event=None) -> None:
        """The scene is empty: clear the readouts and the controls bound to its nodes."""
        self._show_readouts()
        self._status("scene closed")
        self._update_buttons()

    def on_node_added(self, caller=None, event=None) -> None:
        """A node was added (e.g. a heatmap): keep the module's outputs out of the input list."""
        self._hide_outputs_from_input_selector()

    def _hide_outputs_from_input_selector(self) -> None:
        scene = self.logic.scene
        volumes = scene.GetNodesByClass("vtkMRMLVolumeNode")
        hidden = [volumes.GetItemAsObject(i).GetID() for i in range(volumes.GetNumberOfItems())
                  if volumes.GetItemAsObject(i).GetAttribute(mrml.OUTPUT_ATTRIBUTE)]  # fmt: skip
        self.ui.inputVolumeSelector.sortFilterProxyModel().hiddenNodeIDs = hidden

    # --- jobs -----------------------------------------------------------------------

    def _submit(self, name: str, function, *args, on_done) -> None:
        self.job = self.runner.submit(name, function, *args)
        self.callbacks[self.job] = on_done
        self.started = time.monotonic()
        self.ui.progressBar.value = 0
        self._status(f"{name}...")
        self._log(f"{name}: started")
        self._update_buttons()
        self.timer.start()

    def poll(self) -> None:
        """Timer slot: progress of the running job; results of finished ones. A dialog
        opened while applying a result (an error, a question) runs a nested event loop in
        which this timer fires again: that call returns at once, so one result is applied
        (and one error shown) at a time."""
        if self._polling:
            return
        self._polling = True
        try:
            self._poll()
        finally:
            self._polling = False

    def _poll(self) -> None:
        if self.job is not None and not self.job.done:
            fraction, message = self.job.context.progress
            self.ui.progressBar.value = int(100 * fraction)
            self._status(f"{message} ({time.monotonic() - self.started:.0f} s)")
        for job in self.runner.poll():
            on_done = self.callbacks.pop(job, None)
            if job is self.job:
                self.job = None
            if job.cancelled or on_done is None:
                continue
            elapsed = f"{time.monotonic() - self.started:.1f} s"
            if job.error is not None:
                self._error(job.name, job.error)
                continue
            self.ui.progressBar.value = 100
            try:
                on_done(job.result)
                self._log(f"{job.name}: done in {elapsed}")
            except Exception as error:  # applying to the scene failed: say so
                self._error(job.name, error)
        if not self.runner.running:
            self.timer.stop()
        self._update_buttons()

    def on_cancel(self) -> None:
        """Cancel the running job and free the panel at once; the job's thread ends after
        its current request (bounded by the client's timeouts) on its own connection, and
        its answer is dropped."""
        if self.job is not None:
            self.job.cancel()
            self._status(f"{self.job.name}: cancelled (a request in flight finishes on the server; its answer is ignored)")
            self._log(f"{self.job.name}: cancelled")
            self.job = None
            self._update_buttons()

    # --- connection -----------------------------------------------------------------

    def on_connect(self) -> None:
        try:
            self.client = SegXClient(self.ui.serverComboBox.currentText, token=str(qt.QSettings().value(SETTINGS_TOKEN, "") or ""))
        except ServerError as error:
            self._error("connect", error)
            return
        self._submit("connect", lambda context, client: client.info(), self.client, on_done=self._connected)

    def _connected(self, info: dict) -> None:
        self._remember_server(self.client.url)
        self.models = {model.name: model for model in segx_models(info)}
        self.ui.modelComboBox.clear()
        for model in self.models.values():
            self.ui.modelComboBox.addItem(f"{model.name} ({model.dimension}D)", model.name)
        missing = "; ".join(f"{name}: {reason}" for name, reason in unavailable_models(info).items())
        if not self.models:
            self._error("connect", ServerError(f"the server at {self.client.url} offers no SegX model. {missing}"))
        else:
            self._status(f"connected to {self.client.url}: {len(self.models)} SegX model(s)" + (f". Unavailable: {missing}" if missing else ""))

    def _remember_server(self, url: str) -> None:
        """Save ``url`` as the last server and first in the history (QSettings)."""
        history = [url] + [u for u in server_history() if u != url][: HISTORY_LENGTH - 1]
        settings = qt.QSettings()
        settings.setValue(SETTINGS_URL, url)
        settings.setValue(SETTINGS_HISTORY, ";".join(history))
        self.ui.serverComboBox.clear()
        self.ui.serverComboBox.addItems(history)
        self.ui.serverComboBox.currentText = url

    def _consent_to_upload(self) -> bool:
        """Ask once before images leave this computer (unless told not to ask again)."""
        return slicer.util.confirmOkCancelDisplay(
            f"SegX sends the selected image to the server at {self.client.url} to explain it. "
            "Send images only to servers your institution allows to receive patient data.",
            windowTitle="Send the image to the SegX server?",
            dontShowAgainSettingsKey=SETTINGS_CONSENT,
        )

    @property
    def model(self):
        return self.models.get(self.ui.modelComboBox.currentData)

    def on_model_changed(self, _index=None) -> None:
        self.ui.classComboBox.clear()
        self.ui.classComboBox.addItem(PREDICTED)
        if self.model is not None:
            self.ui.classComboBox.addItems(self.model.classes)
        self._update_buttons()

    # --- run ------------------------------------------------------------------------

    def on_run(self) -> None:
        volume = self.ui.inputVolumeSelector.currentNode()
        try:
            if volume is None:
                raise ValueError("select a volume first")
            if volume.GetAttribute(mrml.OUTPUT_ATTRIBUTE):
                raise ValueError(f"{volume.GetName()} is a SegX result: select the image it explains")
            data = mrml.volume_data(volume)
            if self.model.dimension == 2 and data.array.shape[0] != 1:
                raise ValueError(f"{self.model.name} is a 2D model: select a single-slice volume (this one has {data.array.shape[0]} slices)")
        except ValueError as error:
            self._error("run", error)
            return
        if not self._consent_to_upload():
            self._status("run: not sent (no consent to upload)")
            return
        chosen = self.ui.classComboBox.currentText
        class_name = None if chosen == PREDICTED else chosen
        method = self.ui.methodComboBox.currentText
        self._submit(
            "run", jobs.explain, self.client, self.model.name, data, class_name, method, on_done=lambda result: self._show(volume, result)
        )

    def _show(self, volume, explanation: jobs.Explanation) -> None:
        if not self.logic.scene.IsNodePresent(volume):
            raise ValueError(f"{explanation.model}: the volume was removed from the scene before the answer came; nothing shown")
        self.last_run = explanation
        self.logic.show(volume, explanation)
        self._show_readouts()
        if self.logic.current_heatmap is None:  # the raw layer is selected: fetch it
            self._fetch_layer(self.logic.settings.layer)
        readout = explanation.readout
        self._status(f"{explanation.model}: {readout.layer} of {readout.explained} by {readout.method}")
        timings = ", ".join(f"{k} {v:.2f} s" for k, v in readout.latencies.items())
        self._log(f"{explanation.model}: {readout.prediction_text()}, SegU {readout.certainty_text()}" + (f"; server: {timings}" if timings else ""))

    def _show_readouts(self) -> None:
        """The readouts of the scene's last Run (after a reload or a scene load too), or
        empty ones."""
        ui = self.ui
        readout = self.logic.readout
        self._show_settings()
        if readout is None:
            ui.predictionLabel.text = ui.certaintyLabel.text = ui.reasonLabel.text = "-"
            ui.certaintyLabel.styleSheet = ""
            ui.probabilityTable.setRowCount(0)
            self._edit_region(None)
            return
        ui.predictionLabel.text = readout.prediction_text()
        ui.certaintyLabel.text = f"SegU {readout.certainty_text()}"
        ui.certaintyLabel.styleSheet = f"QLabel {{ background-color: {readout.level_colour()}; color: white; padding: 2px; }}"
        ui.reasonLabel.text = readout.reason
        rows = readout.probability_rows()
        ui.probabilityTable.setRowCount(len(rows))
        for index, row in enumerate(rows):
            certainty = "" if row.certainty is None else f"{row.certainty:.2f}"
            for column, text in enumerate((row.label + (" (predicted)" if row.predicted else ""), f"{row.probability:.3f}", certainty)):
                ui.probabilityTable.setItem(index, column, qt.QTableWidgetItem(text))
        self._edit_region(self.logic.region)

    def _show_settings(self) -> None:
        """Put the scene's display settings in the controls without re-applying them."""
        ui, settings = self.ui, self.logic.settings
        controls = (ui.opacitySlider, ui.thresholdSlider, ui.segxLayerRadioButton, ui.rawLayerRadioButton, ui.colourMapComboBox, ui.render3DCheckBox)
        blocked = [control.blockSignals(True) for control in controls]
        ui.opacitySlider.value = settings.opacity
        ui.thresholdSlider.value = 100 * settings.threshold
        ui.segxLayerRadioButton.checked = settings.layer == "segx"
        ui.rawLayerRadioButton.checked = settings.layer == "explanation"
        ui.colourMapComboBox.currentIndex = list(COLOUR_MAPS).index(settings.colour_map)
        ui.render3DCheckBox.checked = settings.render_3d
        for control, was_blocked in zip(controls, blocked):
            control.blockSignals(was_blocked)

    def on_layer_toggled(self, segx_checked: bool) -> None:
        """The SegX / raw explanation radio buttons: show that layer, fetching it from the
        Run's uploaded session the first time it is shown."""
        layer = "segx" if segx_checked else "explanation"
        self.logic.update(layer=layer)
        if self.logic.source is not None and self.logic.heatmap(layer) is None:
            self._fetch_layer(layer)

    def _fetch_layer(self, layer: str) -> None:
        if self.last_run is None:
            self._error("show layer", ValueError(f"the {layer} map of this result was not fetched: Run again to see it"))
            return
        run = self.last_run
        self._submit(f"fetch {layer}", jobs.fetch_layer, self.client, run, layer, on_done=lambda heatmap: self._add_layer(run, layer, heatmap))

    def _add_layer(self, run: jobs.Explanation, layer: str, heatmap) -> None:
        if run is not self.last_run:
            return  # a newer Run replaced this one meanwhile
        run.heatmaps[layer] = heatmap
        self.logic.add_layer(layer, heatmap)

    def on_toggle_heatmap(self) -> None:
        """Keyboard shortcut: show or hide the heatmap."""
        if self.logic.source is not None:
            self._status("heatmap shown" if self.logic.toggle_visibility() else f"heatmap hidden ({TOGGLE_SHORTCUT} shows it)")

    def add_segment_editor(self, editor) -> None:
        """Embed a Segment Editor (``slicer.qMRMLSegmentEditorWidget``) in the *Edit
        clinical region* section, bound to the clinical region of the last Run."""
        editor.setMRMLScene(self.logic.scene)
        self.segment_editor = editor
        self.ui.regionEditorCollapsibleButton.layout().addWidget(editor)
        self._edit_region(self.logic.region)

    def _edit_region(self, region) -> None:
        """Point the embedded Segment Editor at the clinical region of the last Run (its
        editor node is a singleton, so it survives a scene close)."""
        if self.segment_editor is None:
            return
        self.segment_editor.setMRMLSegmentEditorNode(mrml.singleton_node(self.logic.scene, "vtkMRMLSegmentEditorNode", MODULE_NAME))
        self.segment_editor.setSegmentationNode(region)
        self.segment_editor.setSourceVolumeNode(self.logic.source if region is not None else None)

    # --- active learning ------------------------------------------------------------

    def on_next_sample(self) -> None:
        self._submit("next sample", jobs.next_sample, self.client, self.model.name, client_id(), "", strategy(), on_done=self._load_sample)

    def on_skip_sample(self) -> None:
        """Give the shown datastore image back (another annotator may label it) and load
        the next one."""
        image_id = self._sample_id()
        self._submit("skip", jobs.next_sample, self.client, self.model.name, client_id(), image_id, strategy(), on_done=self._load_sample)

    def _sample_id(self) -> Optional[str]:
        """The datastore id of the image shown (from Next sample), or None."""
        source = self.logic.source
        return (source.GetAttribute(IMAGE_ID_ATTRIBUTE) or None) if source is not None else None

    def _load_sample(self, sample) -> None:
        if sample is None:
            self._status("no unlabeled image is free: all are labelled, or held by other annotators")
            return
        folder = os.path.join(slicer.app.temporaryPath, "SegX")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, sample.file_name)  # a plain file name: sanitised by the client
        with open(path, "wb") as stream:
            stream.write(sample.content)
        volume = slicer.util.loadVolume(path, {"name": sample.image_id, "singleFile": True})
        volume.SetAttribute(IMAGE_ID_ATTRIBUTE, sample.image_id)
        self.ui.inputVolumeSelector.setCurrentNode(volume)
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        certainty = sample.reply.get("certainty")
        self.ui.sampleLabel.text = f"{sample.image_id}: SegU {certainty:.2f}" if certainty is not None else sample.image_id
        self.on_run()

    def on_submit_label(self) -> None:
        source = self.logic.source
        image_id = self._sample_id()
        try:
            if not image_id:
                raise ValueError("Submit label needs an image from the datastore: use Next sample, Run, edit the clinical region")
            labels = self.logic.edited_labels()
            ijk_to_ras = mrml.ijk_to_ras(source)
        except Exception as error:  # no region, an export that failed: never lose it silently
            self._error("submit label", error)
            return
        saved = lambda reply: self._status(f"label of {image_id} saved as final")  # noqa: E731
        self._submit("submit label", jobs.submit_label, self.client, image_id, labels, ijk_to_ras, on_done=saved)

    def on_train(self) -> None:
        trainer = self.model.trainer
        if trainer is None:
            self._error("train", ValueError(f"the server cannot train the segmenter of {self.model.name} (e.g. TorchScript)"))
            return
        self._submit("train", jobs.train, self.client, trainer, on_done=lambda status: self._status(f"{trainer}: training finished"))

    # --- state and messages ---------------------------------------------------------

    def _update_buttons(self) -> None:
        busy = self.job is not None
        connected = self.model is not None
        ui = self.ui
        ui.connectButton.enabled = not busy
        for button in (ui.runButton, ui.nextSampleButton, ui.trainButton):
            button.enabled = connected and not busy
        ui.submitLabelButton.enabled = connected and not busy and self.logic.region is not None
        ui.skipSampleButton.enabled = connected and not busy and self._sample_id() is not None
        ui.cancelButton.enabled = busy
        ui.progressBar.visible = busy
        has_result = self.logic.source is not None
        for control in (ui.segxLayerRadioButton, ui.rawLayerRadioButton, ui.opacitySlider, ui.thresholdSlider, ui.colourMapComboBox, ui.render3DCheckBox):
            control.enabled = has_result

    def _status(self, message: str) -> None:
        self.ui.statusLabel.text = message
        self.ui.statusLabel.styleSheet = ""
        self.ui.statusLabel.toolTip = ""

    def _log(self, message: str) -> None:
        self.ui.logTextEdit.appendPlainText(f"{time.strftime('%H:%M:%S')} {message}")

    def _error(self, action: str, error: BaseException) -> None:
        """Show a failure: red status (details in its tooltip and the Details log), the
        application log, and an error dialog with the details."""
        expected = isinstance(error, (ServerError, ValueError))
        message = f"{action} failed: {error}" if expected else f"{action} failed: {type(error).__name__}: {error}"
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        logging.error(message if expected else f"{message}\n{details}")
        self.ui.statusLabel.text = message
        self.ui.statusLabel.styleSheet = "QLabel { color: #c62828; }"
        self.ui.statusLabel.toolTip = details
        self._log(f"{message}\n{details}")
        slicer.util.errorDisplay(message, windowTitle="SegX", detailedText=details)
