"""Controls, ROAD and the randomisation check (segx.evaluation.faithfulness) on cases whose answer is
known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segx import ModelPair, Preprocessing
from segx.evaluation.faithfulness import control_maps, impute, randomised_classifier, rank_correlation, removal_order, road_score
from segx.imageio import Image


class QuadrantBrightness(nn.Module):
    """Logits ``(B, 2)``: class 1 rises with the mean intensity of the first quadrant
    (rows and columns below half), class 0 is fixed: its evidence is in that quadrant only."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, x):
        h, w = x.shape[2] // 2, x.shape[3] // 2
        evidence = x[:, :, :h, :w].mean((1, 2, 3))
        return torch.stack([torch.zeros_like(evidence) + 0.5 * self.scale, self.scale * evidence], dim=1)


class Nothing(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 2, *x.shape[2:])


def quadrant_pair() -> ModelPair:
    return ModelPair(classifier=QuadrantBrightness(), segmenter=Nothing(), class_names=["dark", "bright"],
                     classifier_input=Preprocessing(channels=1, intensity="divide255"))  # fmt: skip


def test_controls_know_the_region_and_nothing_else():
    region = torch.zeros(20, 30, dtype=torch.bool)
    region[5:15, 10:24] = True
    controls = control_maps(region, (1.0, 1.0), seed=3)
    assert torch.equal(controls["uniform"], region.float())
    for name in ("random", "edge"):
        assert float(controls[name][~region].abs().max()) == 0 and float(controls[name][region].min()) > 0
    edge = controls["edge"]
    assert float(edge[5, 12]) == 1.0 and float(edge[9, 15]) == 5.0 == float(edge.max())  # mm to the nearest outside pixel
    assert torch.equal(control_maps(region, (1.0, 1.0), seed=3)["random"], controls["random"])


def test_removal_order_is_by_relevance_with_ties_in_seeded_random_order():
    relevance = torch.tensor([0.0, 0.9, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    order = removal_order(relevance, seed=1)
    assert list(order[:2]) == [1, 3]
    ties = [list(removal_order(relevance, seed)[2:]) for seed in range(6)]
    assert all(sorted(t) == [0, 2, 4, 5, 6, 7] for t in ties) and len({tuple(t) for t in ties}) > 1  # not by index


def test_road_prefers_the_map_on_the_classifiers_evidence():
    """The classifier reads the first quadrant only: a map on it scores a higher ROAD than
    a map on the opposite quadrant or a uniform map (whose scattered removals the imputation
    mostly restores, so both stay near 0)."""
    image = np.full((1, 32, 32), 40.0, dtype=np.float32)
    image[0, :16, :16] = 220.0  # bright evidence -> class "bright"
    image = Image(torch.from_numpy(image), (1.0, 1.0), np.eye(4))
    evidence, elsewhere = torch.zeros(32, 32), torch.zeros(32, 32)
    evidence[:16, :16] = torch.rand(16, 16) + 1
    elsewhere[16:, 16:] = torch.rand(16, 16) + 1
    scores = road_score(quadrant_pair(), image, {"evidence": evidence, "elsewhere": elsewhere, "uniform": torch.ones(32, 32)}, class_index=1)
    assert scores["evidence"]["road"] > 0.05 + max(scores["elsewhere"]["road"], scores["uniform"]["road"])


@pytest.mark.parametrize("removed", ["scattered", "block", "border"])
def test_imputation_solves_pytorch_grad_cams_system(removed):
    """The same linear system as pytorch-grad-cam's NoisyLinearImputer (its own set-up and
    solve, on a 2-channel 23 x 31 picture): equal without noise; the noise has the asked
    standard deviation and touches only removed pixels."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    rng = np.random.default_rng(0)
    pixels = rng.random((2, 23, 31))
    keep = np.ones((23, 31), dtype=bool)
    if removed == "scattered":
        keep.flat[rng.permutation(keep.size)[:300]] = False
    elif removed == "block":
        keep[5:17, 8:25] = False
    else:  # touches the picture's edges and corner
        keep[:6, :] = False
        keep[:, -4:] = False
    system, rhs = NoisyLinearImputer.setup_sparse_system(keep.astype(float), pixels, neighbors_weights)
    expected = pixels.reshape(2, -1).copy()
    expected[:, ~keep.reshape(-1)] = spsolve(csc_matrix(system), rhs).reshape(-1, 2).T
    ours = impute(pixels, keep, 0.0, torch.Generator().manual_seed(0)).double().numpy()
    assert np.allclose(ours.reshape(2, -1), expected, atol=1e-6)
    noisy = impute(pixels, keep, 0.5, torch.Generator().manual_seed(0)).double().numpy()
    assert np.array_equal(noisy[:, keep], ours[:, keep]) and np.allclose(noisy[:, keep], pixels[:, keep], atol=1e-6)
    assert 0.4 < float((noisy - ours)[:, ~keep].std()) < 0.6


def test_deletion_is_lowest_for_the_map_on_the_evidence():
    """Removing the first quadrant (the classifier's only evidence) first drops the
    'bright' probability most: the evidence map's deletion area is the lowest."""
    image = np.full((1, 32, 32), 40.0, dtype=np.float32)
    image[0, :16, :16] = 220.0
    image = Image(torch.from_numpy(image), (1.0, 1.0), np.eye(4))
    evidence, elsewhere = torch.zeros(32, 32), torch.zeros(32, 32)
    evidence[:16, :16] = torch.rand(16, 16) + 1
    elsewhere[16:, 16:] = torch.rand(16, 16) + 1
    scores = road_score(quadrant_pair(), image, {"evidence": evidence, "elsewhere": elsewhere}, class_index=1)
    assert scores["evidence"]["deletion"] < scores["elsewhere"]["deletion"] - 0.1
    assert all(0 <= s["deletion"] <= 1 for s in scores.values())


def test_road_is_not_defined_for_volumes():
    volume = Image(torch.zeros(1, 8, 8, 8), (1.0, 1.0, 1.0), np.eye(4))
    assert road_score(quadrant_pair(), volume, {"any": torch.ones(8, 8, 8)}, class_index=1) is None


def test_randomised_classifier_is_a_redrawn_copy():
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    trained = DenseNet(spatial_dims=2, in_channels=1, out_channels=2, init_features=4, growth_rate=4, block_config=(2,))
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    twin = randomised_classifier(trained, seed=1)
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())  # the original untouched
    convs = [k for k, v in twin.state_dict().items() if k.endswith("conv0.weight")]
    assert convs and not torch.equal(twin.state_dict()[convs[0]], before[convs[0]])
    assert not twin.training


def test_rank_correlation():
    a = torch.arange(20.0).reshape(4, 5)
    assert rank_correlation(a, a**3) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, torch.ones(4, 5)) is None  # undefined, not "uncorrelated"
