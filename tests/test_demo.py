"""Phantom studies, demo training, and a short end-to-end demo over a live server."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from conftest import venv_env
from PIL import Image as PILImage

from segx.config import load_model_pair
from segx.demo.phantoms import SPACING_3D, generate
from segx.training import train


def read_rows(folder):
    with open(folder / "labels.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_phantoms_are_deterministic_per_seed(tmp_path):
    for run in ("a", "b"):
        generate(tmp_path / run, 2, 4, seed=3, split="train", progress=False)
        generate(tmp_path / run, 3, 1, seed=3, split="test", progress=False)
    for name in ("train2d_3_0002.png", "test3d_3_0000.nii.gz"):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    generate(tmp_path / "c", 2, 4, seed=4, split="train", progress=False)
    assert (tmp_path / "a" / "images" / "train2d_3_0002.png").read_bytes() != (tmp_path / "c" / "images" / "train2d_4_0002.png").read_bytes()
    assert [r["split"] for r in read_rows(tmp_path / "a")] == ["train"] * 4 + ["test"]


def test_marker_is_a_shortcut_in_train_only(tmp_path):
    generate(tmp_path, 2, 200, seed=0, split="train", progress=False)
    generate(tmp_path, 2, 200, seed=0, split="test", progress=False)
    rows = read_rows(tmp_path)
    rate = {(s, c): np.mean([int(r["marker"]) for r in rows if r["split"] == s and r["label"] == c]) for s in ("train", "test") for c in ("nevus", "melanoma")}
    assert rate["train", "melanoma"] > 0.85 and rate["train", "nevus"] < 0.15
    assert 0.35 < rate["test", "melanoma"] < 0.65 and 0.35 < rate["test", "nevus"] < 0.65
    for row in rows[:20]:  # the marker never overlaps the clinical region (the lesion)
        image = np.asarray(PILImage.open(tmp_path / "images" / row["file"])).astype(int)
        lesion = np.asarray(PILImage.open(tmp_path / "masks" / row["file"])) > 127
        ruler = (np.abs(image - [40, 40, 46]).sum(-1) == 0)
        assert lesion.any() and not (ruler & lesion).any()
        assert ruler.any() == (row["marker"] == "1")


def test_3d_phantom_geometry_and_lesion_inside_the_liver(tmp_path):
    generate(tmp_path, 3, 2, seed=1, split="val", progress=False)
    for row in read_rows(tmp_path):
        image = nib.load(tmp_path / "images" / row["file"])
        labels = np.asarray(nib.load(tmp_path / "masks" / row["file"]).dataobj)
        assert np.allclose(image.header.get_zooms(), SPACING_3D)
        assert set(np.unique(labels)) == {0, 1, 2}
        centre = tuple(int(v) for v in row["lesion"].split())
        assert labels[centre] == 1, "the lesion lies in the liver"


def test_training_writes_a_loadable_calibrated_configuration(tmp_path):
    data = tmp_path / "data"
    generate(data, 2, 12, seed=0, split="train", progress=False)
    generate(data, 2, 8, seed=0, split="val", progress=False)
    log = train("demo2d", data, tmp_path / "models")
    config = yaml.safe_load((tmp_path / "models" / "demo2d.yaml").read_text())
    calibration = log["calibration"]
    assert config["certainty"]["n_validation"] == 8 and config["certainty"]["variant"] == calibration["variant"]
    assert calibration["auroc"][calibration["variant"]] == max(calibration["auroc"].values())
    assert config["certainty"]["combination"]["variant"] == calibration["combination"]["variant"]
    pair = load_model_pair(tmp_path / "models" / "demo2d.yaml")
    assert pair.class_names == ["nevus", "melanoma"]
    # 8 val studies earn no level (each needs at least 10): none is shown rather than a guess
    assert config["certainty"]["low"] is None and config["certainty"]["high"] is None and pair.levels is None
    card = (tmp_path / "models" / "demo2d_model_card.md").read_text()
    assert "## Certainty levels" in card and "(8 studies: melanoma" in card and 'readouts therefore say "not calibrated"' in card
    losses = log["classifier"]["losses"]
    assert len(losses) == 12 and losses[-1] < losses[0]
    scores = log["segmenter"]["val_scores"]
    assert all(0.0 <= s <= 1.0 for s in scores) and log["val_dice_network_grid"] == max(scores)


def test_short_demo_end_to_end(tmp_path):
    """``segx demo`` with 6 2D and 1 3D studies: the real server, the shipped models."""
    out = tmp_path / "demo_output"
    command = [sys.executable, "-m", "segx.cli", "demo", "--out", str(out), "--n2d", "6", "--n3d", "1"]
    finished = subprocess.run(command, env=venv_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    last = finished.stdout.strip().splitlines()[-1]
    assert last.startswith("DEMO ")
    summary = json.loads(last[len("DEMO ") :])
    assert summary["n_2d"] == 6 and summary["n_3d"] == 1
    assert summary["iou_segx"] > summary["iou_raw"]
    assert "report.md" in {p.name for p in out.iterdir()}
    rows = read_rows(out / "studies")
    for row in rows:
        folder = out / row["image_id"]
        assert (folder / "panel.png").stat().st_size > 0
        source = sitk.ReadImage(str(out / "studies" / "images" / row["file"]))
        for name, pixel in (("segx.nrrd", sitk.sitkFloat32), ("explanation.nrrd", sitk.sitkFloat32), ("segmentation.nrrd", sitk.sitkUInt8)):
            written = sitk.ReadImage(str(folder / name))
            assert written.GetPixelID() == pixel
            assert written.GetSize()[: source.GetDimension()] == source.GetSize()
            assert np.allclose(written.GetSpacing()[: source.GetDimension()], source.GetSpacing())
    assert (out / rows[-1]["image_id"] / "mip.png").exists(), "3D studies get a maximum-intensity projection"
    report = (out / "report.md").read_text()
    assert all(row["image_id"] in report for row in rows)


def test_demo_rejects_bad_phantom_arguments(tmp_path):
    with pytest.raises(ValueError, match="--dim"):
        generate(tmp_path, 4, 1, 0)
    with pytest.raises(ValueError, match="split"):
        generate(tmp_path, 2, 1, 0, split="holdout")


def test_the_kept_weights_are_those_of_the_epoch_the_log_names():
    """Equal validation scores: the log's best epoch is the first of them, and so are the
    weights kept (they were the last tied epoch's before)."""
    from dataclasses import replace

    import torch

    from segx.training import engine, samples

    schedule = engine.Schedule(batch_size=4, seed=1, selection="constant")
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1] * 4)

    def fresh():
        torch.manual_seed(0)
        return torch.nn.Linear(3, 2)

    def constant(outputs, targets):  # every epoch ties
        return 0.5

    published = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(engine.SELECTION, "constant", ("constant", constant))
        after_one = fresh()
        engine.fit(after_one, samples(x, y), samples(x, y), "classifier", schedule, 1, n_classes=2)
        after_three = fresh()
        log = engine.fit(after_three, samples(x, y), samples(x, y), "classifier", schedule, 3, n_classes=2,
                         on_best=lambda network, epoch: published.append(epoch))  # fmt: skip
    assert log["best_epoch"] == 0 and published == [1], "only an epoch that beats the earlier ones is published"
    assert len(log["losses"]) == len(log["val_scores"]) == 3
    torch.testing.assert_close(after_three.weight, after_one.weight)


def test_balanced_accuracy_selection_refuses_a_one_class_epoch_that_ranks_perfectly():
    """demo3d selects epochs by balanced accuracy: logits that rank every tumour above every
    cyst but call all of them tumour have macro AUROC 1 and balanced accuracy 0.5."""
    import torch

    from segx.training import RECIPES
    from segx.training.engine import SELECTION

    labels = torch.tensor([0, 0, 0, 1, 1])
    one_class = torch.tensor([[0.0, 0.1], [0.0, 0.2], [0.0, 0.3], [0.0, 0.8], [0.0, 0.9]])  # argmax 1 everywhere
    name, auroc = SELECTION["auroc"]
    assert auroc(one_class, labels) == 1.0
    name, balanced = SELECTION["balanced_accuracy"]
    assert name == "balanced accuracy" and balanced(one_class, labels) == 0.5
    two_right_of_three = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert balanced(two_right_of_three, labels) == pytest.approx((2 / 3 + 1) / 2)
    assert RECIPES["demo3d"].schedule.selection == "balanced_accuracy"
