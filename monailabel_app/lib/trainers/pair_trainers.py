"""MONAI Label trainers for a model configuration's two networks.

- ``NAME_segmenter``: from the label maps saved in the datastore with tag ``final``.
- ``NAME_classifier``: from image labels: the ``label`` key of an image's datastore info,
  else a ``labels.csv`` (``image_id,label``) in the studies folder.

Both start from the weights in use and publish the best checkpoint over the weight file
named in the configuration, so the running server picks it up at its next request.
Only networks given as ``network`` + ``weights`` can be trained (not TorchScript or
bundles).

A training runs in a subprocess of the server (MONAI Label's). It holds a lock file with
its PID (one training of a model at a time, also across server restarts: a lock whose
process is gone is taken over), dies with the server (Linux ``PR_SET_PDEATHSIG``, and a
watch on its parent elsewhere), and publishes weights atomically: written next to the
weight file, the weights the training started from kept as ``<weights>.previous`` (the
rollback: copy it back over the weights; the server reloads them at its next request),
then renamed over it.
"""

from __future__ import annotations

import csv
import ctypes
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.handlers import ConfusionMatrix, from_engine
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss
from monai.transforms import Activationsd, AsDiscreted, EnsureTyped, Lambdad, LoadImaged
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from segx.config import load_network
from segx.preprocessing import Preprocessing

from ..infers.runtime import ModelRuntime

logger = logging.getLogger(__name__)

TRAIN_DEFAULTS = {
    "max_epochs": 5,
    "train_batch_size": 4,
    "val_batch_size": 4,
    "val_split": 0.2,
    "dataset": "Dataset",
    "dataloader": "DataLoader",
    "tracking": "None",  # MLflow's file store refuses to run without migration; opt in per request
}


def publish_atomically(trained: Path, weights: Path, keep_previous: bool = True) -> bool:
    """Put ``trained`` in place of ``weights`` so that a reader sees the old file or the
    new one, never half of one; with ``keep_previous`` the old one is kept as
    ``<weights>.previous`` (a training keeps the weights it started from: its first
    publication only). Returns whether anything changed."""
    if weights.exists() and weights.read_bytes() == trained.read_bytes():
        return False
    partial = weights.with_name(f".{weights.name}.{os.getpid()}.partial")
    shutil.copyfile(trained, partial)
    with open(partial, "rb") as stream:
        os.fsync(stream.fileno())
    if weights.exists() and keep_previous:
        shutil.copyfile(weights, weights.with_name(weights.name + ".previous"))
    os.replace(partial, weights)
    return True


class TrainingLock:
    """``<name>.lock`` holding the training process's PID; a lock whose process is gone
    (a server killed with its trainer) is taken over."""

    def __init__(self, path: Path):
        self.path = path

    def holder(self) -> int | None:
        try:
            pid = int(self.path.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid if pid != os.getpid() else None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        holder = self.holder()
        if holder is not None:
            raise ValueError(f"another training of this model is running (process {holder}); wait for it or stop it")
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        if self.path.exists() and self.path.read_text().strip() == str(os.getpid()):
            self.path.unlink()


def die_with_parent() -> None:
    """End this (trainer) process when the server that started it dies: on Linux the
    kernel sends SIGTERM (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread watches the
    parent's PID."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="segx-parent-watch", daemon=True).start()


class _PairTrainer(BasicTrainTask):
    """Common part: the network section of the configuration and where weights go."""

    field = ""

    def __init__(self, runtime: ModelRuntime, preprocessing: Preprocessing, description: str):
        self.runtime = runtime
        self.section = runtime.config[self.field]
        self.preprocessing = preprocessing
        config_file = runtime.config_file
        super().__init__(
            model_dir=str(config_file.parent / "training" / f"{runtime.name}_{self.field}"),
            description=description,
            config=dict(TRAIN_DEFAULTS),
            amp=False,
            tracking=None,
            publish_path=str(config_file.parent / self.section["weights"]),
        )

    def __call__(self, request, datastore: Datastore):
        """One training (see the module docstring): with the lock, dying with the server."""
        if os.environ.get("MONAI_LABEL_DATASTORE_AUTO_RELOAD") == "false":  # MONAI Label's training subprocess
            die_with_parent()
        with TrainingLock(Path(self.runtime.config_file.parent / "training" / f"{self.runtime.name}_{self.field}.lock")):
            return super().__call__(request, datastore)

    def finalize(self, context):
        """MONAI Label's finalisation without its publishing (a copy over the weight file in
        place: a reader could see half a file), then :func:`publish_atomically` of the best
        checkpoint after every epoch."""
        publish_path, self._publish_path = self._publish_path, None  # its publisher now writes statistics only
        try:
            super().finalize(context)
        finally:
            self._publish_path = publish_path
        if context.local_rank == 0 and publish_path:
            trained = Path(context.output_dir) / self._key_metric_filename

            published = []  # epochs published by this training: only the first keeps the weights it replaced

            def publish(engine):
                if trained.exists() and publish_atomically(trained, Path(publish_path), keep_previous=not published):
                    published.append(engine.state.epoch)
                    logger.info(f"new weights published: {publish_path}")

            (context.evaluator or context.trainer).add_event_handler(Events.EPOCH_COMPLETED, publish)

    def network(self, context: Context):
        return load_network(self.section, self.runtime.config_file, self.field).train()

    def optimizer(self, context: Context):
        return torch.optim.AdamW(context.network.parameters(), lr=float(context.request.get("learning_rate", 1e-4)))

    def _preprocess(self, image) -> torch.Tensor:
        """Loaded image (MetaTensor ``(C, *S)`` with its affine) -> network input without
        batch axis ``(C_in, *size)``, through the same pipeline as inference."""
        return self.preprocessing(image.as_tensor(), np.asarray(image.affine))[0]

    def _image_transforms(self):
        return [LoadImaged(keys="image", ensure_channel_first=True, image_only=True), Lambdad(keys="image", func=self._preprocess)]

    def train_inferer(self, context: Context):
        return SimpleInferer()

    def val_inferer(self, context: Context):
        return SimpleInferer()


class SegmenterTrainer(_PairTrainer):
    """Dice + cross-entropy on the datastore's final label maps."""

    field = "segmenter"

    def __init__(self, runtime: ModelRuntime):
        super().__init__(runtime, runtime.pair.segmenter_input, f"{runtime.name}: train the segmenter on final labels")
        self.n_labels = max(runtime.pair.segment_names) + 1

    def loss_function(self, context: Context):
        return DiceCELoss(to_onehot_y=True, softmax=True)

    def train_pre_transforms(self, context: Context):
        label = [LoadImaged(keys="label", ensure_channel_first=True, image_only=True)] + self.preprocessing.label_transforms("label")
        return self._image_transforms() + label + [EnsureTyped(keys=("image", "label"), track_meta=False)]

    def train_post_transforms(self, context: Context):
        return [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys=("pred", "label"), argmax=(True, False), to_onehot=(self.n_labels, self.n_labels)),
        ]


class ClassifierTrainer(_PairTrainer):
    """Cross-entropy on image labels (datastore info ``label``, or ``labels.csv``)."""

    field = "classifier"
    TRAIN_METRIC_ACCURACY = "train_acc"
    VAL_METRIC_ACCURACY = "val_acc"

    def __init__(self, runtime: ModelRuntime, studies: str):
        super().__init__(runtime, runtime.pair.classifier_input, f"{runtime.name}: train the classifier on image labels")
        self.n_classes = len(runtime.pair.class_names)
        self.labels_csv = Path(studies) / "labels.csv"

    def loss_function(self, context: Context):
        return torch.nn.CrossEntropyLoss()

    def pre_process(self, request, datastore: Datastore):
        """Datalist ``[{"image": path, "label": class index}]`` of the labelled images."""
        csv_labels = {}
        if self.labels_csv.is_file():
            with open(self.labels_csv, newline="") as stream:
                csv_labels = {row["image_id"]: row["label"] for row in csv.DictReader(stream)}
        datalist = []
        for image_id in datastore.list_images():
            label = datastore.get_image_info(image_id).get("label", csv_labels.get(image_id))
            if label is None:
                continue
            try:
                index = self.runtime.pair.class_index(label)
            except ValueError:
                logger.warning(f"{image_id}: label {label!r} is not a class of {self.runtime.name}; skipped")
                continue
            datalist.append({"image": datastore.get_image_uri(image_id), "label": index})
        if not datalist:
            raise ValueError(f"no labelled image for {self.runtime.name}: set 'label' in image info or add labels.csv")
        return datalist

    def train_pre_transforms(self, context: Context):
        return self._image_transforms() + [EnsureTyped(keys="image", track_meta=False), Lambdad(keys="label", func=torch.as_tensor)]

    def train_post_transforms(self, context: Context):
        return [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys=("pred", "label"), argmax=(True, False), to_onehot=(self.n_classes, self.n_classes)),
        ]

    def _accuracy(self):
        return ConfusionMatrix(include_background=True, metric_name="accuracy", output_transform=from_engine(["pred", "label"]))

    def train_key_metric(self, context: Context):
        return {self.TRAIN_METRIC_ACCURACY: self._accuracy()}

    def val_key_metric(self, context: Context):
        return {self.VAL_METRIC_ACCURACY: self._accuracy()}


def trainers_for(runtime: ModelRuntime, studies: str) -> dict[str, BasicTrainTask]:
    """``NAME_segmenter`` / ``NAME_classifier`` for the networks that have a state_dict."""
    trainers: dict[str, BasicTrainTask] = {}
    if "network" in runtime.config["segmenter"]:
        trainers[f"{runtime.name}_segmenter"] = SegmenterTrainer(runtime)
    if "network" in runtime.config["classifier"]:
        trainers[f"{runtime.name}_classifier"] = ClassifierTrainer(runtime, studies)
    return trainers
