"""Evidence that a map carries the classifier's evidence, not only the segmenter's region.

- :func:`control_maps`: maps that know the region and nothing of the classifier (uniform,
  random and distance-to-edge inside the region). Any score SegX reaches that these reach
  too measures the segmenter, not the explanation.
- :func:`road_score`: ROAD (Rong et al., ICML 2022): remove the most (MoRF) or least
  (LeRF) relevant pixels, fill them by pytorch-grad-cam's noisy linear imputation (which
  does not leak the removed pixels' shape the way a constant fill does), and read the
  classifier's probability of its class. ``LeRF - MoRF`` averaged over the fractions is
  high only for a map whose order follows the classifier's evidence.
- :func:`randomised_classifier` + :func:`rank_correlation`: the model-parameter
  randomisation check (Adebayo et al., NeurIPS 2018): a map that barely changes when the
  classifier's weights are re-drawn does not explain the classifier.

Images are the source images ``(C, *S)`` (before the classifier's preprocessing) and maps
are on the same grid ``S``. ROAD's imputation is 2D (pixel neighbours); 3D returns None.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .imageio import Image
from .pair import ModelPair
from .refine import distance_to_region_mm
from .tensors import any_true

#: Shares of the pixels removed (MoRF) or kept-removed from the bottom (LeRF).
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.5)
CONTROLS = ("uniform", "random", "edge")


def control_maps(region: torch.Tensor, spacing: Sequence[float], seed: int) -> dict[str, torch.Tensor]:
    """Region-only maps on the region's grid ``S``: ``uniform`` (1 inside), ``random``
    (uniform noise inside, seeded) and ``edge`` (distance to the region's edge in mm,
    inside): the best a map can do knowing the region alone."""
    inside = region.bool()
    generator = torch.Generator().manual_seed(seed)
    edge = distance_to_region_mm(~inside, spacing) if any_true(~inside) else torch.ones(inside.shape)
    return {
        "uniform": inside.float(),
        "random": torch.rand(inside.shape, generator=generator) * inside,
        "edge": edge.cpu() * inside,
    }


def removal_order(relevance: torch.Tensor, seed: int) -> np.ndarray:
    """Flat indices of ``relevance (*S)``, most relevant first; ties in random (seeded)
    order. Hand-written because pytorch-grad-cam's percentile threshold removes every tied
    pixel at once: on a SegX map that is zero on 90 % of the image, removing "20 %" removes
    all of it."""
    values = relevance.detach().cpu().flatten().double().numpy()
    return np.lexsort((np.random.default_rng(seed).random(values.size), -values))


def road_score(pair: ModelPair, image: Image, maps: dict[str, torch.Tensor], class_index: int, seed: int = 0,
               fractions: Sequence[float] = ROAD_FRACTIONS) -> dict[str, float] | None:  # fmt: skip
    """ROAD ``mean_f (LeRF(f) - MoRF(f))`` of each map ``(*S)`` for ``class_index``: the
    probability after removing the least relevant share ``f`` minus that after removing
    the most relevant share, both imputed. One batched forward for all maps and fractions.
    None for 3D images."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    if len(image.spatial_shape) != 2:
        return None
    values = image.array.float()
    imputer = NoisyLinearImputer(noise=0.01 * float(values.max() - values.min()))
    torch.manual_seed(seed)  # the imputer's noise
    perturbed = []
    for relevance in maps.values():
        order = removal_order(relevance, seed)
        for fraction in fractions:
            count = int(round(fraction * order.size))
            for removed in (order[:count], order[order.size - count :]):  # MoRF, LeRF
                keep = torch.ones(order.size)
                keep[torch.as_tensor(removed.copy())] = 0
                perturbed.append(imputer(values, keep.reshape(image.spatial_shape)))
    probabilities = _probabilities(pair, perturbed, image.affine)[:, class_index].reshape(len(maps), len(fractions), 2)
    return {name: float((p[:, 1] - p[:, 0]).mean()) for name, p in zip(maps, probabilities)}


def _probabilities(pair: ModelPair, images: list[torch.Tensor], affine: np.ndarray) -> torch.Tensor:
    """Class probabilities ``(N, C)`` of source images ``(C_in, *S)`` through the pair's
    classifier pipeline."""
    device = next(pair.classifier.parameters()).device
    x = torch.cat([pair.classifier_input(image, affine) for image in images]).to(device)
    with torch.no_grad():
        logits = pair.classifier(x).double()
    return (logits.sigmoid() if pair.multi_label else logits.softmax(1)).cpu()


def randomised_classifier(classifier: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``classifier`` with every layer's parameters re-drawn by its own
    initialiser (``reset_parameters``), in eval mode; the original is untouched."""
    twin = copy.deepcopy(classifier)
    torch.manual_seed(seed)
    for module in twin.modules():
        if hasattr(module, "reset_parameters") and module is not twin:
            module.reset_parameters()
    return twin.eval()


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman rank correlation of two maps of one shape; None when either is constant
    (a randomised classifier's Grad-CAM is often all zero: no ranking to compare)."""
    from scipy.stats import spearmanr

    x, y = a.detach().cpu().flatten().numpy(), b.detach().cpu().flatten().numpy()
    if x.std() == 0 or y.std() == 0:
        return None
    return float(spearmanr(x, y).statistic)
