"""A live ``monailabel start_server`` on a free loopback port, driven by the official
``monailabel.client.MONAILabelClient`` and plain HTTP (requests)."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
import requests
import SimpleITK as sitk
import torch
import yaml
from conftest import write_studies, write_swin_model, write_vit_model
from monailabel.client import MONAILabelClient

from segx.demo import running_server


def write_bundle(folder, network_def: dict, network) -> None:
    """A MONAI bundle: ``configs/inference.json`` with ``network_def`` + ``models/model.pt``."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
    torch.save(network.state_dict(), folder / "models" / "model.pt")


def write_bundle_pair(models):
    """``bundle2d``: an EfficientNetBN classifier and a SegResNet segmenter, both MONAI
    bundles, used nowhere else in the project and served through a config file only."""
    from monai.networks.nets import EfficientNetBN, SegResNet

    torch.manual_seed(3)
    classifier_def = {"model_name": "efficientnet-b0", "pretrained": False, "spatial_dims": 2, "in_channels": 3, "num_classes": 2}
    segmenter_def = {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "init_filters": 8}
    write_bundle(models / "effnet_bundle", {"_target_": "monai.networks.nets.EfficientNetBN", **classifier_def}, EfficientNetBN(**classifier_def))
    write_bundle(models / "segresnet_bundle", {"_target_": "monai.networks.nets.SegResNet", **segmenter_def}, SegResNet(**segmenter_def))
    config = {
        "spatial_dims": 2,
        "classes": ["nevus", "melanoma"],
        "classifier": {"bundle": "effnet_bundle", "input": {"channels": 3, "spatial_size": [64, 64], "intensity": "divide255"}},
        "segmenter": {"bundle": "segresnet_bundle", "labels": {1: "lesion"}, "input": {"channels": 3, "spatial_size": [64, 64], "intensity": "divide255"}},
    }
    (models / "bundle2d.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def live(toy_models, tmp_path_factory):
    """(server URL, studies folder) of a running server; stopped afterwards."""
    models = tmp_path_factory.mktemp("live_models")
    shutil.copytree(toy_models, models, dirs_exist_ok=True)
    write_bundle_pair(models)
    write_vit_model(models)
    write_swin_model(models)
    studies = write_studies(tmp_path_factory.mktemp("live_studies"))
    with running_server(studies, "all", tmp_path_factory.mktemp("log") / "server.log", models_dir=models) as server:
        yield server.url, studies


def test_official_client_info_infer_upload_and_next_sample(live, tmp_path):
    url, studies = live
    client = MONAILabelClient(url, tmpdir=str(tmp_path))
    info = client.info()
    assert {"toy2d_segx", "toy3d_segx", "bundle2d_segx", "bundle2d_classification"} <= set(info["models"])
    result_file, params = client.infer("toy3d_segx", "ct1", {"result_dtype": "uint8"})
    params = json.loads(params) if isinstance(params, (str, bytes)) else params
    assert 0.0 <= params["segu"]["certainty"] <= 1.0
    heatmap, source = sitk.ReadImage(result_file), sitk.ReadImage(str(studies / "ct1.nii.gz"))
    assert heatmap.GetPixelID() == sitk.sitkFloat32
    assert heatmap.GetSize() == source.GetSize()
    assert np.allclose(heatmap.GetSpacing(), source.GetSpacing()) and np.allclose(heatmap.GetOrigin(), source.GetOrigin())
    assert np.allclose(heatmap.GetDirection(), source.GetDirection())

    new_study = tmp_path / "uploaded.png"
    shutil.copy(studies / "skin1.png", new_study)
    image_id = client.upload_image(str(new_study), image_id="uploaded")
    assert "uploaded" in client.datastore()["objects"]
    _, params = client.infer("toy2d_classification", "uploaded", {})
    params = json.loads(params) if isinstance(params, (str, bytes)) else params
    assert len(params["prediction"]) == 3, image_id

    sample = client.next_sample("segu_lowest_certainty", {"model": "toy2d"})
    assert sample["id"] in {"skin0", "skin1", "skin2", "uploaded"} and 0.0 <= sample["certainty"] <= 1.0


def test_bundle_pair_served_through_a_config_file_only(live, tmp_path):
    url, studies = live
    with open(studies / "skin0.png", "rb") as image:
        response = requests.post(f"{url}/infer/bundle2d_segx?output=json", files={"file": ("skin0.png", image)}, timeout=120)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["method"] == "gradcam", "EfficientNetBN's head is not pool + linear: real gradients"
    assert set(reply["probabilities"]) == {"nevus", "melanoma"}


@pytest.mark.parametrize("model, image_id", [("vit2d", "skin0"), ("swin3d", "ct1")])
def test_transformer_classifiers_give_non_empty_maps_with_their_default_method(live, tmp_path, model, image_id):
    """MONAI's ViT (tokens on the patch grid) and SwinUNETR's encoder with a head (its last
    stage), through the official client with no method named: ``/info`` offers Grad-CAM
    and the raw map it returns is not all zero."""
    url, studies = live
    client = MONAILabelClient(url, tmpdir=str(tmp_path))
    assert client.info()["models"][f"{model}_segx"]["config"]["method"] == "gradcam"
    result_file, params = client.infer(f"{model}_segx", image_id, {"layer": "explanation"})
    params = json.loads(params) if isinstance(params, (str, bytes)) else params
    assert params["method"] == "gradcam"
    explanation = sitk.GetArrayFromImage(sitk.ReadImage(result_file))
    assert explanation.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(studies / f"{image_id}{'.png' if model == 'vit2d' else '.nii.gz'}"))).shape[:explanation.ndim]
    assert explanation.max() > 0


def test_bad_requests_are_4xx_and_the_server_keeps_serving(live):
    url, _ = live
    response = requests.post(f"{url}/infer/toy3d_segx", files={"file": ("x.nii.gz", b"garbage")}, timeout=60)
    assert response.status_code == 400 and "cannot read" in response.json()["detail"]
    response = requests.post(f"{url}/infer/unknown_segx", files={"file": ("x.nii.gz", b"garbage")}, timeout=60)
    assert response.status_code == 404
    assert requests.get(f"{url}/info/", timeout=5).status_code == 200


def test_info_and_datastore_answer_during_a_long_inference(live):
    """ScoreCAM on EfficientNet-b0 runs one forward per feature channel (1280): seconds
    of work during which the event loop must keep serving."""
    url, studies = live
    outcome = {}

    def long_inference():
        with open(studies / "skin2.png", "rb") as image:
            outcome["response"] = requests.post(
                f"{url}/infer/bundle2d_segx?output=json",
                files={"file": ("skin2.png", image)},
                data={"params": json.dumps({"method": "scorecam"})},
                timeout=600,
            )

    worker = threading.Thread(target=long_inference)
    worker.start()
    time.sleep(1.0)
    latencies = []
    for path in ("/info/", "/datastore/?output=stats", "/info/", "/datastore/?output=all"):
        start = time.perf_counter()
        assert requests.get(f"{url}{path}", timeout=10).status_code == 200
        latencies.append(time.perf_counter() - start)
    still_running = worker.is_alive()
    worker.join()
    assert still_running, "the inference finished before the measurement: the test proves nothing"
    assert outcome["response"].status_code == 200, outcome["response"].text
    assert max(latencies) < 0.5, latencies
