"""The shipped HAM10000 and JSRT configurations run their plain forwards in ONNX Runtime
(``runtime: onnxruntime``): on real test images every figure equals the same pair run all
in torch. Needs ``../shared/data`` (skips with the reason where it is absent)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from segx import onnxrt
from segx.config import BUILTIN_MODELS_DIR, load_model_pair
from segx.engine import explain_many
from segx.evaluation.datasets import Layout, find_studies

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STUDIES = 12
CASES = {
    "ham10000": (Layout(labels_csv="metadata.csv", label_column="dx"), "ham10000"),
    "jsrt": (Layout(labels_csv="metadata.csv", label_column="nodule", mask_dir="lungs"), "jsrt"),
}


@pytest.mark.parametrize("model", sorted(CASES))
def test_the_shipped_onnx_configurations_give_the_torch_figures_on_real_images(model):
    layout, folder = CASES[model]
    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"../shared/data/{folder} is not present on this machine")
    ours = load_model_pair(BUILTIN_MODELS_DIR / f"{model}.yaml")
    assert onnxrt.enabled(ours.classifier) and onnxrt.enabled(ours.segmenter), "the shipped configuration must use ONNX Runtime"
    torch_only = load_model_pair(BUILTIN_MODELS_DIR / f"{model}.yaml")
    onnxrt.disable(torch_only.classifier)
    onnxrt.disable(torch_only.segmenter)
    studies, _ = find_studies(ours.class_names, SHARED_DATA / folder, layout, "test", STUDIES)
    images = [str(study.image) for study in studies]
    reference = explain_many(torch_only, images, classes="predicted")
    results = explain_many(ours, images, classes="predicted")
    for a, b in zip(reference, results):
        assert a.predicted == b.predicted and a.classes == b.classes and a.method == b.method
        np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-5)
        torch.testing.assert_close(b.explanation, a.explanation, atol=1e-4, rtol=1e-4)
        assert float((b.segmentation != a.segmentation).float().mean()) < 1e-3  # a boundary pixel may flip on a 1e-5 tie
        assert b.segu.value == pytest.approx(a.segu.value, abs=1e-3)
