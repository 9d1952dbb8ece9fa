"""HTTP client for the SegX MONAI Label server (``monailabel_app``).

Plain ``requests`` with a timeout on every call, multipart replies parsed without the
``cgi`` module, and every failure (server down, timeout, HTTP 4xx/5xx, malformed reply)
raised as :class:`ServerError` with a message meant for the user. Safe to call from a
worker thread: it touches neither Qt nor MRML. Requests with a big reply (a map, an image)
run in a child process (:mod:`SegXSlicerLib.transfer`), the others in the calling thread.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Dict, Optional, Tuple

import requests

#: The child process's script (:mod:`SegXSlicerLib.transfer`).
TRANSFER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transfer.py")

#: Explanation methods the server accepts (``segx.METHODS`` on the server side).
METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "eigencam", "scorecam", "occlusion", "integrated_gradients")


class ServerError(Exception):
    """A request that failed, with a one-line message for the user.

    Attributes:
        status: the HTTP status code, or ``None`` when no HTTP answer came (server down,
            timeout).
        detail: the server's own message (``{"detail": ...}`` of a 4xx reply), if any.
    """

    def __init__(self, message: str, status: Optional[int] = None, detail: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.detail = detail


def parse_multipart(body: bytes, content_type: str) -> Dict[str, bytes]:
    """The parts of a ``multipart/form-data`` body, by field name.

    Raises:
        ServerError: no boundary in ``content_type`` or no named part in the body.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ServerError(f"the server sent a multipart reply without a boundary ({content_type!r})")
    delimiter = b"\r\n--" + match.group(1).encode("latin-1")
    parts = {}
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # closing delimiter
            break
        head, _, content = chunk.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            parts[name.group(1).decode("utf-8")] = content
    if not parts:
        raise ServerError("the server sent a multipart reply without any named part")
    return parts


#: File types the module loads, longest first (``.nii.gz`` before ``.gz``).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")


def local_file_name(image_id: str, server_name: str) -> str:
    """A local file name for a downloaded image: the image id with only letters, digits,
    ``.``, ``_`` and ``-`` kept, and the image type of the server's file name (``.nii.gz``
    when unknown). Nothing the server sends can name a folder (``../``, ``/``, ``C:``)."""
    suffix = next((s for s in IMAGE_SUFFIXES if server_name.lower().endswith(s)), ".nii.gz")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", image_id).strip("_")[:100] or "image"
    return stem + suffix


def _detail(response: requests.Response) -> str:
    """The server's message: FastAPI's ``{"detail": ...}`` or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # request validation errors
        return "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return str(detail) if detail is not None else response.text[:300]


class SegXClient:
    """Talks to one server, one request at a time (the panel runs one job at a time).

    Args:
        url: server address, e.g. ``http://127.0.0.1:8000``.
        timeout: seconds to wait for an answer to quick requests (info, datastore).
        infer_timeout: seconds to wait for an inference, a strategy or a training start.
        connect_timeout: seconds to wait for the connection itself.
        token: the server's API token (sent as ``Authorization: Bearer``), if it has any.
    """

    def __init__(self, url: str, timeout: float = 30.0, infer_timeout: float = 600.0, connect_timeout: float = 5.0, token: str = ""):
        url = url.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise ServerError(f"not a server address: {url!r} (expected e.g. http://127.0.0.1:8000)")
        self.url = url
        self.timeout = timeout
        self.infer_timeout = infer_timeout
        self.connect_timeout = connect_timeout
        self._local = threading.local()
        self.headers = {"Authorization": f"Bearer {token.strip()}"} if token and token.strip() else {}

    @property
    def http(self) -> requests.Session:
        """This thread's HTTP session: a cancelled job's thread may still be waiting for
        an answer, so the next job (another thread) never shares its connection."""
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _request(self, method: str, path: str, timeout: float, big_reply: bool = False, **kwargs) -> requests.Response:
        """One request; those with a ``big_reply`` (a map, an image) run in a process of
        their own (:mod:`SegXSlicerLib.transfer`): Slicer's main thread holds the GIL while
        idle, and a thread receives a reply chunk by chunk, each waiting for the GIL (17x
        slower, ``benchmarks/slicer_gil.py``). A thread *sends* a body in one call that
        waits once, so uploads stay in the thread (faster than a process's start-up)."""
        what = f"{method} {path.split('?')[0]}"
        try:
            send = self._in_child if big_reply else self._in_thread
            response = send(method, self.url + path, timeout, **kwargs)
        except requests.exceptions.ConnectTimeout:
            raise ServerError(f"cannot reach the server at {self.url}: no connection within {self.connect_timeout:g} s") from None
        except requests.exceptions.ConnectionError as error:
            reason = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(error))
            because = f" ({reason.group(1).strip()})" if reason else ""
            raise ServerError(f"cannot reach the server at {self.url}: is it running?{because}") from None
        except requests.exceptions.Timeout:
            raise ServerError(f"the server at {self.url} did not answer {what} within {timeout:g} s") from None
        if response.status_code >= 400:
            detail = _detail(response)
            raise ServerError(f"{what} failed (HTTP {response.status_code}): {detail}", response.status_code, detail)
        return response

    def _in_thread(self, method: str, url: str, timeout: float, **kwargs) -> requests.Response:
        return self.http.request(method, url, timeout=(self.connect_timeout, timeout), headers=self.headers, **kwargs)

    def _in_child(self, method: str, url: str, timeout: float, **kwargs) -> requests.Response:
        """The request prepared here (multipart body included), sent and its answer
        received by ``transfer.py`` in a child process, through temporary files; the same
        exceptions as ``requests`` for the same failures."""
        prepared = requests.Request(method, url, headers=self.headers, **kwargs).prepare()
        with tempfile.TemporaryDirectory(prefix="segx_transfer_") as folder:
            body = os.path.join(folder, "body") if prepared.body else None
            if body:
                with open(body, "wb") as stream:
                    stream.write(prepared.body if isinstance(prepared.body, bytes) else prepared.body.encode("utf-8"))
            spec = {"method": method, "url": prepared.url, "headers": dict(prepared.headers), "body": body, "out": os.path.join(folder, "out"),
                    "connect_timeout": self.connect_timeout, "timeout": timeout}  # fmt: skip
            with open(os.path.join(folder, "spec.json"), "w") as stream:
                json.dump(spec, stream)
            python = shutil.which("PythonSlicer") or sys.executable  # Slicer's own interpreter outside the application
            output = os.path.join(folder, "output")
            with open(output, "wb") as stream:  # to a file, and one blocking wait: no Python loop that needs the GIL meanwhile
                code = subprocess.Popen([python, "-I", TRANSFER_SCRIPT, os.path.join(folder, "spec.json")], stdout=stream, stderr=subprocess.STDOUT).wait()
            with open(output, encoding="utf-8", errors="replace") as stream:
                lines = stream.read().strip().splitlines()
            if code != 0 or not lines or not lines[-1].startswith("{"):
                raise requests.exceptions.ConnectionError(f"the transfer process failed: {' '.join(lines)[-300:]}")
            answer = json.loads(lines[-1])
            errors = {"connect_timeout": requests.exceptions.ConnectTimeout, "connection": requests.exceptions.ConnectionError,
                      "timeout": requests.exceptions.Timeout}  # fmt: skip
            if "error" in answer:
                raise errors[answer["error"]](answer["detail"])
            response = requests.Response()
            response.status_code, response.url = answer["status"], prepared.url
            response.headers = requests.structures.CaseInsensitiveDict(answer["headers"])
            with open(spec["out"], "rb") as stream:
                response._content = stream.read()  # requests' own attribute for a body already read
            return response

    def _json(self, response: requests.Response):
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"the server answered {response.url} with something that is not JSON") from None

    def info(self) -> dict:
        """``GET /info/``: the app's models, strategies and trainers."""
        return self._json(self._request("GET", "/info/", self.timeout))

    def create_session(self, file_name: str, content: bytes) -> str:
        """``PUT /session/``: upload an image once; later requests name it by the returned
        session id (MONAI Label keeps it for ``MONAI_LABEL_SESSION_EXPIRY`` seconds)."""
        response = self._request("PUT", "/session/", self.infer_timeout, files={"files": (file_name, content, "application/octet-stream")})
        reply = self._json(response)
        session_id = reply.get("session_id") if isinstance(reply, dict) else None
        if not session_id:
            raise ServerError("the server did not return a session id for the upload")
        return str(session_id)

    def delete_session(self, session_id: str) -> None:
        """``DELETE /session/{id}``: drop an upload the module no longer needs (best effort:
        an expired session is already gone)."""
        try:
            self._request("DELETE", f"/session/{requests.utils.quote(session_id, safe='')}", self.timeout)
        except ServerError:
            pass

    def infer(self, task: str, params: dict, session_id: str = "", upload: Optional[Tuple[str, bytes]] = None) -> Tuple[dict, bytes]:
        """``POST /infer/{task}?output=all`` on an uploaded session (``session_id``) or on
        a file sent with the request (``upload = (file name, content)``).

        Returns:
            ``(params, image)``: the reply's JSON and the result file's bytes (``b""``
            when the server sent JSON only).
        """
        query = {"output": "all"}
        if session_id:
            query["session_id"] = session_id
        files = {"file": (upload[0], upload[1], "application/octet-stream")} if upload else None
        response = self._request(
            "POST", f"/infer/{task}", self.infer_timeout, big_reply=True, params=query, files=files, data={"params": json.dumps(params)}
        )
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("multipart/"):
            return self._json(response), b""
        parts = parse_multipart(response.content, content_type)
        if "params" not in parts:
            raise ServerError(f"the reply of {task} lacks its 'params' part")
        try:
            reply = json.loads(parts["params"].decode("utf-8"))
        except ValueError:
            raise ServerError(f"the 'params' part of the reply of {task} is not JSON") from None
        return reply, parts.get("image", b"")

    def next_sample(self, strategy: str, model: Optional[str] = None, client_id: str = "", release: str = "") -> dict:
        """``POST /activelearning/{strategy}``: the next image to label (``{}`` when
        none is left). ``client_id`` tells annotators apart: the server does not give an
        image that one of them holds to another; ``release`` gives back (skips) the image
        this client holds, which is then not the answer."""
        body = {key: value for key, value in (("model", model), ("client_id", client_id), ("release", release)) if value}
        return self._json(self._request("POST", f"/activelearning/{strategy}", self.infer_timeout, json=body))

    def download_image(self, image_id: str) -> Tuple[str, bytes]:
        """``GET /datastore/image``: ``(file name, content)`` of a datastore image. The
        name is :func:`local_file_name` of the server's: safe to join to a local folder."""
        response = self._request("GET", "/datastore/image", self.infer_timeout, big_reply=True, params={"image": image_id})
        match = re.search(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)"?', response.headers.get("content-disposition", ""))
        return local_file_name(image_id, requests.utils.unquote(match.group(1)) if match else ""), response.content

    def save_label(self, image_id: str, file_name: str, content: bytes, tag: str = "final") -> dict:
        """``PUT /datastore/label``: store a label map for a datastore image."""
        return self._json(
            self._request(
                "PUT",
                "/datastore/label",
                self.infer_timeout,
                params={"image": image_id, "tag": tag},
                files={"label": (file_name, content, "application/octet-stream")},
            )
        )

    def train(self, trainer: str, params: Optional[dict] = None) -> dict:
        """``POST /train/{trainer}``: start training in the background."""
        return self._json(self._request("POST", f"/train/{trainer}", self.infer_timeout, json=params or {}))

    def train_status(self) -> dict:
        """``GET /train/``: the latest training task (``status``: RUNNING, DONE, ...)."""
        return self._json(self._request("GET", "/train/", self.timeout))

    def stop_training(self) -> dict:
        """``DELETE /train/``: stop the running training."""
        return self._json(self._request("DELETE", "/train/", self.timeout))
