"""``segx evaluate`` on phantom studies (the shipped demo2d model) and on the layout of the
real data sets in ../shared/data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from segx import ModelPair
from segx.cli import main
from segx.evaluate import bootstrap_ci, find_studies
from segx.phantoms import generate

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def test_bootstrap_ci():
    assert bootstrap_ci([0.4] * 10) == (0.4, pytest.approx(0.4), pytest.approx(0.4))
    mean, low, high = bootstrap_ci(np.arange(100) / 100)
    assert mean == pytest.approx(0.495) and low < mean < high and high - low < 0.2


def test_evaluate_on_phantoms(tmp_path, capsys):
    data = tmp_path / "data"
    generate(data, 2, 12, seed=5, split="test", progress=False)
    with open(data / "labels.csv", "a", newline="") as stream:
        csv.writer(stream).writerow(["odd_one", "zebra", "test", 0, "test2d_5_0000.png", ""])
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--model", "demo2d", "--data", str(data), "--out", str(out), "--methods", "gradcam", "occlusion"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("EVAL ")
    summary = json.loads(printed[-1][5:])
    assert summary["n"] == 12 and summary["unknown_labels"] == {"zebra": 1}
    for key in ("auroc_macro", "dice", "iou_raw_gradcam", "iou_segx_gradcam", "iou_segx_occlusion", "segu_auroc", "msp_auroc"):
        assert key in summary
    assert 0.9 < summary["dice"] <= 1.0
    low, high = summary["iou_segx_gradcam_ci"]
    assert low <= summary["iou_segx_gradcam"] <= high
    with open(out / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 12 and {"segu_mass_inside", "msp", "iou_raw_occlusion"} <= set(rows[0])
    accuracy = np.mean([int(r["correct"]) for r in rows])
    assert summary["accuracy"] == pytest.approx(accuracy)
    for name in ("report.md", "iou.png", "risk_coverage.png"):
        assert (out / name).stat().st_size > 0


def test_selection_and_errors(tmp_path):
    pair = ModelPair(nn.Identity(), nn.Identity(), ["nevus", "melanoma"])
    generate(tmp_path, 2, 6, seed=1, split="train", progress=False)
    generate(tmp_path, 2, 4, seed=1, split="test", progress=False)
    studies, unknown = find_studies(pair, tmp_path, split="test")
    assert [s.image_id for s in studies] == [f"test2d_1_{i:04d}" for i in range(4)] and unknown == {}
    assert all(s.mask is not None and s.mask.exists() for s in studies)
    assert len(find_studies(pair, tmp_path, limit=3)[0]) == 3
    with pytest.raises(ValueError, match="no column 'dx'"):
        find_studies(pair, tmp_path, label_column="dx")
    with pytest.raises(ValueError, match="labels CSV not found"):
        find_studies(pair, tmp_path, labels_csv="metadata.csv")


@pytest.mark.skipif(not (SHARED_DATA / "ham10000").is_dir(), reason="../shared/data/ham10000 is not present on this machine")
def test_ham10000_folder_works_as_it_is():
    pair = ModelPair(nn.Identity(), nn.Identity(), HAM_CLASSES)
    studies, unknown = find_studies(pair, SHARED_DATA / "ham10000", labels_csv="metadata.csv", label_column="dx", split="test", limit=5)
    assert len(studies) == 5 and unknown == {}
    assert all(s.image.suffix == ".jpg" and s.mask is not None for s in studies)


@pytest.mark.skipif(not (SHARED_DATA / "jsrt").is_dir(), reason="../shared/data/jsrt is not present on this machine")
def test_jsrt_folder_works_with_a_mask_dir():
    pair = ModelPair(nn.Identity(), nn.Identity(), ["0", "1"])
    studies, _ = find_studies(pair, SHARED_DATA / "jsrt", labels_csv="metadata.csv", label_column="nodule", mask_dir="lungs", limit=3)
    assert len(studies) == 3 and all(s.mask is not None and s.mask.parent.name == "lungs" for s in studies)
