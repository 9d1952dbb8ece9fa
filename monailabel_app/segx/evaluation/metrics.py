"""Evaluation metrics for segmentation explanations (SegX) and certainty (SegU).

Explanation metrics compare a relevance map ``explanation`` with a
ground-truth mask ``ground_truth`` of the same spatial shape, ``(H, W)`` or
``(D, H, W)`` (no channel dimension); voxels with ``ground_truth > 0`` form
the region. Certainty metrics take 1-D arrays of shape ``(N,)``: one
certainty score and one correctness flag (``correct > 0``) per case.

All functions accept numpy arrays or torch tensors, work in float64, and
raise ``ValueError`` when the two inputs differ in shape, are empty, or
contain NaN/Inf.

Ranking rule shared by all rank-based metrics: values are sorted in
descending order with a stable sort, so ties are broken by the lower flat
(C-order) index first.
"""

from __future__ import annotations

import numpy as np
import torch

from ..refine import top_k_mask


def _to_float64(x, name: str) -> np.ndarray:
    """Return ``x`` (numpy array or torch tensor) as a finite, non-empty float64 array."""
    if isinstance(x, torch.Tensor):
        array = x.detach().cpu().to(torch.float64).numpy()
    else:
        array = np.asarray(x, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or Inf")
    return array


def _values_and_mask(values, labels, names: tuple[str, str], one_d: bool = False):
    """Validate a (values, labels) pair of equal shape and return ``(values, labels > 0)``.

    With ``one_d=True`` both inputs must additionally be 1-D, shape ``(N,)``.
    """
    values = _to_float64(values, names[0])
    labels = _to_float64(labels, names[1])
    if values.shape != labels.shape:
        raise ValueError(
            f"shape mismatch: {names[0]} has shape {values.shape}, {names[1]} has shape {labels.shape}"
        )
    if one_d and values.ndim != 1:
        raise ValueError(f"{names[0]} and {names[1]} must be 1-D, got shape {values.shape}")
    return values, labels > 0


def _explanation_and_mask(explanation, ground_truth):
    return _values_and_mask(explanation, ground_truth, ("explanation", "ground_truth"))


def _certainty_and_correct(certainty, correct):
    return _values_and_mask(certainty, correct, ("certainty", "correct"), one_d=True)


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or 0.0 when the denominator is 0."""
    return float(numerator / denominator) if denominator else 0.0


def _descending_order(values: np.ndarray) -> np.ndarray:
    """Flat indices of ``values`` from highest to lowest; ties keep the lower index first."""
    return np.argsort(-values.ravel(), kind="stable")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array in ascending order, tied values sharing their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    mean_rank = last_rank - (counts - 1) / 2.0
    return mean_rank[inverse.ravel()]


def _auroc_from_mask(scores: np.ndarray, positives: np.ndarray) -> float:
    """Mann-Whitney AUROC of validated 1-D ``scores`` for a boolean ``positives``."""
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative samples; only one class is present")
    rank_sum = _average_ranks(scores)[positives].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def topk_overlap(explanation, ground_truth, percent: float = 5.0) -> dict:
    """Overlap of the top-``percent`` % of the explanation with the ground-truth region.

    ``T = top_k_mask(explanation, percent)`` (exactly ceil(percent/100 * N)
    voxels, ties to the lower flat index) and ``G = ground_truth > 0``:

    - ``iou = |T & G| / |T | G|``
    - ``dice = 2 |T & G| / (|T| + |G|)``
    - ``precision = |T & G| / |T|``

    Each value is 0.0 when its denominator is 0.

    Args:
        explanation: relevance map, shape ``(H, W)`` or ``(D, H, W)``.
        ground_truth: mask of the same shape.
        percent: share of voxels kept, in percent.

    Returns:
        ``{"iou": float, "dice": float, "precision": float}``.
    """
    return _topk_overlap(*_explanation_and_mask(explanation, ground_truth), percent)


def _topk_overlap(values: np.ndarray, region: np.ndarray, percent: float) -> dict:
    top = top_k_mask(torch.from_numpy(values), percent).numpy()
    hits = np.count_nonzero(top & region)
    return {
        "iou": _ratio(hits, np.count_nonzero(top | region)),
        "dice": _ratio(2 * hits, np.count_nonzero(top) + np.count_nonzero(region)),
        "precision": _ratio(hits, np.count_nonzero(top)),
    }


def map_figures(explanation, ground_truth, percent: float = 5.0) -> dict:
    """:func:`topk_overlap` (``iou``, ``dice``, ``precision``), :func:`pointing_game`
    (``pointing``) and :func:`relevance_mass_accuracy` (``mass``) of one map, its inputs
    validated and converted once (``segx evaluate`` takes all five of several maps per
    study)."""
    values, region = _explanation_and_mask(explanation, ground_truth)
    return {**_topk_overlap(values, region, percent), "pointing": _pointing(values, region), "mass": _mass(values, region)}


def dice(prediction, ground_truth) -> float:
    """Dice of two masks (voxels ``> 0``) of the same shape: ``2 |P & G| / (|P| + |G|)``,
    1.0 when both are empty (they agree), 0.0 when only one is: the rule of MONAI's
    ``monai.metrics.compute_dice`` with ``ignore_empty=False``. Counted here instead of
    calling it because faster (MONAI one-hot-encodes float copies of both masks; ``segx
    evaluate`` takes one Dice per study); tests/test_metrics.py checks it equals MONAI's."""
    predicted, region = _values_and_mask(prediction, ground_truth, ("prediction", "ground_truth"))
    predicted = predicted > 0
    total = np.count_nonzero(predicted) + np.count_nonzero(region)
    return 2.0 * np.count_nonzero(predicted & region) / total if total else 1.0


def pointing_game(explanation, ground_truth) -> float:
    """Pointing game hit: 1.0 if ``argmax(explanation)`` lies in ``ground_truth > 0``, else 0.0.

    The argmax is the first maximum in flat C-order when several voxels tie.

    Args:
        explanation: relevance map, shape ``(H, W)`` or ``(D, H, W)``.
        ground_truth: mask of the same shape.
    """
    return _pointing(*_explanation_and_mask(explanation, ground_truth))


def _pointing(values: np.ndarray, region: np.ndarray) -> float:
    return float(region.ravel()[np.argmax(values)])


def relevance_mass_accuracy(explanation, ground_truth) -> float:
    """Share of positive relevance inside the region.

    ``RMA = sum(max(E, 0)[G]) / sum(max(E, 0))`` with ``G = ground_truth > 0``;
    0.0 when the explanation has no positive relevance.

    Args:
        explanation: relevance map, shape ``(H, W)`` or ``(D, H, W)``.
        ground_truth: mask of the same shape.
    """
    return _mass(*_explanation_and_mask(explanation, ground_truth))


def _mass(values: np.ndarray, region: np.ndarray) -> float:
    positive = np.clip(values, 0.0, None)
    return _ratio(positive[region].sum(), positive.sum())


def relevance_rank_accuracy(explanation, ground_truth) -> float:
    """Share of the ``K = |G|`` highest-ranked voxels that lie in the region ``G``.

    ``RRA = |top_K(E) & G| / K`` with ``G = ground_truth > 0`` and ``top_K``
    taken by the shared ranking rule (descending, ties to the lower flat
    index); 0.0 when ``K == 0``.

    Args:
        explanation: relevance map, shape ``(H, W)`` or ``(D, H, W)``.
        ground_truth: mask of the same shape.
    """
    values, region = _explanation_and_mask(explanation, ground_truth)
    k = np.count_nonzero(region)
    top_k = _descending_order(values)[:k]
    return _ratio(np.count_nonzero(region.ravel()[top_k]), k)


def auroc(scores, positives) -> float:
    """Binary AUROC of ``scores`` for the labels ``positives > 0``.

    Mann-Whitney form with average ranks ``R`` (ties count one half):
    ``AUROC = (sum(R[pos]) - P (P + 1) / 2) / (P * Q)``, where ``P`` and ``Q``
    are the numbers of positive and negative samples.

    Args:
        scores: shape ``(N,)``.
        positives: shape ``(N,)``, positive where ``> 0``.

    Raises:
        ValueError: if only one class is present (or on invalid input).
    """
    values, labels = _values_and_mask(scores, positives, ("scores", "positives"), one_d=True)
    return _auroc_from_mask(values, labels)


def one_vs_rest_auroc(probabilities, labels) -> tuple[float | None, list[float | None]]:
    """Per-class one-vs-rest AUROC of ``probabilities (N, C)`` for class indices ``labels
    (N,)`` (None for a class that is absent or the only one present) and their mean over
    the defined classes (macro AUROC; None when no class is defined)."""
    probabilities, labels = np.asarray(probabilities, dtype=float), np.asarray(labels)
    per_class = []
    for c in range(probabilities.shape[1]):
        positives = labels == c
        per_class.append(auroc(probabilities[:, c], positives) if 0 < positives.sum() < len(labels) else None)
    defined = [v for v in per_class if v is not None]
    return (float(np.mean(defined)) if defined else None), per_class


def pixel_auroc(explanation, ground_truth) -> float:
    """AUROC of the explanation values as scores for region membership.

    Same formula as :func:`auroc` over all voxels, positives ``ground_truth > 0``;
    0.5 when the region is empty or covers every voxel.

    Args:
        explanation: relevance map, shape ``(H, W)`` or ``(D, H, W)``.
        ground_truth: mask of the same shape.
    """
    values, region = _explanation_and_mask(explanation, ground_truth)
    if region.all() or not region.any():
        return 0.5
    return _auroc_from_mask(values.ravel(), region.ravel())


def risk_coverage_curve(certainty, correct) -> tuple[np.ndarray, np.ndarray]:
    """Selective-prediction risk-coverage curve, invariant to the order of tied cases.

    Cases are sorted by certainty, descending. A threshold can only accept all cases of
    equal certainty or none (as fd-shifts' curve adds a point only where the certainty
    changes), so for ``i = 1..N``: ``coverage_i = i / N`` and ``risk_i`` = number of wrong
    cases (``correct <= 0``) among the cases with certainty >= that of case ``i``, divided
    by their number (the risk at the end of ``i``'s group of ties).

    Args:
        certainty: shape ``(N,)``.
        correct: shape ``(N,)``, correct where ``> 0``.

    Returns:
        ``(coverage, risk)``, two float64 arrays of shape ``(N,)``.
    """
    accepted, wrong = _accepted_and_wrong(certainty, correct)
    return np.arange(1, accepted.size + 1, dtype=np.float64) / accepted.size, wrong / accepted


def _accepted_and_wrong(certainty, correct) -> tuple[np.ndarray, np.ndarray]:
    """For each case in descending certainty order: how many cases the threshold at its
    certainty accepts (its whole group of ties included) and how many of those are wrong;
    two float64 arrays of shape ``(N,)``."""
    values, right = _certainty_and_correct(certainty, correct)
    order = _descending_order(values)
    sorted_values = values[order]
    group_end = np.searchsorted(-sorted_values, -sorted_values, side="right") - 1  # last index of each case's ties
    return (group_end + 1).astype(np.float64), np.cumsum(~right[order])[group_end].astype(np.float64)


def aurc(certainty, correct) -> float:
    """Area under the risk-coverage curve: ``AURC = (1/N) sum_i risk_i``.

    Args:
        certainty: shape ``(N,)``.
        correct: shape ``(N,)``, correct where ``> 0``.
    """
    _, risk = risk_coverage_curve(certainty, correct)
    return float(risk.mean())


def augrc(certainty, correct) -> float:
    """Area under the generalized risk-coverage curve (Traub et al., NeurIPS 2024):
    the mean over the ``N`` thresholds of the share of *all* cases that are accepted and
    wrong (a threshold accepts a group of tied cases together, as in
    :func:`risk_coverage_curve`).

    Args:
        certainty: shape ``(N,)``.
        correct: shape ``(N,)``, correct where ``> 0``.
    """
    _, wrong = _accepted_and_wrong(certainty, correct)
    return float((wrong / wrong.size).mean())


def eaurc(certainty, correct) -> float:
    """Excess AURC: ``E-AURC = AURC(certainty) - AURC(oracle)``.

    The oracle ranks every correct case before every wrong one.

    Args:
        certainty: shape ``(N,)``.
        correct: shape ``(N,)``, correct where ``> 0``.
    """
    _, right = _certainty_and_correct(certainty, correct)
    n_right = int(right.sum())
    counts = np.arange(1, right.size + 1, dtype=np.float64)
    oracle = (np.maximum(counts - n_right, 0) / counts).mean()  # every correct case first, no ties
    return aurc(certainty, correct) - float(oracle)


def certainty_auroc(certainty, correct) -> float:
    """AUROC of certainty for separating correct (positive) from wrong predictions.

    Same formula as :func:`auroc` with positives ``correct > 0``.

    Args:
        certainty: shape ``(N,)``.
        correct: shape ``(N,)``, correct where ``> 0``.

    Raises:
        ValueError: if all predictions are correct or all are wrong.
    """
    values, right = _certainty_and_correct(certainty, correct)
    return _auroc_from_mask(values, right)
