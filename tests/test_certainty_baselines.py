"""Certainty baselines (MC dropout, TTA), the SegU + MSP combination, the paired AUROC
difference, and ``segx calibrate`` on phantoms with the shipped demo2d model."""

from __future__ import annotations

import csv
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from segx.evaluation import baselines
from segx.certainty import Combination, fit_combination
from segx.cli import main
from segx.config import BUILTIN_MODELS_DIR, load_model_pair
from segx.evaluation.evaluate import auroc_difference_ci
from segx.evaluation.metrics import certainty_auroc
from segx.demo.phantoms import generate


def _flip_invariant_classifier(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Dropout(dropout), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_tta_of_a_flip_invariant_classifier_is_its_msp():
    model, x = _flip_invariant_classifier(), torch.rand(1, 3, 20, 12)
    with torch.no_grad():
        expected = float(model(x).softmax(1).max())
    assert baselines.tta(model, x) == pytest.approx(expected, abs=1e-6)


def test_tta_averages_the_flipped_views():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 6, 3)).eval()
    x = torch.rand(1, 2, 4, 6)
    views = [x, x.flip(2), x.flip(3), x.flip([2, 3])]
    with torch.no_grad():
        expected = float(torch.stack([model(v).softmax(1)[0] for v in views]).mean(0).max())
    assert baselines.tta(model, x) == pytest.approx(expected, abs=1e-6)


def test_mc_dropout():
    x = torch.rand(1, 3, 16, 16)
    assert baselines.mc_dropout(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)).eval(), x) is None  # no dropout layer
    model = _flip_invariant_classifier(0.5)
    with torch.no_grad():
        plain = float(model(x).softmax(1).max())
    first, again = baselines.mc_dropout(model, x, samples=8, seed=3), baselines.mc_dropout(model, x, samples=8, seed=3)
    assert first == again and first != pytest.approx(plain, abs=1e-6)
    assert not any(m.training for m in model.modules()), "dropout is switched off again"


def test_entropy_and_msp():
    assert baselines.msp(np.array([0.2, 0.8])) == 0.8
    assert baselines.negative_entropy(np.array([1.0, 0.0])) == pytest.approx(0.0, abs=1e-9)
    assert baselines.negative_entropy(np.array([0.5, 0.5])) == pytest.approx(-np.log(2))


def test_combination_learns_the_informative_score():
    rng = np.random.default_rng(0)
    segu_values = rng.random(400)
    msp = 0.5 + 0.5 * rng.random(400)  # uninformative
    correct = rng.random(400) < segu_values
    combination = fit_combination(msp, segu_values, correct, "mass_inside")
    assert combination.weights[2] > 1.0 and abs(combination.weights[1]) < combination.weights[2] / 3
    combined = [combination(m, s) for m, s in zip(msp, segu_values)]
    assert all(0.0 < c < 1.0 for c in combined)
    assert certainty_auroc(combined, correct) > certainty_auroc(msp, correct) + 0.1
    config = {"certainty": {"combination": {"variant": "mass_inside", "weights": combination.weights}}}
    assert Combination.from_config(config) == combination and Combination.from_config({}) is None


def test_separable_data_give_finite_weights():
    combination = fit_combination([0.6, 0.7, 0.9, 0.95], [0.1, 0.2, 0.8, 0.9], [False, False, True, True], "topk_inside")
    assert np.isfinite(combination.weights).all()


def test_auroc_difference_ci():
    rng = np.random.default_rng(1)
    correct = rng.random(300) < 0.7
    noise = rng.random(300)
    assert auroc_difference_ci(noise, noise, correct) == (0.0, 0.0, 0.0)
    informative = correct + 0.5 * rng.random(300)
    difference, low, high = auroc_difference_ci(informative, noise, correct)
    assert low > 0 and low <= difference <= high


def test_calibrate_stores_variant_levels_and_combination(tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(BUILTIN_MODELS_DIR / "weights", models / "weights")
    shutil.copy(BUILTIN_MODELS_DIR / "demo2d.yaml", models / "demo2d.yaml")
    (models / "demo2d_model_card.md").write_text("# Model card\n\n## Certainty levels\n\nstale\n\n## Known limits\n\nkept\n")
    generate(tmp_path / "data", 2, 16, seed=4, split="val", progress=False)
    assert main(["calibrate", "--model", str(models / "demo2d.yaml"), "--data", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    summary = yaml.safe_load(printed[printed.index("{") :])
    section = yaml.safe_load((models / "demo2d.yaml").read_text())["certainty"]
    assert summary["n"] == 16 and section["n_validation"] == 16
    assert section["variant"] == summary["variant"] and summary["auroc"][summary["variant"]] == max(summary["auroc"].values())
    assert section["combination"]["variant"] == summary["combination"]["variant"] and section["combination"]["split"] == "val"
    pair = load_model_pair(models / "demo2d.yaml")
    config = pair.config
    assert pair.certainty_variant == summary["variant"]
    # 16 val studies cannot earn "high" at 90 %: even 16 of 16 correct has the bound 0.025 ** (1 / 16) = 0.79
    assert section["high"] is None and "high_not_earned" in summary["levels"]
    assert pair.levels is None if section["low"] is None else pair.levels.variant == summary["variant"]
    assert Combination.from_config(config).weights == summary["combination"]["weights"]
    # where the levels were calibrated: in the configuration and in the model card beside it
    with open(tmp_path / "data" / "labels.csv", newline="") as stream:
        counts = {"melanoma": 0, "nevus": 0} | dict(Counter(row["label"] for row in csv.DictReader(stream)))
    assert section["calibrated_on"] == {"data": "data", "split": "val", "n": 16, "accuracy": summary["accuracy"],
                                        "class_counts": dict(sorted(counts.items()))}  # fmt: skip
    card = (models / "demo2d_model_card.md").read_text()
    assert "stale" not in card and card.count("## Certainty levels") == 1 and card.endswith("## Known limits\n\nkept\n")
    assert f"`val` split of `data` (16 studies: melanoma {counts['melanoma']}, nevus {counts['nevus']}" in card
    assert "**high**: not shown" in card and "do not transfer to another site" in card
    assert main(["calibrate", "--model", str(models / "demo2d.yaml"), "--data", str(tmp_path / "data"), "--variant", "topk_inside"]) == 0
    printed = capsys.readouterr().out
    kept = yaml.safe_load(printed[printed.index("{") :])
    section = yaml.safe_load((models / "demo2d.yaml").read_text())["certainty"]
    assert kept["variant"] == section["variant"] == section["combination"]["variant"] == "topk_inside"
    assert main(["calibrate", "--model", str(models / "demo2d.yaml"), "--data", str(tmp_path / "data"), "--split", "nosuchsplit"]) == 2
    assert "no study with a known label" in capsys.readouterr().err


def test_mc_dropout_is_not_reported_when_dropout_drops_nothing():
    from segx.evaluation.baselines import mc_dropout

    silent = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(p=0.0), torch.nn.Linear(4, 2)).eval()
    active = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(p=0.5), torch.nn.Linear(4, 2)).eval()
    x = torch.ones(1, 1, 2, 2)
    assert mc_dropout(silent, x) is None
    assert 0.5 <= mc_dropout(active, x) <= 1.0 and not active[1].training  # dropout switched back off
