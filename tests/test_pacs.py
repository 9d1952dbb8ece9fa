"""A real PACS in the loop: Orthanc with its DICOMweb plugin (Debian packages, started
here on loopback with a throw-away storage folder), a CT series stored in it, the live
``monailabel start_server --studies http://127.0.0.1:PORT/dicom-web`` and the official
``MONAILabelClient``. The SegX result comes back with the series' geometry and its SEG,
Parametric Maps and SR are found in the same study by QIDO-RS; series that are not one
volume are refused with a 4xx naming the defect and nothing is stored."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from conftest import AFFINE_3D, write_models
from dicom_corpus import BAD_SERIES, SHARED, SHARED_VOLUMES, assert_same_geometry, report_values, reread, write_bad_series
from dicomweb_client import DICOMwebClient
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from segx.demo import running_server
from segx.formats.dicom import read_series, write_series
from segx.formats.export import save_volume
from segx.formats.pacs import free_port, local_orthanc, orthanc_problem
from segx.demo.phantoms import phantom_3d

pytestmark = pytest.mark.skipif(orthanc_problem() is not None, reason=f"{orthanc_problem()} (.ci/run installs it)")

#: The server's voxel limit: the phantom CT (64 x 64 x 48) and the real volumes are under it, the "large" series over it.
MAX_VOXELS = 2_000_000


@pytest.fixture(scope="module")
def pacs_app(tmp_path_factory):
    """A local Orthanc holding a phantom CT series and the bad-series corpus, and a MONAI
    Label server whose datastore is that PACS (the demo 3D models as ``slicer3d``)."""
    root = tmp_path_factory.mktemp("pacs")
    phantom = phantom_3d(np.random.default_rng(5), 1, True)
    write_series(phantom.image, AFFINE_3D, root / "ct", series_description="phantom CT")
    save_volume(root / "source.nrrd", phantom.image, AFFINE_3D)
    bad = write_bad_series(root / "ct", root / "bad")
    assert phantom.image.size <= MAX_VOXELS
    write_series(np.zeros((64, 64, 1 + MAX_VOXELS // 4096)), AFFINE_3D, root / "large")
    real = {}  # ../shared/data volume -> its series UID
    for number, (name, modality) in enumerate(SHARED_VOLUMES.items()):
        if (SHARED / name).exists():
            from monai.transforms import LoadImage

            loaded = LoadImage(image_only=True)(str(SHARED / name))
            files = write_series(np.asarray(loaded), np.asarray(loaded.affine), root / f"real{number}", modality=modality)
            real[name] = str(pydicom.dcmread(str(files[0]), stop_before_pixels=True).SeriesInstanceUID)
    with local_orthanc(root / "orthanc") as pacs:
        for folder in (root / "ct", root / "large", *bad.values(), *(root / f"real{n}" for n in range(len(SHARED_VOLUMES)))):
            if folder.exists():
                pacs.upload(sorted(folder.iterdir()))
        # every series, not only MONAI Label's default {"Modality": "CT"}: the MR too
        env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(root / "cache"), "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": "{}"}
        models = write_models(root / "models")
        limit = ("--conf", "max_voxels", str(MAX_VOXELS))
        with running_server(pacs.dicomweb, "slicer3d", root / "server.log", models_dir=models, env=env, extra_args=limit) as server:
            yield SimpleNamespace(pacs=pacs, url=server.url, root=root, series=read_series(root / "ct"), bad=bad, real=real)


def _params(params) -> dict:
    return json.loads(params) if isinstance(params, (str, bytes)) else params


def _retrieve(pacs, study: str, stored: dict) -> pydicom.Dataset:
    """A stored instance (``{"series", "instance"}``, or the one instance of ``{"series"}``),
    fetched by WADO-RS and read as a viewer reads it."""
    client = DICOMwebClient(pacs.dicomweb)
    if "instance" in stored:
        instance = client.retrieve_instance(study, stored["series"], stored["instance"])
    else:  # a series of one instance
        (instance,) = client.retrieve_series(study, stored["series"])
    return reread(instance)


def test_segx_on_a_pacs_series_stores_seg_parametric_map_and_report_in_its_study(pacs_app, tmp_path):
    import highdicom as hd

    series = pacs_app.series
    client = MONAILabelClient(pacs_app.url, tmpdir=str(tmp_path))
    result_file, params = client.infer("slicer3d_segx", series.series_uid, {})
    params = _params(params)
    stored = params["dicom"]
    assert stored["study"] == series.study_uid

    # the explanation has the geometry of the series (= the source volume's)
    heatmap = sitk.ReadImage(result_file)
    assert_same_geometry(heatmap, sitk.ReadImage(str(pacs_app.root / "source.nrrd")))

    # QIDO-RS finds the three new series in the source study
    found = {ds["0020000E"]["Value"][0]: ds["00080060"]["Value"][0] for ds in pacs_app.pacs.series(series.study_uid)}
    assert found[stored["seg"]["series"]] == "SEG"
    assert found[stored["segx"]["series"]] == found[stored["explanation"]["series"]] == "OT"  # Parametric Map
    assert found[stored["sr"]["series"]] == "SR"

    # SEG and Parametric Map equal the NRRD answers voxel for voxel
    mask_file, _ = client.infer("slicer3d_segx", series.series_uid, {"layer": "mask", "store_dicom": False})
    expected_mask = sitk.GetArrayFromImage(sitk.ReadImage(mask_file)).transpose(2, 1, 0)  # (Z, Y, X) -> (X, Y, Z)
    assert expected_mask.sum() > 100
    seg = hd.seg.Segmentation.from_dataset(_retrieve(pacs_app.pacs, series.study_uid, stored["seg"]))
    sources = [str(ds.SOPInstanceUID) for ds in series.datasets]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=sources, segment_numbers=[1])[..., 0]
    np.testing.assert_array_equal(frames.transpose(2, 1, 0), expected_mask)
    pm = _retrieve(pacs_app.pacs, series.study_uid, stored["segx"])
    pixels = np.frombuffer(pm.FloatPixelData, dtype=np.float32).reshape(-1, pm.Rows, pm.Columns).transpose(2, 1, 0)
    np.testing.assert_allclose(pixels, sitk.GetArrayFromImage(heatmap).transpose(2, 1, 0), atol=1e-6)
    assert pm.FrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID

    # the report says what the JSON reply says
    report = _retrieve(pacs_app.pacs, series.study_uid, stored["sr"])
    numbers, codes = report_values(report)
    assert numbers["SegU certainty"] == pytest.approx(params["segu"]["certainty"], abs=1e-6)
    for name, probability in params["probabilities"].items():
        assert numbers[f"Probability of {name}"] == pytest.approx(100 * probability, abs=1e-4)  # in %
    assert codes["Predicted class"] == params["predicted"]
    assert codes["SegU certainty level"] == (params["segu"]["level"] or "not calibrated")

    # derived objects are not offered as images to explain, and the automatic SEG is no annotator's label
    images = client.datastore()["objects"]
    assert series.series_uid in images and not set(images) & {stored[name]["series"] for name in ("seg", "segx", "sr")}
    assert not images[series.series_uid]["labels"]

    # an annotator's final label (the region as edited) goes to the PACS as a manual SEG and is the image's label
    client.save_label(series.series_uid, mask_file, tag="final", params={"label_info": [{"name": "liver", "idx": 1}]})
    labels = [ds for ds in pacs_app.pacs.series(series.study_uid) if ds["0008103E"]["Value"] == ["Annotator label"]]
    assert len(labels) == 1 and labels[0]["00080060"]["Value"] == ["SEG"]
    annotated = hd.seg.Segmentation.from_dataset(_retrieve(pacs_app.pacs, series.study_uid, {"series": labels[0]["0020000E"]["Value"][0]}))
    assert annotated.SegmentSequence[0].SegmentLabel == "liver" and annotated.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    frames = annotated.get_pixels_by_source_instance(source_sop_instance_uids=sources, segment_numbers=[1])[..., 0]
    np.testing.assert_array_equal(frames.transpose(2, 1, 0), expected_mask)
    assert "final" in client.datastore()["objects"][series.series_uid]["labels"]


@pytest.mark.parametrize("name", SHARED_VOLUMES)
def test_real_ct_and_mr_series_from_the_pacs_are_explained_on_their_own_geometry(pacs_app, tmp_path, name):
    if name not in pacs_app.real:
        pytest.skip(f"../shared/data/{name} is not here (CI has it)")
    client = MONAILabelClient(pacs_app.url, tmpdir=str(tmp_path))
    result_file, params = client.infer("slicer3d_segx", pacs_app.real[name], {"store_dicom": False})
    assert "dicom" not in _params(params)
    assert_same_geometry(sitk.ReadImage(result_file), sitk.ReadImage(str(SHARED / name)))


def test_a_series_that_is_not_one_volume_gets_a_4xx_naming_it_and_nothing_is_stored(pacs_app, tmp_path):
    client = MONAILabelClient(pacs_app.url, tmpdir=str(tmp_path))
    for defect, folder in pacs_app.bad.items():
        first = pydicom.dcmread(str(next(folder.iterdir())), stop_before_pixels=True)
        before = len(pacs_app.pacs.series(first.StudyInstanceUID))
        with pytest.raises(MONAILabelClientException) as refused:
            client.infer("slicer3d_segx", str(first.SeriesInstanceUID), {})
        assert refused.value.msg.startswith("Status: 400;"), (defect, refused.value.msg)
        assert BAD_SERIES[defect] in refused.value.msg, (defect, refused.value.msg)
        assert "/tmp" not in refused.value.msg and str(Path.home()) not in refused.value.msg
        assert len(pacs_app.pacs.series(first.StudyInstanceUID)) == before, f"{defect}: something was stored"


def test_a_series_over_the_voxel_limit_is_refused_before_its_pixels_are_fetched(pacs_app, tmp_path):
    large = pydicom.dcmread(str(next((pacs_app.root / "large").iterdir())), stop_before_pixels=True)
    client = MONAILabelClient(pacs_app.url, tmpdir=str(tmp_path))
    with pytest.raises(MONAILabelClientException) as refused:
        client.infer("slicer3d_segx", str(large.SeriesInstanceUID), {})
    assert refused.value.msg.startswith("Status: 413;") and "over the limit of 2,000,000" in refused.value.msg
    assert not list((pacs_app.root / "cache").rglob(f"{large.SeriesInstanceUID}*")), "the series was downloaded"


def test_segx_pacs_serves_volumes_as_ct_series_on_loopback(tmp_path):
    """What ``make pacs`` runs: a local Orthanc holding the given volumes as CT series."""
    import signal
    import subprocess
    import sys
    import time

    save_volume(tmp_path / "volume.nii.gz", np.arange(8 * 6 * 5, dtype=np.float32).reshape(8, 6, 5), AFFINE_3D)
    port = free_port()
    segx = Path(sys.executable).parent / "segx"
    command = [str(segx), "pacs", "--folder", str(tmp_path / "pacs"), "--port", str(port), "--load", str(tmp_path / "volume.nii.gz")]
    # a test run started in the background inherits an ignored SIGINT, and Python then
    # never raises KeyboardInterrupt: the child gets the default disposition back, as in a terminal
    reset_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=reset_sigint)
    try:
        lines = []
        deadline = time.time() + 120
        while not any("Ctrl-C" in line for line in lines) and time.time() < deadline and process.poll() is None:
            lines.append(process.stdout.readline())
        assert any(f"http://127.0.0.1:{port}/dicom-web" in line for line in lines), lines
        (series,) = requests.get(f"http://127.0.0.1:{port}/dicom-web/series", timeout=10).json()
        assert series["00080060"]["Value"] == ["CT"]
        _assert_refused_off_loopback(port)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    with pytest.raises(requests.ConnectionError):  # Orthanc stopped with it
        requests.get(f"http://127.0.0.1:{port}/system", timeout=5)


def _non_loopback_addresses() -> list[str]:
    """This machine's IPv4 addresses other than 127.0.0.0/8 (those another computer could use)."""
    import psutil

    return [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
            if a.family == socket.AF_INET and not a.address.startswith("127.")]  # fmt: skip


def _assert_refused_off_loopback(port: int) -> None:
    """Every non-loopback address of this machine refuses a TCP connection on the PACS's
    port, on Orthanc's own HTTP port (8042) and on its DICOM port (4242)."""
    addresses = _non_loopback_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to connect to")
    for address in addresses:
        for tried in (port, 8042, 4242):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, tried), timeout=5).close()


def test_local_pacs_is_reachable_on_loopback_only(tmp_path):
    """Orthanc 1.10 binds 0.0.0.0 whatever RemoteAccessAllowed says; started by the project
    it must not be reachable from another computer: a connection to any non-loopback
    address of this machine is refused (not answered with 401/403), 127.0.0.1 answers."""
    with local_orthanc(tmp_path / "orthanc") as pacs:
        assert requests.get(f"{pacs.dicomweb}/studies", timeout=10).status_code in (200, 204)
        _assert_refused_off_loopback(int(pacs.url.rsplit(":", 1)[1]))
