"""A corpus of hostile and valid files per format, generated here, sent through every
ingestion route of the route table on a live server: each hostile file is answered 4xx in
under 2 s, no answer depends on a canary file beside the server's folders, nothing is left
in the server's temporary folder and nothing is written outside the studies and session
folders; each valid file is taken (and explained when sent to ``/infer``)."""

import time
from pathlib import Path

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from conftest import write_studies
from pydicom.encaps import encapsulate
from segx.demo import running_server
from lib.tokens import Tokens
from test_image_headers import FRAMES, JPEG_BASELINE, PAGE, dicom, jpeg, picture_bytes, sitk_write

from lib import routes

#: 8 x 8 uint8 bytes a hostile header could point at.
CANARY = bytes(range(64))
MAX_VOXELS = 200_000


def hostile_files(folder: Path, canary: Path) -> dict:
    """name -> (upload file name, bytes): one file per class of hostile input."""
    volume = (np.random.default_rng(2).random((8, 9, 10)) * 100).astype(np.int16)
    nrrd = sitk_write(volume, folder / "v.nrrd").read_bytes()
    header = nrrd[: nrrd.index(b"\n\n") + 1].decode()
    mha = sitk_write(volume, folder / "v.mha").read_bytes()
    mha_header = mha[: mha.index(b"ElementDataFile")].decode()
    nii = sitk_write(volume, folder / "v.nii.gz", True).read_bytes()
    big_page = np.zeros((300, 400), np.uint8)
    files = {
        "nrrd_detached_absolute": ("x.nrrd", header.replace("encoding: raw", "encoding: raw\ndata file: " + str(canary)).encode() + b"\n"),
        "nrrd_detached_relative": ("x.nrrd", (header + "data file: ../../canary.raw\n\n").encode()),
        "nrrd_detached_list": ("x.nrrd", (header + "data file: LIST\n" + str(canary) + "\n").encode()),
        "mha_element_data_file": ("x.mha", (mha_header + f"ElementDataFile = {canary}\n").encode()),
        "mhd_suffix": ("x.mhd", (mha_header + "ElementDataFile = LOCAL\n").encode() + mha[mha.index(b"LOCAL\n") + 6 :]),
        "nii_truncated": ("x.nii.gz", nii[: len(nii) - 80]),
        "nrrd_over_limit": ("x.nrrd", header.replace("sizes: 10 9 8", "sizes: 1000 1000 1000").encode() + b"\n"),
        "tiff_pages_over_limit": ("x.tif", picture_bytes([big_page, big_page], "TIFF")),
        "png_truncated": ("x.png", picture_bytes([PAGE], "PNG")[:-12]),
        "png_not_png": ("x.png", b"<html><script>alert(1)</script></html>"),
        "dicom_claims_12000_squared": ("x.dcm", dicom(folder / "huge.dcm", b"\0" * 16, 12000, 12000).read_bytes()),
        "dicom_jpeg_frame_larger_than_rows": ("x.dcm", dicom(folder / "big.dcm", encapsulate([jpeg(np.kron(FRAMES[0], np.ones((30, 30), np.uint8)))]), 16, 20, syntax=JPEG_BASELINE).read_bytes()),
        "dicom_deflated": ("x.dcm", dicom(folder / "deflated.dcm", FRAMES[0].tobytes(), 16, 20, syntax="1.2.840.10008.1.2.1.99").read_bytes()),
        "dicom_native_truncated": ("x.dcm", dicom(folder / "cut.dcm", FRAMES[0].tobytes()[:100], 16, 20).read_bytes()),
        "unknown_suffix": ("x.exe", b"MZ" + b"\0" * 100),
        "empty": ("x.nii.gz", b""),
    }
    return files


def valid_files(folder: Path) -> dict:
    """name -> (upload file name, bytes, model): one valid file per format."""
    volume = (np.random.default_rng(3).random((20, 24, 16)) * 1.0).astype(np.float32)
    rgb = (np.random.default_rng(4).random((40, 50, 3)) * 255).astype(np.uint8)
    return {
        "nii.gz": ("v.nii.gz", sitk_write(volume, folder / "ok.nii.gz", True).read_bytes(), "toy3d"),
        "nrrd": ("v.nrrd", sitk_write(volume, folder / "ok.nrrd", True).read_bytes(), "toy3d"),
        "mha": ("v.mha", sitk_write(volume, folder / "ok.mha").read_bytes(), "toy3d"),
        "png": ("v.png", picture_bytes([rgb], "PNG"), "toy2d"),
        "jpg": ("v.jpg", picture_bytes([rgb], "JPEG"), "toy2d"),
        "tif": ("v.tif", picture_bytes([rgb], "TIFF"), "toy2d"),
        "bmp": ("v.bmp", picture_bytes([rgb], "BMP"), "toy2d"),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory, toy_models):
    """A live server with tokens, a small voxel limit, its own temporary and session folders,
    and canary files beside the studies; yields (url, root, annotator, admin)."""
    root = tmp_path_factory.mktemp("ingest")
    studies = write_studies(root / "studies")
    (root / "tmp").mkdir()
    (root / "canary.raw").write_bytes(CANARY)
    tokens = Tokens(root / "tokens.json")
    annotator, admin = tokens.add("ann", "annotator"), tokens.add("adm", "admin")
    env = {"TMPDIR": str(root / "tmp"), "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
    extra = ["--conf", "tokens_file", str(root / "tokens.json"), "--conf", "max_voxels", str(MAX_VOXELS), "--conf", "max_upload_mb", "4"]
    with running_server(studies, "toy2d,toy3d", root / "server.log", models_dir=toy_models, env=env, extra_args=extra) as running:
        time.sleep(0.5)
        yield running.url, root, annotator, admin


#: Every route of the table that takes a file, with how to send one: (method, path, query, field, token).
def ingestion_routes():
    sends = {
        ("POST", "/infer/{model}"): lambda name, data, model: ("POST", f"/infer/{model}_segx", {"output": "json"}, "file", "annotator"),
        ("PUT", "/session/"): lambda name, data, model: ("PUT", "/session/", {}, "files", "annotator"),
        ("PUT", "/datastore/image"): lambda name, data, model: ("PUT", "/datastore/image", {"image": f"new_{model}"}, "file", "admin"),
        ("PUT", "/datastore/"): lambda name, data, model: ("PUT", "/datastore/", {"image": f"old_{model}"}, "file", "admin"),
        ("PUT", "/datastore/label"): lambda name, data, model: ("PUT", "/datastore/label", {"image": "ct0" if model == "toy3d" else "skin0"}, "label", "annotator"),
    }
    uploads = {(m, r.path) for r in routes.TABLE if r.body == routes.UPLOAD and r.role != routes.REMOVED for m in r.methods}
    assert uploads == set(sends), "a route that takes files must be in this test"
    return sends


def send(server, route, name, data, model="toy3d"):
    url, _, annotator, admin = server
    method, path, query, field, role = ingestion_routes()[route](name, data, model)
    token = annotator if role == "annotator" else admin
    return requests.request(method, url + path, params=query, files={field: (name, data)}, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def tree(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("route", sorted(ingestion_routes()), ids=lambda r: f"{r[0]} {r[1]}")
def test_hostile_files_are_refused_by_every_ingestion_route(server, route, tmp_path):
    _, root, _, _ = server
    tmp_before, before = set((root / "tmp").iterdir()), tree(root)
    for case, (name, data) in hostile_files(tmp_path, root / "canary.raw").items():
        started = time.monotonic()
        answer = send(server, route, name, data)
        assert 400 <= answer.status_code < 500, (case, answer.status_code, answer.text[:300])
        assert time.monotonic() - started < 2, case
        assert str(root) not in answer.text and "canary" not in answer.text.replace("canary.raw", ""), (case, answer.text)
    assert set((root / "tmp").iterdir()) == tmp_before
    after = tree(root)
    changed = {p for p in after if before.get(p) != after[p]} - {root / "server.log"}
    assert not changed, changed


@pytest.mark.parametrize("route", [("POST", "/infer/{model}"), ("PUT", "/session/"), ("PUT", "/datastore/image")], ids=lambda r: f"{r[0]} {r[1]}")
def test_valid_files_of_every_format_are_taken(server, route, tmp_path):
    for case, (name, data, model) in valid_files(tmp_path).items():
        answer = send(server, route, name, data, model)
        assert answer.status_code == 200, (case, answer.text[:300])
        if route[1].startswith("/infer"):
            assert 0 <= answer.json()["segu"]["certainty"] <= 1


def test_a_valid_label_of_each_kind_is_stored(server, tmp_path):
    url, root, annotator, _ = server
    studies = root / "studies"
    for image, suffix in (("ct0", ".nii.gz"), ("skin0", ".png")):
        reference = sitk.ReadImage(str(next(studies.glob(f"{image}.*"))))
        label = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
        label.CopyInformation(reference) if reference.GetNumberOfComponentsPerPixel() == 1 else None
        path = tmp_path / f"label{suffix}"
        sitk.WriteImage(label, str(path))
        answer = send(server, ("PUT", "/datastore/label"), path.name, path.read_bytes(), "toy3d" if image == "ct0" else "toy2d")
        assert answer.status_code == 200, answer.text
