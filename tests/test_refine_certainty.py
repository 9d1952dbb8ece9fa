"""SegX refinement and SegU certainty on small hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from segx.certainty import (
    DEGENERATE_CERTAINTY,
    VARIANTS,
    calibrate_levels,
    load_levels,
    save_levels,
    segu,
)
from segx.refine import expand_region, segx_map, top_k_count, top_k_mask


def test_top_k_count_is_exact_ceil():
    assert top_k_count(5, 200) == 10  # 5 % of 200 is exactly 10, not 11
    assert top_k_count(5, 201) == 11  # 10.05 -> 11
    assert top_k_count(0.1, 7) == 1
    assert top_k_count(100, 9) == 9
    with pytest.raises(ValueError, match="percent"):
        top_k_count(0, 10)


def test_top_k_mask_breaks_ties_by_lower_index():
    values = torch.tensor([[1.0, 3.0, 3.0], [3.0, 0.0, 2.0]])
    # 50 % of 6 = 3 elements: the three 3.0 values at flat indices 1, 2, 3
    assert top_k_mask(values, 50).flatten().tolist() == [False, True, True, True, False, False]
    # 34 % of 6 = 2.04 -> 3 elements; 30 % -> 1.8 -> 2: the two lowest indices among the ties
    assert top_k_mask(values, 30).flatten().tolist() == [False, True, True, False, False, False]
    constant = torch.zeros(2, 2, 2)
    assert not top_k_mask(constant, 25).any()  # zeros are no evidence: nothing is selected
    sparse = torch.tensor([0.0, 0.0, 0.4, 0.0, 0.0, 0.0])
    assert top_k_mask(sparse, 50).flatten().tolist() == [False, False, True, False, False, False]  # 3 asked, 1 positive


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_k_mask_equals_a_stable_sort(dtype):
    """The selection rule stated in the docstring, by a full stable sort: highest first,
    ties to the lower flat index, never a value <= 0; on maps with many ties, negative
    values and fewer positive values than k."""
    rng = np.random.default_rng(7)
    for trial in range(40):
        values = np.round(rng.normal(size=(13, 17)), 1 if trial % 2 else 3)  # coarse rounding: many ties
        if trial % 5 == 0:
            values = np.minimum(values, 0) + (rng.random((13, 17)) < 0.02)  # only a few positive values
        percent = float(rng.choice([1.0, 5.0, 12.5, 50.0]))
        keep = top_k_count(percent, values.size)
        order = np.argsort(-values.ravel(), kind="stable")[:keep]
        expected = np.zeros(values.size, dtype=bool)
        expected[order] = True
        expected &= values.ravel() > 0
        assert np.array_equal(top_k_mask(torch.as_tensor(values, dtype=dtype), percent).numpy().ravel(), expected), (trial, percent)


def test_expand_region_respects_anisotropic_spacing():
    region = torch.zeros(9, 9, dtype=torch.bool)
    region[4, 4] = True
    grown = expand_region(region, margin_mm=3.0, spacing=(1.0, 3.0))
    # along axis 0 (1 mm voxels) 3 voxels each side; along axis 1 (3 mm voxels) 1 voxel
    assert grown[:, 4].nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert grown[4, :].nonzero().flatten().tolist() == [3, 4, 5]
    assert bool(grown[3, 5]) is False  # sqrt(1 + 9) = 3.16 mm > 3 mm
    assert bool(grown[4 - 2, 5]) is False
    assert torch.equal(expand_region(region, 0.0, (1.0, 3.0)), region)
    with pytest.raises(ValueError, match="margin"):
        expand_region(region, -1.0, (1.0, 1.0))


def test_segx_map_binary_soft_and_shape_check():
    explanation = torch.tensor([[0.2, 0.8], [1.0, 0.4]])
    binary = segx_map(explanation, torch.tensor([[True, False], [True, False]]))
    assert torch.equal(binary, torch.tensor([[0.2, 0.0], [1.0, 0.0]]))
    soft = segx_map(explanation, torch.tensor([[0.5, 1.0], [0.0, 0.25]]))
    assert torch.allclose(soft, torch.tensor([[0.1, 0.8], [0.0, 0.1]]))
    with pytest.raises(ValueError, match="does not match"):
        segx_map(explanation, torch.ones(3, 2))


@pytest.fixture
def case():
    """4x4 map, region = left two columns (8 of 16 pixels).

    Map values (positive mass 20): inside the region 1+2+0+1 + 3+0+0+1 = 8; outside 12.
    """
    explanation = torch.tensor(
        [[1.0, 3.0, 0.0, 4.0], [2.0, 0.0, 0.0, 5.0], [0.0, 0.0, 2.0, 0.0], [1.0, 1.0, 0.0, 1.0]]
    )
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:, :2] = True
    return explanation, region


def test_mass_inside(case):
    assert segu(*case, "mass_inside").value == pytest.approx(8 / 20)


def test_mass_enrichment(case):
    # m = 0.4, a = 0.5 -> (0.4 - 0.5) / 0.5 < 0 -> clipped to 0
    assert segu(*case, "mass_enrichment").value == 0.0
    explanation, region = case
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:2, 2:] = True  # mass 0 + 4 + 0 + 5 = 9 of 20 in 4/16 of the image
    assert segu(explanation, region, "mass_enrichment").value == pytest.approx((9 / 20 - 0.25) / 0.75)


def test_topk_inside(case):
    # top 25 % = 4 pixels: 5 (1,3), 4 (0,3), 3 (0,1), then ties at 2: (1,0) before (2,2) -> 2 of 4 inside
    assert segu(*case, "topk_inside", percent=25).value == pytest.approx(2 / 4)


def test_distance_decay_uses_millimetres():
    explanation = torch.zeros(1, 5)
    explanation[0, 4] = 1.0
    region = torch.zeros(1, 5, dtype=torch.bool)
    region[0, 0] = True
    # all mass 4 voxels away; 2 mm voxels along axis 1 -> 8 mm; tau = 10 mm
    value = segu(explanation, region, "distance_decay", spacing=(1.0, 2.0), scale_mm=10.0)
    assert value.value == pytest.approx(math.exp(-0.8))
    assert "8.0 mm" in value.reason


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_degenerate_inputs_give_defined_values_with_reasons(variant):
    explanation = torch.rand(6, 6)
    empty_region = torch.zeros(6, 6, dtype=torch.bool)
    result = segu(explanation, empty_region, variant)
    assert result.value == DEGENERATE_CERTAINTY and "no clinical region" in result.reason
    region = torch.ones(6, 6, dtype=torch.bool)
    result = segu(torch.zeros(6, 6), region, variant)
    assert result.value == DEGENERATE_CERTAINTY and "empty" in result.reason
    full = segu(explanation + 0.1, region, variant)
    assert 0.0 <= full.value <= 1.0 and not math.isnan(full.value)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_all_variants_in_unit_interval_3d(variant):
    torch.manual_seed(0)
    for _ in range(5):
        explanation = torch.randn(6, 7, 8)
        region = torch.rand(6, 7, 8) > 0.7
        value = segu(explanation, region, variant, spacing=(3.0, 1.0, 1.0)).value
        assert 0.0 <= value <= 1.0


def test_segu_bad_inputs():
    with pytest.raises(ValueError, match="unknown SegU variant"):
        segu(torch.rand(3, 3), torch.ones(3, 3), "vibes")
    with pytest.raises(ValueError, match="does not match"):
        segu(torch.rand(3, 3), torch.ones(3, 4), "mass_inside")
    with pytest.raises(ValueError, match="NaN"):
        segu(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2), "mass_inside")


def clopper_pearson(correct: int, n: int, confidence: float) -> tuple[float, float]:
    """The exact binomial interval, from the beta distribution (written here, not taken
    from segx)."""
    from scipy.stats import beta

    alpha = 1 - confidence
    low = beta.ppf(alpha / 2, correct, n - correct + 1) if correct > 0 else 0.0
    high = beta.ppf(1 - alpha / 2, correct + 1, n - correct) if correct < n else 1.0
    return float(low), float(high)


#: 20 wrong predictions at certainty 0.01 .. 0.20, then 100 correct at 0.500 .. 0.599.
WRONG = [round(0.01 * i, 2) for i in range(1, 21)]
RIGHT = [round(0.5 + 0.001 * i, 3) for i in range(100)]


def test_calibrate_levels_claim_only_what_the_validation_set_shows():
    """Bounds worked out with the beta distribution. The scan may pick any of the 111
    thresholds with >= 10 studies at or above them (120 distinct values, the last 9 have
    fewer), so each lower bound is taken at 1 - 0.05 / 111 (Bonferroni); "low" has 110."""
    levels = calibrate_levels(WRONG + RIGHT, [False] * 20 + [True] * 100, "mass_inside", high_accuracy=0.9, low_accuracy=0.5)
    high_confidence, low_confidence = 1 - 0.05 / 111, 1 - 0.05 / 110
    # >= 0.50: 100 of 100 correct, corrected lower bound 0.919; >= 0.20 (the next smaller value): 100 of 101, below 0.9
    assert clopper_pearson(100, 100, high_confidence)[0] >= 0.9 > clopper_pearson(100, 101, high_confidence)[0]
    assert levels.high == 0.50
    # below 0.50: 0 of 20 correct, corrected upper bound 0.343 <= 0.5; 0.50 is the largest t <= high
    assert clopper_pearson(0, 20, low_confidence)[1] <= 0.5 and levels.low == 0.50
    assert [levels.level(v) for v in (0.2, 0.499, 0.5, 0.9)] == ["low", "low", "high", "high"]


def test_the_scan_does_not_claim_what_only_one_threshold_of_many_shows():
    """40 of 40 correct above 0.50 has the pointwise lower bound 0.912 (the rule before the
    correction showed "high" here), but the scan had 51 thresholds to choose from: the
    corrected bound is 0.83, so no "high"."""
    right = RIGHT[:40]
    assert clopper_pearson(40, 40, 0.95)[0] >= 0.9 > clopper_pearson(40, 40, 1 - 0.05 / 51)[0]
    levels = calibrate_levels(WRONG + right, [False] * 20 + [True] * 40, "mass_inside")
    assert levels.high is None
    # "low" is then the largest threshold whose lower set is bad enough at the corrected level
    below = lambda t: [c for v, c in zip(WRONG + right, [False] * 20 + [True] * 40) if v < t]  # noqa: E731
    chosen = below(levels.low)
    assert clopper_pearson(sum(chosen), len(chosen), 1 - 0.05 / 50)[1] <= 0.5
    larger = min(v for v in WRONG + right if v > levels.low)
    assert clopper_pearson(sum(below(larger)), len(below(larger)), 1 - 0.05 / 50)[1] > 0.5


def test_too_few_validation_studies_earn_no_level():
    """22 of 22 correct: the lower bound 0.025 ** (1 / 22) = 0.846 never reaches 0.9, and
    no 10 studies are wrong enough for "low": no threshold, so no level is ever shown."""
    levels = calibrate_levels([0.1 * i for i in range(22)], [True] * 22, "mass_inside")
    assert levels.high is None and levels.low is None
    assert load_levels({"certainty": {**vars(levels)}}) is None
    few = calibrate_levels([0.1, 0.2, 0.9], [False, False, True], "mass_inside", min_support=10)
    assert few.high is None and few.low is None
    with pytest.raises(ValueError, match="equal length"):
        calibrate_levels([0.1], [True, False], "mass_inside")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_save_levels_keeps_the_model_configuration(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    config = {"name": "demo", "classes": ["a", "b"]}
    path.write_text(json.dumps(config) if suffix == ".json" else yaml.safe_dump(config))
    levels = calibrate_levels(WRONG + RIGHT, [False] * 20 + [True] * 100, "topk_inside")
    assert levels.low is not None and levels.high is not None
    save_levels(path, levels)
    loaded = json.loads(path.read_text()) if suffix == ".json" else yaml.safe_load(path.read_text())
    assert loaded["name"] == "demo" and loaded["classes"] == ["a", "b"]
    assert load_levels(loaded) == levels


def test_region_margin_is_the_margin_share_inside_the_region():
    region = torch.zeros(10, 10, dtype=torch.bool)
    region[:5] = True
    predicted, runner_up = torch.zeros(10, 10), torch.zeros(10, 10)
    predicted[:5], runner_up[:5] = 2.0, 1.0  # inside: margin 50 x (2 - 1) = 50
    predicted[5:] = 4.0  # outside: margin 50 x 4 = 200, so 20 % of the margin lies inside
    value = segu(predicted, region, "region_margin", runner_up=runner_up, logit_margin=3.0).value
    assert value == pytest.approx(1 / (1 + math.exp(-0.2 * 3.0)))
    assert segu(predicted, ~region, "region_margin", runner_up=runner_up, logit_margin=3.0).value == pytest.approx(1 / (1 + math.exp(-0.8 * 3.0)))
    assert segu(runner_up, region, "region_margin", runner_up=predicted, logit_margin=3.0).value == 0.5, "runner-up has more evidence overall"
    assert segu(predicted, region, "region_margin", logit_margin=0.0).value == 0.5
