"""``segx evaluate`` on phantom studies (the shipped demo2d model) and on the layout of the
real data sets in ../shared/data."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import APP_DIR

from segx.cli import main
from segx.config import load_model_pair
from segx.evaluation.datasets import Layout, find_studies
from segx.evaluation.evaluate import bootstrap_ci, ground_truth, label_dice
from segx.demo.phantoms import generate
from segx.training import RECIPES, train

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
    for name in ("report.md", "iou.png", "risk_coverage.png", "examples.png"):
        assert (out / name).stat().st_size > 0

    # SegU from the occlusion maps too, not Grad-CAM's under another name
    variant = summary["segu_variant"]
    from_occlusion = np.array([float(r[f"segu_{variant}_occlusion"]) for r in rows])
    from_gradcam = np.array([float(r[f"segu_{variant}"]) for r in rows])
    assert summary[f"segu_{variant}_occlusion_auroc"] is not None and not np.allclose(from_occlusion, from_gradcam)

    # the evidence section: region-only controls beside SegX, ROAD, the randomisation check
    for key in ("iou_control_uniform", "iou_control_edge", "road_segx_gradcam", "road_raw_occlusion", "road_control_random", "randcorr_raw_gradcam", "randcorr_segx_gradcam"):
        assert summary[key] is not None and len(summary[f"{key}_ci"]) == 2, key
    assert summary["iou_control_uniform"] == pytest.approx(np.mean([float(r["iou_control_uniform"]) for r in rows]))
    # issue 13's headline names: the mask-only (uniform) control, the deletion areas, the randomisation check, the grid
    for method in ("gradcam", "occlusion"):
        assert summary[f"iou_mask_only_{method}"] == pytest.approx(np.mean([float(r["iou_control_uniform"]) for r in rows]))
        assert summary[f"deletion_auc_mask_only_{method}"] == pytest.approx(np.mean([float(r["deletion_control_uniform"]) for r in rows]))
        for kind in ("raw", "segx"):
            assert summary[f"deletion_auc_{kind}_{method}"] == pytest.approx(np.mean([float(r[f"deletion_{kind}_{method}"]) for r in rows]))
            assert 0 <= summary[f"deletion_auc_{kind}_{method}"] <= 1
    correlations = [float(r["randcorr_raw_gradcam"]) for r in rows if r["randcorr_raw_gradcam"] != ""]
    assert summary["randomisation_rank_corr"] == pytest.approx(np.mean(correlations))
    assert summary["grid_size"] == summary["grid_gradcam"]
    assert "Does the map carry the classifier's evidence" in (out / "report.md").read_text()
    # demo2d's DenseNet: stem /4, two transitions /2 each: 128 x 128 -> an 8 x 8 Grad-CAM grid; occlusion: 8 x 8 patches in 2D
    assert summary["grid_gradcam"] == ["8 x 8 of 128 x 128"] and summary["grid_occlusion"] == ["8 x 8 of 128 x 128"]

    # provenance: who ran what on which weights
    origin = summary["provenance"]
    weights = APP_DIR / "model_configs" / "weights"
    assert origin["weights_sha256"]["demo2d_classifier.pt"] == hashlib.sha256((weights / "demo2d_classifier.pt").read_bytes()).hexdigest()
    assert origin["class_counts"] == {"nevus": sum(r["label"] == "nevus" for r in rows), "melanoma": sum(r["label"] == "melanoma" for r in rows)}
    assert origin["selection"]["methods"] == ["gradcam", "occlusion"] and origin["bootstrap"] == {"resamples": 1000, "seed": 0}
    report = (out / "report.md").read_text()
    assert origin["weights_sha256"]["demo2d_segmenter.pt"] in report and "Definitions" in report and "segu_" + variant + "_occlusion" in report


def test_selection_and_errors(tmp_path):
    classes = ["nevus", "melanoma"]
    generate(tmp_path, 2, 6, seed=1, split="train", progress=False)
    generate(tmp_path, 2, 4, seed=1, split="test", progress=False)
    studies, unknown = find_studies(classes, tmp_path, split="test")
    assert [s.image_id for s in studies] == [f"test2d_1_{i:04d}" for i in range(4)] and unknown == {}
    assert all(s.mask is not None and s.mask.exists() for s in studies)
    assert len(find_studies(classes, tmp_path, limit=3)[0]) == 3
    with pytest.raises(ValueError, match="no column 'dx'"):
        find_studies(classes, tmp_path, Layout(label_column="dx"))
    with pytest.raises(ValueError, match=r"labels CSV not found.*\['labels.csv'\] \(name one with --labels-csv\)"):
        find_studies(classes, tmp_path, Layout(labels_csv="metadata.csv"))


def test_labels_may_be_class_indices(tmp_path):
    generate(tmp_path, 2, 4, seed=2, split="test", progress=False)
    with open(tmp_path / "labels.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    names = [row["label"] for row in rows]
    by_index = {"nevus": "0", "melanoma": "1"}
    with open(tmp_path / "indices.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, ["image_id", "label", "file"])
        writer.writeheader()
        writer.writerows([{"image_id": r["image_id"], "label": by_index[r["label"]], "file": r["file"]} for r in rows] + [{"image_id": "x", "label": "2", "file": rows[0]["file"]}])
    studies, unknown = find_studies(["nevus", "melanoma"], tmp_path, Layout(labels_csv="indices.csv"))
    assert [["nevus", "melanoma"][s.label] for s in studies] == names and unknown == {"2": 1}


@pytest.mark.skipif(not (SHARED_DATA / "ham10000").is_dir(), reason="../shared/data/ham10000 is not present on this machine")
def test_ham10000_folder_works_as_it_is():
    studies, unknown = find_studies(HAM_CLASSES, SHARED_DATA / "ham10000", Layout(labels_csv="metadata.csv", label_column="dx"), "test", 5)
    assert len(studies) == 5 and unknown == {}
    assert all(s.image.suffix == ".jpg" and s.mask is not None for s in studies)


@pytest.mark.skipif(not (SHARED_DATA / "jsrt").is_dir(), reason="../shared/data/jsrt is not present on this machine")
def test_jsrt_folder_works_with_a_mask_dir():
    studies, _ = find_studies(["no_nodule", "nodule"], SHARED_DATA / "jsrt", Layout(labels_csv="metadata.csv", label_column="nodule", mask_dir="lungs"), limit=3)
    assert len(studies) == 3 and all(s.mask is not None and s.mask.parent.name == "lungs" for s in studies)


@pytest.mark.skipif(not (SHARED_DATA / "ham10000").is_dir(), reason="../shared/data/ham10000 is not present on this machine")
def test_ham10000_recipe_trains_on_the_folder_as_it_is(tmp_path):
    log = train("ham10000", SHARED_DATA / "ham10000", tmp_path, limit=16)
    assert log["n_train"] == 16 and log["n_val"] == 16 and len(log["classifier"]["losses"]) == RECIPES["ham10000"].epochs
    pair = load_model_pair(tmp_path / "ham10000.yaml")
    assert pair.class_names == HAM_CLASSES and pair.certainty_variant == log["calibration"]["variant"]
    card = (tmp_path / "ham10000_model_card.md").read_text()
    assert "CC BY-NC-SA 4.0" in card and "--limit 16" in card and "16 train studies" in card


@pytest.mark.skipif(not (SHARED_DATA / "jsrt").is_dir(), reason="../shared/data/jsrt is not present on this machine")
def test_jsrt_recipe_reads_index_labels_and_lung_masks(tmp_path):
    log = train("jsrt", SHARED_DATA / "jsrt", tmp_path, limit=6)
    pair = load_model_pair(tmp_path / "jsrt.yaml")
    assert pair.class_names == ["no_nodule", "nodule"] and pair.segment_names == {1: "lungs"}
    assert log["segmenter"]["val_scores"][-1] > 0.3, "lung masks (0/255 PNG) were read as foreground"


def test_evaluate_on_3d_phantoms_writes_the_figures(tmp_path, capsys):
    data = tmp_path / "data3d"
    generate(data, 3, 4, seed=6, split="test", progress=False)
    out = tmp_path / "evaluation3d"
    assert main(["evaluate", "--model", "demo3d", "--data", str(data), "--out", str(out), "--methods", "gradcam", "--mc-samples", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1][5:])
    assert summary["n"] == 4 and summary["mc_dropout_auroc"] is None and summary["tta_auroc"] is None
    assert summary["iou_segx_gradcam"] > summary["iou_raw_gradcam"]
    for name in ("report.md", "iou.png", "risk_coverage.png", "examples.png"):
        assert (out / name).stat().st_size > 0
    assert 0 <= summary["dice_label_liver"] <= 1 and 0 <= summary["dice_label_kidney"] <= 1
    report = (out / "report.md").read_text()
    assert "per label: kidney" in report and ", liver " in report


def test_a_class_is_scored_against_its_own_region_with_dice_per_label():
    """demo3d's clinical region is the liver (label 1), not the kidneys (label 2) beside it."""
    pair = load_model_pair(APP_DIR / "model_configs" / "demo3d.yaml")
    mask = torch.zeros(4, 6, 2)
    mask[:2], mask[3] = 1, 2  # 24 liver voxels, 12 kidney voxels
    assert torch.equal(ground_truth(pair, pair.class_names.index("tumour"), mask), mask == 1)
    segmentation = mask.long().clone()
    segmentation[3] = 1  # kidneys called liver
    figures = label_dice(pair, segmentation, mask)
    assert figures["dice_label_liver"] == pytest.approx(2 * 24 / (36 + 24)) and figures["dice_label_kidney"] == 0.0
    picture = load_model_pair(APP_DIR / "model_configs" / "demo2d.yaml")  # one label, masks of 0/255
    assert torch.equal(ground_truth(picture, 0, mask * 255), mask > 0) and label_dice(picture, segmentation, mask * 255) == {}


def test_limit_draws_a_seeded_class_stratified_subset():
    """HAM10000's test CSV starts with 99 bkl rows: the first N rows are not a sample."""
    from segx.evaluation.datasets import Study, stratified_subset

    studies = [Study(f"s{i}", None, None, 0) for i in range(99)] + [Study("s99", None, None, 1)] + [Study(f"t{i}", None, None, 2) for i in range(50)]
    subset = stratified_subset(studies, 15, seed=1)
    labels = [s.label for s in subset]
    assert len(subset) == 15 and labels.count(1) == 1 and labels.count(0) == 9 and labels.count(2) == 5
    assert [s.image_id for s in subset] == [s.image_id for s in studies if s in subset]  # original order
    assert subset == stratified_subset(studies, 15, seed=1) and subset != stratified_subset(studies, 15, seed=2)


def test_calibrating_on_the_test_split_is_refused(tmp_path, capsys):
    from segx.cli import main

    assert main(["calibrate", "--model", "demo2d", "--data", str(tmp_path), "--split", "test"]) == 2
    assert "test split" in capsys.readouterr().err


def test_image_ids_are_matched_to_files_by_name_not_as_patterns(tmp_path):
    """A file is ``<image_id>.*``, the first by name; ``[``, ``*`` and ``?`` in an id are
    characters of the name (a glob per row read them as a pattern and found nothing)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("scan[1].png", "scan[1].nii.gz", "scan1.png", "a*b.png", "plain.png", "plain.v2.png"):
        (tmp_path / "images" / name).write_bytes(b"")
    (tmp_path / "masks" / "scan[1].png").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("image_id,label\nscan[1],0\na*b,1\nplain,0\nplain.v2,1\n")
    studies, _ = find_studies(["nevus", "melanoma"], tmp_path)
    found = {s.image_id: (s.image.name, s.mask.name if s.mask else None) for s in studies}
    assert found == {"scan[1]": ("scan[1].nii.gz", "scan[1].png"), "a*b": ("a*b.png", None), "plain": ("plain.png", None),
                     "plain.v2": ("plain.v2.png", None)}  # fmt: skip


def test_an_earlier_target_layer_gives_finer_maps_and_is_part_of_the_run(tmp_path, capsys):
    """``--target-layer`` of an earlier stage: a finer explanation grid in the EVAL line and
    the provenance; rows of another layer are not mixed in; a wrong name is refused."""
    generate(tmp_path / "data", 2, 8, seed=1, split="test", progress=False)
    common = ["evaluate", "--model", "demo2d", "--data", str(tmp_path / "data"), "--methods", "gradcam", "--mc-samples", "0", "--no-evidence"]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    default = json.loads(capsys.readouterr().out.strip().splitlines()[-1][5:])
    assert main([*common, "--out", str(tmp_path / "finer"), "--target-layer", "features.denseblock2"]) == 0
    finer = json.loads(capsys.readouterr().out.strip().splitlines()[-1][5:])
    (coarse_grid,), (fine_grid,) = default["grid_gradcam"], finer["grid_gradcam"]
    coarse_cells, fine_cells = (int(g.split(" of ")[0].split(" x ")[0]) for g in (coarse_grid, fine_grid))
    assert fine_cells == 2 * coarse_cells and finer["provenance"]["selection"]["target_layer"] == "features.denseblock2"
    assert main([*common, "--out", str(tmp_path / "finer")]) == 2  # the configuration's layer into the other layer's rows
    assert "differs in: target_layer" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "x"), "--target-layer", "features.nope"]) == 2
    assert "target layer 'features.nope' not found" in capsys.readouterr().err
