"""MONAI Label trainers for a model configuration's two networks.

- ``NAME_segmenter``: from the label maps saved in the datastore with tag ``final``.
- ``NAME_classifier``: from image labels: the ``label`` key of an image's datastore info,
  else a ``labels.csv`` (``image_id,label``) in the studies folder.

Both run :func:`segx.training.engine.fit`, the loop ``segx train`` made the shipped models
with (MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``), under the recipe the model
configuration names (``recipe: jsrt``; :data:`segx.training.RECIPES`: loss weighting,
flips, learning rate and annealing, batch size, selection score, epochs; a configuration
without one gets :class:`segx.training.engine.Schedule`'s defaults and 5 epochs). A
request may set ``max_epochs``, ``learning_rate``, ``val_split`` and ``train_batch_size``
(``lib.security.TRAIN_PARAMS``). Samples go through the model's own input pipeline, as in
inference. Both start from the weights in use and publish every epoch that beats the
earlier ones (on the validation split; on the training samples when ``val_split`` is 0)
over the weight file named in the configuration, so the running server picks it up at its
next request. Only networks given as ``network`` + ``weights`` can be trained (not
TorchScript or bundles).

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
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, LoadImage, LoadImaged
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask
from tqdm import tqdm

from segx.config import load_network
from segx.preprocessing import Preprocessing
from segx.training import RECIPES
from segx.training.engine import Schedule, fit

from ..infers.runtime import ModelRuntime

logger = logging.getLogger(__name__)

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


class _PairTrainer(TrainTask):
    """Common part: the network section of the configuration, its recipe, where weights go."""

    field = ""

    def __init__(self, runtime: ModelRuntime, preprocessing: Preprocessing, description: str):
        super().__init__(description)
        self.runtime = runtime
        self.section = runtime.config[self.field]
        self.preprocessing = preprocessing
        self.weights = runtime.config_file.parent / self.section["weights"]
        self.workdir = runtime.config_file.parent / "training" / f"{runtime.name}_{self.field}"
        name = runtime.config.get("recipe")
        if name is not None and name not in RECIPES:
            raise ValueError(f"{runtime.name}: recipe {name!r} is not one of {sorted(RECIPES)}")
        self.recipe = RECIPES.get(name)

    def epochs(self) -> int:
        return 5 if self.recipe is None else self.recipe.epochs

    def config(self):
        """The options a client may set, with this model's defaults."""
        schedule = self.recipe.schedule if self.recipe else Schedule()
        return {"max_epochs": self.epochs(), "learning_rate": schedule.learning_rate, "val_split": 0.2, "train_batch_size": schedule.batch_size}

    def stats(self):
        """The last training's log (losses, validation scores, best epoch, seconds)."""
        log = self.workdir / "train_stats.json"
        return json.loads(log.read_text()) if log.is_file() else {}

    def __call__(self, request, datastore: Datastore):
        """One training (see the module docstring): with the lock, dying with the server."""
        if os.environ.get("MONAI_LABEL_DATASTORE_AUTO_RELOAD") == "false":  # MONAI Label's training subprocess
            die_with_parent()
        with TrainingLock(self.workdir.with_suffix(".lock")):
            return self._train({**self.config(), **request}, datastore)

    def _train(self, options: dict, datastore: Datastore) -> dict:
        start = time.perf_counter()
        datalist = sorted(self.datalist(datastore), key=lambda item: item["image"])  # the same training whatever the datastore's order
        samples = [self._sample(item) for item in tqdm(datalist, desc="reading samples", leave=False)]
        val_size = int(round(len(samples) * float(options["val_split"])))
        order = np.random.default_rng(0).permutation(len(samples))
        val = [samples[i] for i in order[:val_size]] if len(samples) - val_size >= 1 else []
        train = [samples[i] for i in order[val_size:]] if val else samples
        schedule = replace(self.recipe.schedule if self.recipe else Schedule(), learning_rate=float(options["learning_rate"]),
                           batch_size=int(options["train_batch_size"]))  # fmt: skip
        network = load_network(self.section, self.runtime.config_file, self.field)
        self.workdir.mkdir(parents=True, exist_ok=True)
        published: list[int] = []  # epochs published by this training: only the first keeps the weights it replaced

        def publish(trained: torch.nn.Module, epoch: int) -> None:
            checkpoint = self.workdir / "best.pt"
            torch.save({k: v.cpu() for k, v in trained.state_dict().items()}, checkpoint)
            if publish_atomically(checkpoint, self.weights, keep_previous=not published):
                published.append(epoch)
                logger.info(f"epoch {epoch}: new weights published: {self.weights.name}")

        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(schedule.seed)  # dropout masks: the same training from the same samples (fit seeds its shuffling and flips)
        log = fit(network, train, val, self.field, schedule, int(options["max_epochs"]), len(self.runtime.pair.class_names),
                  desc=self.description, on_best=publish, device=device)  # fmt: skip
        log.update(n_train=len(train), n_val=len(val), recipe=self.recipe.name if self.recipe else None, published_epochs=published,
                   seconds=round(time.perf_counter() - start, 1))  # fmt: skip
        (self.workdir / "train_stats.json").write_text(json.dumps(log, indent=2) + "\n")
        return log

    def datalist(self, datastore: Datastore) -> list[dict]:
        """``[{"image": path, "label": ...}]`` from the datastore."""
        raise NotImplementedError

    def _sample(self, item: dict) -> dict:
        """A datalist item -> :func:`segx.training.engine.fit`'s sample: the image ``(C_in,
        *size)`` through the same pipeline as inference."""
        image = LoadImage(ensure_channel_first=True, image_only=True)(item["image"])
        return {"image": self.preprocessing(image.as_tensor(), np.asarray(image.affine))[0], "label": item["label"]}


class SegmenterTrainer(_PairTrainer):
    """Dice + cross-entropy on the datastore's final label maps."""

    field = "segmenter"

    def __init__(self, runtime: ModelRuntime):
        super().__init__(runtime, runtime.pair.segmenter_input, f"{runtime.name}: train the segmenter on final labels")
        self.label_grid = Compose([LoadImaged(keys="label", ensure_channel_first=True, image_only=True), *self.preprocessing.label_transforms("label")])

    def epochs(self) -> int:
        return 5 if self.recipe is None else self.recipe.segmenter_epochs

    def datalist(self, datastore: Datastore) -> list[dict]:
        datalist = datastore.datalist()
        if not datalist:
            raise ValueError(f"no final label for {self.runtime.name}: save labels with tag 'final' first")
        return datalist

    def _sample(self, item: dict) -> dict:
        """...with its label map ``(1, *size)`` long, resampled nearest-neighbour onto the network's grid."""
        label = self.label_grid({"label": item["label"]})["label"]
        return {**super()._sample(item), "label": label.as_tensor().round().long()}


class ClassifierTrainer(_PairTrainer):
    """Cross-entropy on image labels (datastore info ``label``, or ``labels.csv``)."""

    field = "classifier"

    def __init__(self, runtime: ModelRuntime, studies: str):
        super().__init__(runtime, runtime.pair.classifier_input, f"{runtime.name}: train the classifier on image labels")
        self.labels_csv = Path(studies) / "labels.csv"

    def datalist(self, datastore: Datastore) -> list[dict]:
        """The labelled images, their label a class index ``()`` long."""
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
            datalist.append({"image": datastore.get_image_uri(image_id), "label": torch.tensor(index)})
        if not datalist:
            raise ValueError(f"no labelled image for {self.runtime.name}: set 'label' in image info or add labels.csv")
        return datalist


def trainers_for(runtime: ModelRuntime, studies: str) -> dict[str, TrainTask]:
    """``NAME_segmenter`` / ``NAME_classifier`` for the networks that have a state_dict."""
    trainers: dict[str, TrainTask] = {}
    if "network" in runtime.config["segmenter"]:
        trainers[f"{runtime.name}_segmenter"] = SegmenterTrainer(runtime)
    if "network" in runtime.config["classifier"]:
        trainers[f"{runtime.name}_classifier"] = ClassifierTrainer(runtime, studies)
    return trainers
