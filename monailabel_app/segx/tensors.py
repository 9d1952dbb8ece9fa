"""Whole-tensor checks used on every map and image.

Hand-written because faster: on CPU torch's boolean reductions are slow for maps of a few
100,000 voxels (``isfinite(x).all()`` ~0.7 ms and ``mask.any()`` ~0.3 ms on a 600 x 450
map on this project's 2-core machine, against ~0.04 ms for ``aminmax`` and ~0.07 ms for
``count_nonzero``; docs/BENCHMARKS.md), and ``segx evaluate`` runs them dozens of times
per study.
"""

from __future__ import annotations

import math

import torch


def all_finite(x: torch.Tensor) -> bool:
    """True when no element of ``x`` (any shape and device) is NaN or +-Inf (empty: True)."""
    if x.numel() == 0 or not (x.is_floating_point() or x.is_complex()):
        return True
    low, high = torch.aminmax(x.detach().abs() if x.is_complex() else x.detach())  # NaN propagates to both
    return math.isfinite(float(low)) and math.isfinite(float(high))


def any_true(mask: torch.Tensor) -> bool:
    """True when any element of ``mask`` (any shape, device and dtype) is non-zero."""
    return bool(torch.count_nonzero(mask))


def sum64(x: torch.Tensor, chunk: int = 1 << 20) -> float:
    """Sum of ``x`` (any shape) accumulated in float64, chunk by chunk: ``x.sum(dtype=
    torch.float64)`` first makes a float64 copy of all of ``x`` (8 bytes per element)."""
    return math.fsum(float(part.sum(dtype=torch.float64)) for part in x.reshape(-1).split(chunk))
