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

from ..imageio import Image
from ..pair import ModelPair
from ..preprocessing import resize
from ..refine import distance_to_region_mm
from ..tensors import any_true

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


def impute(pixels: np.ndarray, keep: np.ndarray, noise: float, generator: torch.Generator) -> torch.Tensor:
    """pytorch-grad-cam's noisy linear imputation (``NoisyLinearImputer``, the ROAD
    paper's): every removed pixel of ``pixels (C, H, W)`` (``keep (H, W)`` False) becomes
    the weighted mean of its 8 neighbours (weights 1/6 edge, 1/12 corner; removed
    neighbours are unknowns of the same linear system), plus Gaussian noise of standard
    deviation ``noise``. Returns float32 ``(C, H, W)``.

    Hand-written because faster: the same equations as ``setup_sparse_system``, built with
    whole-array indexing instead of its ``lil_matrix`` item assignment (~1 s of set-up for
    a 512 x 512 picture against ~0.1 s here, before a solve of 0.1-3 s); the matrix and the
    solution are checked equal to pytorch-grad-cam's in tests/test_faithfulness.py."""
    from pytorch_grad_cam.metrics.road import neighbors_weights
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    height, width = keep.shape
    known = keep.reshape(-1).astype(bool)
    flat = pixels.reshape(pixels.shape[0], -1).astype(np.float64)
    unknown = np.flatnonzero(~known)
    variable = np.full(known.size, -1)
    variable[unknown] = np.arange(unknown.size)
    rows, columns = np.divmod(unknown, width)
    weight_sum, rhs = np.zeros(unknown.size), np.zeros((unknown.size, flat.shape[0]))
    entries = []  # (equation, variable, weight) of removed neighbours
    for (d_row, d_column), weight in neighbors_weights:
        r, c = rows + d_row, columns + d_column
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        equation, neighbour = np.flatnonzero(inside), (r * width + c)[inside]
        weight_sum[equation] += weight
        given = known[neighbour]
        rhs[equation[given]] -= weight * flat[:, neighbour[given]].T
        entries.append((equation[~given], variable[neighbour[~given]], np.full(int((~given).sum()), weight)))
    diagonal = np.arange(unknown.size)
    equations, variables, weights = (np.concatenate([e[i] for e in entries] + [extra]) for i, extra in enumerate((diagonal, diagonal, -weight_sum)))
    system = coo_matrix((weights, (equations, variables)), shape=(unknown.size, unknown.size)).tocsc()
    solution = spsolve(system, rhs).reshape(unknown.size, -1)
    flat[:, unknown] = solution.T + noise * torch.randn(solution.T.shape, generator=generator, dtype=torch.float64).numpy()  # flat is astype's copy
    return torch.from_numpy(flat.reshape(pixels.shape)).float()


def road_score(pair: ModelPair, image: Image, maps: dict[str, torch.Tensor], class_index: int, seed: int = 0,
               fractions: Sequence[float] = ROAD_FRACTIONS) -> dict[str, dict[str, float]] | None:  # fmt: skip
    """ROAD and the deletion curve of each map ``(*S)`` for ``class_index``: per map
    ``{"road": mean_f (LeRF(f) - MoRF(f)), "deletion": mean_f MoRF(f)}``, with ``MoRF(f)``
    the class probability after removing the most relevant share ``f`` of the pixels and
    ``LeRF(f)`` after removing the least relevant share, both imputed by :func:`impute`.
    ``deletion`` is the area under the deletion curve sampled at ``fractions`` (lower: the
    map's top pixels matter more to the classifier); ``road`` is high only for a map whose
    order follows the classifier's evidence. One batched forward for all maps and
    fractions. None for 3D images.

    When the classifier's pipeline is a plain resize (no orientation, spacing or
    pad/crop), the pixels are removed from the network input itself (the maps resized to
    it, bilinear), as in the ROAD paper: the classifier sees exactly the imputed picture,
    and the linear system is the network grid's size, not the source picture's. Otherwise
    they are removed from the source image, which then goes through the pipeline."""
    if len(image.spatial_shape) != 2:
        return None
    prepared = pair.classifier_input.prepare(image.array, image.affine)
    on_input = prepared.record is None
    pixels = prepared.input if on_input else image.array.float()
    if on_input:
        maps = {name: resize(relevance[None].float(), pixels.shape[1:])[0] for name, relevance in maps.items()}
    noise = 0.01 * float(pixels.max() - pixels.min())
    generator = torch.Generator().manual_seed(seed)  # the imputer's noise
    perturbed = []
    for relevance in maps.values():
        order = removal_order(relevance, seed)
        for fraction in fractions:
            count = int(round(fraction * order.size))
            for removed in (order[:count], order[order.size - count :]):  # MoRF, LeRF
                keep = np.ones(order.size, dtype=bool)
                keep[removed] = False
                perturbed.append(impute(pixels.numpy(), keep.reshape(pixels.shape[1:]), noise, generator))
    device = next(pair.classifier.parameters()).device
    x = torch.stack(perturbed) if on_input else torch.cat([pair.classifier_input(p, image.affine) for p in perturbed])
    with torch.no_grad():
        logits = pair.classifier(x.to(device)).double()
    probabilities = (logits.sigmoid() if pair.multi_label else logits.softmax(1)).cpu()
    curves = probabilities[:, class_index].reshape(len(maps), len(fractions), 2)  # [..., 0] MoRF, [..., 1] LeRF
    return {name: {"road": float((p[:, 1] - p[:, 0]).mean()), "deletion": float(p[:, 0].mean())} for name, p in zip(maps, curves)}


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
