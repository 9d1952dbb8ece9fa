"""The viewer's own surface, without a browser: ``segx.formats.viewer.ViewerServer`` in front of
a recording stand-in PACS. What a request may make it do: read OHIF's files, read its own
configuration, and GET/HEAD under the PACS's DICOMweb root; everything else is refused
before the PACS sees anything. (MONAI Label's bundled build: no download needed.)"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from segx.formats.viewer import ViewerServer


class _RecordingPacs(BaseHTTPRequestHandler):
    seen: list = []

    def _answer(self):
        _RecordingPacs.seen.append((self.command, self.path))
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def viewer():
    pacs = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingPacs)
    threading.Thread(target=pacs.serve_forever, daemon=True).start()
    server = ViewerServer(f"http://127.0.0.1:{pacs.server_address[1]}/pacs-root/dicom-web", "monailabel").start()
    yield server
    server.shutdown()
    pacs.shutdown()


def _call(server, method: str, raw_path: str) -> tuple[int, bytes]:
    """A request with the path exactly as written (no client-side normalisation)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    connection.putrequest(method, raw_path, skip_host=False, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


def test_it_listens_on_loopback_only(viewer):
    assert viewer.server_address[0] == "127.0.0.1"


def test_dicomweb_reads_reach_the_pacs_root_with_their_query(viewer):
    _RecordingPacs.seen.clear()
    assert _call(viewer, "GET", "/dicom-web/studies?PatientID=X&limit=5")[0] == 200
    assert _call(viewer, "HEAD", "/dicom-web/studies")[0] == 200
    assert _RecordingPacs.seen == [("GET", "/pacs-root/dicom-web/studies?PatientID=X&limit=5"), ("HEAD", "/pacs-root/dicom-web/studies")]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_anything_but_reading_is_refused_before_the_pacs(viewer, method):
    _RecordingPacs.seen.clear()
    status, body = _call(viewer, method, "/dicom-web/studies")
    assert status == 405 and b"read-only" in body and _RecordingPacs.seen == []


@pytest.mark.parametrize("path", ["/dicom-web/../../etc/passwd", "/dicom-web/%2e%2e/%2e%2e/etc/passwd", "/ohif/..%2f..%2fsegx",
                                  "/dicom-web/studies%00", "/ohif/a\\..\\b"])  # fmt: skip
def test_paths_that_climb_are_refused_before_the_pacs(viewer, path):
    _RecordingPacs.seen.clear()
    assert _call(viewer, "GET", path)[0] == 400 and _RecordingPacs.seen == []


def test_the_configuration_is_the_viewers_and_names_one_same_origin_source(viewer):
    status, body = _call(viewer, "GET", "/ohif/app-config.js")
    assert status == 200 and b'"wadoRoot": "/dicom-web"' in body and b"dicomlocal" not in body and b'"dicomUploadEnabled": false' in body


def test_outside_the_build_nothing_is_served_and_its_routes_get_its_page(viewer):
    assert _call(viewer, "GET", "/etc/passwd")[0] == 404
    status, page = _call(viewer, "GET", "/ohif/viewer?StudyInstanceUIDs=1.2.3")
    assert status == 200 and page == (viewer.dist / "index.html").read_bytes()
