"""``segx viewer``: the OHIF v3 web viewer on a PACS, for readers without 3D Slicer.

It serves one of two prebuilt OHIF builds (:data:`BUILDS`) on loopback:

- ``ohif``: a pinned OHIF release (the ``@ohif/app`` package of the npm registry ships a
  built ``dist/``; it is downloaded once, checked against the registry's SHA-512 integrity
  and cached outside the repository), at ``/``;
- ``monailabel``: the OHIF build MONAI Label ships inside its Python package (3.10.0-beta.5
  in monailabel 0.8.5, built for ``/ohif/``), at ``/ohif/``: the viewer a MONAI Label site
  knows, without opening MONAI Label's own ``/ohif`` and DICOM proxy routes (our server
  does not serve them);

each with:

- ``app-config.js`` written here: one DICOMweb data source at ``/dicom-web`` on the same
  origin, no local-file or URL-driven data sources, no upload;
- ``/dicom-web/...``: a read-only proxy to the PACS's DICOMweb root (GET and HEAD only,
  nothing outside that prefix, no ``..``), so the browser talks to one origin and the PACS
  needs no CORS;
- everything else: OHIF's files, and ``index.html`` for its client-side routes
  (``/viewer?StudyInstanceUIDs=...``).

The standard library's threading HTTP server is enough here: one reader per viewer, the
bulk of the bytes are pixel data streamed through in 1 MiB chunks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import shutil
import tarfile
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests

#: The OHIF release served, its npm tarball and the registry's integrity of that tarball.
OHIF_VERSION = "3.13.2"
OHIF_TARBALL = f"https://registry.npmjs.org/@ohif/app/-/app-{OHIF_VERSION}.tgz"
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
#: The same-origin prefix of the DICOMweb proxy.
DICOMWEB_PREFIX = "/dicom-web"
#: Request headers passed on to the PACS (content negotiation and ranges; never cookies).
FORWARDED_HEADERS = ("Accept", "Range", "If-None-Match", "If-Modified-Since")
#: Response headers passed back to the browser.
RETURNED_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "ETag", "Last-Modified")
CHUNK = 1 << 20


def cache_folder() -> Path:
    """Where the OHIF build is kept: ``$SEGX_CACHE/ohif/VERSION`` (default ``~/.cache/segx``)."""
    return Path(os.environ.get("SEGX_CACHE", Path.home() / ".cache" / "segx")) / "ohif" / OHIF_VERSION


def ohif_dist(folder: Path | None = None) -> Path:
    """The ``dist/`` folder of the pinned OHIF build, downloaded from the npm registry the
    first time (about 50 MB) and checked against :data:`OHIF_INTEGRITY`.

    Raises:
        RuntimeError: the download failed or its digest is not the registry's.
    """
    folder = folder or cache_folder()
    dist = folder / "package" / "dist"
    if (dist / "index.html").exists():
        return dist
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha512()
    with tempfile.TemporaryDirectory(dir=folder) as work:
        tarball = Path(work) / "ohif.tgz"
        try:
            with requests.get(OHIF_TARBALL, stream=True, timeout=60) as response, open(tarball, "wb") as stream:
                response.raise_for_status()
                size = int(response.headers.get("Content-Length", 0)) or None
                with tqdm(total=size, unit="B", unit_scale=True, desc=f"OHIF {OHIF_VERSION} from the npm registry") as bar:
                    for chunk in response.iter_content(CHUNK):
                        stream.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except requests.RequestException as error:
            raise RuntimeError(f"cannot download OHIF {OHIF_VERSION} from the npm registry ({error})") from None
        if "sha512-" + base64.b64encode(digest.digest()).decode() != OHIF_INTEGRITY:
            raise RuntimeError(f"the downloaded OHIF {OHIF_VERSION} does not have the registry's SHA-512 integrity; nothing was kept")
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            archive.extractall(work, members=members, filter="data")  # "data": no links out, no absolute paths, no devices
        shutil.move(Path(work) / "package", folder / "package")
    return dist


def monailabel_dist() -> Path:
    """The OHIF build inside the installed ``monailabel`` package (found, not imported:
    the core imports no MONAI Label)."""
    from importlib.util import find_spec

    spec = find_spec("monailabel")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MONAI Label is not installed: its OHIF build is not here")
    dist = Path(spec.submodule_search_locations[0]) / "endpoints" / "static" / "ohif"
    if not (dist / "index.html").exists():
        raise RuntimeError(f"this monailabel package has no OHIF build ({dist})")
    return dist


#: build name -> (the path it is served under, where its files come from).
BUILDS = {"ohif": ("/", ohif_dist), "monailabel": ("/ohif/", monailabel_dist)}


def app_config(name: str = "SegX PACS", base: str = "/") -> str:
    """OHIF's ``window.config``: one DICOMweb data source at the same origin's
    :data:`DICOMWEB_PREFIX`, confirmation prompts off for SEG and SR hydration (the
    reader opens what SegX stored without an extra click)."""
    source = {
        "friendlyName": name,
        "name": "segx",
        "wadoUriRoot": DICOMWEB_PREFIX,
        "qidoRoot": DICOMWEB_PREFIX,
        "wadoRoot": DICOMWEB_PREFIX,
        "qidoSupportsIncludeField": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "dicomUploadEnabled": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }
    config = {
        "routerBasename": base,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "disableConfirmationPrompts": True,
        "measurementTrackingMode": "simplified",
        "defaultDataSourceName": "segx",
        "dataSources": [{"namespace": "@ohif/extension-default.dataSourcesModule.dicomweb", "sourceName": "segx", "configuration": source}],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(BaseHTTPRequestHandler):
    server: "ViewerServer"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _refuse(self) -> None:
        self._plain(405, "the viewer is read-only: GET and HEAD only")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args) -> None:  # quiet: one line per request would drown the URL
        pass

    def _plain(self, status: int, message: str, send_body: bool = True) -> None:
        self._bytes(status, (message + "\n").encode(), "text/plain; charset=utf-8", send_body)

    def _serve(self, send_body: bool) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        if ".." in path.split("/") or "\\" in path or "\x00" in path:
            return self._plain(400, "no '..', backslash or NUL in a path", send_body)
        base = self.server.base
        if path == base + "app-config.js":
            return self._bytes(200, self.server.config.encode(), "application/javascript", send_body)
        if path == DICOMWEB_PREFIX or path.startswith(DICOMWEB_PREFIX + "/"):
            return self._proxy(parts.path[len(DICOMWEB_PREFIX) :], parts.query, send_body)
        if not (path + "/").startswith(base):
            return self._plain(404, f"the viewer is at {base}", send_body)
        file = (self.server.dist / path[len(base) :]).resolve()
        if not file.is_file() or not file.is_relative_to(self.server.dist):
            file = self.server.dist / "index.html"  # OHIF's own routes (/viewer, /segmentation, ...)
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self._bytes(200, file.read_bytes(), kind, send_body)

    def _bytes(self, status: int, body: bytes, kind: str, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _proxy(self, rest: str, query: str, send_body: bool) -> None:
        url = self.server.pacs + rest + (f"?{query}" if query else "")
        headers = {name: self.headers[name] for name in FORWARDED_HEADERS if self.headers.get(name)}
        headers["Accept-Encoding"] = "identity"  # bytes pass through as they are: Content-Length stays true
        try:
            upstream = requests.request(self.command, url, headers=headers, stream=True, timeout=120)
        except requests.RequestException:
            return self._plain(502, "the PACS does not answer", send_body)
        with upstream:
            self.send_response(upstream.status_code)
            for name in RETURNED_HEADERS:
                if name in upstream.headers:
                    self.send_header(name, upstream.headers[name])
            chunked = "Content-Length" not in upstream.headers
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if not send_body:
                return
            try:
                for chunk in upstream.raw.stream(CHUNK, decode_content=False):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):  # the browser went away (a closed tab): nothing to answer
                self.close_connection = True

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        # cross-origin isolation: OHIF's volume viewports use SharedArrayBuffer
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()


class ViewerServer(ThreadingHTTPServer):
    """An OHIF build of :data:`BUILDS` and a proxy to the DICOMweb root ``pacs``, on
    ``(host, port)`` (port 0: a free one; :attr:`url` says which). The build's files are
    fetched (``ohif``: downloaded once) when the server is made."""

    daemon_threads = True

    def __init__(self, pacs: str, build: str = "ohif", host: str = "127.0.0.1", port: int = 0, name: str = "SegX PACS"):
        if build not in BUILDS:
            raise ValueError(f"unknown OHIF build {build!r}; choose one of {sorted(BUILDS)}")
        self.base, files = BUILDS[build]
        self.dist, self.pacs, self.config = files().resolve(), pacs.rstrip("/"), app_config(name, self.base)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def study_url(self, study_uid: str) -> str:
        return f"{self.url}{self.base}viewer?StudyInstanceUIDs={study_uid}"

    def start(self) -> "ViewerServer":
        """Serve in a daemon thread (for tests and benchmarks); :meth:`shutdown` stops it."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self
