"""``segx calibrate``: choose a model's default SegU variant, its certainty levels and its
combination with the max softmax probability on a labelled validation split (never the
test split) and store them in the model configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .certainty import DEFAULT_VARIANT, VARIANTS, LevelThresholds, calibrate_levels, fit_combination, save_levels
from .config import load_model_pair
from .datasets import Layout, find_studies
from .evaluate import study_records
from .metrics import certainty_auroc


def calibrate(config_file: str | Path, data: str | Path, layout: Layout = Layout(), split: str = "val", limit: int | None = None,
              device: str = "cpu", variant: str | None = None, seed: int = 0) -> dict:  # fmt: skip
    """Explain every study of ``split`` and store in ``config_file``:

    - ``certainty.variant``: ``variant`` if given, else the SegU variant whose certainty
      best separates correct from wrong predictions (AUROC; ties keep the default
      variant), with its level thresholds;
    - ``certainty.combination``: the logistic combination of MSP with the SegU variant that
      separates best together (in-sample AUROC on ``split``; ``variant`` if given).

    Returns:
        ``{"split", "n", "accuracy", "auroc": {variant: value}, "variant", "levels",
        "combination": {"variant", "weights", "auroc"}, "msp_auroc"}``.
    """
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown SegU variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if split == "test":
        raise ValueError("calibrating on the test split would let the test set choose the thresholds it is then judged by; use the val split")
    pair = load_model_pair(config_file)
    studies, _ = find_studies(pair.class_names, data, layout, split, limit, seed)
    records = study_records(pair, studies, [], device, mc_samples=0, desc=f"calibrating on {split}")
    correct = np.array([r["correct"] for r in records], dtype=bool)
    both_outcomes = 0 < correct.sum() < len(correct)

    def separation(scores) -> float:
        return certainty_auroc(scores, correct) if both_outcomes else 0.5

    variants, fixed = sorted(VARIANTS), variant is not None
    alone = {v: separation([r[f"segu_{v}"] for r in records]) for v in variants}
    variant = variant or max(variants, key=lambda v: (alone[v], v == DEFAULT_VARIANT))
    levels = calibrate_levels([r[f"segu_{variant}"] for r in records], correct, variant)
    msp = [r["msp"] for r in records]
    combinations = {v: fit_combination(msp, [r[f"segu_{v}"] for r in records], correct, v) for v in variants}
    together = {v: separation([c(m, r[f"segu_{v}"]) for m, r in zip(msp, records)]) for v, c in combinations.items()}
    best = variant if fixed else max(variants, key=lambda v: (together[v], v == variant))
    combination = combinations[best]
    save_levels(config_file, levels, combination={"variant": combination.variant, "weights": combination.weights, "split": split})
    return {"split": split, "n": len(records), "accuracy": float(correct.mean()), "auroc": alone, "variant": variant,
            "levels": _levels_summary(levels), "msp_auroc": separation(msp),
            "combination": {"variant": best, "weights": combination.weights, "auroc": together[best]}}  # fmt: skip


def _levels_summary(levels: LevelThresholds) -> dict:
    """The thresholds, and for each one not earned a sentence saying why it is not shown."""
    summary: dict = {"low": levels.low, "high": levels.high}
    bound = f"{levels.confidence:.0%} Clopper-Pearson bound, at least {levels.min_support} studies"
    if levels.high is None:
        summary["high_not_earned"] = f"no certainty threshold has an accuracy above it whose lower {bound} reaches {levels.high_accuracy}"
    if levels.low is None:
        summary["low_not_earned"] = f"no certainty threshold has an accuracy below it whose upper {bound} stays under {levels.low_accuracy}"
    return summary
