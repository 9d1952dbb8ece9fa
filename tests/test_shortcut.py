"""``segx shortcut``: the patch is drawn where the design says (outside the lesion, only on
the shortcut class in train/val, on any class in test, nothing else changed), the report's
figures match hand computations, and the command runs end to end on phantoms."""

from __future__ import annotations

import csv
import json
import zlib

import numpy as np
import pytest
from PIL import Image as PILImage
from scipy import ndimage

from segx.cli import main
from segx.evaluation.datasets import Layout
from segx.demo.phantoms import generate
from segx.evaluation.metrics import certainty_auroc
from segx.training.shortcut import PATCH_RADIUS, build_dataset, crossfit_combination, patch_region, report


def test_patch_is_a_disc_clear_of_the_lesion_and_inside_the_picture():
    rng = np.random.default_rng(0)
    for trial in range(30):
        lesion = np.zeros((150, 200), dtype=bool)
        top, left = rng.integers(10, 90), rng.integers(10, 130)
        lesion[top : top + rng.integers(10, 50), left : left + rng.integers(10, 60)] = True
        disc = patch_region(lesion, rng)
        assert disc is not None
        radius = round(PATCH_RADIUS * 150)
        offsets = np.arange(-radius, radius + 1)
        lattice_disc = int(((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).sum())
        assert disc.sum() == lattice_disc  # a whole disc of that radius: not cut by the picture's border
        assert not (disc & ndimage.binary_dilation(lesion, iterations=radius)).any()  # a radius of skin between
    assert patch_region(np.ones((150, 200), dtype=bool), rng) is None  # no room: no patch


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    """Phantom pictures of the three splits in one dataset folder (images/, masks/, labels.csv)."""
    root = tmp_path_factory.mktemp("shortcut")
    source = root / "source"
    rows = []
    for split in ("train", "val", "test"):
        generate(root / split, 2, 24, seed=5, split=split, progress=False)
        for folder in ("images", "masks"):
            (source / folder).mkdir(parents=True, exist_ok=True)
            for file in (root / split / folder).iterdir():
                file.rename(source / folder / file.name)
        with open(root / split / "labels.csv", newline="") as stream:
            rows += list(csv.DictReader(stream))
    with open(source / "labels.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_patched_copy_follows_the_design_and_changes_nothing_else(phantom_data):
    out = phantom_data / "patched"
    counts = build_dataset(phantom_data / "source", out, ["nevus", "melanoma"], Layout(), "nevus", train_rate=1.0, test_rate=0.5, seed=1)
    with open(out / "labels.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 72
    for row in rows:
        patched = row["artefact"] == "1"
        assert patched == (out / "patches" / f"{row['image_id']}.png").exists()
        if row["split"] in ("train", "val"):
            assert patched == (row["label"] == "nevus")  # train_rate 1: every nevus, nothing else
        source = np.array(PILImage.open(next((phantom_data / "source" / "images").glob(f"{row['image_id']}.*"))).convert("RGB"))
        written = np.array(PILImage.open(out / "images" / f"{row['image_id']}.png"))
        changed = (source != written).any(-1)
        if patched:
            disc = np.array(PILImage.open(out / "patches" / f"{row['image_id']}.png")) > 0
            assert changed.any() and not (changed & ~disc).any()  # only the disc is painted
            lesion = np.array(PILImage.open(out / "masks" / next((out / "masks").glob(f"{row['image_id']}.*")).name)) > 0
            assert not (disc & lesion).any()
        else:
            assert not changed.any()  # PNG is lossless: an unpatched picture is its source
    test = [r for r in rows if r["split"] == "test"]
    assert {r["label"] for r in test if r["artefact"] == "1"} == {"nevus", "melanoma"}  # independent of the class in test
    assert counts["test"]["patched"] == sum(r["artefact"] == "1" for r in test)
    assert counts["train"]["patched"] == counts["train"]["patched_shortcut_class"] > 0


def test_report_figures_by_hand():
    # label, predicted, patched, msp, segu: r3 is the one shortcut-driven error (a patched
    # mel predicted nv); r4 is wrong towards nv without a patch, r5 wrong away from nv.
    table = [("mel", "mel", 0, 0.90, 0.8), ("nv", "nv", 1, 0.80, 0.7), ("mel", "nv", 1, 0.85, 0.1),
             ("mel", "nv", 0, 0.60, 0.9), ("nv", "mel", 1, 0.70, 0.2), ("mel", "mel", 1, 0.95, 0.6)]  # fmt: skip
    rows = [{"image_id": f"r{i + 1}", "label": label, "predicted": predicted, "correct": int(label == predicted), "msp": msp,
             "negative_entropy": msp, "segu_mass_inside": segu, "mc_dropout": None, "tta": msp}
            for i, (label, predicted, _, msp, segu) in enumerate(table)]  # fmt: skip
    artefacts = {f"r{i + 1}": bool(row[2]) for i, row in enumerate(table)}
    # the val fit weighs SegU only: sigmoid(0 + 0 * logit(msp) + 1 * segu) ranks as SegU does
    calibration = {"variant": "mass_inside", "combination": {"variant": "mass_inside"}, "combinations": {"mass_inside": [0.0, 0.0, 1.0]}}
    summary = report(rows, artefacts, "nv", calibration)
    assert summary["n_wrong"] == 3 and summary["n_shortcut_errors"] == 1
    assert summary["accuracy"] == {"all": 0.5, "patched": 0.5, "unpatched": 0.5}
    assert summary["other_classes_predicted_nv"] == {"patched": 0.5, "unpatched": 0.5}  # r3 of {r3, r6}; r4 of {r1, r4}
    scores = summary["scores"]
    assert "mc_dropout" not in scores and summary["not_computed"] == ["mc_dropout"]  # no value: no row, and said so
    # MSP: correct {.9, .8, .95} above wrong {.85, .6, .7} in 8 of 9 pairs; against r3 alone 2 of 3
    assert scores["msp"]["auroc"] == pytest.approx(8 / 9) and scores["msp"]["shortcut_auroc"] == pytest.approx(2 / 3)
    # SegU: correct {.8, .7, .6} above wrong {.1, .9, .2} in 6 of 9 pairs; above r3's .1 in all 3
    segu = scores["segu_mass_inside"]
    assert segu["auroc"] == pytest.approx(6 / 9) and segu["shortcut_auroc"] == pytest.approx(1.0)
    assert segu["shortcut_auroc_minus_msp"][0] == pytest.approx(1 / 3)
    assert segu["auroc_minus_msp"][0] == pytest.approx(6 / 9 - 8 / 9)
    # the val-fitted combination is scored with the val weights, not refitted: it ranks as SegU does
    assert scores["segu_mass_inside_msp_val"]["auroc"] == pytest.approx(6 / 9)
    # the same variant cross-fitted on these rows, and the difference between the two fits
    assert "segu_mass_inside_msp_crossfit" in scores and set(summary["crossfit_weights"]) == {"mass_inside"}
    difference = summary["fitting_data"]["mass_inside"]["auroc_crossfit_minus_val"][0]
    assert difference == pytest.approx(scores["segu_mass_inside_msp_crossfit"]["auroc"] - 6 / 9)


def test_crossfit_combination_scores_each_row_by_the_other_fold():
    rng = np.random.default_rng(3)
    segu = rng.random(60)
    rows = [{"image_id": f"ISIC_{i:07d}", "msp": float(m), "segu_topk_inside": float(s), "correct": int(s > 0.5)}
            for i, (m, s) in enumerate(zip(rng.uniform(0.4, 1.0, 60), segu))]  # fmt: skip
    scores, weights = crossfit_combination(rows, "topk_inside")
    assert len(weights) == 2 and scores.shape == (60,)
    # SegU alone decides correctness here and MSP is noise: fitted on either fold, the
    # combination ranks the other fold's rows as SegU does
    assert certainty_auroc(scores, [r["correct"] for r in rows]) > 0.95
    # no row's score depends on its own correctness; the other fold's scores do
    flipped = [dict(r) for r in rows]
    flipped[0]["correct"] = 1 - flipped[0]["correct"]
    again, _ = crossfit_combination(flipped, "topk_inside")
    own_fold = np.array([zlib.crc32(r["image_id"].encode()) % 2 for r in rows]) == zlib.crc32(b"ISIC_0000000") % 2
    assert np.array_equal(again[own_fold], scores[own_fold]) and not np.allclose(again[~own_fold], scores[~own_fold])
    # one fold only (every id hashes alike): nothing to fit on for the other fold
    same_fold = [r for r in rows if zlib.crc32(r["image_id"].encode()) % 2 == 0]
    assert crossfit_combination(same_fold, "topk_inside") == (None, [])


def test_shortcut_command_end_to_end_on_phantoms(phantom_data, capsys):
    out = phantom_data / "run"
    code = main(["shortcut", "--model", "demo2d", "--data", str(phantom_data / "source"), "--recipe", "demo2d", "--shortcut-class", "nevus",
                 "--epochs", "1", "--mc-samples", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("SHORTCUT "))
    assert summary["n"] == 24 and summary["counts"]["test"]["n"] == 24
    variants = {"mass_inside", "mass_enrichment", "topk_inside", "distance_decay", "region_margin"}
    # every SegU variant alone, fitted with MSP on val and cross-fitted on test: like with like
    assert set(summary["scores"]) == {"msp", "negative_entropy", "tta"} | {f"segu_{v}{fit}" for v in variants for fit in ("", "_msp_val", "_msp_crossfit")}
    assert next(k for k in summary["scores"] if k.startswith("segu_")) == f"segu_{summary['segu_variant']}"  # the calibrated variant first
    assert set(summary["fitting_data"]) == set(summary["val_weights"]) == variants
    assert all(len(weights) == 2 for weights in summary["crossfit_weights"].values())
    # the shipped combination is the val fit of its variant: the evaluation's own segu_msp column
    rows = [json.loads(line) for line in (out / "evaluation" / "rows.jsonl").read_text().splitlines()[1:]]
    shipped = summary["scores"][f"segu_{summary['shipped_combination_variant']}_msp_val"]
    assert shipped["auroc"] == pytest.approx(certainty_auroc([r["segu_msp"] for r in rows], [r["correct"] for r in rows]))
    assert summary["not_computed"] == ["mc_dropout"]  # the demo classifier has no dropout layer: said, not hidden
    assert 0 <= summary["patch_mass"]["raw"] <= 1 and 0 <= summary["patch_mass"]["segx"] <= 1
    assert (out / "weights" / "shortcut_classifier.pt").exists() and "certainty" in (out / "shortcut_model.yaml").read_text()
    table = (out / "shortcut.md").read_text()
    assert all(f"| {score} |" in table for score in summary["scores"])
    assert f"the model ships `segu_{summary['shipped_combination_variant']}_msp_val`" in table
    # a second run reuses the patched pictures (same settings)
    main(["shortcut", "--model", "demo2d", "--data", str(phantom_data / "source"), "--recipe", "demo2d", "--shortcut-class", "nevus",
          "--epochs", "1", "--mc-samples", "0", "--out", str(out)])  # fmt: skip
    assert "reusing the patched pictures" in capsys.readouterr().out
