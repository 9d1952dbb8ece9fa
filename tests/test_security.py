"""The server against an attacker, over HTTP, on a live ``monailabel start_server``: no
request reads or writes a path it chose, ids and tags are plain names, answers name no
server folder, and with API tokens every route needs one and admin routes the admin role
(also through the Slicer module's client)."""

import json
import sys
from pathlib import Path

import pytest
import requests
from conftest import write_studies
from segx.demo import running_server
from segx.tokens import Tokens

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "SegXSlicer"))

from SegXSlicerLib.client import SegXClient, ServerError  # noqa: E402


def files_under(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, toy_models):
    """A server without tokens (as shipped) on toy models; yields (url, root folder, studies)."""
    root = tmp_path_factory.mktemp("attack")
    studies = write_studies(root / "studies")
    (root / "secret.txt").write_text("not an image")
    with running_server(studies, "toy2d,toy3d,noweights", root / "server.log", models_dir=toy_models) as server:
        yield server.url, root, studies


def infer(url, model, image="", params=None, **query):
    return requests.post(f"{url}/infer/{model}", params={"image": image, "output": "json", **query}, data={"params": json.dumps(params or {})}, timeout=120)


def test_params_cannot_choose_the_image_or_write_labels(open_server):
    url, root, studies = open_server
    before = files_under(root)
    planted = {"image": str(root / "secret.txt"), "save_label": True, "label_tag": "../../../planted", "session": {"image": "/etc/passwd"}}
    answer = infer(url, "toy3d_segx", "ct0", dict(planted, layer="segx"))
    plain = infer(url, "toy3d_segx", "ct0", {"layer": "segx"})
    assert answer.status_code == plain.status_code == 200
    assert answer.json()["probabilities"] == plain.json()["probabilities"]  # the datastore image, not the planted path
    nothing = infer(url, "toy3d_segx", "", planted)
    assert nothing.status_code == 400 and "send an image file or the id" in nothing.json()["detail"]
    after = files_under(root)
    written = {p for p in after if p not in before or after[p] != before[p]} - {root / "server.log"}
    assert not {p for p in written if "labels" in p.parts}, written  # no label written or overwritten
    assert not [p for p in written if studies not in p.parents], written  # nothing outside the studies folder


@pytest.mark.parametrize(
    "method, path, query",
    [
        ("PUT", "/datastore/label", {"image": "ct0", "tag": "../../../x"}),
        ("PUT", "/datastore/image", {"image": "../../x"}),
        ("GET", "/datastore/image", {"image": "../secret"}),
        ("GET", "/datastore/label", {"label": "ct0", "tag": "../../x"}),
        ("DELETE", "/datastore/label", {"id": "ct0", "tag": "/etc"}),
        ("POST", "/infer/toy3d_segx", {"image": "ct0", "session_id": "../../x"}),
        ("GET", "/session/..%2F..%2Fetc", {}),
    ],
)
def test_ids_and_tags_that_name_paths_are_refused(open_server, method, path, query):
    url, root, studies = open_server
    before = files_under(root)
    files = {"label": ("x.nii.gz", b"\x00" * 64)} if method == "PUT" else None
    if path == "/datastore/image" and method == "PUT":
        files = {"file": ("x.nii.gz", b"\x00" * 64)}
    response = requests.request(method, url + path, params=query, files=files, timeout=30)
    assert response.status_code in (400, 404), response.text
    assert "invalid" in response.text or response.status_code == 404
    after = files_under(root)
    assert {p for p in after if p not in before} <= {root / "server.log"}


def test_a_bogus_session_is_a_404_before_any_work(open_server):
    url, _, _ = open_server
    response = infer(url, "toy3d_segx", "", {}, session_id="0123-not-a-session")
    assert response.status_code == 404 and "upload the image again" in response.json()["detail"]


@pytest.mark.parametrize(
    "params, message",
    [([1, 2], "JSON object"), ({"margin_mm": [1]}, "margin_mm"), ({"margin_mm": 1e300}, "margin_mm"), ({"class": {"a": 1}}, "class"), ({"layer": 3}, "layer")],
)
def test_malformed_params_are_a_400_with_a_message(open_server, params, message):
    url, _, _ = open_server
    response = infer(url, "toy3d_segx", "ct0", params)
    assert response.status_code == 400 and message in response.json()["detail"]


def test_answers_name_no_server_folder(open_server):
    url, root, studies = open_server
    answers = [
        requests.get(f"{url}/info/", timeout=30).text,
        requests.get(f"{url}/datastore/image/info", params={"image": "ct0"}, timeout=30).text,
        infer(url, "noweights_segx", "ct0").text,
        infer(url, "nosuchmodel_segx", "ct0").text,
        infer(url, "toy3d_segx", "ct0", {"class": "zebra"}).text,
    ]
    for text in answers:
        assert str(root) not in text and "/tmp/" not in text, text[:500]
    assert "not_trained_yet.pt" in answers[2]  # the file name stays: it tells the admin what is missing


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory, toy_models):
    """A server with API tokens; yields (url, annotator token, admin token)."""
    root = tmp_path_factory.mktemp("guarded")
    studies = write_studies(root / "studies")
    tokens = Tokens(root / "tokens.json")
    annotator, admin = tokens.add("alice", "annotator"), tokens.add("bob", "admin")
    assert annotator not in (root / "tokens.json").read_text()  # only digests are stored
    with running_server(studies, "toy3d", root / "server.log", models_dir=toy_models, extra_args=["--conf", "tokens_file", str(root / "tokens.json")]) as server:
        yield server.url, annotator, admin


def test_with_tokens_every_route_needs_one_and_admin_routes_the_admin_role(guarded_server):
    url, annotator, admin = guarded_server

    def call(method, path, token=None, **kwargs):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, url + path, headers=headers, timeout=60, **kwargs).status_code

    assert call("GET", "/info/") == 401 and call("GET", "/info/", "wrong-token") == 401
    assert call("GET", "/datastore/", None) == 401
    assert call("GET", "/info/", annotator) == 200 and call("GET", "/info/", admin) == 200
    assert call("POST", "/infer/toy3d_segx", annotator, params={"image": "ct0", "output": "json"}) == 200
    assert call("POST", "/train/toy3d_segmenter", annotator, json={}) == 403
    assert call("DELETE", "/datastore/label", annotator, params={"id": "ct0", "tag": "final"}) == 403
    assert call("PUT", "/datastore/image", annotator, params={"image": "new"}, files={"file": ("new.nii.gz", b"")}) == 403
    assert call("GET", "/logs/", annotator) == 403
    assert call("GET", "/logs/", admin) not in (401, 403)
    assert call("DELETE", "/datastore/label", admin, params={"id": "ct0", "tag": "nosuchtag"}) not in (401, 403)


def test_the_slicer_client_sends_its_token(guarded_server):
    url, annotator, _ = guarded_server
    with pytest.raises(ServerError, match="HTTP 401.*API token"):
        SegXClient(url).info()
    assert "toy3d_segx" in SegXClient(url, token=annotator).info()["models"]
