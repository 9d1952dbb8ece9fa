"""The MONAI Label app in-process: MONAI Label's own FastAPI app (``monailabel.app``),
driven over HTTP by FastAPI's TestClient, with model configurations read from files."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from conftest import APP_DIR, AFFINE_3D, organ_volume, square_rgb, write_studies, write_vit_model
from PIL import Image as PILImage

from segx import explain
from segx.demo import parse_multipart


@pytest.fixture(scope="module")
def server(toy_models, tmp_path_factory):
    """(client, app instance, studies folder)."""
    from fastapi.testclient import TestClient
    from monailabel.config import settings
    from monailabel.interfaces.utils.app import app_instance, clear_cache

    studies = write_studies(tmp_path_factory.mktemp("studies"))
    models = tmp_path_factory.mktemp("server_models")
    shutil.copytree(toy_models, models, dirs_exist_ok=True)  # training here publishes weights
    write_trainable_segmenter_model(models)
    write_vit_model(models)
    settings.MONAI_LABEL_APP_DIR = str(APP_DIR)
    settings.MONAI_LABEL_STUDIES = str(studies)
    settings.MONAI_LABEL_APP_CONF = {"models": "all", "models_dir": str(models), "device": "cpu", "max_upload_mb": "3"}
    settings.MONAI_LABEL_AUTO_UPDATE_SCORING = False
    clear_cache()
    from monailabel.app import app

    with TestClient(app, base_url="http://localhost") as client:  # the gate refuses host names it does not serve
        yield client, app_instance(), studies
    clear_cache()


def write_trainable_segmenter_model(models):
    """``seg2d``: the toy 2D classifier with a small MONAI UNet segmenter (state_dict)."""
    from monai.networks.nets import UNet

    unet_args = {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "channels": [8, 16], "strides": [2]}
    torch.manual_seed(5)
    torch.save(UNet(**unet_args).state_dict(), models / "seg2d_unet.pt")
    config = yaml.safe_load((models / "toy2d.yaml").read_text())
    config["segmenter"] = {
        "network": "UNet",
        "args": unet_args,
        "weights": "seg2d_unet.pt",
        "labels": {1: "lesion"},
        "input": {"channels": 3, "spatial_size": [48, 48], "intensity": "divide255"},
    }
    config["recipe"] = "demo2d"  # the server trains it as segx train's demo2d recipe says
    (models / "seg2d.yaml").write_text(yaml.safe_dump(config))


def post_infer(client, model, path=None, content=None, filename=None, params=None, output="all"):
    data = content if content is not None else path.read_bytes()
    files = {"file": (filename or path.name, io.BytesIO(data))}
    return client.post(f"/infer/{model}?output={output}", files=files, data={"params": json.dumps(params or {})})


def split_multipart(response) -> tuple[dict, bytes]:
    """(params JSON, image bytes) of a multipart ``output=all`` reply."""
    return parse_multipart(response.headers["content-type"], response.content)


def read_nrrd(data: bytes, tmp_path) -> sitk.Image:
    path = tmp_path / "result.nrrd"
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


@pytest.fixture
def ct_file(tmp_path):
    path = tmp_path / "upload_ct.nii.gz"
    nib.save(nib.Nifti1Image(organ_volume(), AFFINE_3D), str(path))
    return path


@pytest.fixture
def skin_file(tmp_path):
    path = tmp_path / "upload_skin.png"
    PILImage.fromarray(square_rgb(50, 40, (10, 30, 5, 25))).save(path)
    return path


def test_info_lists_three_tasks_per_model_and_explains_missing_ones(server):
    client, _, _ = server
    info = client.get("/info/").json()
    models = info["models"]
    for name in ("toy2d", "toy3d"):
        assert models[f"{name}_classification"]["type"] == "classification"
        assert models[f"{name}_segmentation"]["type"] == "segmentation"
        assert models[f"{name}_segx"]["type"] == "others"
    assert models["toy3d_segx"]["dimension"] == 3 and models["toy2d_segx"]["labels"] == ["benign", "malignant", "other"]
    assert models["toy2d_segmentation"]["labels"] == {"lesion": 1}
    assert not any(k.startswith(("broken", "noweights")) for k in models)
    unavailable = info["unavailable_models"]
    assert "broken.yaml" in unavailable["broken"] and "classifier.network" in unavailable["broken"]
    assert "not_trained_yet.pt" in unavailable["noweights"]
    assert "segu" in info["scoring"] and "segu_lowest_certainty" in info["strategies"]


def test_segx_heatmap_is_float32_in_the_source_geometry(server, ct_file, tmp_path):
    client, _, _ = server
    response = post_infer(client, "toy3d_segx", ct_file, params={"result_dtype": "uint8", "result_extension": ".nrrd"})
    assert response.status_code == 200, response.text
    params, image = split_multipart(response)
    heatmap = read_nrrd(image, tmp_path)
    source = sitk.ReadImage(str(ct_file))
    assert heatmap.GetPixelID() == sitk.sitkFloat32
    assert heatmap.GetSize() == source.GetSize()
    assert np.allclose(heatmap.GetSpacing(), source.GetSpacing())
    assert np.allclose(heatmap.GetOrigin(), source.GetOrigin())
    assert np.allclose(heatmap.GetDirection(), source.GetDirection())
    values = sitk.GetArrayFromImage(heatmap)
    assert values.max() <= 1.0 and values.min() >= 0.0
    organ = sitk.GetArrayFromImage(source) > 0.5
    assert np.all(values[~organ] == 0), "SegX must vanish outside the clinical region"
    assert params["label_names"] == ["healthy", "tumour"]
    assert sum(params["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert params["predicted"] == max(params["probabilities"], key=params["probabilities"].get)
    assert params["class"] == params["predicted"] and params["layer"] == "segx"
    segu = params["segu"]
    assert 0.0 <= segu["certainty"] <= 1.0 and segu["variant"] == "mass_inside" and segu["reason"]
    assert set(params["certainty_per_class"]) == {"healthy", "tumour"}
    assert params["method"] in ("cam", "gradcam") and "total" in params["latencies"]


def test_layers_classes_variants_and_cache_reuse(server, ct_file, tmp_path):
    client, app, _ = server
    runtime = app.models["toy3d"].runtime
    first = post_infer(client, "toy3d_segx", ct_file)
    assert first.status_code == 200
    misses = runtime.misses
    mask = post_infer(client, "toy3d_segx", ct_file, params={"layer": "mask", "class": "healthy"})
    explanation = post_infer(client, "toy3d_segx", ct_file, params={"layer": "explanation", "class": 0})
    distance = post_infer(client, "toy3d_segx", ct_file, params={"variant": "distance_decay"})
    assert runtime.misses == misses, "another layer/class/variant of the same image must not re-run the networks"
    mask_params, mask_image = split_multipart(mask)
    assert mask_params["class"] == "healthy" and mask_params["layer"] == "mask"
    mask_volume = read_nrrd(mask_image, tmp_path)
    assert mask_volume.GetPixelID() == sitk.sitkUInt8
    assert int(sitk.GetArrayFromImage(mask_volume).sum()) == 7 * 8 * 6
    explanation_values = sitk.GetArrayFromImage(read_nrrd(split_multipart(explanation)[1], tmp_path))
    direct = explain(runtime.pair, ct_file, classes=[0]).map_of("explanation_normalised", 0).numpy()
    assert np.allclose(explanation_values, direct.transpose(2, 1, 0), atol=1e-6)  # ITK axis order is reversed
    assert split_multipart(distance)[0]["segu"]["variant"] == "distance_decay"
    other = post_infer(client, "toy3d_segx", ct_file, params={"method": "gradcam++"})
    assert other.status_code == 200 and runtime.misses == misses + 1


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "occlusion"])
def test_a_vit_classifier_gives_non_empty_maps(server, skin_file, tmp_path, method):
    """MONAI's ViT returns (logits, hidden states); its CAM target is the last block's
    norm, its tokens laid out on the 4 x 4 patch grid (the patch embedding gave all-zero
    Grad-CAM maps, and the tuple output a 500)."""
    client, _, _ = server
    response = post_infer(client, "vit2d_segx", skin_file, params={"layer": "explanation", "method": method})
    assert response.status_code == 200, response.text
    params, image = split_multipart(response)
    assert sum(params["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) and params["method"] == method
    assert sitk.GetArrayFromImage(read_nrrd(image, tmp_path)).max() > 0


def test_a_torchscript_classifier_offers_only_the_methods_it_supports(server, skin_file):
    client, app, _ = server
    from monai.networks.nets import DenseNet121

    original = app.models["toy2d"].runtime.pair.classifier
    twin = DenseNet121(spatial_dims=2, in_channels=3, out_channels=3)
    twin.load_state_dict(original.state_dict())
    app.models["toy2d"].runtime.pair.classifier = torch.jit.script(twin.eval())
    try:
        task = app.infer_tasks()["toy2d_segx"]
        assert task.methods == ("occlusion", "integrated_gradients")
        refused = post_infer(client, "toy2d_segx", skin_file, params={"method": "gradcam"})
        assert refused.status_code == 400 and "integrated_gradients" in refused.json()["detail"]
        default = post_infer(client, "toy2d_segx", skin_file, output="json")
        assert default.status_code == 200 and default.json()["method"] == "integrated_gradients"
    finally:
        app.models["toy2d"].runtime.pair.classifier = original


def test_segmentation_task_with_stock_plugin_params(server, skin_file, tmp_path):
    client, _, _ = server
    response = post_infer(client, "toy2d_segmentation", skin_file, params={"result_extension": ".nrrd", "result_dtype": "uint8"})
    assert response.status_code == 200, response.text
    params, image = split_multipart(response)
    assert params["label_names"] == {"lesion": 1}
    labels = read_nrrd(image, tmp_path)
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert int(sitk.GetArrayFromImage(labels).sum()) == 20 * 20


def test_classification_task(server, skin_file):
    client, _, _ = server
    response = post_infer(client, "toy2d_classification", skin_file, output="json")
    assert response.status_code == 200, response.text
    prediction = response.json()["prediction"]
    assert [p["label"] for p in sorted(prediction, key=lambda p: p["idx"])] == ["benign", "malignant", "other"]
    scores = [p["score"] for p in prediction]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_bad_input_gets_4xx_and_changes_nothing(server, ct_file, skin_file, tmp_path):
    client, app, _ = server
    before = sorted(app.datastore().list_images())
    nan_volume = organ_volume()
    nan_volume[3, 3, 3] = np.nan
    nan_path = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(nan_volume), str(nan_path))
    cases = [
        (post_infer(client, "toy3d_segx", content=b"this is a text file", filename="notes.nii.gz"), 400, "cannot read"),
        (post_infer(client, "toy3d_segx", content=b"", filename="empty.nii.gz"), 400, "empty"),
        (post_infer(client, "toy3d_segx", skin_file), 400, "3D image"),
        (post_infer(client, "toy2d_segx", ct_file), 400, "2D image"),
        (post_infer(client, "toy3d_segx", nan_path), 400, "NaN"),
        (post_infer(client, "melanoma_detector_segx", ct_file), 404, "unknown model"),
        (post_infer(client, "noweights_segx", skin_file), 404, "not_trained_yet.pt"),
        (post_infer(client, "toy3d_segx", ct_file, params={"class": "zebra"}), 400, "unknown class"),
        (post_infer(client, "toy3d_segx", ct_file, params={"layer": "everything"}), 400, "unknown layer"),
        (post_infer(client, "toy3d_segx", ct_file, params={"variant": "gut"}), 400, "unknown SegU variant"),
        (post_infer(client, "toy3d_segx", ct_file, params={"method": "magic"}), 400, "unknown explanation method"),
        (post_infer(client, "toy3d_segx", content=b"\0" * (4 * 2**20), filename="huge.nii.gz"), 413, "exceeds the limit"),
        (client.post("/infer/toy3d_segx?image=not_in_datastore"), 404, "not in the datastore"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in response.json()["detail"], response.json()
    assert sorted(app.datastore().list_images()) == before
    assert client.get("/info/").status_code == 200
    assert post_infer(client, "toy3d_segx", ct_file).status_code == 200


def test_infer_by_datastore_id(server):
    client, _, _ = server
    response = client.post("/infer/toy2d_segx?image=skin0&output=json")
    assert response.status_code == 200, response.text
    assert response.json()["predicted"] in ("benign", "malignant", "other")


def test_segu_scoring_and_lowest_certainty_strategy(server):
    client, app, _ = server
    response = client.post("/activelearning/segu_lowest_certainty", json={"model": "toy2d"})
    assert response.status_code == 200, response.text
    chosen = response.json()
    datastore = app.datastore()
    scores = {i: datastore.get_image_info(i).get("segu", {}).get("toy2d", {}) for i in datastore.get_unlabeled_images()}
    certainties = {i: s["certainty"] for i, s in scores.items() if "certainty" in s}
    assert set(certainties) == {"skin0", "skin1", "skin2"}
    assert not scores["ct0"], "a 3D study is not even scored for a 2D model's annotator (left out by its axes)"
    assert chosen["id"] == min(certainties, key=lambda i: (certainties[i], i))
    assert chosen["certainty"] == pytest.approx(min(certainties.values()))
    # each certainty is the one the segx task reports for the same image
    for image_id, value in certainties.items():
        reply = client.post(f"/infer/toy2d_segx?image={image_id}&output=json").json()
        assert reply["segu"]["certainty"] == pytest.approx(value)
    rescored = client.post("/scoring/segu?run_sync=true", json={"model": "toy2d"})
    assert rescored.status_code == 200, rescored.text
    assert "error" in datastore.get_image_info("ct0")["segu"]["toy2d"], "the scoring route tries every image: a 3D study cannot be scored by a 2D model"
    n_images = len(datastore.get_unlabeled_images())
    assert app.segu_scoring({"model": "toy2d"}, datastore) == {"scored": 0, "skipped": n_images, "failed": 0}
    digest = app.models["toy2d"].runtime.weights_digest
    assert all(s["weights"] == digest for s in scores.values() if s)


def test_a_model_that_breaks_during_scoring_does_not_stop_the_others(server):
    """Start-up scoring runs every model over every image: one network raising (here a
    RuntimeError naming a server path) is recorded for that model, scrubbed, and the next
    model is still scored."""
    from types import SimpleNamespace

    from lib.activelearning.segu import SegUScoring

    _, app, _ = server

    def explode(*args, **kwargs):
        raise RuntimeError("shape mismatch in /srv/models/broken/net.py")

    broken = SimpleNamespace(weights_digest="broken-1", pair=app.models["toy2d"].runtime.pair, explain=explode)
    scoring = SegUScoring({"broken": broken, "toy2d": app.models["toy2d"].runtime})
    datastore = app.datastore()
    counts = scoring({}, datastore)
    n_images = len(datastore.get_unlabeled_images())
    assert counts["failed"] >= n_images  # every image failed for the broken model ...
    for image_id in datastore.get_unlabeled_images():
        scores = datastore.get_image_info(image_id)["segu"]
        assert scores["broken"]["error"] == "RuntimeError: shape mismatch in net.py"
        assert "certainty" in scores["toy2d"] or "error" in scores["toy2d"]  # ... and toy2d was still scored after it
    assert any("certainty" in datastore.get_image_info(i)["segu"]["toy2d"] for i in datastore.get_unlabeled_images())


def test_two_annotators_are_not_given_the_same_image(server):
    client, app, _ = server

    def ask(who):
        response = client.post("/activelearning/segu_lowest_certainty", json={"model": "toy2d", "client_id": who})
        assert response.status_code == 200, response.text
        return response.json()

    alice, bob, alice_again = ask("alice"), ask("bob"), ask("alice")
    assert alice["id"] and bob["id"] and alice["id"] != bob["id"]
    assert alice_again["id"] == alice["id"]  # her own image stays hers
    assert app.datastore().get_image_info(alice["id"])["strategy"]["segu_lowest_certainty"]["client_id"] == "alice"
    assert client.post("/activelearning/segu_lowest_certainty", json={"model": "nosuch"}).status_code == 400
    assert client.post("/activelearning/nosuch_strategy", json={}).status_code == 404


def test_a_weight_change_with_callers_inside_and_outside_the_torch_thread_does_not_deadlock(server):
    """The reproduced deadlock: the torch thread busy with an explain that must reload,
    while a caller outside it checks the weights too. Both must finish."""
    import threading

    from lib.infers.runtime import _TORCH_THREAD

    client, app, studies = server
    runtime = app.models["toy2d"].runtime
    image = str(next(studies.glob("skin*.png")))
    weights = [f for f in runtime._watched[1:] if f.exists()][0]
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # "published" anew
    release = threading.Event()
    _TORCH_THREAD.submit(release.wait, 10)  # the torch thread is busy
    inside = _TORCH_THREAD.submit(runtime.explain, image, "gradcam", 1.5)  # queued in the torch thread
    outside = []
    caller = threading.Thread(target=lambda: outside.append(runtime.explain(image, "gradcam", 2.5)))
    caller.start()
    time.sleep(0.5)  # the outside caller is checking the weights now
    release.set()
    assert inside.result(timeout=10) is not None
    caller.join(timeout=10)
    assert outside, "the caller outside the torch thread did not finish within 10 s"


def test_a_corrupt_weight_file_is_a_503_until_good_weights_return(server):
    client, app, studies = server
    runtime = app.models["toy3d"].runtime
    weights = [f for f in runtime._watched[1:] if f.exists()][0]
    good = weights.read_bytes()
    try:
        weights.write_bytes(good[: len(good) // 3])  # a publisher died half-way
        response = client.post("/infer/toy3d_segx?image=ct0&output=json")
        assert response.status_code == 503 and "loaded again when its files change" in response.json()["detail"]
        assert str(weights.parent) not in response.text
        assert client.post("/infer/toy3d_segx?image=ct0&output=json").status_code == 503  # not retried until it changes
    finally:
        weights.write_bytes(good)
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert client.post("/infer/toy3d_segx?image=ct0&output=json").status_code == 200


def test_training_publishes_weights_that_the_next_inference_uses(server):
    client, app, studies = server
    runtime = app.models["toy2d"].runtime
    assert set(app.info()["trainers"]) >= {"toy2d_classifier"}
    assert "toy2d_segmenter" not in app.info()["trainers"], "a TorchScript segmenter is not trainable"
    before = client.post("/infer/toy2d_segx?image=skin1&output=json").json()
    digest = runtime.weights_digest
    weights = runtime.config_file.parent / runtime.config["classifier"]["weights"]
    old_weights = weights.read_bytes()
    (studies / "labels.csv").write_text("image_id,label\nskin0,benign\nskin1,malignant\nskin2,other\nct0,unknown_label\n")
    response = client.post(
        "/train/toy2d_classifier?run_sync=true",
        json={"max_epochs": 2, "val_split": 0.0, "learning_rate": 0.01, "train_batch_size": 3},
    )
    assert response.status_code == 200, response.text
    assert weights.read_bytes() != old_weights, "the trained checkpoint was published over the weights"
    # the rollback point is the weights before this training, not its first epoch's
    assert weights.with_name(weights.name + ".previous").read_bytes() == old_weights
    after = client.post("/infer/toy2d_segx?image=skin1&output=json").json()
    assert runtime.weights_digest != digest
    assert after["probabilities"] != before["probabilities"]


def test_segmenter_training_on_final_labels(server, tmp_path):
    client, app, studies = server
    runtime = app.models["seg2d"].runtime
    before = post_label_count(client, tmp_path)
    for image_id in ("skin0", "skin1"):
        truth = (np.asarray(PILImage.open(studies / f"{image_id}.png"))[..., 0] > 128).astype(np.uint8)
        label_path = tmp_path / f"{image_id}_label.png"
        PILImage.fromarray(truth).save(label_path)
        with open(label_path, "rb") as label:
            saved = client.put(f"/datastore/label?image={image_id}&tag=final", files={"label": (label_path.name, label)})
        assert saved.status_code == 200, saved.text
    digest = runtime.weights_digest
    response = client.post("/train/seg2d_segmenter?run_sync=true", json={"max_epochs": 2, "val_split": 0.0, "learning_rate": 0.01})
    assert response.status_code == 200, response.text
    after = post_label_count(client, tmp_path)
    assert runtime.weights_digest != digest and after != before
    stats = app.info()["train_stats"]["seg2d_segmenter"]
    assert stats["recipe"] == "demo2d" and stats["n_train"] == 2 and len(stats["losses"]) == 2
    same_as_segx_train(app, studies, tmp_path)


def same_as_segx_train(app, studies, labels):
    """One trainer: the server's segmenter training above (2 final labels, 2 epochs,
    val_split 0) published exactly the weights that segx.training.engine.fit gives in this
    process from the same starting weights, samples and recipe (demo2d's schedule, the
    request's learning rate)."""
    from dataclasses import replace

    from monai.networks.nets import UNet
    from monai.transforms import LoadImage, LoadImaged

    from segx.preprocessing import Preprocessing
    from segx.training import RECIPES
    from segx.training.engine import fit

    models = app.models["seg2d"].runtime.config_file.parent
    previous = models / "seg2d_unet.pt.previous"
    section = yaml.safe_load((models / "seg2d.yaml").read_text())["segmenter"]
    preprocessing = Preprocessing(**section["input"])
    label_grid = preprocessing.label_transforms("label")
    samples = []
    for image_id in ("skin0", "skin1"):  # the trainer sorts its samples by image
        image = LoadImage(ensure_channel_first=True, image_only=True)(studies / f"{image_id}.png")
        label = {"label": LoadImaged("label", ensure_channel_first=True, image_only=True)({"label": labels / f"{image_id}_label.png"})["label"]}
        for step in label_grid:
            label = step(label)
        samples.append({"image": preprocessing(image.as_tensor(), np.asarray(image.affine))[0], "label": label["label"].as_tensor().round().long()})
    network = UNet(**section["args"])
    network.load_state_dict(torch.load(previous, weights_only=True))
    schedule = replace(RECIPES["demo2d"].schedule, learning_rate=0.01)
    log = fit(network, samples, [], "segmenter", schedule, 2)
    published = torch.load(models / "seg2d_unet.pt", weights_only=True)
    assert app.info()["train_stats"]["seg2d_segmenter"]["best_epoch"] == log["best_epoch"]
    for key, value in network.state_dict().items():
        torch.testing.assert_close(published[key], value, msg=key)


def post_label_count(client, tmp_path) -> int:
    """Foreground voxels of seg2d's segmentation of skin2."""
    response = client.post("/infer/seg2d_segmentation?image=skin2&output=image")
    assert response.status_code == 200, response.text
    return int(sitk.GetArrayFromImage(read_nrrd(response.content, tmp_path)).sum())


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_VOLUMES = ["ct3d/example_ct_sm.nii.gz", "ct3d/example_mr_sm.nii.gz", "mr3d/brain1_image.nrrd", "mr3d/breast1_image.nrrd"]


@pytest.mark.parametrize("relative", REAL_VOLUMES)
def test_real_volumes_keep_their_geometry_through_the_server(server, tmp_path, relative):
    """Real CT/MR files (../shared/data): every output of the server has the input's size,
    spacing, origin and direction."""
    source_path = SHARED_DATA / relative
    if not source_path.exists():
        pytest.skip(f"{source_path} is not present on this machine (../shared/data)")
    client, _, _ = server
    source = sitk.ReadImage(str(source_path))
    for model, params in (("toy3d_segx", {"layer": "segx"}), ("toy3d_segx", {"layer": "mask"}), ("toy3d_segmentation", {})):
        response = post_infer(client, model, source_path, params=params)
        assert response.status_code == 200, response.text
        written = read_nrrd(split_multipart(response)[1], tmp_path)
        assert written.GetSize() == source.GetSize()
        assert np.allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-5)
        assert np.allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
        assert np.allclose(written.GetDirection(), source.GetDirection(), atol=1e-5)


def test_shipped_real_data_models_are_offered(server):
    models = server[0].get("/info/").json()["models"]
    assert models["ham10000_classification"]["labels"] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert models["ham10000_segmentation"]["labels"] == {"lesion": 1}
    assert models["jsrt_segx"]["labels"] == ["no_nodule", "nodule"] and models["jsrt_segmentation"]["labels"] == {"lungs": 1}


@pytest.mark.parametrize("model, relative, mask", [("ham10000", "ham10000/images/ISIC_0027419.jpg", "ham10000/masks/ISIC_0027419.png"),
                                                   ("jsrt", "jsrt/images/JPCLN001.png", "jsrt/lungs/JPCLN001.png")])  # fmt: skip
def test_shipped_real_data_models_explain_real_images(server, tmp_path, model, relative, mask):
    """A real dermoscopy image and a real chest X-ray through the shipped models: SegX on the
    image grid, zero outside the predicted region, which overlaps the true region."""
    if not (SHARED_DATA / relative).exists():
        pytest.skip(f"{SHARED_DATA / relative} is not present on this machine (../shared/data)")
    client = server[0]
    response = post_infer(client, f"{model}_segx", SHARED_DATA / relative)
    assert response.status_code == 200, response.text
    params, image = split_multipart(response)
    segx_map = sitk.GetArrayFromImage(read_nrrd(image, tmp_path))
    truth = np.asarray(PILImage.open(SHARED_DATA / mask)) > 127
    assert segx_map.shape == truth.shape and segx_map.dtype == np.float32
    assert params["segu"]["variant"] == "region_margin"
    # jsrt's 22 validation studies earn no level (Clopper-Pearson): shown as not calibrated
    assert params["segu"]["level"] is None if model == "jsrt" else params["segu"]["level"] in ("low", "medium", "high")
    region = sitk.GetArrayFromImage(read_nrrd(split_multipart(post_infer(client, f"{model}_segx", SHARED_DATA / relative, params={"layer": "mask"}))[1], tmp_path)) > 0
    assert np.all(segx_map[~region] == 0)
    assert 2 * (region & truth).sum() / (region.sum() + truth.sum()) > 0.8, "the shipped segmenter finds the lesion / lungs"


def _no_holds(datastore) -> None:
    """Forget which annotator got which image (earlier tests' holds)."""
    for image_id in datastore.get_unlabeled_images():
        datastore.update_image_info(image_id, {"strategy": {}})


def test_monai_labels_own_strategies_are_offered_with_the_same_holds(server):
    """``random`` and ``first`` as MONAI Label ships them, beside ours; an image one annotator
    got from any strategy is not given to another by any strategy."""
    client, app, _ = server
    _no_holds(app.datastore())
    assert {"random", "first", "segu_lowest_certainty"} <= set(client.get("/info/").json()["strategies"])

    def ask(strategy, who, **extra):
        response = client.post(f"/activelearning/{strategy}", json={"client_id": who, **extra})
        assert response.status_code == 200, response.text
        return response.json().get("id")

    carol = ask("first", "carol")
    assert ask("first", "dave") not in (None, carol)  # MONAI Label's First alone would give dave carol's image
    assert ask("random", "erin") != carol and ask("segu_lowest_certainty", "erin", model="toy2d") != carol
    assert ask("first", "carol") == carol  # hers stays hers


def test_a_strategy_gives_only_images_the_named_model_can_take(server):
    """MONAI Label's random and first do not look at the model: on these mixed studies (2D
    pictures, 3D volumes) they would give a 3D model's annotator a picture. Named, the
    model's number of axes decides (read from the headers); unnamed, any image."""
    client, app, _ = server
    datastore = app.datastore()
    for strategy in ("random", "first"):
        for model, prefix in (("toy3d", "ct"), ("toy2d", "skin")):
            given = set()
            for n in range(6):
                _no_holds(datastore)
                response = client.post(f"/activelearning/{strategy}", json={"client_id": f"judy{n}", "model": model})
                assert response.status_code == 200, response.text
                given.add(response.json().get("id"))
            unlabeled = {i for i in datastore.get_unlabeled_images() if i.startswith(prefix)}
            assert given <= unlabeled | ({None} if not unlabeled else set()), (strategy, model, given)
    _no_holds(datastore)
    anyone = {client.post("/activelearning/first", json={"client_id": f"kim{n}"}).json().get("id") for n in range(5)} - {None}
    assert any(i.startswith("ct") for i in anyone) and any(i.startswith("skin") for i in anyone), anyone


def test_epistemic_scoring_and_strategy_as_monai_label_ships_them(server):
    """MONAI Label's EpistemicScoring (dropout passes of the epistemic model's segmenter)
    writes `epistemic_entropy` into the unlabeled images it can read (a 3D volume for a 2D
    segmenter is skipped, the others go on); its Epistemic strategy, under the same holds,
    gives out the highest."""
    client, app, _ = server
    datastore = app.datastore()
    _no_holds(datastore)
    info = client.get("/info/").json()
    assert "epistemic" in info["scoring"] and "epistemic" in info["strategies"]
    response = client.post("/scoring/epistemic?run_sync=true", json={})
    assert response.status_code == 200, response.text
    dims = app.models[app.epistemic_model].runtime.pair.spatial_dims
    entropy = {i: datastore.get_image_info(i).get("epistemic_entropy") for i in datastore.get_unlabeled_images()}
    readable = {i for i in entropy if i.startswith("skin" if dims == 2 else "ct")}
    assert {i for i, e in entropy.items() if e is not None} == readable, entropy
    highest = max(readable, key=lambda i: entropy[i])
    given = client.post("/activelearning/epistemic", json={"client_id": "heidi"}).json()["id"]
    assert given == highest
    assert client.post("/activelearning/epistemic", json={"client_id": "ivan"}).json().get("id") != given  # held for heidi


def test_an_annotator_releases_an_image_and_gets_another(server):
    client, app, _ = server
    _no_holds(app.datastore())

    def ask(who, **extra):
        return client.post("/activelearning/first", json={"client_id": who, **extra}).json().get("id")

    kept = ask("frank")
    other = ask("frank", release=kept)  # skip it
    assert other and other != kept
    assert ask("grace") == kept  # released: the first unheld image again
    assert client.post("/activelearning/first", json={"client_id": "frank", "release": "../etc"}).status_code == 400


def test_two_first_calls_at_once_score_each_image_once(server):
    """The first SegU sample scores every unlabeled image; two annotators asking at once
    must not score them twice (the second waits, then finds them scored)."""
    import threading
    from types import SimpleNamespace

    from lib.activelearning.segu import SegUScoring

    _, app, _ = server
    runtime = app.models["toy2d"].runtime
    calls = []
    counting = SimpleNamespace(weights_digest="counting-1", pair=runtime.pair, explain=lambda *args: (calls.append(args), runtime.explain(*args))[1])
    scoring = SegUScoring({"counting": counting})
    threads = [threading.Thread(target=scoring, args=({}, app.datastore())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == len(app.datastore().get_unlabeled_images())
