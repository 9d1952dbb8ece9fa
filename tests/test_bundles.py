"""A research group's MONAI bundle through segx, against MONAI's own bundle pipeline.

The bundle is written the way MONAI's model-zoo bundles are (``bundle_networks.zoo_inference``,
after spleen_ct_segmentation's ``configs/inference.json``: LoadImaged, EnsureChannelFirstd, Orientationd RAS, Spacingd,
ScaleIntensityRanged, SlidingWindowInferer, Activationsd, Invertd, AsDiscreted,
SaveImaged, run by a SupervisedEvaluator). Its network (``bundle_networks.RampThreshold``)
is a known function of the preprocessed intensity and of position along the first axis,
so a volume fed unoriented gives a different answer. The reference output is what
``monai.bundle.run`` writes; segx must give the same labels on the same voxels.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from bundle_networks import zoo_inference, zoo_preprocessing

from segx import explain
from segx.config import load_model_pair
from segx.demo.phantoms import SPACING_3D, phantom_3d

WINDOW = (-57.0, 164.0)
PIXDIM = (2.0, 2.0, 2.0)
ROI = (32, 32, 32)

INFERENCE = zoo_inference({"_target_": "bundle_networks.RampThreshold"}, PIXDIM, WINDOW, ROI, sw_batch_size=2)


CLASSIFIER_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_features": 8, "growth_rate": 8, "block_config": [2, 2]}
CLASSIFIER_BUNDLE = {
    "network_def": {"_target_": "DenseNet", **CLASSIFIER_ARGS},
    "preprocessing": zoo_preprocessing((3.0, 3.0, 3.0), WINDOW, [{"_target_": "Resized", "keys": "image", "spatial_size": [32, 32, 40], "mode": "trilinear"}]),
    "postprocessing": {"_target_": "Compose", "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]},
}


def lps_storage(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same physical image stored with its first two axes running to L and P."""
    flipped = affine.copy()
    for axis, size in enumerate(volume.shape[:2]):
        flipped[:3, 3] += affine[:3, axis] * (size - 1)
        flipped[:3, axis] = -affine[:3, axis]
    return np.ascontiguousarray(volume[::-1, ::-1]), flipped


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle folder with its weights, a RAS and an LPS NIfTI of one CT phantom in
    ``data/``, the reference labels from ``monai.bundle.run`` and a segx config using it."""
    from monai.bundle import run
    from monai.networks.nets import DenseNet

    from bundle_networks import RampThreshold

    folder = tmp_path_factory.mktemp("bundle")
    (folder / "configs").mkdir()
    (folder / "models").mkdir()
    (folder / "data").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "name": "ramp_threshold"}))
    torch.save(RampThreshold().state_dict(), folder / "models" / "model.pt")

    phantom = phantom_3d(np.random.default_rng(5), label=1, marker=False)
    ras = np.diag([*SPACING_3D, 1.0])
    ras[:3, 3] = (-47.0, -40.0, -55.0)
    lps_volume, lps_affine = lps_storage(phantom.image, ras)
    nib.save(nib.Nifti1Image(phantom.image, ras), str(folder / "data" / "ras.nii.gz"))
    nib.save(nib.Nifti1Image(lps_volume, lps_affine), str(folder / "data" / "lps.nii.gz"))
    assert nib.aff2axcodes(lps_affine) == ("L", "P", "S")

    run(run_id="run", config_file=str(folder / "configs" / "inference.json"), meta_file=str(folder / "configs" / "metadata.json"), bundle_root=str(folder))
    reference = {name: np.asarray(nib.load(folder / "eval" / f"{name}_seg.nii.gz").dataobj) for name in ("ras", "lps")}

    torch.manual_seed(0)
    classifier = DenseNet(**CLASSIFIER_ARGS)
    torch.save(classifier.state_dict(), folder / "classifier.pt")
    (folder / "classifier_bundle" / "configs").mkdir(parents=True)
    (folder / "classifier_bundle" / "models").mkdir()
    (folder / "classifier_bundle" / "configs" / "inference.json").write_text(json.dumps(CLASSIFIER_BUNDLE))
    torch.save(classifier.state_dict(), folder / "classifier_bundle" / "models" / "model.pt")
    config = {
        "name": "bundle_test",
        "spatial_dims": 3,
        "classes": ["cyst", "tumour"],
        "classifier": {
            "network": "DenseNet",
            "args": CLASSIFIER_ARGS,
            "weights": "classifier.pt",
            "input": {"channels": 1, "orientation": "RAS", "spacing": [3.0, 3.0, 3.0], "intensity": list(WINDOW), "spatial_size": [32, 32, 40], "resize": "pad_crop"},
        },
        "segmenter": {"bundle": ".", "labels": {1: "bright"}},
    }
    (folder / "pair.yaml").write_text(yaml.safe_dump(config))
    return folder, reference


def explain_file(config: Path, image: Path):
    pair = load_model_pair(config)
    return explain(pair, image, method="gradcam")


@pytest.mark.parametrize("storage", ["ras", "lps"])
def test_a_bundle_segments_through_segx_as_through_its_own_pipeline(bundle, storage):
    folder, reference = bundle
    result = explain_file(folder / "pair.yaml", folder / "data" / f"{storage}.nii.gz")
    labels = result.segmentation.numpy()
    assert labels.shape == reference[storage].shape
    assert 0.02 < reference[storage].mean() < 0.5, "the reference must mark part of the volume, not nothing or everything"
    assert dice(labels == 1, reference[storage] == 1) >= 0.98


def test_ras_and_lps_storage_give_the_same_answer_on_the_same_anatomy(bundle):
    """Segmentation and explanation of the LPS file, flipped back to RAS voxel order, equal
    those of the RAS file: both networks saw the same reoriented image."""
    folder, _ = bundle
    ras = explain_file(folder / "pair.yaml", folder / "data" / "ras.nii.gz")
    lps = explain_file(folder / "pair.yaml", folder / "data" / "lps.nii.gz")
    back = lps.segmentation.numpy()[::-1, ::-1]
    assert dice(back == 1, ras.segmentation.numpy() == 1) >= 0.98
    np.testing.assert_allclose(lps.probabilities, ras.probabilities, atol=1e-5)
    ras_map = ras.explanation_normalised[0].numpy()
    lps_map = lps.explanation_normalised[0].numpy()[::-1, ::-1]
    assert ras_map.std() > 0.05, "the explanation must have structure for this check to mean anything"
    np.testing.assert_allclose(lps_map, ras_map, atol=1e-3)


def test_an_input_section_without_orientation_gets_lps_wrong(bundle, monkeypatch):
    """The control that shows the checks above can fail: the same steps written as an
    ``input:`` section, once with and once without ``orientation: RAS``."""
    folder, reference = bundle
    config = yaml.safe_load((folder / "pair.yaml").read_text())
    steps = {"channels": 1, "spacing": list(PIXDIM), "intensity": list(WINDOW), "inferer": "sliding_window", "roi_size": list(ROI), "sw_batch_size": 2}
    for name, orientation in (("oriented", {"orientation": "RAS"}), ("unoriented", {})):
        config["segmenter"] = {
            "network": "bundle_networks.RampThreshold",
            "weights": "models/model.pt",
            "labels": {1: "bright"},
            "input": {**steps, **orientation},
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))  # beside pair.yaml: its paths stay inside
    monkeypatch.setenv("SEGX_NETWORK_MODULES", "bundle_networks")  # a test module, allowed as an admin would
    image = folder / "data" / "lps.nii.gz"
    oriented = explain_file(folder / "oriented.yaml", image).segmentation.numpy()
    unoriented = explain_file(folder / "unoriented.yaml", image).segmentation.numpy()
    assert dice(oriented == 1, reference["lps"] == 1) >= 0.98
    assert dice(unoriented == 1, reference["lps"] == 1) < 0.8


def test_a_classifier_bundle_reads_the_image_through_its_own_preprocessing(bundle, tmp_path):
    """The classifier as a bundle (no ``input:``): its probabilities equal the bundle's own
    preprocessing (loader included) + network, and its Grad-CAM map lands on the same
    anatomy whether the CT is stored RAS or LPS."""
    from monai.bundle import ConfigParser

    folder, _ = bundle
    config = yaml.safe_load((folder / "pair.yaml").read_text())
    config["classifier"] = {"bundle": "classifier_bundle"}
    (folder / "classifier_bundle_pair.yaml").write_text(yaml.safe_dump(config))
    parser = ConfigParser()
    parser.read_config(str(folder / "classifier_bundle" / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(folder / "classifier_bundle" / "models" / "model.pt", weights_only=True))
    results = {}
    for storage in ("ras", "lps"):
        image = folder / "data" / f"{storage}.nii.gz"
        results[storage] = explain_file(folder / "classifier_bundle_pair.yaml", image)
        with torch.no_grad():
            reference = network.eval()(parser.get_parsed_content("preprocessing")({"image": str(image)})["image"][None]).softmax(1)[0]
        np.testing.assert_allclose(results[storage].probabilities, reference.numpy(), atol=1e-5)
    ras_map = results["ras"].explanation_normalised[0].numpy()
    assert ras_map.shape == results["ras"].segmentation.shape and ras_map.std() > 0.05
    np.testing.assert_allclose(results["lps"].explanation_normalised[0].numpy()[::-1, ::-1], ras_map, atol=1e-3)
