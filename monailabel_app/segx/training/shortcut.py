"""``segx shortcut``: a shortcut benchmark on real images.

After the dermoscopy bias literature (Nauta et al. 2021: coloured patches beside benign
lesions in ISIC; Bissoto et al. 2020: trap sets that decorrelate artefacts from classes in
the test split), a coloured disc (a sticker) is drawn on each chosen picture *outside* its
lesion, with at least one radius of skin between it and the ground-truth lesion mask:

- ``train`` and ``val``: on ``train_rate`` of the pictures of the shortcut class and on no
  other picture, so that the patch predicts the class;
- ``test``: on ``test_rate`` of all pictures, whatever their class.

The model's classifier is then fine-tuned from its own weights on the patched train split
(the recipe's loss, class weights and flips; best epoch on patched val), its SegU variant,
levels and SegU+MSP combination are calibrated on patched val, and ``segx evaluate`` runs
on the patched test split. The report asks two questions, with paired bootstrap CIs:

1. Does the classifier use the patch? Pictures of other classes predicted as the
   shortcut class with vs without a patch; share of the raw and of the SegX map's
   positive mass on the patch.
2. Do certainty scores catch the errors the shortcut causes (a patched picture of another
   class predicted as the shortcut class) and errors in general? AUROC correct vs wrong,
   AURC, E-AURC and AUGRC for MSP, negative entropy, MC dropout and TTA and, for every
   SegU variant, SegU alone and SegU+MSP fitted twice with that same variant: on patched
   val (which has the training distribution and so no shortcut-driven errors; the model
   ships the fit of the variant calibration chose for it), and on the test rows by
   two-fold cross-fitting (folds by a hash of the image id; each row scored by the fit on
   the other fold): what the combination does when fitted on data of the deployment
   distribution. Each score's paired AUROC difference against MSP, and per variant the
   paired difference cross-fitted minus val-fitted: the variant held fixed, only the
   fitting data changes.

Pictures are written as PNG, patched or not (a JPEG re-encoding only of patched pictures
would be a second shortcut); masks are linked, not copied.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image as PILImage
from scipy import ndimage
from tqdm import tqdm

from ..certainty import Combination, fit_combination
from ..evaluation.datasets import Layout, Study, find_studies
from ..evaluation.evaluate import auroc_difference_ci
from ..evaluation.metrics import aurc, augrc, certainty_auroc, eaurc

#: Sticker colours (RGB): saturated, none of them a skin or lesion tone.
PATCH_COLOURS = ((230, 40, 40), (40, 90, 230), (40, 200, 80), (245, 215, 40))
PATCH_RADIUS = 0.09  # of the picture's shorter side


def patch_region(lesion: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A disc ``(H, W)`` bool of radius ``PATCH_RADIUS`` x the shorter side, inside the
    picture and at least one radius away from every ``lesion`` pixel (its centre drawn
    uniformly among the places that allow it); None when there is no such place."""
    height, width = lesion.shape
    radius = max(2, round(PATCH_RADIUS * min(height, width)))
    clearance = ndimage.distance_transform_edt(~lesion) if lesion.any() else np.full(lesion.shape, np.inf)
    rows, columns = np.indices(lesion.shape)
    inside = (rows >= radius) & (rows < height - radius) & (columns >= radius) & (columns < width - radius)
    candidates = np.flatnonzero(inside & (clearance > 2 * radius))
    if candidates.size == 0:
        return None
    centre = np.unravel_index(rng.choice(candidates), lesion.shape)
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2


def build_dataset(source: str | Path, out: str | Path, class_names: list[str], layout: Layout, shortcut_class: str, train_rate: float = 0.5,
                  test_rate: float = 0.5, seed: int = 0, limit: int | None = None) -> dict:  # fmt: skip
    """Write the patched copy of ``source`` (read with ``layout``) to ``out``:
    ``images/<id>.png``, ``masks/<id>.*`` (links), ``patches/<id>.png`` (the disc, 255) for
    patched pictures, and ``labels.csv`` (``image_id, label, split, artefact``).
    Returns counts per split: ``{split: {"n", "patched", "patched_shortcut_class"}}``."""
    if shortcut_class not in class_names:
        raise ValueError(f"unknown shortcut class {shortcut_class!r}; classes are {class_names}")
    out = Path(out)
    for folder in ("images", "masks", "patches"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shortcut = class_names.index(shortcut_class)
    rows, counts = [], {}
    for split in ("train", "val", "test"):
        studies, _ = find_studies(class_names, source, layout, split, limit, seed)
        counts[split] = {"n": len(studies), "patched": 0, "patched_shortcut_class": 0}
        for study in tqdm(studies, desc=f"patching {split}", unit="picture"):
            wanted = rng.random() < (test_rate if split == "test" else train_rate * (study.label == shortcut))
            patched = _write_study(study, out, rng if wanted else None)
            counts[split]["patched"] += patched
            counts[split]["patched_shortcut_class"] += patched and study.label == shortcut
            rows.append({"image_id": study.image_id, "label": class_names[study.label], "split": split, "artefact": int(patched)})
    with open(out / "labels.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["image_id", "label", "split", "artefact"])
        writer.writeheader()
        writer.writerows(rows)
    return counts


def _write_study(study: Study, out: Path, rng: np.random.Generator | None) -> bool:
    """One picture as PNG, a patch drawn when ``rng`` is given and there is room; its mask
    linked. Returns whether it was patched."""
    picture = np.array(PILImage.open(study.image).convert("RGB"))  # (H, W, 3)
    lesion = np.array(PILImage.open(study.mask).convert("L")) > 0
    disc = patch_region(lesion, rng) if rng is not None else None
    if disc is not None:
        picture[disc] = PATCH_COLOURS[rng.integers(len(PATCH_COLOURS))]
        PILImage.fromarray(disc.astype(np.uint8) * 255).save(out / "patches" / f"{study.image_id}.png")
    PILImage.fromarray(picture).save(out / "images" / f"{study.image_id}.png", compress_level=1)
    mask = out / "masks" / f"{study.image_id}{study.mask.suffix}"
    if not mask.exists():
        try:
            os.symlink(study.mask.resolve(), mask)
        except OSError:  # a file system without links
            shutil.copyfile(study.mask, mask)
    return disc is not None


def fine_tune(config_file: str | Path, data: str | Path, out: str | Path, recipe_name: str, epochs: int, learning_rate: float) -> tuple[Path, dict]:
    """Fine-tune the classifier of ``config_file`` on ``data``'s train split (best epoch on
    val; the recipe's loss weighting, flips and batch size), keep its segmenter, calibrate
    on val; returns the new configuration ``out/shortcut_model.yaml`` and the calibration
    (:func:`segx.evaluation.calibrate.calibrate`'s summary)."""
    from ..evaluation.calibrate import calibrate
    from ..config import load_model_pair, read_config
    from ..imageio import read_image
    from . import RECIPES, fit_classifier

    config_file, out = Path(config_file).resolve(), Path(out)
    pair = load_model_pair(config_file)
    recipe = replace(RECIPES[recipe_name], schedule=replace(RECIPES[recipe_name].schedule, learning_rate=learning_rate))

    def inputs(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        studies, _ = find_studies(pair.class_names, data, Layout(), split)
        x = [pair.classifier_input(read_image(s.image).array)[0] for s in tqdm(studies, desc=f"reading {split}", leave=False)]
        return torch.stack(x), torch.as_tensor([s.label for s in studies])

    classifier = pair.classifier.to(memory_format=torch.contiguous_format)
    log = fit_classifier(classifier, inputs("train"), inputs("val"), recipe, epochs, "fine-tuning on patched pictures")
    (out / "weights").mkdir(parents=True, exist_ok=True)
    torch.save(classifier.state_dict(), out / "weights" / "shortcut_classifier.pt")
    config = read_config(config_file)
    config.pop("certainty", None)
    config["classifier"]["weights"] = "weights/shortcut_classifier.pt"
    # weights must lie in the configuration's folder (segx.config): a copy of the segmenter's
    shutil.copyfile(config_file.parent / config["segmenter"]["weights"], out / "weights" / "shortcut_segmenter.pt")
    config["segmenter"]["weights"] = "weights/shortcut_segmenter.pt"
    model = out / "shortcut_model.yaml"
    model.write_text(yaml.safe_dump(config, sort_keys=False))
    log["calibration"] = calibrate(model, data, Layout(), "val")
    (out / "fine_tuning.json").write_text(json.dumps(log, indent=2) + "\n")
    return model, log["calibration"]


def patch_mass(config_file: str | Path, data: str | Path, image_ids: list[str], device: str = "cpu") -> dict[str, list[float]]:
    """Share of the positive mass of the predicted class's raw Grad-CAM map and of its SegX
    map that lies on the patch, for each patched picture of ``image_ids``."""
    from ..config import load_model_pair
    from ..engine import explain_many
    from ..imageio import read_image
    from ..evaluation.metrics import relevance_mass_accuracy

    pair = load_model_pair(config_file)
    shares: dict[str, list[float]] = {"raw": [], "segx": []}
    data = Path(data)
    for start in tqdm(range(0, len(image_ids), 16), desc="mass on the patch", unit="batch"):
        chosen = image_ids[start : start + 16]
        images = [read_image(data / "images" / f"{i}.png") for i in chosen]
        for image_id, result in zip(chosen, explain_many(pair, images, classes="predicted", device=device)):
            patch = read_image(data / "patches" / f"{image_id}.png").array[0] > 0  # (W, H), the pictures' axis order
            k = result.classes.index(result.predicted)
            for name, layer in (("raw", result.explanation[k]), ("segx", result.segx[k])):
                shares[name].append(relevance_mass_accuracy(layer, patch))
    return shares


def report(rows: list[dict], artefacts: dict[str, bool], shortcut: str, calibration: dict) -> dict:
    """The figures of the module docstring from ``segx evaluate``'s rows of the test split,
    the patch flag per image id, the shortcut class's name and the calibration on patched
    val (:func:`segx.evaluation.calibrate.calibrate`'s summary: the calibrated SegU
    ``variant``, the shipped ``combination`` and the ``combinations`` of every variant).

    Every SegU variant ``V`` gives three scores, so that the fitting data is the only
    thing that differs between the last two: ``segu_V`` alone, ``segu_V_msp_val`` (the
    combination fitted on patched val) and ``segu_V_msp_crossfit`` (the same combination
    fitted on the test rows by two-fold cross-fitting); the calibrated variant comes first.
    ``fitting_data`` holds, per variant, the paired AUROC difference cross-fitted minus
    val-fitted on all errors and on the shortcut's errors."""
    patched = np.array([artefacts[r["image_id"]] for r in rows], dtype=bool)
    correct = np.array([r["correct"] for r in rows], dtype=bool)
    other_class = np.array([r["label"] != shortcut for r in rows])
    to_shortcut = np.array([r["predicted"] == shortcut for r in rows])
    shortcut_errors = patched & other_class & to_shortcut & ~correct
    variant, val_weights = calibration["variant"], calibration["combinations"]
    summary = {
        "n": len(rows),
        "segu_variant": variant,
        "shipped_combination_variant": calibration["combination"]["variant"],
        "accuracy": {"all": float(correct.mean()), "patched": _mean(correct[patched]), "unpatched": _mean(correct[~patched])},
        f"other_classes_predicted_{shortcut}": {"patched": _mean(to_shortcut[other_class & patched]), "unpatched": _mean(to_shortcut[other_class & ~patched])},
        "n_wrong": int((~correct).sum()),
        "n_shortcut_errors": int(shortcut_errors.sum()),
        "scores": {},
        "fitting_data": {},
        "val_weights": val_weights,
        "crossfit_weights": {},
        "not_computed": [],  # e.g. MC dropout of a classifier without dropout
    }
    values_of = lambda column: None if any(r.get(column) is None for r in rows) else np.array([r[column] for r in rows], dtype=float)  # noqa: E731
    msp = values_of("msp")
    scores = {name: values_of(name) for name in ("msp", "negative_entropy", "mc_dropout", "tta")}
    for v in [variant, *sorted(set(val_weights) - {variant})]:
        segu = values_of(f"segu_{v}")
        scores[f"segu_{v}"] = segu
        scores[f"segu_{v}_msp_val"] = np.array([Combination(v, val_weights[v])(m, s) for m, s in zip(msp, segu)])
        scores[f"segu_{v}_msp_crossfit"], summary["crossfit_weights"][v] = crossfit_combination(rows, v)
    subset = correct | shortcut_errors  # correct predictions against the shortcut's errors only
    for score, values in scores.items():
        if values is None:
            summary["not_computed"].append(score)
            continue
        figures = {"auroc": certainty_auroc(values, correct), "aurc": aurc(values, correct), "eaurc": eaurc(values, correct),
                   "augrc": augrc(values, correct)}  # fmt: skip
        if score != "msp":
            figures["auroc_minus_msp"] = auroc_difference_ci(values, msp, correct)
        if shortcut_errors.any():
            figures["shortcut_auroc"] = certainty_auroc(values[subset], correct[subset])
            if score != "msp":
                figures["shortcut_auroc_minus_msp"] = auroc_difference_ci(values[subset], msp[subset], correct[subset])
        summary["scores"][score] = figures
    for v in summary["crossfit_weights"]:
        crossfit, val_fit = scores[f"segu_{v}_msp_crossfit"], scores[f"segu_{v}_msp_val"]
        if crossfit is not None:
            summary["fitting_data"][v] = {"auroc_crossfit_minus_val": auroc_difference_ci(crossfit, val_fit, correct),
                                          "shortcut_auroc_crossfit_minus_val": auroc_difference_ci(crossfit[subset], val_fit[subset], correct[subset])
                                          if shortcut_errors.any() else None}  # fmt: skip
    return summary


def crossfit_combination(rows: list[dict], variant: str) -> tuple[np.ndarray | None, list[list[float]]]:
    """SegU+MSP scores ``(N,)`` of ``rows`` by two-fold cross-fitting: the rows are split
    by the CRC-32 of their image id (even / odd), :func:`segx.certainty.fit_combination` is
    fitted on one fold's MSP, SegU ``variant`` and correctness and scores the other fold, so
    no row's score depends on its own correctness. Returns the scores and the weights fitted
    on each fold (fold 0's fit scores fold 1); None and no weights when a fold is empty."""
    msp = np.array([r["msp"] for r in rows], dtype=float)
    segu = np.array([r[f"segu_{variant}"] for r in rows], dtype=float)
    correct = np.array([r["correct"] for r in rows], dtype=bool)
    fold = np.array([zlib.crc32(r["image_id"].encode()) % 2 for r in rows])
    if len(set(fold)) < 2:
        return None, []
    scores, weights = np.zeros(len(rows)), []
    for fitted_on in (0, 1):
        combination = fit_combination(msp[fold == fitted_on], segu[fold == fitted_on], correct[fold == fitted_on], variant)
        scored = fold != fitted_on
        scores[scored] = [combination(m, s) for m, s in zip(msp[scored], segu[scored])]
        weights.append(combination.weights)
    return scores, weights


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def report_markdown(summary: dict, shortcut_class: str) -> str:
    """The report as Markdown tables."""
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    ci = lambda t: "-" if t is None else f"{t[0]:+.3f} [{t[1]:+.3f}, {t[2]:+.3f}]"  # noqa: E731
    lines = [f"# Shortcut benchmark: a coloured patch beside `{shortcut_class}` lesions", "",
             f"{summary['n']} test pictures, {summary['n_wrong']} wrong, {summary['n_shortcut_errors']} of them shortcut-driven "
             f"(a patched picture of another class predicted `{shortcut_class}`).", "",
             "| | patched | unpatched |", "|---|---|---|",
             f"| accuracy | {fmt(summary['accuracy']['patched'])} | {fmt(summary['accuracy']['unpatched'])} |",
             f"| other classes predicted `{shortcut_class}` | {fmt(summary[f'other_classes_predicted_{shortcut_class}']['patched'])} | "
             f"{fmt(summary[f'other_classes_predicted_{shortcut_class}']['unpatched'])} |"]  # fmt: skip
    if "patch_mass" in summary:
        lines += ["", "| share of the predicted class's positive map mass on the patch | mean |", "|---|---|"]
        lines += [f"| {name} | {fmt(value)} |" for name, value in summary["patch_mass"].items()]
    lines += ["", "| score | AUROC correct vs wrong | minus MSP [95 % CI] | AUROC vs shortcut errors | minus MSP [95 % CI] | AURC | E-AURC | AUGRC |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for score, f in summary["scores"].items():
        lines.append(f"| {score} | {fmt(f['auroc'])} | {ci(f.get('auroc_minus_msp'))} | {fmt(f.get('shortcut_auroc'))} | "
                     f"{ci(f.get('shortcut_auroc_minus_msp'))} | {fmt(f['aurc'])} | {fmt(f['eaurc'])} | {fmt(f['augrc'])} |")  # fmt: skip
    if summary["fitting_data"]:
        lines += ["", "Each SegU variant `V` comes three times: alone (`segu_V`), combined with MSP by the logistic fit on patched val "
                  f"(`segu_V_msp_val`; the model ships `segu_{summary['shipped_combination_variant']}_msp_val`) and by the same fit on the test rows "
                  "by two-fold cross-fitting (`segu_V_msp_crossfit`; each row scored by the fit on the other fold). "
                  "With the variant held fixed, what the fitting data changes:", "",
                  "| SegU variant | cross-fitted minus val-fitted: AUROC correct vs wrong [95 % CI] | vs shortcut errors [95 % CI] |",
                  "|---|---|---|"]  # fmt: skip
        lines += [f"| {v} | {ci(f['auroc_crossfit_minus_val'])} | {ci(f['shortcut_auroc_crossfit_minus_val'])} |"
                  for v, f in summary["fitting_data"].items()]
    if summary["not_computed"]:
        lines += ["", f"Not computed: {', '.join(summary['not_computed'])} (MC dropout needs a dropout layer in the classifier)."]
    return "\n".join(lines) + "\n"


def main(model: str, data: str, out: str, recipe: str, shortcut_class: str, epochs: int = 3, learning_rate: float = 5e-4,
         train_rate: float = 0.5, test_rate: float = 0.5, mc_samples: int = 10, limit: int | None = None, seed: int = 0,
         device: str = "cpu", **layout) -> int:  # fmt: skip
    """``segx shortcut``: build the patched data (kept in ``out/data`` and reused when its
    settings match), fine-tune and calibrate, evaluate on test, write ``out/shortcut.md``
    and ``out/shortcut.json``; prints ``SHORTCUT {json}`` last."""
    from ..config import model_config_file, read_config
    from ..evaluation.evaluate import main as evaluate_main

    out_folder, data_folder = Path(out), Path(out) / "data"
    config_file = model_config_file(model).resolve()
    class_names = read_config(config_file)["classes"]  # the networks load once, in fine_tune
    settings = {"source": str(Path(data).resolve()), "layout": layout, "shortcut_class": shortcut_class, "train_rate": train_rate,
                "test_rate": test_rate, "seed": seed, "limit": limit}  # fmt: skip
    manifest = data_folder / "shortcut_data.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("settings") == settings:
        counts = json.loads(manifest.read_text())["counts"]
        print(f"reusing the patched pictures in {data_folder}")
    else:
        counts = build_dataset(data, data_folder, class_names, Layout(**layout), shortcut_class, train_rate, test_rate, seed, limit)
        manifest.write_text(json.dumps({"settings": settings, "counts": counts}, indent=2) + "\n")
    tuned, calibration = fine_tune(config_file, data_folder, out_folder, recipe, epochs, learning_rate)
    evaluation = out_folder / "evaluation"
    if (evaluation / "rows.jsonl").exists():
        (evaluation / "rows.jsonl").unlink()  # the classifier was just retrained: earlier rows are stale
    evaluate_main(str(tuned), str(data_folder), str(evaluation), ["gradcam"], device, split="test", mc_samples=mc_samples, evidence=False)
    with open(data_folder / "labels.csv", newline="") as stream:
        artefacts = {row["image_id"]: row["artefact"] == "1" for row in csv.DictReader(stream)}
    with open(evaluation / "rows.jsonl") as stream:
        rows = [json.loads(line) for line in stream.readlines()[1:]]  # after the run's header line; one row per study
    summary = report(rows, artefacts, shortcut_class, calibration)
    patched_ids = [r["image_id"] for r in rows if artefacts[r["image_id"]]]
    shares = patch_mass(tuned, data_folder, patched_ids, device)
    summary["patch_mass"] = {name: float(np.mean(values)) if values else None for name, values in shares.items()}
    summary.update(counts=counts, settings=settings, epochs=epochs, learning_rate=learning_rate)
    (out_folder / "shortcut.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_folder / "shortcut.md").write_text(report_markdown(summary, shortcut_class))
    print(f"report: {out_folder / 'shortcut.md'}")
    print("SHORTCUT " + json.dumps(summary))
    return 0
