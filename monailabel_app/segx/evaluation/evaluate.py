"""``segx evaluate``: classification, segmentation, interpretability (raw vs SegX) and
certainty figures of a model configuration on a labelled dataset folder (read as
:mod:`segx.evaluation.datasets` describes; labels the model does not know are reported, not fatal).
"""

from __future__ import annotations

import csv
import json
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import baselines, faithfulness
from ..certainty import VARIANTS, Combination
from .datasets import Layout, Study, find_studies
from ..engine import SegXResult, explain, explain_many
from ..explainers import default_method, find_target_layer
from ..imageio import Image, read_image
from .metrics import aurc, certainty_auroc, dice, eaurc, map_figures, one_vs_rest_auroc, risk_coverage_curve
from ..pair import ModelPair
from .rows import RowFile

INTERPRETABILITY = {
    "iou": "top-5 % IoU",
    "dice": "top-5 % Dice",
    "precision": "top-5 % precision",
    "pointing": "pointing game",
    "mass": "relevance mass accuracy",
}
BASELINES = ("msp", "negative_entropy", "mc_dropout", "tta")
EXAMPLES = 8
BATCH_SIZE = 16
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
DEFINITIONS = [
    "top-5 % IoU / Dice / precision: the 5 % of voxels with the highest positive relevance (ties to the lower index) against the mask",
    "pointing game: 1 if the map's maximum lies in the mask; relevance mass accuracy: share of the positive relevance inside the mask",
    "certainty AUROC: how well a score ranks correct above wrong predictions; AURC: area under the risk-coverage curve "
    "(ties accepted together); E-AURC: AURC minus that of a perfect ranking",
    f"[a, b]: 95 % percentile bootstrap interval over studies, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}",
]


def bootstrap_ci(values, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(mean, 2.5 % and 97.5 % percentiles of the mean over bootstrap resamples of ``values``)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    # 100 resamples at a time: the same draws as all at once, without n_resamples x n indices in memory
    means = np.concatenate([values[rng.integers(0, len(values), (min(100, n_resamples - done), len(values)))].mean(1)
                            for done in range(0, n_resamples, 100)])  # fmt: skip
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def certainty_scores(combined: bool, variant: str, methods: list[str]) -> list[str]:
    """Names of the certainty columns: every SegU variant (from the first method's maps),
    the default ``variant`` from each further method's maps (``segu_<variant>_<method>``),
    SegU+MSP when the model has a fitted combination, then the baselines."""
    per_method = [f"segu_{variant}_{m}" for m in methods[1:]]
    return [f"segu_{v}" for v in sorted(VARIANTS)] + per_method + (["segu_msp"] if combined else []) + list(BASELINES)


def study_records(pair: ModelPair, studies: list[Study], methods: list[str], device: str = "cpu", mc_samples: int = 10,
                  combination: Combination | None = None, batch_size: int = BATCH_SIZE, desc: str = "evaluating",
                  evidence: bool = False, progress: bool = True) -> list[dict]:  # fmt: skip
    """Per-study figures (see :func:`study_record`) of every study (all batches of
    :func:`iter_study_records`), with a progress bar (studies/s and ETA) unless not ``progress``."""
    records = []
    with tqdm(total=len(studies), desc=desc, unit="study", disable=not progress) as bar:
        for batch in iter_study_records(pair, studies, methods, device, mc_samples, combination, batch_size, evidence):
            records += batch
            bar.update(len(batch))
    return records


def iter_study_records(pair: ModelPair, studies: list[Study], methods: list[str], device: str = "cpu", mc_samples: int = 10,
                       combination: Combination | None = None, batch_size: int = BATCH_SIZE, evidence: bool = False):  # fmt: skip
    """Per-study figures (see :func:`study_record`), yielded as a list per batch of
    ``batch_size`` studies (the first method, default the classifier's default, and the
    segmenter run on a batch at a time)."""
    first = methods[0] if methods else default_method(pair.classifier)
    randomised = replace(pair, classifier=faithfulness.randomised_classifier(pair.classifier)) if evidence else None
    chunks = [studies[start : start + batch_size] for start in range(0, len(studies), batch_size)]
    with ThreadPoolExecutor(1) as reader:  # the next batch's files are read while this one computes (one ahead only)
        pending = reader.submit(_read_files, chunks[0]) if chunks else None
        for number, chunk in enumerate(chunks):
            images, masks = zip(*pending.result())
            if number + 1 < len(chunks):
                pending = reader.submit(_read_files, chunks[number + 1])
            results = explain_many(pair, images, classes="predicted", method=first, device=device)
            yield [study_record(pair, study, image, result, methods, device, mc_samples, combination, randomised, mask)
                   for study, image, mask, result in zip(chunk, images, masks, results)]  # fmt: skip


def _read_files(studies: list[Study]) -> list[tuple[Image, torch.Tensor | None]]:
    """(image, ground-truth mask of shape ``S`` or None) of each study."""
    return [(read_image(s.image), None if s.mask is None else read_image(s.mask).array[0]) for s in studies]


def ground_truth(pair: ModelPair, label: int, mask: torch.Tensor) -> torch.Tensor:
    """The clinical region of a study's class ``label`` in its ground-truth ``mask`` ``S``:
    the voxels carrying the class's ``region_labels`` when the configuration names them
    (the liver of a liver lesion, not the kidneys beside it), else every voxel ``> 0``
    (binary masks, including 0/255 pictures)."""
    name = pair.class_names[label]
    if name in pair.region_labels:
        return torch.isin(mask.round().long(), torch.as_tensor(pair.region_labels[name]))
    return mask > 0


def label_dice(pair: ModelPair, segmentation: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """``{"dice_label_<label name>": Dice}`` of each segmenter label against the same value in
    ``mask`` (both ``S``), when the segmenter has several labels and the mask uses their
    values (else empty: a binary mask says nothing per label)."""
    if len(pair.segment_names) < 2:
        return {}
    labels = mask.round().long()
    if not set(torch.unique(labels).tolist()) - {0} <= set(pair.segment_names):
        return {}
    return {f"dice_label_{name}": dice(segmentation == value, labels == value) for value, name in sorted(pair.segment_names.items())}


def ray_study_records(config_file: str | Path, studies: list[Study], methods: list[str], mc_samples: int, evidence: bool, address: str,
                      target_layer: str | None = None):  # fmt: skip
    """:func:`iter_study_records` on a Ray cluster (:func:`segx.evaluation.distributed.ray_rows`): lists
    of the same records, one per finished batch, in the order they finish."""
    from .distributed import ray_rows

    items = [{"image_id": s.image_id, "image": str(s.image), "mask": str(s.mask) if s.mask else "", "label": s.label} for s in studies]
    options = dict(methods=methods, mc_samples=mc_samples, evidence=evidence, target_layer=target_layer)
    return ray_rows(config_file, items, records_of_items, options, address, BATCH_SIZE)


def records_of_items(pair: ModelPair, items: list[dict], methods: list[str], mc_samples: int, evidence: bool, device: str = "cpu",
                     target_layer: str | None = None) -> list[dict]:  # fmt: skip
    """:func:`study_records` of one batch given as the dicts :func:`ray_study_records` sends
    (``target_layer``: the CAM target instead of the configuration's)."""
    pair = replace(pair, target_layer=target_layer) if target_layer else pair
    studies = [Study(i["image_id"], Path(i["image"]), Path(i["mask"]) if i["mask"] else None, int(i["label"])) for i in items]
    return study_records(pair, studies, methods, device, mc_samples, Combination.from_config(pair.config), len(studies), evidence=evidence,
                         progress=False)  # fmt: skip


def study_record(pair: ModelPair, study: Study, image: Image, result: SegXResult, methods: list[str], device: str = "cpu",
                 mc_samples: int = 10, combination: Combination | None = None, randomised: ModelPair | None = None,
                 mask: torch.Tensor | None = None) -> dict:  # fmt: skip
    """Figures of one study given its image and its :class:`SegXResult` from the first of
    ``methods`` (all classes): prediction, class probabilities, certainties (SegU in every
    variant, SegU's default variant from each further method's maps, SegU+MSP, MSP,
    negative entropy, MC dropout with ``mc_samples`` passes and TTA; ``mc_samples=0`` skips
    both sampling baselines) and, when the study has a mask, segmentation Dice and per
    method raw vs SegX interpretability metrics (with the region-only controls of
    :func:`segx.evaluation.faithfulness.control_maps` beside them). Given ``randomised`` (the pair with
    a re-drawn classifier), also the evidence figures of :func:`evidence_record`. ``mask``
    is the study's ground-truth mask (shape ``S``; None: the study has no mask), read by
    :func:`_read_files` with the image; the figures compare with its :func:`ground_truth`
    region, and give the :func:`label_dice` of every segmenter label."""
    predicted, probabilities = result.predicted, result.probabilities
    x = pair.classifier_input(image.array, image.affine).to(device) if mc_samples else None
    record = {
        "image_id": study.image_id,
        "label": pair.class_names[study.label],
        "predicted": result.predicted_label,
        "correct": int(predicted == study.label),
        **{f"p_{name}": float(p) for name, p in zip(pair.class_names, probabilities)},
        **{f"segu_{v}": result.certainty_of(predicted, v).value for v in sorted(VARIANTS)},
        "msp": baselines.msp(probabilities),
        "negative_entropy": baselines.negative_entropy(probabilities),
        "mc_dropout": baselines.mc_dropout(pair.classifier, x, mc_samples) if mc_samples else None,
        "tta": baselines.tta(pair.classifier, x) if mc_samples else None,
    }
    if combination is not None:
        record["segu_msp"] = combination(record["msp"], record[f"segu_{combination.variant}"])
    per_method = {methods[0]: result} if methods else {}
    for method in methods[1:]:
        per_method[method] = explain(pair, image, classes=[predicted], method=method, device=device)
        record[f"segu_{pair.certainty_variant}_{method}"] = per_method[method].certainty_of(predicted, pair.certainty_variant).value
    for method, current in per_method.items():
        record[f"grid_{method}"] = " x ".join(map(str, current.explanation_grid["maps"])) + " of " + " x ".join(map(str, current.explanation_grid["input"]))
    region = result.binary_region(predicted)
    controls = {}
    if randomised is not None:
        controls = faithfulness.control_maps(region, image.spacing, seed=zlib.crc32(study.image_id.encode()))
        record.update(evidence_record(pair, randomised, image, predicted, per_method, controls, device))
    if mask is None:
        return record
    truth = ground_truth(pair, study.label, mask)
    record["dice"] = dice(region, truth)
    record.update(label_dice(pair, result.segmentation, mask))
    layers = [(f"control_{name}", control) for name, control in controls.items()]
    for method, current in per_method.items():
        k = current.classes.index(predicted)
        layers += [(f"raw_{method}", current.explanation[k]), (f"segx_{method}", current.segx[k])]
    for name, layer in layers:
        record.update({f"{metric}_{name}": value for metric, value in map_figures(layer, truth, 5.0).items()})
    return record


def evidence_record(pair: ModelPair, randomised: ModelPair, image: Image, predicted: int, per_method: dict[str, SegXResult],
                    controls: dict[str, torch.Tensor], device: str = "cpu") -> dict:  # fmt: skip
    """Figures only a map carrying the classifier's evidence can win: ROAD (LeRF - MoRF) and
    the deletion curve's area (MoRF) of the raw map, the SegX map and each region-only
    control (2D; None in 3D), and the rank
    correlation of each method's raw and SegX maps with those of the randomised classifier
    (the same segmenter, so SegX's correlation shows how much the region alone decides)."""
    maps = {f"control_{name}": control for name, control in controls.items()}
    record = {}
    for method, current in per_method.items():
        k = current.classes.index(predicted)
        maps[f"raw_{method}"], maps[f"segx_{method}"] = current.explanation[k], current.segx[k]
        twin = explain(randomised, image, classes=[predicted], method=method, device=device)
        j = twin.classes.index(predicted)
        record[f"randcorr_raw_{method}"] = faithfulness.rank_correlation(current.explanation[k], twin.explanation[j])
        record[f"randcorr_segx_{method}"] = faithfulness.rank_correlation(current.segx[k], twin.segx[j])
    scores = faithfulness.road_score(pair, image, maps, predicted)
    for figure in ("road", "deletion"):
        record.update({f"{figure}_{name}": None if scores is None else scores[name][figure] for name in maps})
    return record


def auroc_difference_ci(better, baseline, correct, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(AUROC(better) - AUROC(baseline), 95 % bootstrap CI) for correct vs wrong, resampling
    studies (paired: both scores on the same resample); resamples with one outcome only are
    dropped."""
    better, baseline, correct = np.asarray(better, float), np.asarray(baseline, float), np.asarray(correct, bool)
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(n_resamples):
        sample = rng.integers(0, len(correct), len(correct))
        if 0 < correct[sample].sum() < len(sample):
            differences.append(certainty_auroc(better[sample], correct[sample]) - certainty_auroc(baseline[sample], correct[sample]))
    point = certainty_auroc(better, correct) - certainty_auroc(baseline, correct)
    return float(point), float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))


def _classification(records: list[dict], class_names: list[str]) -> dict:
    correct = np.array([r["correct"] for r in records], dtype=bool)
    labels = np.array([class_names.index(r["label"]) for r in records])
    predicted = np.array([class_names.index(r["predicted"]) for r in records])
    macro, per_class = one_vs_rest_auroc([[r[f"p_{name}"] for name in class_names] for r in records], labels)
    confusion = np.zeros((len(class_names), len(class_names)), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "n": len(records),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(np.mean([correct[labels == c].mean() for c in np.unique(labels)])),
        "auroc_macro": macro,
        "auroc_per_class": dict(zip(class_names, per_class)),
        "confusion_matrix": confusion.tolist(),
    }


def _interpretability(records: list[dict], methods: list[str]) -> dict:
    summary = {"dice": float(np.mean([r["dice"] for r in records])), "dice_ci": bootstrap_ci([r["dice"] for r in records])[1:]}
    for key in sorted({k for r in records for k in r if k.startswith("dice_label_")}):
        values = [r[key] for r in records if key in r]
        summary[key], summary[f"{key}_ci"] = float(np.mean(values)), bootstrap_ci(values)[1:]
    for method in methods:
        for metric in INTERPRETABILITY:
            raw = [r[f"{metric}_raw_{method}"] for r in records]
            segx = [r[f"{metric}_segx_{method}"] for r in records]
            for kind, values in (("raw", raw), ("segx", segx)):
                summary[f"{metric}_{kind}_{method}"] = float(np.mean(values))
                summary[f"{metric}_{kind}_{method}_ci"] = bootstrap_ci(values)[1:]
            summary[f"{metric}_diff_{method}_ci"] = bootstrap_ci(np.subtract(segx, raw))[1:]
    for name in (f"control_{c}" for c in faithfulness.CONTROLS if f"iou_control_{c}" in records[0]):
        for metric in INTERPRETABILITY:
            values = [r[f"{metric}_{name}"] for r in records]
            summary[f"{metric}_{name}"], summary[f"{metric}_{name}_ci"] = float(np.mean(values)), bootstrap_ci(values)[1:]
    return summary


def _evidence(records: list[dict], methods: list[str]) -> dict:
    """Means and CIs of ROAD and the deletion area (raw, SegX, each control) and of the
    randomisation rank correlations; paired CIs of SegX's ROAD minus each control's. The
    headline names of issue 13 repeat some of them per method: ``deletion_auc_mask_only_<m>``
    (the uniform control: the region and nothing else), ``deletion_auc_raw_<m>``,
    ``deletion_auc_segx_<m>``, and ``randomisation_rank_corr`` (the first method's raw map);
    ``iou_mask_only_<m>`` repeats :func:`_interpretability`'s ``iou_control_uniform``."""
    summary = {}
    maps = [f"{kind}_{m}" for m in methods for kind in ("raw", "segx")] + [f"control_{c}" for c in faithfulness.CONTROLS]
    names = [f"{figure}_{name}" for figure in ("road", "deletion") for name in maps]
    names += [f"randcorr_{kind}_{m}" for m in methods for kind in ("raw", "segx")]
    for name in names:
        values = [r[name] for r in records if r.get(name) is not None]
        summary[name], summary[f"{name}_ci"] = (float(np.mean(values)), bootstrap_ci(values)[1:]) if values else (None, None)
        summary[f"{name}_n"] = len(values)  # the correlation is undefined for a constant map
    for method in methods:
        for control in faithfulness.CONTROLS:
            paired = [(r[f"road_segx_{method}"], r[f"road_control_{control}"]) for r in records if r.get(f"road_segx_{method}") is not None]
            summary[f"road_segx_minus_{control}_{method}_ci"] = bootstrap_ci(np.subtract(*zip(*paired)))[1:] if paired else None
        summary[f"deletion_auc_mask_only_{method}"] = summary["deletion_control_uniform"]
        for kind in ("raw", "segx"):
            summary[f"deletion_auc_{kind}_{method}"] = summary[f"deletion_{kind}_{method}"]
    summary["randomisation_rank_corr"] = summary[f"randcorr_raw_{methods[0]}"] if methods else None
    return summary


def _certainty(records: list[dict], names: list[str]) -> dict:
    correct = np.array([r["correct"] for r in records], dtype=bool)
    both_outcomes = 0 < correct.sum() < len(correct)
    summary = {}
    for name in names:
        if any(r[name] is None for r in records):  # MC dropout without a dropout layer, or sampling baselines off
            summary[f"{name}_auroc"] = summary[f"{name}_aurc"] = summary[f"{name}_eaurc"] = None
            continue
        scores = [r[name] for r in records]
        summary[f"{name}_auroc"] = certainty_auroc(scores, correct) if both_outcomes else None
        summary[f"{name}_aurc"] = aurc(scores, correct)
        summary[f"{name}_eaurc"] = eaurc(scores, correct)
        if both_outcomes and name.startswith("segu"):
            summary[f"{name}_minus_msp_auroc_ci"] = auroc_difference_ci(scores, [r["msp"] for r in records], correct)[1:]
    return summary


def provenance(config_file: Path, studies: list[Study], class_names: list[str], **selection) -> dict:
    """What a reader needs to reproduce a report: the command, the configuration and the
    SHA-256 of its weight files, library versions, the bootstrap, the study selection
    (``split``, ``limit``, ``seed``...) and the class counts."""
    import platform
    import shlex
    import sys

    import monai

    from .. import __version__
    from ..config import file_digest, weight_files

    digests = {f.name: file_digest(f) for f in weight_files(config_file) if f.is_file()}
    return {
        "command": shlex.join(["segx", *sys.argv[1:]]),
        "config": str(config_file),
        "weights_sha256": digests,
        "versions": {"segx": __version__, "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version()},
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
        "selection": selection,
        "class_counts": {name: sum(s.label == c for s in studies) for c, name in enumerate(class_names)},
    }


def evaluate(pair: ModelPair, studies: list[Study], out: str | Path, methods: list[str], device: str = "cpu",
             mc_samples: int = 10, combination: Combination | None = None, origin: dict | None = None,
             evidence: bool = True, ray_address: str | None = None, target_layer: str | None = None) -> dict:  # fmt: skip
    """Run every study not yet in ``out/rows.jsonl`` (appended batch by batch: an interrupted
    run resumes, see :class:`segx.evaluation.rows.RowFile`), write ``metrics.csv``, ``report.md`` and
    figures from the rows of ``studies``; return the summary
    (with ``origin``, the :func:`provenance`, when given; with ``evidence``, the controls,
    ROAD and randomisation figures of :func:`evidence_record`). With ``ray_address``
    (``auto`` or a cluster's address) the studies run on Ray (:mod:`segx.evaluation.distributed`).
    ``target_layer`` replaces the configuration's CAM target layer (finer maps from an
    earlier stage)."""
    start = time.perf_counter()
    out = Path(out)
    # what produced the rows: the weights (by digest, from the provenance) and the options
    if target_layer:
        find_target_layer(pair.classifier, target_layer)  # a wrong name fails now, naming the layers
        pair = replace(pair, target_layer=target_layer)
    identity = {"methods": methods, "mc_samples": mc_samples, "evidence": evidence, "target_layer": target_layer,
                "config": (origin or {}).get("config"), "weights_sha256": (origin or {}).get("weights_sha256")}  # fmt: skip
    rows = RowFile(out / "rows.jsonl", identity)
    done = rows.done()
    todo = [s for s in studies if s.image_id not in done]
    if len(todo) < len(studies):
        print(f"resuming: {len(studies) - len(todo)} of {len(studies)} studies already in {rows.path}")
    if ray_address:
        if not (origin or {}).get("config"):
            raise ValueError("--ray needs the model as a configuration file (each Ray actor loads it)")
        batches = ray_study_records(origin["config"], todo, methods, mc_samples, evidence, ray_address, target_layer)
    else:
        batches = iter_study_records(pair, todo, methods, device, mc_samples, combination, evidence=evidence)
    with tqdm(total=len(todo), desc="evaluating", unit="study") as progress:
        for batch in batches:
            rows.append(batch)
            progress.update(len(batch))
    wanted = {s.image_id: i for i, s in enumerate(studies)}
    records = sorted((r for r in rows.rows() if r["image_id"] in wanted), key=lambda r: wanted[r["image_id"]])
    with open(out / "metrics.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=sorted({k for r in records for k in r}, key=lambda k: (k != "image_id", k)))
        writer.writeheader()
        writer.writerows(records)
    scores = certainty_scores(combination is not None, pair.certainty_variant, methods)
    summary = _classification(records, pair.class_names)
    with_masks = [r for r in records if "dice" in r]
    if with_masks:
        summary.update(_interpretability(with_masks, methods))
    summary.update(_certainty(records, scores))
    if evidence:
        summary.update(_evidence(records, methods))
        summary.update({f"iou_mask_only_{m}": summary.get("iou_control_uniform") for m in methods})
    summary.update({f"grid_{m}": sorted({r[f"grid_{m}"] for r in records}) for m in methods})
    summary["grid_size"] = summary[f"grid_{methods[0]}"] if methods else None
    summary["segu_variant"] = pair.certainty_variant
    summary["segu_auroc"] = summary[f"segu_{pair.certainty_variant}_auroc"]
    summary["seconds"] = round(time.perf_counter() - start, 1)
    if origin is not None:
        summary["provenance"] = origin
    _figures(out, records, methods, summary, scores)
    if with_masks:
        _example_grid(out / "examples.png", pair, studies, records, methods[0] if methods else default_method(pair.classifier), device)
    (out / "report.md").write_text(_report(summary, methods, scores, pair.class_names, bool(with_masks), evidence))
    return summary


def _figures(out: Path, records: list[dict], methods: list[str], summary: dict, scores: list[str]) -> None:
    """``risk_coverage.png`` (every certainty score) and ``iou.png`` (raw vs SegX with CIs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    correct = np.array([r["correct"] for r in records], dtype=bool)
    fig, axis = plt.subplots(figsize=(5.5, 4))
    for name in scores:
        if summary[f"{name}_aurc"] is not None:
            coverage, risk = risk_coverage_curve([r[name] for r in records], correct)
            axis.plot(coverage, risk, label=f"{name} (AURC {summary[f'{name}_aurc']:.3f})", linestyle="-" if name.startswith("segu") else "--")
    axis.set_xlabel("coverage (share of studies kept, most certain first)")
    axis.set_ylabel("risk (error rate among kept)")
    axis.legend(fontsize=7)
    fig.savefig(out / "risk_coverage.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    if "dice" not in summary:
        return
    fig, axis = plt.subplots(figsize=(1.6 + 1.4 * len(methods), 3.5))
    for offset, kind in ((-0.2, "raw"), (0.2, "segx")):
        means = [summary[f"iou_{kind}_{m}"] for m in methods]
        errors = np.abs(np.array([summary[f"iou_{kind}_{m}_ci"] for m in methods]).T - means)
        axis.bar(np.arange(len(methods)) + offset, means, 0.4, yerr=errors, capsize=3, label=kind)
    axis.set_xticks(range(len(methods)), methods)
    axis.set_ylabel("top-5 % IoU with the ground truth")
    axis.legend()
    fig.savefig(out / "iou.png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def _display(volume: torch.Tensor, index: int | None) -> np.ndarray:
    """A ``(C, W, H)`` or ``(C, W, H, D)`` array as an image to show, ``(H, W)`` or ``(H, W, 3)``;
    3D volumes at slice ``index`` of the last axis."""
    plane = (volume[..., index] if volume.dim() == 4 else volume).float()
    plane = plane.permute(2, 1, 0) if plane.shape[0] == 3 else plane[0].T
    plane = (plane - plane.min()) / (plane.max() - plane.min()).clamp_min(1e-8)
    return plane.cpu().numpy()


def _example_grid(path: Path, pair: ModelPair, studies: list[Study], records: list[dict], method: str, device: str) -> None:
    """Rows of image | raw map of ``method`` | SegX | ground truth for the least and the
    most certain studies with a mask (default SegU variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"segu_{pair.certainty_variant}"
    order = sorted((i for i, r in enumerate(records) if "dice" in r), key=lambda i: records[i][key])
    chosen = order[: EXAMPLES // 2] + order[max(EXAMPLES // 2, len(order) - EXAMPLES // 2) :]
    fig, axes = plt.subplots(len(chosen), 4, figsize=(9, 2.3 * len(chosen)), squeeze=False)
    for row, i in zip(axes, chosen):
        image = read_image(studies[i].image).array
        truth = ground_truth(pair, studies[i].label, read_image(studies[i].mask).array[0])[None]
        index = int(truth[0].reshape(-1, truth.shape[-1]).sum(0).argmax()) if truth.dim() == 4 else None
        result = explain(pair, studies[i].image, classes=[records[i]["predicted"]], method=method, device=device)
        k = result.classes.index(result.predicted)
        background = _display(image, index)
        panels = [(None, "image"), (result.explanation[k], f"raw {method}"), (result.segx[k], "SegX"), (truth.float()[0], "ground truth")]
        for axis, (overlay, title) in zip(row, panels):
            axis.imshow(background, cmap="gray")
            if overlay is not None:
                values = _display(overlay[None], index)
                shown = values if title.startswith("raw") else np.ma.masked_where(values <= 0, values)  # zero outside the region: transparent
                axis.imshow(shown, cmap="autumn" if title == "ground truth" else "jet", alpha=0.5, vmin=0, vmax=1)
            axis.set_title(title, fontsize=8)
            axis.axis("off")
        r = records[i]
        row[0].set_title(f"{r['label']} -> {r['predicted']}\nSegU {r[key]:.2f} ({'right' if r['correct'] else 'WRONG'})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _report(summary: dict, methods: list[str], scores: list[str], class_names: list[str], with_masks: bool, evidence: bool) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    def ci(pair):
        return f"[{fmt(pair[0])}, {fmt(pair[1])}]"

    lines = ["# segx evaluate", ""]
    origin = summary.get("provenance")
    if origin:
        versions = ", ".join(f"{k} {v}" for k, v in origin["versions"].items())
        lines += [f"`{origin['command']}`", "", f"- configuration: `{origin['config']}`",
                  *[f"- `{name}` SHA-256 `{digest}`" for name, digest in origin["weights_sha256"].items()],
                  f"- {versions}", f"- studies: {origin['selection']}; per class {origin['class_counts']}", ""]  # fmt: skip
    lines += [f"n = {summary['n']}, accuracy {fmt(summary['accuracy'])}, balanced accuracy "
             f"{fmt(summary['balanced_accuracy'])}, macro AUROC {fmt(summary['auroc_macro'])}", "",
             "| class | AUROC (one vs rest) |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {fmt(value)} |" for name, value in summary["auroc_per_class"].items()]
    lines += ["", "Confusion matrix (rows: truth, columns: prediction)", "", "| | " + " | ".join(class_names) + " |", "|---" * (len(class_names) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(class_names, summary["confusion_matrix"])]
    lines.append("")
    if evidence:
        lines += _evidence_lines(summary, methods, with_masks, fmt, ci)
    if with_masks:
        per_label = [f"{k.removeprefix('dice_label_')} {fmt(summary[k])} {ci(summary[k + '_ci'])}" for k in summary
                     if k.startswith("dice_label_") and not k.endswith("_ci")]  # fmt: skip
        lines += [f"Segmentation Dice of the clinical region {fmt(summary['dice'])} {ci(summary['dice_ci'])}"
                  + (f"; per label: {', '.join(per_label)}" if per_label else ""), "",
                  "Interpretability, raw explanation vs SegX, against the ground-truth mask (mean [95 % bootstrap CI]):", "",
                  "| method | metric | raw | SegX | SegX - raw |", "|---|---|---|---|---|"]  # fmt: skip
        for m in methods:
            for metric, title in INTERPRETABILITY.items():
                lines.append(f"| {m} | {title} | {fmt(summary[f'{metric}_raw_{m}'])} {ci(summary[f'{metric}_raw_{m}_ci'])} | "
                             f"{fmt(summary[f'{metric}_segx_{m}'])} {ci(summary[f'{metric}_segx_{m}_ci'])} | {ci(summary[f'{metric}_diff_{m}_ci'])} |")  # fmt: skip
        lines += ["", "![IoU](iou.png)", "", "![examples: least and most certain](examples.png)", ""]
    lines += ["Certainty: how well each score separates correct from wrong predictions.", "",
              "| certainty score | AUROC correct vs wrong | AUROC - MSP [95 % CI] | AURC | E-AURC |", "|---|---|---|---|---|"]  # fmt: skip
    for name in scores:
        difference = summary.get(f"{name}_minus_msp_auroc_ci")
        lines.append(f"| {name} | {fmt(summary[f'{name}_auroc'])} | {ci(difference) if difference else ''} | {fmt(summary[f'{name}_aurc'])} | {fmt(summary[f'{name}_eaurc'])} |")
    lines += ["", "![risk-coverage](risk_coverage.png)", "", "Definitions:", ""] + [f"- {line}" for line in DEFINITIONS] + [""]
    return "\n".join(lines)


def _evidence_lines(summary: dict, methods: list[str], with_masks: bool, fmt, ci) -> list[str]:
    """The report's first section: each map beside the region-only controls."""

    def cell(key):
        value = summary.get(key)
        return "n/a" if value is None else f"{fmt(value)} {ci(summary[f'{key}_ci'])}"

    lines = ["## Does the map carry the classifier's evidence, or only the region?", "",
             "Controls know the predicted region and nothing of the classifier (uniform, random and distance-to-edge "
             "inside it). A figure SegX reaches that the controls reach too measures the segmenter. ROAD (LeRF - MoRF, "
             "noisy linear imputation), the deletion area (MoRF: the class probability left after removing the map's "
             "top pixels) and the rank correlation with the maps of a randomised classifier can only be won by a map "
             "that follows the classifier (ROAD: higher is better; deletion and correlation: lower is better; n: "
             "studies where both maps vary, the randomised classifier's map is often all zero).", "",
             "Explanation grid (cells of the map before resampling, of the network input): "
             + "; ".join(f"{m}: {', '.join(summary[f'grid_{m}'])}" for m in methods), "",
             "| map | top-5 % IoU | pointing game | relevance mass | ROAD | deletion area | rank corr. with randomised classifier |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    rows = [(f"raw {m}", f"raw_{m}") for m in methods] + [(f"SegX {m}", f"segx_{m}") for m in methods]
    rows += [(f"control: {c} x region", f"control_{c}") for c in faithfulness.CONTROLS]
    for title, key in rows:
        overlap = [cell(f"{metric}_{key}") if with_masks else "n/a" for metric in ("iou", "pointing", "mass")]
        correlation = "" if key.startswith("control") else f"{cell(f'randcorr_{key}')} (n = {summary.get(f'randcorr_{key}_n', 0)})"
        lines.append(f"| {title} | " + " | ".join(overlap) + f" | {cell(f'road_{key}')} | {cell(f'deletion_{key}')} | {correlation} |")
    for m in methods:
        differences = [f"{c} {ci(summary[f'road_segx_minus_{c}_{m}_ci'])}" for c in faithfulness.CONTROLS if summary.get(f"road_segx_minus_{c}_{m}_ci")]
        if differences:
            lines.append(f"\nROAD of SegX {m} minus control (paired 95 % CI): " + "; ".join(differences))
    return lines + [""]


def main(model: str, data: str, out: str, methods: list[str], device: str, split: str | None = None, limit: int | None = None,
         mc_samples: int = 10, seed: int = 0, evidence: bool = True, ray_address: str | None = None, target_layer: str | None = None,
         **layout) -> int:  # fmt: skip
    """``segx evaluate``: prints progress, the report path and ``EVAL {json}`` last."""
    from ..config import load_model_pair, model_config_file

    config_file = model_config_file(model).resolve()
    pair = load_model_pair(config_file)
    studies, unknown = find_studies(pair.class_names, data, Layout(**layout), split, limit, seed)
    if limit:
        counts = {pair.class_names[c]: sum(s.label == c for s in studies) for c in sorted({s.label for s in studies})}
        print(f"--limit {limit}: {len(studies)} studies drawn per class in proportion (seed {seed}): {counts}")
    if unknown:
        print(f"skipped rows with labels unknown to the model: {unknown}")
    origin = provenance(config_file, studies, pair.class_names, data=str(data), split=split, limit=limit, seed=seed, methods=methods,
                        target_layer=target_layer)  # fmt: skip
    summary = evaluate(pair, studies, out, methods, device, mc_samples, Combination.from_config(pair.config), origin, evidence, ray_address,
                       target_layer)  # fmt: skip
    summary["unknown_labels"] = unknown
    print(f"report: {Path(out) / 'report.md'}")
    print("EVAL " + json.dumps(summary))
    return 0
