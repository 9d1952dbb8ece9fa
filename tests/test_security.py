"""The server against an attacker, by class, on a live ``monailabel start_server`` with API
tokens (and one without, as shipped): the route table is the whole surface, every route
answers its role and names no server folder, request bodies are bounded before they are
read, browsers of other sites and DNS-rebinding host names are refused, sessions belong to
their user, and archives cannot write outside their folder.

Every refusal asserted here is the gate's own message (``is not served``, ``invalid``,
``needs the admin role``...), so none of these tests passes with the gate switched off
(MONAI Label's own answers differ)."""

import io
import json
import os
import socket
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import requests
from conftest import APP_DIR, write_studies
from segx.demo import running_server
from lib.tokens import Tokens

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "SegXSlicer"))

from SegXSlicerLib.client import SegXClient, ServerError  # noqa: E402

from lib import routes  # noqa: E402  (monailabel_app is on sys.path: conftest)


def files_under(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


class Attack:
    """A live server with tokens for ``alice`` and ``carol`` (annotators) and ``bob`` (admin);
    its sessions and temporary files in folders of the test."""

    def __init__(self, url, root, studies, tokens):
        self.url, self.root, self.studies = url, root, studies
        self.alice, self.carol, self.bob = tokens

    def call(self, method, path, token=None, **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url + path, headers=headers, timeout=120, **kwargs)

    def written(self, before: dict) -> set:
        """Files created or changed under the test's root since ``before``, except the log,
        the studies' labels and the session store."""
        after = files_under(self.root)
        changed = {p for p in after if p not in before or after[p] != before[p]}
        allowed = (self.root / "server.log", self.studies / "labels", self.root / "sessions", self.studies / ".lock")
        return {p for p in changed if not any(p == a or a in p.parents for a in allowed) and "datastore" not in p.name}


@pytest.fixture(scope="module")
def attack(tmp_path_factory, toy_models):
    root = tmp_path_factory.mktemp("attack")
    studies = write_studies(root / "studies")
    (root / "tmp").mkdir()
    (root / "canary.bin").write_bytes(bytes(range(256)) * 64)
    tokens = Tokens(root / "tokens.json")
    issued = (tokens.add("alice", "annotator"), tokens.add("carol", "annotator"), tokens.add("bob", "admin"))
    env = {"TMPDIR": str(root / "tmp"), "MONAI_LABEL_SESSION_PATH": str(root / "sessions")}
    extra = ["--conf", "tokens_file", str(root / "tokens.json"), "--conf", "max_upload_mb", "2", "--conf", "max_voxels", "100000"]
    with running_server(studies, "toy2d,toy3d,noweights", root / "server.log", models_dir=toy_models, env=env, extra_args=extra) as server:
        attack = Attack(server.url, root, studies, issued)
        attack.tmp_at_start = set((root / "tmp").iterdir())  # the server's own logging configuration
        yield attack


# --- the route table is the whole surface ---------------------------------------------


def test_every_route_the_app_serves_is_classified_and_a_new_one_is_refused(tmp_path, toy_models):
    """In-process, through the app's own lifespan (SegXApp installs its routes and the gate):
    the served routes are exactly those of the table (plus OAuth's, only served with
    MONAI_LABEL_AUTH_ENABLE), and a route a MONAI Label upgrade might add is listed as
    unclassified and answered 404."""
    from fastapi.testclient import TestClient
    from monailabel.config import settings

    studies = write_studies(tmp_path / "studies")
    settings.MONAI_LABEL_APP_DIR, settings.MONAI_LABEL_STUDIES = str(APP_DIR), str(studies)
    settings.MONAI_LABEL_APP_CONF = {"models": "toy2d", "models_dir": str(toy_models)}
    from monailabel.app import app
    from monailabel.endpoints import info

    with TestClient(app, base_url="http://127.0.0.1") as client:
        served = routes.served_routes(app)
        table = {(m, r.path) for r in routes.TABLE for m in r.methods}
        assert routes.unclassified(app) == set()
        assert table - served <= {("GET", "/auth/"), ("POST", "/auth/token"), ("GET", "/auth/token/valid")}
        assert client.get("/info/").status_code == 200

        info.router.add_api_route("/upgrade-route", lambda: {"new": True}, methods=["GET"])
        try:
            assert routes.unclassified(app) == {("GET", "/info/upgrade-route")}
            answer = client.get("/info/upgrade-route")
            assert answer.status_code == 404 and "is not served" in answer.json()["detail"]
        finally:
            info.router.routes.pop()


def _example_path(path: str) -> str:
    return path.replace("{model}", "toy3d_segx").replace("{strategy}", "segu_lowest_certainty").replace("{method}", "segu") \
        .replace("{session_id}", "0" * 32).replace("{path:path}", "x")  # fmt: skip


@pytest.mark.parametrize("route", [r for r in routes.TABLE if r.role == routes.REMOVED], ids=lambda r: f"{r.methods[0]} {r.path}")
def test_removed_routes_are_not_served_even_to_the_admin(attack, route):
    for method in route.methods:
        answer = attack.call(method, _example_path(route.path), attack.bob)
        assert answer.status_code == 404 and (method == "HEAD" or "is not served" in answer.json()["detail"]), (method, route.path, answer.text)


@pytest.mark.parametrize("route", [r for r in routes.TABLE if r.role not in (routes.REMOVED, routes.NONE)], ids=lambda r: f"{r.methods[0]} {r.path}")
def test_each_route_needs_a_token_and_its_role_before_its_body_is_read(attack, route):
    method, path = route.methods[0], _example_path(route.path)
    started = time.monotonic()
    tmp_before = set((attack.root / "tmp").rglob("*"))
    # 8 MB without a token: refused on the headers; with Content-Length the client may not even send it all
    body = b"\0" * (8 << 20)
    try:
        answer = attack.call(method, path, data=body, headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 401 and (method == "HEAD" or "API token" in answer.json()["detail"])
    except requests.ConnectionError:  # the server answered and closed before the body was sent
        pass
    assert time.monotonic() - started < 5
    assert set((attack.root / "tmp").rglob("*")) == tmp_before  # nothing spooled
    answer = attack.call(method, path, "not-a-token")
    assert answer.status_code == 401
    if route.role == routes.ADMIN:
        answer = attack.call(method, path, attack.alice)
        assert answer.status_code == 403 and (method == "HEAD" or "needs the admin role" in answer.json()["detail"])


def test_no_answer_of_any_kept_route_names_a_server_folder(attack):
    """Every kept route, called by the admin with plausible arguments (and some that fail):
    no answer holds the test's root folder, the home folder or the temporary folder."""
    server_folders = [str(attack.root), str(Path.home()), "/tmp/", str(APP_DIR)]
    session = attack.call("PUT", "/session/", attack.bob, files={"files": ("ct.nii.gz", (attack.studies / "ct0.nii.gz").read_bytes())}).json()
    calls = {
        ("GET", "/info/"): {},
        ("POST", "/infer/{model}"): {"params": {"image": "ct0", "output": "json"}},
        ("POST", "/activelearning/{strategy}"): {"json": {}},
        ("PUT", "/session/"): {"files": {"files": ("x.nrrd", b"NRRD0004\ndata file: /etc/passwd\n\n")}},
        ("GET", "/session/{session_id}"): {"path": f"/session/{session['session_id']}"},
        ("DELETE", "/session/{session_id}"): {"path": f"/session/{'0' * 32}"},
        ("PUT", "/datastore/label"): {"params": {"image": "ct0"}, "files": {"label": ("l.nii.gz", b"junk")}},
        ("PUT", "/datastore/image"): {"params": {"image": "new"}, "files": {"file": ("n.png", b"junk")}},
        ("PUT", "/datastore/"): {"params": {"image": "new"}, "files": {"file": ("n.nrrd", b"NRRD0004\ndata file: /etc/passwd\n\n")}},
        ("GET", "/datastore/"): {"params": {"output": "train"}},
        ("HEAD", "/datastore/image"): {"params": {"image": "ct0"}},
        ("GET", "/datastore/image"): {"params": {"image": "nosuchimage"}},
        ("GET", "/datastore/image/info"): {"params": {"image": "ct0"}},
        ("HEAD", "/datastore/label"): {"params": {"image": "ct0", "tag": "final"}},
        ("GET", "/datastore/label"): {"params": {"label": "ct0", "tag": "final"}},
        ("GET", "/datastore/label/info"): {"params": {"label": "ct0", "tag": "final"}},
        ("DELETE", "/datastore/image"): {"params": {"id": "nosuchimage"}},
        ("DELETE", "/datastore/label"): {"params": {"id": "ct0", "tag": "nosuchtag"}},
        ("PUT", "/datastore/image/info"): {"params": {"image": "nosuchimage"}, "data": {"info": "{}"}},
        ("PUT", "/datastore/label/info"): {"params": {"label": "nosuchimage", "tag": "final"}, "data": {"info": "{}"}},
        ("GET", "/datastore/dataset"): {"params": {"limit_cases": 1}},
        ("GET", "/train/"): {},
        ("POST", "/train/{model}"): {"path": "/train/nosuchmodel", "json": {}},
        ("DELETE", "/train/"): {},
        ("GET", "/scoring/"): {},
        ("POST", "/scoring/{method}"): {"path": "/scoring/nosuchmethod", "json": {}},
        ("DELETE", "/scoring/"): {},
        ("GET", "/model/{model}"): {"path": "/model/toy3d_segx"},
        ("GET", "/model/info/{model}"): {"path": "/model/info/toy3d_segx"},
        ("GET", "/logs/"): {"params": {"lines": 200}},
        ("GET", "/logs/gpu"): {},
        ("GET", "/favicon.ico"): {},
    }
    kept = {(m, r.path) for r in routes.TABLE if r.role != routes.REMOVED for m in r.methods}
    assert set(calls) == kept, "classify the new route here too"
    for (method, template), kwargs in calls.items():
        kwargs = dict(kwargs)
        path = kwargs.pop("path", _example_path(template))
        answer = attack.call(method, path, attack.bob, **kwargs)
        assert answer.status_code < 500, (method, path, answer.text[:300])
        text = answer.content.decode("latin-1")
        for folder in server_folders:
            assert folder not in text, (method, path, folder, text[:300])


# --- ids, params and browsers --------------------------------------------------------


def test_params_cannot_choose_the_image_or_write_labels(attack):
    before = files_under(attack.root)
    planted = {"image": str(attack.root / "canary.bin"), "save_label": True, "label_tag": "../../../planted", "session": {"image": "/etc/passwd"}}
    infer = lambda params, image="ct0": attack.call("POST", "/infer/toy3d_segx", attack.alice, params={"image": image, "output": "json"}, data={"params": json.dumps(params)})  # noqa: E731
    answer, plain = infer(dict(planted, layer="segx")), infer({"layer": "segx"})
    assert answer.status_code == plain.status_code == 200
    assert answer.json()["probabilities"] == plain.json()["probabilities"]  # the datastore image, not the planted path
    nothing = infer(planted, image="")
    assert nothing.status_code == 400 and "send an image file or the id" in nothing.json()["detail"]
    assert not attack.written(before)
    assert not (attack.studies / "labels").exists() or not list((attack.studies / "labels").rglob("*planted*"))


@pytest.mark.parametrize(
    "method, path, query, message",
    [
        ("PUT", "/datastore/label", {"image": "ct0", "tag": "../../../x"}, "invalid tag"),
        ("PUT", "/datastore/image", {"image": "../../x"}, "invalid image"),
        ("GET", "/datastore/image", {"image": "../secret"}, "invalid image"),
        ("GET", "/datastore/label", {"label": "ct0", "tag": "../../x"}, "invalid tag"),
        ("DELETE", "/datastore/label", {"id": "ct0", "tag": "/etc"}, "invalid tag"),
        ("POST", "/infer/toy3d_segx", {"image": "ct0", "session_id": "../../x"}, "invalid session_id"),
        ("GET", "/session/..%2F..%2Fetc", {}, "is not served"),
        ("GET", "/datastore/image/info", {"image": "ct0/../../x"}, "invalid image"),
    ],
)
def test_ids_and_tags_that_name_paths_are_refused_by_the_gate(attack, method, path, query, message):
    before = files_under(attack.root)
    files = {"label": ("x.nii.gz", b"\x00" * 64)} if path == "/datastore/label" and method == "PUT" else None
    files = {"file": ("x.nii.gz", b"\x00" * 64)} if path == "/datastore/image" and method == "PUT" else files
    answer = attack.call(method, path, attack.bob, params=query, files=files)
    assert answer.status_code in (400, 404) and message in answer.json()["detail"], answer.text
    assert not attack.written(before)


@pytest.mark.parametrize(
    "params, message",
    [([1, 2], "JSON object"), ({"margin_mm": [1]}, "margin_mm"), ({"margin_mm": 1e300}, "margin_mm"), ({"class": {"a": 1}}, "class"), ({"layer": 3}, "layer")],
)
def test_malformed_params_are_a_400_with_a_message(attack, params, message):
    answer = attack.call("POST", "/infer/toy3d_segx", attack.alice, params={"image": "ct0", "output": "json"}, data={"params": json.dumps(params)})
    assert answer.status_code == 400 and message in answer.json()["detail"]


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/train/toy3d_classifier", {"name": "../../../planted"}, "does not take ['name']"),
        ("/train/toy3d_classifier", {"train_ds": "/etc/passwd"}, "does not take ['train_ds']"),
        ("/train/toy3d_classifier", {"max_epochs": "10; rm -rf /"}, "max_epochs must be an integer"),
        ("/train/toy3d_classifier", {"learning_rate": 1e9}, "learning_rate must be a number"),
        ("/train/nosuchtrainer", {}, "unknown trainer"),
        ("/activelearning/segu_lowest_certainty", {"client_id": "../" * 40}, "client_id must be a plain name"),
        ("/activelearning/segu_lowest_certainty", {"model": {"$ne": 1}}, "model must be a plain name"),
    ],
)
def test_json_params_of_training_and_sampling_are_checked_before_any_work(attack, path, body, message):
    before = files_under(attack.root)
    answer = attack.call("POST", path, attack.bob, json=body)
    assert answer.status_code in (400, 404) and message in answer.json()["detail"], answer.text
    assert not attack.written(before)


def test_pages_of_other_sites_and_rebound_host_names_are_refused(attack):
    port = attack.url.rsplit(":", 1)[1]
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": f"http://localhost:{int(port) + 1}"}):
        answer = attack.call("GET", "/info/", attack.alice, headers=headers)
        assert answer.status_code == 403 and "other web sites" in answer.json()["detail"]
        assert "access-control-allow-origin" not in answer.headers
    preflight = attack.call("OPTIONS", "/infer/toy3d_segx", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    rebound = attack.call("GET", "/info/", attack.alice, headers={"Host": f"attacker.example:{port}"})
    assert rebound.status_code == 400 and "is not served here" in rebound.json()["detail"]
    same_site = attack.call("GET", "/info/", attack.alice, headers={"Origin": attack.url})  # a page served by this server
    assert same_site.status_code == 200
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"{socket.gethostname()}:{port}"):
        assert attack.call("GET", "/info/", attack.alice, headers={"Host": host}).status_code == 200


def test_websites_listed_by_the_admin_may_call_it(tmp_path, toy_models):
    studies = write_studies(tmp_path / "studies")
    extra = ["--conf", "cors_origins", "https://viewer.example.org", "--conf", "allowed_hosts", "segx.example.org"]
    with running_server(studies, "toy2d", tmp_path / "server.log", models_dir=toy_models, extra_args=extra) as server:
        answer = requests.get(f"{server.url}/info/", headers={"Origin": "https://viewer.example.org", "Host": "segx.example.org"}, timeout=30)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://viewer.example.org"
        assert requests.get(f"{server.url}/info/", headers={"Origin": "https://other.example.org"}, timeout=30).status_code == 403


# --- bodies, sessions, archives --------------------------------------------------------


def test_bodies_are_cut_off_at_the_limit_while_they_stream(attack):
    tmp_before = set((attack.root / "tmp").rglob("*"))

    def chunks():  # no Content-Length: the gate must count
        yield b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.nii.gz"\r\nContent-Type: application/octet-stream\r\n\r\n'
        for _ in range(40):
            yield b"\0" * (256 << 10)

    for token, path in ((attack.alice, "/session/"), (attack.alice, "/datastore/label?image=ct0")):
        answer = attack.call("PUT", path, token, data=chunks(), headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        assert answer.status_code == 413 and "exceeds the limit of 2 MiB" in answer.json()["detail"], answer.text
    declared = attack.call("POST", "/activelearning/segu_lowest_certainty", attack.alice, data=b"{}" + b" " * (2 << 20), headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "at most" in declared.json()["detail"]
    assert set((attack.root / "tmp").rglob("*")) == tmp_before


def test_sessions_belong_to_their_user_and_have_random_ids(attack):
    upload = {"files": ("ct.nii.gz", (attack.studies / "ct0.nii.gz").read_bytes())}
    first = attack.call("PUT", "/session/", attack.alice, files=upload).json()["session_id"]
    second = attack.call("PUT", "/session/", attack.alice, files=upload).json()["session_id"]
    assert len(first) == 32 and sum(a != b for a, b in zip(first, second)) > 16  # not a timestamp apart
    for method in ("GET", "DELETE"):
        answer = attack.call(method, f"/session/{first}", attack.carol)
        assert answer.status_code == 404 and "not known" in answer.json()["detail"]
    stolen = attack.call("POST", "/infer/toy3d_segx", attack.carol, params={"session_id": first, "output": "json"})
    assert stolen.status_code == 404
    assert attack.call("POST", "/infer/toy3d_segx", attack.alice, params={"session_id": first, "output": "json"}).status_code == 200
    assert attack.call("DELETE", f"/session/{first}", attack.alice).status_code == 200
    assert attack.call("GET", f"/session/{first}", attack.alice).status_code == 404


def _tar(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _tar_member(name, data=b"x", kind=tarfile.REGTYPE, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def _zip(members, symlink=None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink[0])
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, symlink[1])
    return buffer.getvalue()


def _archives(root: Path) -> dict:
    target = str(root / "model_configs_planted.yaml")
    return {
        "tar_dotdot.tar.gz": _tar([_tar_member("../../planted.yaml", b"network: os.system")]),
        "tar_absolute.tar.gz": _tar([_tar_member(target, b"network: os.system")]),
        "tar_symlink.tar.gz": _tar([_tar_member("link", kind=tarfile.SYMTYPE, target=str(root)), _tar_member("link/planted.yaml", b"x")]),
        "tar_hardlink.tar.gz": _tar([_tar_member("hard", kind=tarfile.LNKTYPE, target=str(root / "canary.bin"))]),
        "tar_device.tar.gz": _tar([_tar_member("dev", kind=tarfile.CHRTYPE)]),
        "zip_dotdot.zip": _zip([("../../planted.yaml", b"network: os.system")]),
        "zip_absolute.zip": _zip([(target, b"x")]),
        "zip_symlink.zip": _zip([], symlink=("link", str(root))),
        "zip_bomb.zip": _zip([("bomb.dcm", b"\0" * (40 << 20))]),
        "zip_many.zip": _zip([(f"{i}.dcm", b"") for i in range(6000)]),
        "zip_not_dicom.zip": _zip([("a.dcm", b"not dicom"), ("b.dcm", b"not dicom")]),
    }


def test_archives_cannot_write_outside_their_folder_or_inflate_past_the_limit(attack):
    before = files_under(attack.root)
    for name, data in _archives(attack.root).items():
        started = time.monotonic()
        answer = attack.call("PUT", "/session/", attack.alice, params={"uncompress": "true"}, files={"files": (name, data)})
        assert answer.status_code in (400, 413), (name, answer.text)
        assert time.monotonic() - started < 2, name
    assert not attack.written(before)
    assert not list(attack.root.rglob("planted*")) and not (attack.root / "sessions").exists() or not any((attack.root / "sessions").rglob("planted*"))
    assert set((attack.root / "tmp").iterdir()) == attack.tmp_at_start


def test_a_dicom_series_archive_becomes_one_session(attack, tmp_path):
    import nibabel as nib
    from segx.formats.dicom import write_series

    volume = nib.load(str(attack.studies / "ct0.nii.gz"))
    files = write_series(volume.get_fdata() * 1000, volume.affine, tmp_path / "series")
    data = _zip([(f"series/{path.name}", path.read_bytes()) for path in files])
    created = attack.call("PUT", "/session/", attack.alice, params={"uncompress": "true"}, files={"files": ("series.zip", data)})
    assert created.status_code == 200, created.text
    answer = attack.call("POST", "/infer/toy3d_segx", attack.alice, params={"session_id": created.json()["session_id"], "output": "json"})
    assert answer.status_code == 200, answer.text


# --- labels --------------------------------------------------------------------------------


def test_labels_are_checked_against_their_image_and_name_who_saved_them(attack, tmp_path):
    import nibabel as nib
    import numpy as np
    from conftest import AFFINE_3D

    def label_file(array, affine=AFFINE_3D, name="label.nii.gz"):
        path = tmp_path / name
        nib.save(nib.Nifti1Image(array, affine), str(path))
        return path.read_bytes()

    good = np.zeros((20, 24, 16), np.uint8)
    good[5:12, 6:14, 4:10] = 1
    cases = {
        "html": (b"<html><script>alert(1)</script></html>", "label.nii.gz", "cannot read"),
        "wrong shape": (label_file(np.zeros((5, 7, 3), np.uint8)), "label.nii.gz", "5 x 7 x 3 voxels"),
        "2D for 3D": (label_file(np.zeros((20, 24), np.uint8), np.eye(4)), "label.nii.gz", "on the image's grid"),
        "unknown value": (label_file(good * 7), "label.nii.gz", "label values [7]"),
        "value 255": (label_file(good * 255), "label.nii.gz", "label values [255]"),
        "fractions": (label_file(good * 0.5 + 0.25), "label.nii.gz", "not whole numbers"),
        "moved": (label_file(good, AFFINE_3D + np.array([[0, 0, 0, 9.0]] * 3 + [[0, 0, 0, 0]])), "label.nii.gz", "not placed where its image is"),
    }
    labels = attack.studies / "labels"
    before = files_under(labels) if labels.exists() else {}
    for case, (data, name, message) in cases.items():
        answer = attack.call("PUT", "/datastore/label", attack.alice, params={"image": "ct0", "tag": "final"}, files={"label": (name, data)})
        assert answer.status_code == 400 and message in answer.json()["detail"], (case, answer.text)
    unknown = attack.call("PUT", "/datastore/label", attack.alice, params={"image": "nosuchimage"}, files={"label": ("l.nii.gz", label_file(good))})
    assert unknown.status_code == 404
    for bad_class in ("../../etc/passwd", "x" * 65, 3, ["benign"]):  # the image's class is a plain name
        answer = attack.call("PUT", "/datastore/label", attack.alice, params={"image": "ct0", "tag": "final"}, files={"label": ("l.nii.gz", label_file(good))},
                             data={"params": json.dumps({"image_label": bad_class})})  # fmt: skip
        assert answer.status_code == 400 and "image_label" in answer.json()["detail"], (bad_class, answer.text)
    assert (files_under(labels) if labels.exists() else {}) == before
    spoofed = json.dumps({"user": "bob", "label_info": [{"name": "organ", "idx": 1}], "image_label": "malignant", "path": "/etc"})
    saved = attack.call("PUT", "/datastore/label", attack.alice, params={"image": "ct0", "tag": "final"}, files={"label": ("l.nii.gz", label_file(good))}, data={"params": spoofed})
    assert saved.status_code == 200, saved.text
    info = attack.call("GET", "/datastore/label/info", attack.alice, params={"label": "ct0", "tag": "final"}).json()
    assert info["user"] == "alice" and info["label_info"] == [{"name": "organ", "idx": 1}] and "image_label" not in info
    image_info = attack.call("GET", "/datastore/image/info", attack.alice, params={"image": "ct0"}).json()
    assert image_info["label"] == "malignant" and "path" not in image_info  # what the classifier trainers read
    assert set((attack.root / "tmp").iterdir()) == attack.tmp_at_start


# --- without tokens (as shipped) and through the Slicer module's client ------------------


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, toy_models):
    """A server without tokens, as shipped: (url, RunningServer)."""
    root = tmp_path_factory.mktemp("open")
    with running_server(write_studies(root / "studies"), "toy2d,toy3d", root / "server.log", models_dir=toy_models) as server:
        yield server


def test_without_tokens_the_table_still_holds(open_server):
    assert requests.get(f"{open_server.url}/info/", timeout=30).status_code == 200
    for method, path in (("POST", "/reload"), ("POST", "/infer/wsi_v2/toy2d_segx"), ("GET", "/proxy/dicom/qido/studies"), ("PUT", "/model/toy2d_segx")):
        answer = requests.request(method, open_server.url + path, timeout=30)
        assert answer.status_code == 404 and "is not served" in answer.json()["detail"]
    assert requests.get(f"{open_server.url}/info/", headers={"Origin": "http://evil.example"}, timeout=30).status_code == 403


#: Peak RSS growth per voxel of the image that docs/SECURITY.md states for a SegX request
#: of a 2-class model (measured here: 45 bytes with output=all on toy3d; 34-39 bytes for
#: demo3d in benchmarks/server_load.py; 85-86 before the maps were kept once per class).
RSS_BYTES_PER_VOXEL = 56


def test_peak_memory_per_accepted_voxel_is_bounded(open_server, tmp_path):
    import nibabel as nib
    import numpy as np

    shape = (256, 256, 128)
    nib.save(nib.Nifti1Image((np.random.default_rng(0).random(shape) * 100).astype(np.int16), np.diag([0.8, 0.8, 2.5, 1])), str(tmp_path / "ct.nii.gz"))
    data = (tmp_path / "ct.nii.gz").read_bytes()
    send = lambda: requests.post(f"{open_server.url}/infer/toy3d_segx", params={"output": "all"}, files={"file": ("ct.nii.gz", data)}, timeout=600).raise_for_status()  # noqa: E731
    per_voxel = open_server.peak_rss_per_voxel(send, int(np.prod(shape)))
    assert per_voxel < RSS_BYTES_PER_VOXEL, per_voxel


def test_the_slicer_client_sends_its_token(attack):
    with pytest.raises(ServerError, match="HTTP 401.*API token"):
        SegXClient(attack.url).info()
    client = SegXClient(attack.url, token=attack.alice)
    assert "toy3d_segx" in client.info()["models"]
    session = client.create_session("ct.nii.gz", (attack.studies / "ct0.nii.gz").read_bytes())
    assert session and os.sep not in session
    client.delete_session(session)


def test_security_md_shows_the_route_table_of_the_code():
    text = (Path(__file__).resolve().parent.parent / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    start = text.index("\n", text.index("<!-- route-table")) + 1
    assert text[start : text.index("<!-- /route-table -->")].strip() == routes.markdown(), "regenerate: cd monailabel_app && python -m lib.routes"
