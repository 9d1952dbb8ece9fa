"""Faults of a live server during training: the server killed with ``kill -9`` while it
trains takes its trainer with it, the weight file stays a whole, loadable file, and a
restarted server trains again (the dead trainer's lock does not block it)."""

import os
import shutil
import signal
import time

import numpy as np
import psutil
import pytest
import requests
import torch
from conftest import write_models
from PIL import Image as PILImage
from segx.demo import running_server
from segx.demo.phantoms import generate


@pytest.fixture
def trainable(tmp_path):
    """Models (copies of the demo ones) and 2D phantom studies with final labels."""
    models = write_models(tmp_path / "models")
    generated = generate(tmp_path / "generated", 2, 6, seed=3, progress=False)
    studies = tmp_path / "studies"
    studies.mkdir()
    for image in sorted((generated / "images").glob("*.png")):
        shutil.copy(image, studies)
    return models, studies, generated


def server_process(launcher: psutil.Process) -> psutil.Process:
    """The Python process that serves (``monailabel.main``), the launcher itself or its child."""
    for process in [launcher, *launcher.children(recursive=True)]:
        if "monailabel.main" in " ".join(process.cmdline()):
            return process
    raise AssertionError("no monailabel.main process")


def running(process: psutil.Process) -> bool:
    """Still running code: a dead process waiting to be reaped (a zombie, whose new parent
    may reap it late) does not count."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_training(url: str) -> None:
    response = requests.post(f"{url}/train/slicer2d_segmenter", json={"max_epochs": 200, "val_split": 0.0, "train_batch_size": 2}, timeout=30)
    assert response.status_code == 200, response.text


def test_kill_9_during_training_leaves_no_orphan_and_whole_weights(trainable, tmp_path):
    models, studies, generated = trainable
    weights = models / "weights" / "demo2d_segmenter.pt"
    with running_server(studies, "slicer2d", tmp_path / "server1.log", models_dir=models) as server:
        for image in sorted(studies.glob("*.png")):
            mask = np.asarray(PILImage.open(generated / "masks" / image.name)) > 0
            label = tmp_path / f"{image.stem}_label.png"
            PILImage.fromarray(mask.astype(np.uint8)).save(label)
            saved = requests.put(f"{server.url}/datastore/label", params={"image": image.stem, "tag": "final"},
                                 files={"label": (label.name, label.read_bytes())}, timeout=30)  # fmt: skip
            assert saved.status_code == 200, saved.text
        start_training(server.url)
        serving = server_process(psutil.Process(server.process.pid))
        deadline = time.time() + 60
        while not [c for c in serving.children(recursive=True) if "train" in " ".join(c.cmdline())]:
            assert time.time() < deadline, "no trainer process started"
            time.sleep(0.2)
        trainer = next(c for c in serving.children(recursive=True) if "train" in " ".join(c.cmdline()))
        time.sleep(8)  # a few epochs: weights are being published
        os.kill(serving.pid, signal.SIGKILL)
        deadline = time.time() + 30  # the trainer dies at once (PDEATHSIG); a loaded 2-core machine has taken > 10 s to reap it
        while running(trainer):
            assert time.time() < deadline, f"the trainer {trainer.pid} outlived the killed server"
            time.sleep(0.2)
    state = torch.load(weights, map_location="cpu", weights_only=True)  # a whole file, old or new
    assert state
    lock = models / "training" / "slicer2d_segmenter.lock"
    with running_server(studies, "slicer2d", tmp_path / "server2.log", models_dir=models) as server:
        start_training(server.url)  # the dead trainer's lock (if left) does not block it
        deadline = time.time() + 60
        while not (lock.exists() and lock.read_text().strip() != str(trainer.pid)):
            assert time.time() < deadline, "the new training did not take the lock"
            time.sleep(0.2)
        assert requests.delete(f"{server.url}/train/", timeout=30).status_code == 200
