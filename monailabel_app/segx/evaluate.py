"""``segx evaluate``: classification, segmentation, interpretability (raw vs SegX) and
certainty figures of a model configuration on a labelled dataset folder.

A dataset folder holds ``images/<image_id>.*``, a mask folder (``masks/`` by default;
``<image_id>.*``, foreground > 0) and a labels CSV (``labels.csv`` by default, columns
``image_id`` and ``label``; other names by option; a ``file`` column, when present, names
the image file). Labels the model does not know are reported and skipped, not fatal.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .certainty import VARIANTS
from .engine import explain
from .imageio import read_image
from .metrics import aurc, auroc, certainty_auroc, dice, eaurc, pointing_game, relevance_mass_accuracy, risk_coverage_curve, topk_overlap
from .pair import ModelPair


@dataclass
class Study:
    """One labelled image: its id, files and class index."""

    image_id: str
    image: Path
    mask: Path | None
    label: int


def _file_for(folder: Path, stem: str) -> Path | None:
    matches = sorted(folder.glob(f"{stem}.*")) if folder.is_dir() else []
    return matches[0] if matches else None


def find_studies(
    pair: ModelPair,
    data: str | Path,
    labels_csv: str | None = None,
    image_column: str = "image_id",
    label_column: str = "label",
    mask_dir: str = "masks",
    split: str | None = None,
    limit: int | None = None,
) -> tuple[list[Study], dict[str, int]]:
    """Studies of ``data`` (in CSV order) and the count of rows skipped per unknown label."""
    data = Path(data)
    csv_path = data / (labels_csv or "labels.csv")
    if not csv_path.is_file():
        raise ValueError(f"labels CSV not found: {csv_path}")
    with open(csv_path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    for column in (image_column, label_column):
        if rows and column not in rows[0]:
            raise ValueError(f"{csv_path} has no column {column!r}; columns: {list(rows[0])}")
    studies, unknown = [], {}
    for row in rows:
        if split is not None and row.get("split") != split:
            continue
        if row[label_column] not in pair.class_names:
            unknown[row[label_column]] = unknown.get(row[label_column], 0) + 1
            continue
        image_id = row[image_column]
        image = data / "images" / row["file"] if row.get("file") else _file_for(data / "images", image_id)
        if image is None or not image.exists():
            raise ValueError(f"no image file for {image_id!r} in {data / 'images'}")
        studies.append(Study(image_id, image, _file_for(data / mask_dir, image_id), pair.class_names.index(row[label_column])))
        if limit and len(studies) >= limit:
            break
    if not studies:
        raise ValueError(f"no study with a known label in {csv_path} (split {split!r}); unknown labels: {unknown}")
    return studies, unknown


def bootstrap_ci(values, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 % and 97.5 % percentiles of the mean over bootstrap resamples of ``values``)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_resamples, len(values)))].mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _safe_auroc(scores, positives) -> float | None:
    try:
        return auroc(scores, positives)
    except ValueError:  # one class only
        return None


def _study_record(pair: ModelPair, study: Study, methods: list[str], device: str) -> dict:
    """Per-study figures: prediction, certainties and, per method, raw vs SegX metrics."""
    result = explain(pair, study.image, method=methods[0], device=device, variants=sorted(VARIANTS))
    predicted = result.predicted
    probabilities = result.probabilities
    record = {
        "image_id": study.image_id,
        "label": pair.class_names[study.label],
        "predicted": result.predicted_label,
        "correct": int(predicted == study.label),
        "msp": float(probabilities.max()),
        "entropy": float(-(probabilities * np.log(np.clip(probabilities, 1e-12, 1))).sum()),
        **{f"p_{name}": float(p) for name, p in zip(pair.class_names, probabilities)},
        **{f"segu_{v}": result.certainty_of(predicted, v).value for v in sorted(VARIANTS)},
    }
    if study.mask is None:
        return record
    truth = read_image(study.mask).array[0] > 0
    region = result.clinical_mask[result.classes.index(predicted)] >= 0.5
    record["dice"] = dice(region, truth)
    for method in methods:
        current = result if method == methods[0] else explain(pair, study.image, classes=[predicted], method=method, device=device)
        k = current.classes.index(predicted)
        for kind, layer in (("raw", current.explanation[k]), ("segx", current.segx[k])):
            record[f"iou_{kind}_{method}"] = topk_overlap(layer, truth, 5.0)["iou"]
            record[f"pointing_{kind}_{method}"] = pointing_game(layer, truth)
            record[f"mass_{kind}_{method}"] = relevance_mass_accuracy(layer, truth)
    return record


def evaluate(pair: ModelPair, studies: list[Study], out: str | Path, methods: list[str], device: str = "cpu") -> dict:
    """Run every study, write ``metrics.csv``, ``report.md`` and figures; return the summary."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = [_study_record(pair, study, methods, device) for study in tqdm(studies, desc="evaluating")]
    with open(out / "metrics.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=sorted({k for r in records for k in r}, key=lambda k: (k != "image_id", k)))
        writer.writeheader()
        writer.writerows(records)
    correct = np.array([r["correct"] for r in records], dtype=bool)
    labels = np.array([pair.class_names.index(r["label"]) for r in records])
    per_class = {name: _safe_auroc([r[f"p_{name}"] for r in records], labels == c) for c, name in enumerate(pair.class_names)}
    defined = [v for v in per_class.values() if v is not None]
    summary = {
        "n": len(records),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(np.mean([correct[labels == c].mean() for c in np.unique(labels)])),
        "auroc_macro": float(np.mean(defined)) if defined else None,
        "auroc_per_class": per_class,
    }
    if "dice" in records[0]:
        summary["dice"] = float(np.mean([r["dice"] for r in records]))
        for method in methods:
            raw = [r[f"iou_raw_{method}"] for r in records]
            segx = [r[f"iou_segx_{method}"] for r in records]
            summary[f"iou_raw_{method}"], summary[f"iou_segx_{method}"] = float(np.mean(raw)), float(np.mean(segx))
            summary[f"iou_raw_{method}_ci"] = bootstrap_ci(raw)[1:]
            summary[f"iou_segx_{method}_ci"] = bootstrap_ci(segx)[1:]
            summary[f"iou_diff_{method}_ci"] = bootstrap_ci(np.subtract(segx, raw))[1:]
    both_outcomes = 0 < correct.sum() < len(correct)
    for name in [f"segu_{v}" for v in sorted(VARIANTS)] + ["msp"]:
        scores = [r[name] for r in records]
        summary[f"{name}_auroc"] = certainty_auroc(scores, correct) if both_outcomes else None
        summary[f"{name}_aurc"] = aurc(scores, correct)
        summary[f"{name}_eaurc"] = eaurc(scores, correct)
    summary["segu_auroc"] = summary[f"segu_{pair.certainty_variant}_auroc"]
    summary["seconds"] = round(time.perf_counter() - start, 1)
    _figures(out, records, correct, methods, summary)
    (out / "report.md").write_text(_report(summary, methods))
    return summary


def _figures(out: Path, records: list[dict], correct: np.ndarray, methods: list[str], summary: dict) -> None:
    """``risk_coverage.png`` (every certainty score) and ``iou.png`` (raw vs SegX with CIs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 4))
    for name in [f"segu_{v}" for v in sorted(VARIANTS)] + ["msp"]:
        coverage, risk = risk_coverage_curve([r[name] for r in records], correct)
        axis.plot(coverage, risk, label=name)
    axis.set_xlabel("coverage")
    axis.set_ylabel("risk (error rate)")
    axis.legend(fontsize=7)
    fig.savefig(out / "risk_coverage.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    if "dice" not in summary:
        return
    fig, axis = plt.subplots(figsize=(5, 3.5))
    for offset, kind in ((-0.2, "raw"), (0.2, "segx")):
        means = [summary[f"iou_{kind}_{m}"] for m in methods]
        errors = np.abs(np.array([summary[f"iou_{kind}_{m}_ci"] for m in methods]).T - means)
        axis.bar(np.arange(len(methods)) + offset, means, 0.4, yerr=errors, capsize=3, label=kind)
    axis.set_xticks(range(len(methods)), methods)
    axis.set_ylabel("top-5 % IoU with the ground truth")
    axis.legend()
    fig.savefig(out / "iou.png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def _report(summary: dict, methods: list[str]) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = ["# segx evaluate", "", f"n = {summary['n']}, accuracy {fmt(summary['accuracy'])}, balanced accuracy "
             f"{fmt(summary['balanced_accuracy'])}, macro AUROC {fmt(summary['auroc_macro'])}", ""]  # fmt: skip
    if "dice" in summary:
        lines += [f"Segmentation Dice {fmt(summary['dice'])}", "", "| method | IoU raw [95 % CI] | IoU SegX [95 % CI] | SegX - raw [95 % CI] |", "|---|---|---|---|"]
        for m in methods:
            ci = {k: summary[f"iou_{k}_{m}_ci"] for k in ("raw", "segx", "diff")}
            lines.append(
                f"| {m} | {fmt(summary[f'iou_raw_{m}'])} [{fmt(ci['raw'][0])}, {fmt(ci['raw'][1])}] | {fmt(summary[f'iou_segx_{m}'])} "
                f"[{fmt(ci['segx'][0])}, {fmt(ci['segx'][1])}] | [{fmt(ci['diff'][0])}, {fmt(ci['diff'][1])}] |"
            )
        lines += ["", "![IoU](iou.png)", ""]
    lines += ["| certainty score | AUROC correct vs wrong | AURC | E-AURC |", "|---|---|---|---|"]
    for name in [f"segu_{v}" for v in sorted(VARIANTS)] + ["msp"]:
        lines.append(f"| {name} | {fmt(summary[f'{name}_auroc'])} | {fmt(summary[f'{name}_aurc'])} | {fmt(summary[f'{name}_eaurc'])} |")
    lines += ["", "![risk-coverage](risk_coverage.png)", ""]
    return "\n".join(lines)


def main(model: str, data: str, out: str, methods: list[str], device: str, **selection) -> int:
    """``segx evaluate``: prints progress, the report path and ``EVAL {json}`` last."""
    from .config import load_model_pair

    config = Path(model)
    if not config.exists():
        config = Path(__file__).resolve().parents[1] / "model_configs" / f"{model}.yaml"
    pair, _ = load_model_pair(config)
    studies, unknown = find_studies(pair, data, **selection)
    if unknown:
        print(f"skipped rows with labels unknown to the model: {unknown}")
    summary = evaluate(pair, studies, out, methods, device)
    summary["unknown_labels"] = unknown
    print(f"report: {Path(out) / 'report.md'}")
    print("EVAL " + json.dumps(summary))
    return 0
