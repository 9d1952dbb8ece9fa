"""SegX refinement: align an explanation map with the clinically relevant region.

All functions work on single maps without batch or channel dimensions, i.e. tensors of
shape ``(H, W)`` in 2D or ``(D, H, W)`` in 3D, on any device.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from .tensors import all_finite, any_true


def top_k_count(percent: float, n: int) -> int:
    """Number of elements kept by a top-``percent`` % selection of ``n`` elements.

    ``ceil(percent / 100 * n)``, computed with exact rational arithmetic so that e.g.
    ``5 %`` of ``200`` is exactly 10 (floating point would give 10.000000000000002 -> 11).
    """
    if not 0 < percent <= 100:
        raise ValueError(f"top-k percent must be in (0, 100], got {percent}")
    return math.ceil(Fraction(str(percent)) * n / 100)


def top_k_mask(explanation: torch.Tensor | np.ndarray, percent: float) -> torch.Tensor:
    """Binarise a map by keeping its top ``percent`` % elements.

    Rule: ``ceil(percent / 100 * N)`` elements are selected (``N`` = number of elements),
    highest values first; ties are broken by the lower flat (C-order) index, so the
    selection is reproducible on every platform. Elements without positive relevance
    (``<= 0``) are never selected: a map with fewer positive elements than that keeps only
    those (a zero is no evidence, and filling up with the lowest-index zeros would bias
    overlap scores).

    Args:
        explanation: map of shape ``(H, W)`` or ``(D, H, W)``.
        percent: share of elements to keep, in (0, 100].

    Returns:
        bool tensor of the same shape and device.
    """
    values = torch.as_tensor(explanation)
    flat = values.reshape(-1)
    if flat.numel() == 0:
        raise ValueError("cannot binarise an empty map")
    if not all_finite(flat):
        raise ValueError("cannot binarise a map containing NaN or Inf")
    keep = top_k_count(percent, flat.numel())
    threshold = _largest(flat, keep)
    if not threshold > 0:  # every positive element is among the top k; the rest are not evidence
        return (flat > 0).reshape(values.shape)
    mask = flat > threshold
    ties = torch.nonzero(flat == threshold).flatten()  # ascending flat indices
    mask[ties[: keep - int(torch.count_nonzero(mask))]] = True
    return mask.reshape(values.shape)


def _largest(flat: torch.Tensor, k: int) -> float:
    """The ``k``-th largest value of a 1-D tensor. On CPU by ``numpy.partition``: ~3x
    faster than ``torch.topk`` for k = 5 % of a few 100,000 values (an introselect instead
    of torch's partial sort; docs/BENCHMARKS.md), and ``segx evaluate`` takes three per
    study."""
    if flat.device.type == "cpu":
        array = flat.detach().numpy()
        return float(np.partition(array, array.size - k)[array.size - k])
    return float(torch.topk(flat, k, sorted=False).values.min())


def distance_to_region_mm(region: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Euclidean distance in millimetres from every voxel to the nearest region voxel.

    Args:
        region: bool map ``(H, W)`` or ``(D, H, W)``; must contain at least one voxel.
        spacing: voxel size in mm per axis, same order as the map axes.

    Returns:
        float32 tensor of the map's shape (0 inside the region), on the map's device.
    """
    if len(spacing) != region.dim():
        raise ValueError(f"spacing {tuple(spacing)} does not match a {region.dim()}D map")
    if not any_true(region):
        raise ValueError("distance to an empty region is undefined")
    outside = ~region.detach().cpu().numpy().astype(bool)
    distance = ndimage.distance_transform_edt(outside, sampling=[float(s) for s in spacing])
    return torch.as_tensor(distance, dtype=torch.float32, device=region.device)


def expand_region(region: torch.Tensor, margin_mm: float, spacing: Sequence[float]) -> torch.Tensor:
    """Grow a binary region by ``margin_mm`` millimetres, respecting anisotropic spacing.

    Args:
        region: bool map ``(H, W)`` or ``(D, H, W)``.
        margin_mm: margin in mm (0 returns the region unchanged).
        spacing: voxel size in mm per axis.

    Returns:
        bool tensor of the same shape: voxels within ``margin_mm`` of the region.
    """
    if margin_mm < 0:
        raise ValueError(f"margin must be >= 0 mm, got {margin_mm}")
    if margin_mm == 0 or not any_true(region):
        return region.bool()
    return distance_to_region_mm(region.bool(), spacing) <= margin_mm


def segx_map(explanation: torch.Tensor, clinical_mask: torch.Tensor) -> torch.Tensor:
    """SegX map ``E * M``: the explanation kept only where the clinical region is.

    Args:
        explanation: map ``(H, W)`` or ``(D, H, W)`` (raw or normalised).
        clinical_mask: binary (bool) or soft (float in [0, 1]) region of the same shape.

    Returns:
        float tensor of the same shape.
    """
    if explanation.shape != clinical_mask.shape:
        raise ValueError(
            f"clinical mask shape {tuple(clinical_mask.shape)} does not match explanation "
            f"shape {tuple(explanation.shape)}"
        )
    return explanation * clinical_mask.to(explanation.dtype)
