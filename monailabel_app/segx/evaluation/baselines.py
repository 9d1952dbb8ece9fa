"""Certainty baselines that SegU is compared with: max softmax probability (MSP), predictive
entropy, Monte-Carlo dropout and test-time augmentation (flips).

Each returns a certainty (higher = more likely correct) for one preprocessed classifier
input ``x`` of shape ``(1, C, *S)``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from ..explainers import model_lock


def msp(probabilities: np.ndarray) -> float:
    """Max softmax probability of a probability vector ``(C,)``."""
    return float(np.max(probabilities))


def negative_entropy(probabilities: np.ndarray) -> float:
    """``sum_c p_c log p_c`` (minus the predictive entropy) of ``(C,)``."""
    p = np.clip(probabilities, 1e-12, 1.0)
    return float((p * np.log(p)).sum())


def _active_dropouts(classifier: nn.Module) -> list[nn.Module]:
    """The dropout layers that drop something (``p > 0``)."""
    return [m for m in classifier.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def mc_dropout(classifier: nn.Module, x: torch.Tensor, samples: int = 10, seed: int = 0) -> float | None:
    """MSP of the mean softmax over ``samples`` forward passes with dropout active (batch
    norm stays in eval mode); None when the classifier has no dropout layer with ``p > 0``."""
    dropouts = _active_dropouts(classifier)
    if not dropouts or samples < 1:
        return None
    with model_lock(classifier):  # no other thread runs the model while its dropout is on
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            for m in dropouts:
                m.train()
            with torch.no_grad():
                probabilities = classifier(x.expand(samples, *x.shape[1:])).softmax(1).mean(0)
        finally:
            for m in dropouts:
                m.eval()
            torch.random.set_rng_state(state)
    return float(probabilities.max())


def tta(classifier: nn.Module, x: torch.Tensor) -> float:
    """MSP of the mean softmax over every combination of flips of the spatial axes
    (4 views in 2D, 8 in 3D, identity included)."""
    axes = range(2, x.dim())
    views = [x.flip(list(chosen)) if chosen else x for n in range(len(axes) + 1) for chosen in itertools.combinations(axes, n)]
    with model_lock(classifier), torch.no_grad():
        probabilities = classifier(torch.cat(views)).softmax(1).mean(0)
    return float(probabilities.max())
