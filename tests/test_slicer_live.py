"""SegXSlicerLib against a live ``monailabel start_server`` (the shipped demo models,
copied so that training cannot overwrite them): connect, list, upload, run, parse,
errors, active learning and the results put into a ``slicer-core`` MRML scene. The panel
itself is driven in ``test_slicer_module.py``."""

import io
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import yaml
from conftest import APP_DIR
from conftest import SLICER_AFFINE as AFFINE
from PIL import Image as PILImage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "SegXSlicer"))

from SegXSlicerLib import jobs  # noqa: E402
from SegXSlicerLib.client import SegXClient, ServerError  # noqa: E402
from SegXSlicerLib.results import segx_models, unavailable_models  # noqa: E402
from SegXSlicerLib.volumeio import decode_nrrd, encode_volume  # noqa: E402
from SegXSlicerLib.worker import JobContext, JobRunner  # noqa: E402



@pytest.fixture(scope="module")
def live(slicer_server):
    """(URL, studies folder) of the shared server for the Slicer tests (conftest)."""
    return slicer_server


def ct_volume(studies: Path, name: str = "test3d_11_0000.nii.gz") -> jobs.VolumeData:
    """A NIfTI study as Slicer holds it: voxels ``(K, J, I)`` and IJK-to-RAS."""
    image = nib.load(studies / name)
    return jobs.VolumeData(np.ascontiguousarray(np.asarray(image.dataobj, np.float32).transpose(2, 1, 0)), image.affine)


def photo_volume(studies: Path, name: str = "test2d_11_0001.png") -> jobs.VolumeData:
    """A colour photograph as Slicer holds it: one slice, RGB components ``(1, J, I, 3)``."""
    return jobs.VolumeData(np.asarray(PILImage.open(studies / name).convert("RGB"))[None], np.diag([-1.0, -1.0, 1.0, 1.0]))


def run_in_background(function, *args):
    """Run a job the way the module does and poll for it like its QTimer does."""
    runner = JobRunner()
    job = runner.submit("test", function, *args)
    deadline = time.time() + 300
    while not runner.poll():
        assert time.time() < deadline, "no answer within 300 s"
        time.sleep(0.05)
    if job.error is not None:
        raise job.error
    return job.result


def test_connect_lists_the_segx_models_and_the_unavailable_ones(live):
    url, _ = live
    info = SegXClient(url).info()
    models = {model.name: model for model in segx_models(info)}
    assert set(models) == {"slicer2d", "slicer3d"}
    assert models["slicer2d"].classes == ["nevus", "melanoma"] and models["slicer2d"].dimension == 2
    assert models["slicer3d"].segment_names == {1: "liver", 2: "kidney"} and models["slicer3d"].dimension == 3
    assert models["slicer3d"].trainer == "slicer3d_segmenter"
    assert "not_trained_yet.pt" in unavailable_models(info)["noweights"]


def test_run_on_a_3d_volume_uploads_it_and_parses_everything(live):
    url, studies = live
    volume = ct_volume(studies)
    client = SegXClient(url)
    result = run_in_background(jobs.explain, client, "slicer3d", volume)
    assert set(result.heatmaps) == {"segx"}  # the raw explanation only when shown
    result.heatmaps["explanation"] = run_in_background(jobs.fetch_layer, client, result, "explanation")
    readout = result.readout
    assert readout.predicted in ("cyst", "tumour") and readout.explained == readout.predicted
    assert sum(readout.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    configured = yaml.safe_load((APP_DIR / "model_configs" / "demo3d.yaml").read_text())["certainty"]
    assert configured["low"] is None and configured["high"] is None  # 32 val phantoms earned no level
    assert 0.0 <= readout.certainty <= 1.0 and readout.level is None and readout.certainty_text().endswith("(not calibrated)")
    assert readout.reason and readout.variant == configured["variant"] and set(readout.certainty_per_class) == {"cyst", "tumour"}
    for layer in ("segx", "explanation"):
        heatmap = result.heatmaps[layer]
        assert heatmap.dtype == np.float32 and heatmap.shape == volume.array.shape
        assert heatmap.min() >= 0.0 and 0.0 < heatmap.max() <= 1.0
    assert np.all(result.heatmaps["segx"][result.region == 0] == 0)  # SegX lives in the clinical region
    assert np.all(result.heatmaps["segx"] <= result.heatmaps["explanation"] + 1e-6)
    assert result.segment_names == {1: "liver", 2: "kidney"} and set(np.unique(result.region)) <= {0, 1, 2}
    assert (result.region == 1).sum() > 100


def test_the_server_answers_in_the_uploaded_geometry(live):
    url, studies = live
    volume = ct_volume(studies)
    _, image = SegXClient(url).infer("slicer3d_segx", {"layer": "segx"}, upload=encode_volume(volume.array, volume.ijk_to_ras))
    heatmap, ijk_to_ras = decode_nrrd(image)
    assert heatmap.shape == volume.array.shape
    assert np.allclose(ijk_to_ras, AFFINE, atol=1e-4)


def test_run_on_a_2d_photograph_for_another_class_and_method(live):
    url, studies = live
    volume = photo_volume(studies)
    result = run_in_background(jobs.explain, SegXClient(url), "slicer2d", volume, "nevus", "occlusion")
    assert result.readout.explained == "nevus" and result.readout.method == "occlusion"
    assert result.heatmaps["segx"].shape == volume.array.shape[:3] == result.region.shape
    assert result.segment_names == {1: "lesion"}


def test_server_messages_reach_the_user(live):
    url, studies = live
    client = SegXClient(url)
    with pytest.raises(ServerError, match=r"HTTP 400.*unknown class") as error:
        jobs.explain(JobContext(), client, "slicer3d", ct_volume(studies), "not_a_class")
    assert error.value.status == 400 and "not_a_class" in error.value.detail
    with pytest.raises(ServerError, match=r"HTTP 404.*not_trained_yet.pt"):
        jobs.explain(JobContext(), client, "noweights", photo_volume(studies))
    with pytest.raises(ServerError, match=r"HTTP 400.*expected a 2D image"):
        jobs.explain(JobContext(), client, "slicer2d", ct_volume(studies))
    with pytest.raises(ServerError, match=r"HTTP 400.*unknown explanation method"):
        jobs.explain(JobContext(), client, "slicer3d", ct_volume(studies), None, "magic")


def test_next_sample_submit_label_and_train(live):
    url, studies = live
    client = SegXClient(url)
    sample = run_in_background(jobs.next_sample, client, "slicer3d", "", "", "segu_lowest_certainty")  # a strategy the settings may name
    assert sample.image_id.startswith("test3d_") and 0.0 <= sample.reply["certainty"] <= 1.0
    assert sample.content == (studies / sample.file_name).read_bytes()

    volume = ct_volume(studies, sample.file_name)
    result = run_in_background(jobs.explain, client, "slicer3d", volume)
    edited = result.region.copy()
    edited[edited == 2] = 0  # the radiologist removes the kidneys
    reply = run_in_background(jobs.submit_label, client, sample.image_id, edited, volume.ijk_to_ras)
    assert reply["image"] == sample.image_id
    labels = requests.get(f"{url}/datastore/?output=all", timeout=10).json()["objects"][sample.image_id]["labels"]
    assert "final" in labels
    saved = requests.get(f"{url}/datastore/label", params={"label": sample.image_id, "tag": "final"}, timeout=10)
    stored, ijk_to_ras = decode_nrrd(saved.content)
    assert np.array_equal(stored, edited) and np.allclose(ijk_to_ras, AFFINE, atol=1e-4)

    status = run_in_background(jobs.train, client, "slicer3d_segmenter", {"max_epochs": 1, "val_split": 0.0}, 0.5)
    assert status["status"] == "DONE"


def test_a_2d_label_is_saved_on_the_image_grid(live):
    url, studies = live
    labels = np.zeros((1, 128, 128), np.uint8)
    labels[0, 40:60, 30:90] = 1
    run_in_background(jobs.submit_label, SegXClient(url), "test2d_11_0000", labels, np.eye(4))
    saved = requests.get(f"{url}/datastore/label", params={"label": "test2d_11_0000", "tag": "final"}, timeout=10)
    assert np.array_equal(np.asarray(PILImage.open(io.BytesIO(saved.content))), labels[0])


def test_results_in_a_slicer_core_scene_hold_the_server_values(live):
    """The scene logic on a real MRML scene, fed by the live server."""
    import slicer
    from SegXSlicerLib import mrml
    from SegXSlicerLib.logic import SegXLogic

    url, studies = live
    volume = ct_volume(studies)
    result = run_in_background(jobs.explain, SegXClient(url), "slicer3d", volume, "tumour")
    scene = slicer.vtkMRMLScene()
    composite = scene.AddNode(slicer.vtkMRMLSliceCompositeNode())
    source = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    mrml.set_voxels(source, volume.array, volume.ijk_to_ras)
    logic = SegXLogic(scene)
    logic.show(source, result)
    heatmap = logic.current_heatmap
    assert heatmap.GetImageData().GetScalarTypeAsString() == "float"
    assert np.allclose(mrml.ijk_to_ras(heatmap), AFFINE)
    assert np.array_equal(mrml.volume_data(heatmap).array, result.heatmaps["segx"])
    assert composite.GetForegroundVolumeID() == heatmap.GetID()
    segmentation = logic.region.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["liver", "kidney"]
    table = logic.table.GetTable()
    values = {table.GetValue(r, 0).ToString(): (table.GetValue(r, 1).ToDouble(), table.GetValue(r, 2).ToDouble()) for r in range(table.GetNumberOfRows())}
    readout = result.readout
    assert values == {label: (readout.probabilities[label], readout.certainty_per_class[label]) for label in ("cyst", "tumour")}
