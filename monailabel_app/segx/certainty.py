"""SegU: how much to trust a prediction, from how far its *unrefined* explanation strays
from the clinically relevant region.

All variants take the raw explanation ``E`` of the predicted class and the binary clinical
region ``M`` on the image grid, shapes ``(H, W)`` or ``(D, H, W)``, and return a
:class:`Certainty` in [0, 1]. ``E+ = max(E, 0)``. Degenerate inputs (empty region, all-zero
map) give a defined value with a reason, never NaN.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .refine import distance_to_region_mm, top_k_mask
from .tensors import all_finite, any_true, sum64

#: Certainty given when the explanation or the region is empty: nothing supports the
#: prediction, so it is flagged for review.
DEGENERATE_CERTAINTY = 0.0


@dataclass
class Certainty:
    """A SegU score: ``value`` in [0, 1], the ``variant`` that produced it, and a one-line
    human ``reason``."""

    value: float
    variant: str
    reason: str


def _degenerate(explanation: torch.Tensor, region: torch.Tensor, variant: str) -> Certainty | None:
    if explanation.shape != region.shape:
        raise ValueError(
            f"clinical mask shape {tuple(region.shape)} does not match explanation shape {tuple(explanation.shape)}"
        )
    if not all_finite(explanation):
        raise ValueError("explanation contains NaN or Inf")
    if not any_true(region):
        return Certainty(DEGENERATE_CERTAINTY, variant, "no clinical region was found, so the explanation cannot be checked")
    if not float(explanation.max()) > 0:
        return Certainty(DEGENERATE_CERTAINTY, variant, "the explanation is empty: the classifier showed no evidence")
    return None


def _describe(value: float, what: str) -> str:
    return f"{100 * value:.0f}% of {what} lies in the clinical region"


def mass_inside(explanation: torch.Tensor, region: torch.Tensor, **_) -> Certainty:
    """Share of positive attribution mass inside the region:
    ``sum_{x in M} E+(x) / sum_x E+(x)``."""
    bad = _degenerate(explanation, region, "mass_inside")
    if bad:
        return bad
    value = _mass_share(explanation, region)
    return Certainty(value, "mass_inside", _describe(value, "the explanation's mass"))


def _positive_sums(explanation: torch.Tensor, region: torch.Tensor) -> tuple[float, float]:
    """``(sum_x E+(x), sum_{x in M} E+(x))`` accumulated in float64 from one float32 copy of
    the map (memory: about 5 bytes per voxel, not the 16+ of float64 copies)."""
    positive = explanation.clamp_min(0)
    return sum64(positive), sum64(positive.masked_fill_(~region, 0))


def _mass_share(explanation: torch.Tensor, region: torch.Tensor) -> float:
    """``sum_{x in M} E+(x) / sum_x E+(x)`` of a checked, non-degenerate pair."""
    total, inside = _positive_sums(explanation, region)
    return inside / total


def mass_enrichment(explanation: torch.Tensor, region: torch.Tensor, **_) -> Certainty:
    """Attribution mass inside the region beyond what its size explains:
    ``clip((m - a) / (1 - a), 0, 1)`` with ``m`` = :func:`mass_inside` and ``a = |M| / N``
    the region's share of the image (a map spread uniformly scores 0; all mass in ``M``
    scores 1). A region covering the whole image gives ``m``."""
    bad = _degenerate(explanation, region, "mass_enrichment")
    if bad:
        return bad
    mass = _mass_share(explanation, region)
    area = float(torch.count_nonzero(region)) / region.numel()
    value = mass if area >= 1.0 else float(np.clip((mass - area) / (1.0 - area), 0.0, 1.0))
    return Certainty(value, "mass_enrichment", f"explanation mass {100 * mass:.0f}% inside a region of {100 * area:.0f}% of the image")


def topk_inside(explanation: torch.Tensor, region: torch.Tensor, percent: float = 5.0, **_) -> Certainty:
    """Share of the top-``percent`` % pixels (rank rule of :func:`segx.refine.top_k_mask`)
    inside the region: ``|T_k intersect M| / |T_k|``."""
    bad = _degenerate(explanation, region, "topk_inside")
    if bad:
        return bad
    top = top_k_mask(explanation, percent)
    value = float((top & region).sum() / top.sum())
    return Certainty(value, "topk_inside", _describe(value, f"the top {percent:g}% of the explanation"))


def distance_decay(
    explanation: torch.Tensor,
    region: torch.Tensor,
    spacing: Sequence[float] | None = None,
    scale_mm: float = 10.0,
    distance: torch.Tensor | None = None,
    **_,
) -> Certainty:
    """Mass-weighted closeness to the region in millimetres:
    ``sum_x E+(x) exp(-d(x) / tau) / sum_x E+(x)``, with ``d(x)`` the Euclidean distance
    in mm from ``x`` to the region (0 inside; voxel spacing respected) and
    ``tau = scale_mm``. Evidence just outside the region costs little, evidence far away
    costs much. ``distance`` may pass a precomputed :func:`distance_to_region_mm` of
    ``region`` (it is the costly part: one Euclidean distance transform)."""
    bad = _degenerate(explanation, region, "distance_decay")
    if bad:
        return bad
    if distance is None:
        distance = distance_to_region_mm(region, spacing or [1.0] * region.dim())
    distance = distance.double()
    positive = explanation.clamp_min(0).double()
    value = float((positive * torch.exp(-distance / scale_mm)).sum() / positive.sum())
    mean_mm = float((positive * distance).sum() / positive.sum())
    return Certainty(value, "distance_decay", f"the explanation lies on average {mean_mm:.1f} mm from the clinical region")


def region_margin(explanation: torch.Tensor, region: torch.Tensor, runner_up: torch.Tensor | None = None, logit_margin: float = 0.0, **_) -> Certainty:
    """The prediction's probability over the runner-up class if only the evidence inside the
    region counted: ``sigmoid(f * L)`` with ``L = log(p_pred / p_runner_up)`` the logit margin
    and ``f = clip(sum_{x in M} (E+ - R+) / sum_x (E+ - R+), 0, 1)`` the share of the
    evidence margin that lies in the region (``R`` the runner-up's raw map, zeros for a
    one-class model; ``f = 0`` when the runner-up has as much evidence overall).
    A heuristic, not an exact decomposition: for a global-average-pool + linear head (exact
    CAM) ``sum_x (E - R)`` is the logit margin (times the pooled size) *without* the bias
    difference and *before* the ReLU that clamps negative evidence, so ``f * L`` only
    approximates the part of the margin that the clinical region supports.
    0.5: the region does not favour the prediction, which includes every study with
    ``f = 0``; on a binary head the runner-up's map often outweighs the prediction's
    (the issue that reported it found 0.5 for 28 of 40 JSRT test studies)."""
    bad = _degenerate(explanation, region, "region_margin")
    if bad:
        return bad
    total, inside = _positive_sums(explanation, region)
    if runner_up is not None:  # sums of E+ - R+ as differences of sums
        runner_total, runner_inside = _positive_sums(runner_up, region)
        total, inside = total - runner_total, inside - runner_inside
    share = float(np.clip(inside / total, 0.0, 1.0)) if total > 0 else 0.0
    value = float(1.0 / (1.0 + np.exp(-share * logit_margin)))
    return Certainty(value, "region_margin", f"{100 * share:.0f}% of the evidence for the prediction over the runner-up lies in the clinical region")


#: Variants that also need the runner-up class's raw map and the logit margin (options
#: ``runner_up``, ``logit_margin``).
NEEDS_RUNNER_UP = ("region_margin",)

VARIANTS: dict[str, Callable[..., Certainty]] = {
    "mass_inside": mass_inside,
    "mass_enrichment": mass_enrichment,
    "topk_inside": topk_inside,
    "distance_decay": distance_decay,
    "region_margin": region_margin,
}
DEFAULT_VARIANT = "mass_inside"


def segu(explanation: torch.Tensor, region: torch.Tensor, variant: str = DEFAULT_VARIANT, **options) -> Certainty:
    """Compute the SegU certainty ``variant`` (one of :data:`VARIANTS`) of a raw
    explanation ``(H, W)``/``(D, H, W)`` against a binary region of the same shape.
    ``options`` (``percent``, ``spacing``, ``scale_mm``, ``distance``, ``runner_up``,
    ``logit_margin``) go to the variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SegU variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[variant](explanation, region.bool(), **options)


@dataclass
class LevelThresholds:
    """Certainty levels calibrated on validation data by :func:`calibrate_levels`:
    ``high`` if value >= ``high``, ``low`` if value < ``low``, else ``medium``. A threshold
    that no validation evidence earned is None: that level is never shown."""

    variant: str
    low: float | None
    high: float | None
    high_accuracy: float
    low_accuracy: float
    n_validation: int
    min_support: int = 10
    confidence: float = 0.95

    def level(self, value: float) -> str:
        if self.high is not None and value >= self.high:
            return "high"
        if self.low is not None and value < self.low:
            return "low"
        return "medium"


def _accuracy_bounds(correct: np.ndarray, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of the accuracy of ``correct``."""
    from scipy.stats import binomtest

    interval = binomtest(int(correct.sum()), int(correct.size)).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)


def _corrected(confidence: float, tests: int) -> float:
    """The confidence of each of ``tests`` bounds for ``confidence`` over all of them (Bonferroni)."""
    return 1.0 - (1.0 - confidence) / max(tests, 1)


def calibrate_levels(
    certainty: Sequence[float],
    correct: Sequence[bool],
    variant: str,
    high_accuracy: float = 0.9,
    low_accuracy: float = 0.5,
    min_support: int = 10,
    confidence: float = 0.95,
) -> LevelThresholds:
    """Choose level thresholds on a labelled validation set, claiming only what it shows.

    ``high`` is the smallest certainty ``t`` such that at least ``min_support`` predictions
    have certainty >= ``t`` and the lower Clopper-Pearson bound of their accuracy is >=
    ``high_accuracy``; ``low`` is the largest ``t`` (<= ``high``) such that at least
    ``min_support`` predictions lie below ``t`` and the upper bound of their accuracy is <=
    ``low_accuracy``. The scan tries many thresholds and keeps one, so each bound is taken
    at ``1 - (1 - confidence) / m`` (Bonferroni over the ``m`` thresholds with enough support
    that the scan could pick): the stated ``confidence`` then holds for the threshold it
    picks. When no threshold qualifies, that threshold is None: 22 validation studies, say,
    can never earn a "high" at 90 % (22 of 22 correct gives a lower bound of 0.85 even
    before the correction).
    """
    values = np.asarray(certainty, dtype=float)
    hits = np.asarray(correct, dtype=bool)
    if values.ndim != 1 or values.shape != hits.shape or values.size == 0:
        raise ValueError("certainty and correct must be non-empty 1-D sequences of equal length")
    if not np.isfinite(values).all():
        raise ValueError("certainty contains NaN or Inf")
    candidates = np.unique(values)
    above = [t for t in candidates if (values >= t).sum() >= min_support]
    below = [t for t in candidates if (values < t).sum() >= min_support]
    high_confidence, low_confidence = _corrected(confidence, len(above)), _corrected(confidence, len(below))
    high = next((float(t) for t in above if _accuracy_bounds(hits[values >= t], high_confidence)[0] >= high_accuracy), None)
    ceiling = high if high is not None else np.inf
    low = next((float(t) for t in reversed(below) if t <= ceiling and _accuracy_bounds(hits[values < t], low_confidence)[1] <= low_accuracy), None)
    return LevelThresholds(variant, low, high, high_accuracy, low_accuracy, int(values.size), min_support, confidence)


def save_levels(config_path: str | Path, thresholds: LevelThresholds, **more) -> None:
    """Store thresholds (and ``more`` items) under the ``certainty`` key of a model
    configuration file (``.json``, ``.yaml`` or ``.yml``), keeping every other key."""
    path = Path(config_path)
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    config: dict = {}
    if path.exists():
        text = path.read_text()
        if yaml_file:
            import yaml

            config = yaml.safe_load(text) or {}
        else:
            config = json.loads(text or "{}")
    config["certainty"] = {**(config.get("certainty") or {}), **asdict(thresholds), **more}
    if yaml_file:
        import yaml

        path.write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        path.write_text(json.dumps(config, indent=2) + "\n")


def load_levels(config: dict) -> LevelThresholds | None:
    """Thresholds from a model configuration's ``certainty`` section, or None."""
    section = config.get("certainty")
    if not section or (section.get("low") is None and section.get("high") is None):
        return None  # nothing calibrated, or no level earned: show no level at all
    return LevelThresholds(**{k: section[k] for k in LevelThresholds.__dataclass_fields__ if k in section})


@dataclass
class Combination:
    """SegU combined with the max softmax probability by logistic regression fitted on
    validation data: ``score = sigmoid(w0 + w1 * logit(msp) + w2 * segu)`` with the SegU
    ``variant``; a certainty in (0, 1), higher = more likely correct."""

    variant: str
    weights: list[float]

    def __call__(self, msp: float, segu_value: float) -> float:
        features = _combination_features(np.array([msp]), np.array([segu_value]))
        return float(1.0 / (1.0 + np.exp(-(features @ np.asarray(self.weights))[0])))

    @classmethod
    def from_config(cls, config: dict) -> "Combination | None":
        section = (config.get("certainty") or {}).get("combination")
        return cls(section["variant"], [float(w) for w in section["weights"]]) if section else None


def _combination_features(msp: np.ndarray, segu_values: np.ndarray) -> np.ndarray:
    """``(N, 3)``: 1, logit(msp), segu."""
    p = np.clip(msp, 1e-6, 1 - 1e-6)
    return np.stack([np.ones_like(p), np.log(p / (1 - p)), segu_values], 1)


def fit_combination(msp: Sequence[float], segu_values: Sequence[float], correct: Sequence[bool], variant: str, l2: float = 1e-2) -> Combination:
    """Logistic regression of ``correct`` on (logit(msp), segu) by Newton's method with a
    small L2 penalty on the two slopes (so separable data still give finite weights)."""
    x = _combination_features(np.asarray(msp, float), np.asarray(segu_values, float))
    y = np.asarray(correct, float)
    penalty = np.diag([0.0, l2, l2])
    w = np.zeros(3)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) + penalty @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty + 1e-9 * np.eye(3)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Combination(variant, [float(v) for v in w])
