"""``segx calibrate``: choose a model's default SegU variant, its certainty levels and its
combination with the max softmax probability on a labelled validation split (never the
test split) and store them in the model configuration."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from ..certainty import DEFAULT_VARIANT, VARIANTS, LevelThresholds, calibrate_levels, fit_combination, save_levels
from ..config import load_model_pair
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
        "combination": {"variant", "weights", "auroc"}, "combinations": {variant: weights},
        "msp_auroc"}``; ``combinations`` holds the combination fitted for every SegU variant
        (``segx shortcut`` compares each with the same variant fitted elsewhere).
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
    calibrated_on = {"data": Path(data).resolve().name, "split": split, "n": len(records), "accuracy": float(correct.mean()),
                     "class_counts": dict(sorted(Counter(r["label"] for r in records).items()))}  # fmt: skip
    save_levels(config_file, levels, combination={"variant": combination.variant, "weights": combination.weights, "split": split},
                calibrated_on=calibrated_on)  # fmt: skip
    update_model_card(config_file)
    return {"split": split, "n": len(records), "accuracy": float(correct.mean()), "auroc": alone, "variant": variant,
            "levels": _levels_summary(levels), "msp_auroc": separation(msp), "calibrated_on": calibrated_on,
            "combination": {"variant": best, "weights": combination.weights, "auroc": together[best]},
            "combinations": {v: c.weights for v, c in combinations.items()}}  # fmt: skip


def _levels_summary(levels: LevelThresholds) -> dict:
    """The thresholds, and for each one not earned a sentence saying why it is not shown."""
    summary: dict = {"low": levels.low, "high": levels.high}
    bound = f"{levels.confidence:.0%} Clopper-Pearson bound (on at least {levels.min_support} studies, Bonferroni-corrected for the thresholds scanned)"
    if levels.high is None:
        summary["high_not_earned"] = f"no certainty threshold has an accuracy above it whose lower {bound} reaches {levels.high_accuracy}"
    if levels.low is None:
        summary["low_not_earned"] = f"no certainty threshold has an accuracy below it whose upper {bound} stays under {levels.low_accuracy}"
    return summary


LEVELS_HEADING = "## Certainty levels"


def levels_section(certainty: dict, model: str) -> str:
    """The model card's "Certainty levels" section, from a configuration's ``certainty``
    section: the thresholds or why a level is not shown, and on which data they were
    calibrated (``calibrated_on``; configurations calibrated before it was recorded give
    the split and size only)."""
    levels = LevelThresholds(**{k: certainty[k] for k in LevelThresholds.__dataclass_fields__})
    origin = certainty.get("calibrated_on")
    split = origin["split"] if origin else (certainty.get("combination") or {}).get("split", "val")
    if origin:
        counts = ", ".join(f"{name} {n}" for name, n in origin["class_counts"].items())
        where = f"the `{split}` split of `{origin['data']}` ({origin['n']} studies: {counts}; accuracy {origin['accuracy']:.3f})"
    else:
        where = f"the `{split}` split of the training data ({levels.n_validation} studies)"
    summary = _levels_summary(levels)
    shown = [f"- **{name}**: SegU {'>=' if name == 'high' else '<'} {summary[name]:.3f}" if summary[name] is not None
             else f"- **{name}**: not shown ({summary[f'{name}_not_earned']})" for name in ("high", "low")]  # fmt: skip
    if levels.low is None and levels.high is None:
        shown.append('- readouts therefore say "not calibrated" instead of a level')
    else:
        shown.append("- between them (or where a level is not shown): **medium**")
    return "\n".join([
        LEVELS_HEADING, "",
        f"Calibrated by `segx calibrate` on {where}, SegU `{levels.variant}`. A level is shown only when its threshold "
        f"reaches the target accuracy (high: >= {levels.high_accuracy}, low: <= {levels.low_accuracy}) with a "
        f"{levels.confidence:.0%} Clopper-Pearson bound on at least {levels.min_support} studies, taken at "
        f"1 - {1 - levels.confidence:.2g} / m for the m thresholds the scan could pick (Bonferroni), so that it holds "
        "for the threshold it picked.", "",
        *shown, "",
        "The levels describe studies like that split: the same sources, scanners and population as the training data. "
        "They do not transfer to another site, scanner or population; calibrate again on labelled studies from there "
        f"(`segx calibrate --model {model} --data NEW_DATA --split val`).", "",
    ])  # fmt: skip


def update_model_card(config_file: str | Path) -> Path | None:
    """Write :func:`levels_section` into ``<config stem>_model_card.md`` beside the
    configuration, replacing an earlier one (the card's other sections are kept); None
    when the model has no card or no certainty section."""
    config_file = Path(config_file)
    card = config_file.with_name(f"{config_file.stem}_model_card.md")
    certainty = (yaml.safe_load(config_file.read_text()) or {}).get("certainty")
    if not card.exists() or not certainty:
        return None
    text = card.read_text()
    if LEVELS_HEADING in text:
        before, _, rest = text.partition(LEVELS_HEADING)
        after = rest[rest.index("\n## "):] if "\n## " in rest else ""
        text = before.rstrip("\n") + "\n\n" + levels_section(certainty, config_file.stem) + after
    else:
        text = text.rstrip("\n") + "\n\n" + levels_section(certainty, config_file.stem)
    card.write_text(text)
    return card
