"""The module panel (Qt; inside Slicer only). Wires the widgets of
``Resources/UI/SegXSlicer.ui`` to background jobs (:mod:`.jobs`, run by a
:class:`~.worker.JobRunner`) and to the scene logic (:class:`~.logic.SegXLogic`).

HTTP never runs on the main thread: each button submits a job, a ``qt.QTimer`` polls the
runner, shows progress and applies finished results to the scene.
"""

import logging
import os
import traceback

import qt
import slicer

from . import jobs, mrml
from .client import METHODS, SegXClient, ServerError
from .display import COLOUR_MAPS
from .logic import SegXLogic
from .results import segx_models, unavailable_models
from .worker import JobRunner

#: Volume attribute that holds the datastore id of an image loaded by Next sample.
IMAGE_ID_ATTRIBUTE = "SegX.imageId"
PREDICTED = "predicted class"


class SegXPanel:
    """Behaviour of the panel.

    Args:
        ui: the named child widgets of the loaded ``.ui`` (``slicer.util.childWidgetVariables``).
        logic: the scene logic.
    """

    def __init__(self, ui, logic: SegXLogic):
        self.ui = ui
        self.logic = logic
        self.runner = JobRunner()
        self.client = None
        self.models = {}
        self.job = None
        self.callbacks = {}
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.poll)
        self._setup()

    def _setup(self) -> None:
        ui = self.ui
        ui.serverUrlLineEdit.text = os.environ.get("SEGX_SERVER_URL", "http://127.0.0.1:8000")
        ui.methodComboBox.addItems(list(METHODS))
        ui.colourMapComboBox.addItems(list(COLOUR_MAPS))
        ui.opacitySlider.value = self.logic.settings.opacity
        ui.thresholdSlider.value = 100 * self.logic.settings.threshold
        ui.segxLayerRadioButton.checked = True
        ui.connectButton.clicked.connect(self.on_connect)
        ui.modelComboBox.currentIndexChanged.connect(self.on_model_changed)
        ui.runButton.clicked.connect(self.on_run)
        ui.cancelButton.clicked.connect(self.on_cancel)
        ui.segxLayerRadioButton.toggled.connect(lambda checked: self.logic.update(layer="segx" if checked else "explanation"))
        ui.opacitySlider.valueChanged.connect(lambda value: self.logic.update(opacity=value))
        ui.thresholdSlider.valueChanged.connect(lambda value: self.logic.update(threshold=value / 100.0))
        ui.colourMapComboBox.currentTextChanged.connect(lambda name: self.logic.update(colour_map=name))
        ui.render3DCheckBox.toggled.connect(lambda checked: self.logic.update(render_3d=checked))
        ui.nextSampleButton.clicked.connect(self.on_next_sample)
        ui.submitLabelButton.clicked.connect(self.on_submit_label)
        ui.trainButton.clicked.connect(self.on_train)
        ui.probabilityTable.setColumnCount(3)
        ui.probabilityTable.setHorizontalHeaderLabels(["class", "probability", "SegU certainty"])
        self._update_buttons()

    def cleanup(self) -> None:
        """Stop polling and cancel running jobs (the module is closing)."""
        self.timer.stop()
        self.runner.cancel_all()

    # --- jobs -----------------------------------------------------------------------

    def _submit(self, name: str, function, *args, on_done) -> None:
        self.job = self.runner.submit(name, function, *args)
        self.callbacks[self.job] = on_done
        self.ui.progressBar.value = 0
        self._status(f"{name}...")
        self._update_buttons()
        self.timer.start()

    def poll(self) -> None:
        """Timer slot: progress of the running job; results of finished ones."""
        if self.job is not None and not self.job.done:
            fraction, message = self.job.context.progress
            self.ui.progressBar.value = int(100 * fraction)
            self._status(message)
        for job in self.runner.poll():
            on_done = self.callbacks.pop(job)
            if job is self.job:
                self.job = None
            if job.cancelled:
                continue
            if job.error is not None:
                self._error(job.name, job.error)
            else:
                self.ui.progressBar.value = 100
                try:
                    on_done(job.result)
                except Exception as error:  # applying to the scene failed: say so
                    self._error(job.name, error)
        if not self.runner.running:
            self.timer.stop()
        self._update_buttons()

    def on_cancel(self) -> None:
        """Cancel the running job and free the panel at once; the job's thread ends after
        its current request (bounded by the client's timeouts) and its answer is dropped."""
        if self.job is not None:
            self.job.cancel()
            self._status(f"{self.job.name}: cancelled (a request in flight finishes on the server; its answer is ignored)")
            self.job = None
            self._update_buttons()

    # --- connection -----------------------------------------------------------------

    def on_connect(self) -> None:
        try:
            self.client = SegXClient(self.ui.serverUrlLineEdit.text)
        except ServerError as error:
            self._error("connect", error)
            return
        self._submit("connect", lambda context, client: client.info(), self.client, on_done=self._connected)

    def _connected(self, info: dict) -> None:
        self.models = {model.name: model for model in segx_models(info)}
        self.ui.modelComboBox.clear()
        for model in self.models.values():
            self.ui.modelComboBox.addItem(f"{model.name} ({model.dimension}D)", model.name)
        missing = "; ".join(f"{name}: {reason}" for name, reason in unavailable_models(info).items())
        if not self.models:
            self._error("connect", ServerError(f"the server at {self.client.url} offers no SegX model. {missing}"))
        else:
            self._status(f"connected to {self.client.url}: {len(self.models)} SegX model(s)" + (f". Unavailable: {missing}" if missing else ""))

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
            data = mrml.volume_data(volume)
            if self.model.dimension == 2 and data.array.shape[0] != 1:
                raise ValueError(f"{self.model.name} is a 2D model: select a single-slice volume (this one has {data.array.shape[0]} slices)")
        except ValueError as error:
            self._error("run", error)
            return
        chosen = self.ui.classComboBox.currentText
        class_name = None if chosen == PREDICTED else chosen
        method = self.ui.methodComboBox.currentText
        self._submit(
            "run", jobs.explain, self.client, self.model.name, data, class_name, method, on_done=lambda result: self._show(volume, result)
        )

    def _show(self, volume, explanation) -> None:
        self.logic.show(volume, explanation)
        readout = explanation.readout
        ui = self.ui
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
        self._status(f"{explanation.model}: {readout.layer} of {readout.explained} by {readout.method}")

    # --- active learning ------------------------------------------------------------

    def on_next_sample(self) -> None:
        self._submit("next sample", jobs.next_sample, self.client, self.model.name, on_done=self._load_sample)

    def _load_sample(self, sample) -> None:
        if sample is None:
            self._status("every image in the datastore is labelled")
            return
        path = os.path.join(slicer.app.temporaryPath, "SegX", sample.file_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
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
        image_id = source.GetAttribute(IMAGE_ID_ATTRIBUTE) if source is not None else None
        try:
            if not image_id:
                raise ValueError("Submit label needs an image from the datastore: use Next sample, Run, edit the clinical region")
            labels = self.logic.edited_labels()
        except ValueError as error:
            self._error("submit label", error)
            return
        saved = lambda reply: self._status(f"label of {image_id} saved as final")  # noqa: E731
        self._submit("submit label", jobs.submit_label, self.client, image_id, labels, mrml.ijk_to_ras(source), on_done=saved)

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
        ui.cancelButton.enabled = busy
        ui.progressBar.visible = busy
        has_result = self.logic.explanation is not None
        for control in (ui.segxLayerRadioButton, ui.rawLayerRadioButton, ui.opacitySlider, ui.thresholdSlider, ui.colourMapComboBox, ui.render3DCheckBox):
            control.enabled = has_result

    def _status(self, message: str) -> None:
        self.ui.statusLabel.text = message
        self.ui.statusLabel.styleSheet = ""
        self.ui.statusLabel.toolTip = ""

    def _error(self, action: str, error: BaseException) -> None:
        """Show a failure in the panel (red, details in the tooltip) and in the log."""
        expected = isinstance(error, (ServerError, ValueError))
        message = f"{action} failed: {error}" if expected else f"{action} failed: {type(error).__name__}: {error}"
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        logging.error(message if expected else f"{message}\n{details}")
        self.ui.statusLabel.text = message
        self.ui.statusLabel.styleSheet = "QLabel { color: #c62828; }"
        self.ui.statusLabel.toolTip = details
