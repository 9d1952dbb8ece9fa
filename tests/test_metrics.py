"""Tests for segx.evaluation.metrics. Every expected value is worked out by hand in the comments."""

import numpy as np
import pytest
import torch

import segx.evaluation.metrics as metrics
from segx.evaluation.metrics import (
    augrc,
    aurc,
    auroc,
    certainty_auroc,
    dice,
    eaurc,
    map_figures,
    one_vs_rest_auroc,
    pixel_auroc,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    risk_coverage_curve,
    topk_overlap,
)


def mask_from_flat(shape, flat_indices):
    """Binary mask of `shape` with ones at the given flat (C-order) indices."""
    mask = np.zeros(int(np.prod(shape)))
    mask[list(flat_indices)] = 1
    return mask.reshape(shape)


# ---------------------------------------------------------------- topk_overlap


def test_topk_overlap_4x4_numpy_and_torch():
    # E = arange(16) as 4x4; top 25% = ceil(0.25 * 16) = 4 voxels = values 12..15 = flat {12,13,14,15}.
    # G = bottom-right 2x2 block = flat {10,11,14,15}.
    # |T&G| = |{14,15}| = 2, |T|G| = 6, |T| = |G| = 4
    # iou = 2/6, dice = 2*2/(4+4) = 0.5, precision = 2/4 = 0.5
    explanation = np.arange(16.0).reshape(4, 4)
    ground_truth = mask_from_flat((4, 4), [10, 11, 14, 15])
    expected = {"iou": 2 / 6, "dice": 0.5, "precision": 0.5}
    for e, g in [(explanation, ground_truth), (torch.from_numpy(explanation), torch.from_numpy(ground_truth))]:
        result = topk_overlap(e, g, percent=25.0)
        assert set(result) == {"iou", "dice", "precision"}
        for key, value in expected.items():
            assert result[key] == pytest.approx(value)


def test_topk_overlap_3d():
    # E = arange(8) as 2x2x2; top 25% = ceil(2) = 2 voxels = flat {6,7}. G = flat {0,7}.
    # |T&G| = 1, |T|G| = 3 -> iou 1/3; dice = 2/(2+2) = 0.5; precision = 1/2.
    explanation = torch.arange(8.0).reshape(2, 2, 2)
    ground_truth = mask_from_flat((2, 2, 2), [0, 7])
    result = topk_overlap(explanation, ground_truth, percent=25.0)
    assert result["iou"] == pytest.approx(1 / 3)
    assert result["dice"] == pytest.approx(0.5)
    assert result["precision"] == pytest.approx(0.5)


def test_topk_overlap_ties_prefer_lower_index():
    # Constant 2x2 map, 50% -> 2 voxels, ties to lower flat index -> T = {0,1}. G = {1}.
    # |T&G| = 1, |T|G| = 2 -> iou 0.5; dice = 2/(2+1) = 2/3; precision = 1/2.
    # (Breaking ties the other way, T = {2,3}, would give all zeros.)
    result = topk_overlap(np.ones((2, 2)), mask_from_flat((2, 2), [1]), percent=50.0)
    assert result == pytest.approx({"iou": 0.5, "dice": 2 / 3, "precision": 0.5})


def test_topk_overlap_all_zero_map():
    # All-zero 2x2 map: no voxel has positive relevance, so T is empty (zeros are not
    # evidence; the old rule took flat 0 and scored a perfect overlap with G = {0}).
    result = topk_overlap(np.zeros((2, 2)), mask_from_flat((2, 2), [0]), percent=25.0)
    assert result == {"iou": 0.0, "dice": 0.0, "precision": 0.0}


def test_topk_keeps_only_positive_voxels_when_fewer_than_k():
    # 50 % of 8 = 4 voxels, but only flat 5 and 6 are positive: T = {5, 6}; G = {5, 6, 7}
    # -> IoU 2/3, Dice 2*2/(2+3) = 0.8, precision 1 (zero-filled, T would add flat 0, 1).
    explanation = np.zeros(8)
    explanation[[5, 6]] = [0.2, 0.9]
    result = topk_overlap(explanation.reshape(2, 4), mask_from_flat((2, 4), [5, 6, 7]), percent=50.0)
    assert result == pytest.approx({"iou": 2 / 3, "dice": 0.8, "precision": 1.0})


def test_topk_overlap_empty_mask():
    # G empty, T = {3} (max of arange(4), 25%): |T&G| = 0 -> every score 0.0.
    result = topk_overlap(np.arange(4.0).reshape(2, 2), np.zeros((2, 2)), percent=25.0)
    assert result == {"iou": 0.0, "dice": 0.0, "precision": 0.0}


def test_topk_overlap_empty_union_gives_zeros_not_nan(monkeypatch):
    # If the binary map is empty and G is empty, every denominator is 0 -> 0.0 each.
    monkeypatch.setattr(metrics, "top_k_mask", lambda e, p: torch.zeros(e.shape, dtype=torch.bool))
    result = topk_overlap(np.ones((2, 2)), np.zeros((2, 2)), percent=25.0)
    assert result == {"iou": 0.0, "dice": 0.0, "precision": 0.0}


# --------------------------------------------------------------- pointing_game


def test_pointing_game_2d_hit_and_miss():
    explanation = np.zeros((3, 4))
    explanation[1, 2] = 5.0  # max at (1, 2) = flat 6
    assert pointing_game(explanation, mask_from_flat((3, 4), [6, 7])) == 1.0
    assert pointing_game(explanation, mask_from_flat((3, 4), [5, 7])) == 0.0


def test_pointing_game_ties_take_first_maximum():
    # Maxima at flat 1 and 2; the first in C-order is flat 1.
    explanation = np.array([[0.0, 5.0], [5.0, 0.0]])
    assert pointing_game(explanation, mask_from_flat((2, 2), [1])) == 1.0
    assert pointing_game(explanation, mask_from_flat((2, 2), [2])) == 0.0


def test_pointing_game_3d_torch():
    explanation = torch.zeros(2, 2, 2)
    explanation[1, 0, 1] = 3.0  # flat 1*4 + 0*2 + 1 = 5
    assert pointing_game(explanation, torch.from_numpy(mask_from_flat((2, 2, 2), [5]))) == 1.0
    assert pointing_game(explanation, torch.from_numpy(mask_from_flat((2, 2, 2), [4]))) == 0.0


def test_pointing_game_all_zero_map_points_at_first_voxel():
    assert pointing_game(np.zeros((2, 2)), mask_from_flat((2, 2), [0])) == 1.0
    assert pointing_game(np.zeros((2, 2)), mask_from_flat((2, 2), [3])) == 0.0


# ---------------------------------------------------- relevance_mass_accuracy


def test_relevance_mass_accuracy_ignores_negative_relevance():
    # E = [[2,-1],[3,1]]: positive part [[2,0],[3,1]], total 6. G = top row -> 2 + 0 = 2 -> 2/6.
    explanation = np.array([[2.0, -1.0], [3.0, 1.0]])
    ground_truth = np.array([[1, 1], [0, 0]])
    assert relevance_mass_accuracy(explanation, ground_truth) == pytest.approx(1 / 3)


def test_relevance_mass_accuracy_3d():
    # E = arange(8), total 28; G = flat {1,7} -> (1 + 7) / 28 = 2/7.
    explanation = torch.arange(8.0).reshape(2, 2, 2)
    assert relevance_mass_accuracy(explanation, mask_from_flat((2, 2, 2), [1, 7])) == pytest.approx(2 / 7)


def test_relevance_mass_accuracy_no_positive_relevance_is_zero():
    ground_truth = mask_from_flat((2, 2), [0])
    assert relevance_mass_accuracy(np.zeros((2, 2)), ground_truth) == 0.0
    assert relevance_mass_accuracy(-np.ones((2, 2)), ground_truth) == 0.0


# ---------------------------------------------------- relevance_rank_accuracy


def test_relevance_rank_accuracy_2d():
    # E = [[4,3],[2,1]], G = flat {1,2} -> K = 2, top-2 = flat {0,1}; 1 of them in G -> 1/2.
    explanation = np.array([[4.0, 3.0], [2.0, 1.0]])
    assert relevance_rank_accuracy(explanation, mask_from_flat((2, 2), [1, 2])) == pytest.approx(0.5)


def test_relevance_rank_accuracy_ties_prefer_lower_index():
    # Constant map: top-2 = flat {0,1}.
    assert relevance_rank_accuracy(np.ones((2, 2)), mask_from_flat((2, 2), [0, 1])) == 1.0
    assert relevance_rank_accuracy(np.ones((2, 2)), mask_from_flat((2, 2), [2, 3])) == 0.0


def test_relevance_rank_accuracy_3d():
    # E = arange(8), G = flat {0,6,7} -> K = 3, top-3 = flat {7,6,5}; {6,7} in G -> 2/3.
    explanation = torch.arange(8.0).reshape(2, 2, 2)
    assert relevance_rank_accuracy(explanation, mask_from_flat((2, 2, 2), [0, 6, 7])) == pytest.approx(2 / 3)


def test_relevance_rank_accuracy_empty_mask_is_zero():
    assert relevance_rank_accuracy(np.arange(4.0).reshape(2, 2), np.zeros((2, 2))) == 0.0


# ------------------------------------------------------------------ pixel_auroc


def test_pixel_auroc_2d_with_tie():
    # Positives {0.9, 0.4}, negatives {0.4, 0.1}.
    # Pairs: 0.9>0.4 (1), 0.9>0.1 (1), 0.4=0.4 (0.5), 0.4>0.1 (1) -> 3.5/4 = 0.875.
    explanation = np.array([[0.9, 0.4], [0.4, 0.1]])
    assert pixel_auroc(explanation, np.array([[1, 1], [0, 0]])) == pytest.approx(0.875)


def test_pixel_auroc_3d():
    # E = arange(8), positives flat {5,6}, negatives {0,1,2,3,4,7}.
    # 5 beats 5 negatives, 6 beats 5 negatives -> 10/12 = 5/6.
    explanation = torch.arange(8.0).reshape(2, 2, 2)
    assert pixel_auroc(explanation, mask_from_flat((2, 2, 2), [5, 6])) == pytest.approx(5 / 6)


def test_pixel_auroc_empty_or_full_mask_is_half():
    explanation = np.arange(4.0).reshape(2, 2)
    assert pixel_auroc(explanation, np.zeros((2, 2))) == 0.5
    assert pixel_auroc(explanation, np.ones((2, 2))) == 0.5


def test_pixel_auroc_all_zero_map_is_half():
    # Every pair ties -> 0.5.
    assert pixel_auroc(np.zeros((2, 2)), mask_from_flat((2, 2), [0])) == pytest.approx(0.5)


# ------------------------------------------------------------------------ auroc


def test_auroc_textbook_example():
    # Positives {0.35, 0.8}, negatives {0.1, 0.4}: 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True])) == pytest.approx(0.75)


def test_auroc_perfect_and_inverted():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0


def test_auroc_ties_count_half():
    # Positive 0.5 vs negatives {0.5, 0.2}: 0.5 + 1 -> 1.5/2 = 0.75.
    assert auroc([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.75)
    # All scores equal -> every pair ties -> 0.5.
    assert auroc([1.0, 1.0, 1.0, 1.0], [1, 0, 1, 0]) == pytest.approx(0.5)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_auroc_one_class_raises(labels):
    with pytest.raises(ValueError, match="one class"):
        auroc([0.1, 0.2, 0.3], labels)


def test_auroc_requires_1d():
    with pytest.raises(ValueError, match="1-D"):
        auroc(np.ones((2, 2)), np.array([[1, 0], [0, 1]]))


# ------------------------------------------------------------ certainty metrics

# Shared case: certainty [0.9, 0.2, 0.7, 0.5], correct [1, 0, 0, 1].
# Descending order: 0.9 (ok), 0.7 (wrong), 0.5 (ok), 0.2 (wrong).
# Cumulative errors 0, 1, 1, 2 -> risk [0, 1/2, 1/3, 2/4]; coverage [1/4, 2/4, 3/4, 1].
# AURC = (0 + 1/2 + 1/3 + 1/2) / 4 = (4/3) / 4 = 1/3.
# Oracle order ok, ok, wrong, wrong -> risk [0, 0, 1/3, 1/2] -> (5/6)/4 = 5/24.
# E-AURC = 1/3 - 5/24 = 3/24 = 1/8.
# Certainty AUROC: correct {0.9, 0.5} vs wrong {0.2, 0.7}: 0.9>0.2, 0.9>0.7, 0.5>0.2 -> 3/4.
CERTAINTY = [0.9, 0.2, 0.7, 0.5]
CORRECT = [1, 0, 0, 1]


def test_risk_coverage_curve_hand_case():
    coverage, risk = risk_coverage_curve(np.array(CERTAINTY), np.array(CORRECT))
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3, 0.5])


def test_risk_coverage_curve_does_not_depend_on_the_order_of_ties():
    # All certainties equal: a threshold accepts all three or none -> risk 1/3 everywhere,
    # AURC 1/3, whatever the input order (the old curve gave 11/18 for wrong-first and
    # 1/9 for wrong-last).
    for correct in ([0, 1, 1], [1, 0, 1], [1, 1, 0]):
        coverage, risk = risk_coverage_curve(torch.tensor([0.5, 0.5, 0.5]), torch.tensor(correct))
        np.testing.assert_allclose(coverage, [1 / 3, 2 / 3, 1.0])
        np.testing.assert_allclose(risk, [1 / 3, 1 / 3, 1 / 3])
        assert aurc([0.5, 0.5, 0.5], correct) == pytest.approx(1 / 3)
    # Ties within a larger set: certainties 0.9, 0.5, 0.5, 0.1 with correct 1, 0, 1, 0:
    # groups end at 1 (risk 0), 3 (1 wrong of 3), 4 (2 of 4) -> AURC = (0 + 1/3 + 1/3 + 1/2) / 4.
    assert aurc([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx((0 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    assert aurc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx((0 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    # E-AURC subtracts the oracle without ties: correct 1, 1, then wrong -> (0 + 0 + 1/3 + 1/2) / 4.
    assert eaurc([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 4 - (1 / 3 + 1 / 2) / 4)


def test_aurc_eaurc_certainty_auroc_hand_case():
    assert aurc(CERTAINTY, CORRECT) == pytest.approx(1 / 3)
    assert eaurc(CERTAINTY, CORRECT) == pytest.approx(1 / 8)
    assert certainty_auroc(CERTAINTY, CORRECT) == pytest.approx(0.75)


def test_augrc_hand_case():
    # Sorted 0.9 (right), 0.7 (wrong), 0.5 (right), 0.2 (wrong): accepted-and-wrong counts
    # 0, 1, 1, 2 of N = 4 at coverages 1/4 .. 1 -> AUGRC = (0 + 1/4 + 1/4 + 2/4) / 4 = 1/4.
    assert augrc(CERTAINTY, CORRECT) == pytest.approx(1 / 4)
    # All tied: every threshold accepts all three, one of them wrong -> 1/3 at each point.
    assert augrc([0.5, 0.5, 0.5], [1, 0, 1]) == pytest.approx(1 / 3)
    assert augrc([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx((0 + 0 + 1 / 3) / 3)


def test_eaurc_of_oracle_ranking_is_zero():
    # Correct cases already ranked first -> AURC equals the oracle's (0 + 0 + 1/3)/3 = 1/9.
    assert aurc([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(1 / 9)
    assert eaurc([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(0.0)


def test_all_correct_gives_zero_risk_and_one_class_auroc_error():
    assert aurc([0.3, 0.9], [1, 1]) == 0.0
    assert eaurc([0.3, 0.9], [1, 1]) == 0.0
    with pytest.raises(ValueError, match="one class"):
        certainty_auroc([0.3, 0.9], [1, 1])


# ------------------------------------------------------------------ validation

MAP_FUNCTIONS = [
    topk_overlap,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    pixel_auroc,
]
VECTOR_FUNCTIONS = [auroc, risk_coverage_curve, aurc, eaurc, certainty_auroc]


@pytest.mark.parametrize("function", MAP_FUNCTIONS)
def test_map_metrics_reject_shape_mismatch(function):
    with pytest.raises(ValueError, match="shape mismatch"):
        function(np.ones((4, 4)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="shape mismatch"):
        function(torch.ones(2, 4, 4), torch.ones(4, 4))


@pytest.mark.parametrize("function", MAP_FUNCTIONS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_map_metrics_reject_non_finite(function, bad):
    explanation = np.ones((2, 2))
    explanation[0, 1] = bad
    with pytest.raises(ValueError, match="explanation contains NaN or Inf"):
        function(explanation, np.ones((2, 2)))
    with pytest.raises(ValueError, match="ground_truth contains NaN or Inf"):
        function(np.ones((2, 2)), explanation)


@pytest.mark.parametrize("function", MAP_FUNCTIONS)
def test_map_metrics_reject_empty(function):
    with pytest.raises(ValueError, match="empty"):
        function(np.zeros((0, 4)), np.zeros((0, 4)))


@pytest.mark.parametrize("function", VECTOR_FUNCTIONS)
def test_vector_metrics_reject_invalid_input(function):
    with pytest.raises(ValueError, match="shape mismatch"):
        function([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="NaN or Inf"):
        function([0.1, np.nan, 0.3], [1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        function([], [])


def test_dice_of_two_masks():
    # P = flat {0, 1, 2}, G = flat {1, 2, 3, 4}: overlap 2 -> 2 * 2 / (3 + 4) = 4/7
    prediction = mask_from_flat((2, 3), [0, 1, 2])
    truth = mask_from_flat((2, 3), [1, 2, 3, 4])
    assert dice(prediction, truth) == pytest.approx(4 / 7)
    assert dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))) == 1.0  # both empty: they agree (MONAI, ignore_empty=False)
    assert dice(np.zeros((2, 3)), truth) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice(prediction, np.zeros((3, 2)))


def test_dice_is_monais_compute_dice():
    from monai.metrics import compute_dice

    rng = np.random.default_rng(11)
    for trial in range(30):
        shape = (17, 23) if trial % 2 else (5, 9, 7)
        prediction = rng.random(shape) < rng.uniform(0, 0.6) * (trial % 7 != 0)  # some empty predictions
        truth = (rng.random(shape) < rng.uniform(0, 0.6) * (trial % 5 != 0)) * 255.0  # some empty truths
        as_batch = lambda mask: torch.as_tensor(mask > 0, dtype=torch.float32)[None, None]  # noqa: E731
        expected = float(compute_dice(as_batch(prediction), as_batch(truth), include_background=True, ignore_empty=False))
        assert dice(prediction, truth) == pytest.approx(expected, abs=1e-6), trial


def test_one_vs_rest_auroc_by_hand():
    # class 0: positives score 0.9, 0.4; negatives 0.5, 0.1 -> pairs won 3 of 4 -> 0.75
    # class 1: positives score 0.5, 0.9 (rows 2, 3) vs 0.1, 0.6 -> 0.5 loses to 0.6 -> 3 of 4 -> 0.75
    # class 2: absent -> None
    probabilities = [[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.5, 0.5, 0.0], [0.1, 0.9, 0.0]]
    macro, per_class = one_vs_rest_auroc(probabilities, [0, 0, 1, 1])
    assert per_class == [0.75, 0.75, None] and macro == pytest.approx(0.75)
    assert one_vs_rest_auroc([[0.2, 0.8], [0.3, 0.7]], [1, 1]) == (None, [None, None])


def test_map_figures_are_the_single_metrics_of_one_map():
    rng = np.random.default_rng(4)
    explanation = rng.normal(size=(30, 40))
    explanation[rng.random((30, 40)) < 0.3] = 0.0  # ties at zero
    ground_truth = np.zeros((30, 40))
    ground_truth[5:20, 10:30] = 255
    figures = map_figures(explanation, ground_truth, 5.0)
    assert figures == {**topk_overlap(explanation, ground_truth, 5.0), "pointing": pointing_game(explanation, ground_truth),
                       "mass": relevance_mass_accuracy(explanation, ground_truth)}  # fmt: skip
    with pytest.raises(ValueError, match="NaN"):
        map_figures(np.full((3, 3), np.nan), np.ones((3, 3)))
