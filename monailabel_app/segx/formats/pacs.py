"""A local PACS for tests, demos and benchmarks: Orthanc with its DICOMweb plugin (Debian
packages ``orthanc`` and ``orthanc-dicomweb``), on loopback, with a throw-away storage
folder and a configuration written here (never the system service).

Loopback is made true, not asked for: Orthanc 1.10 binds every interface whatever
``RemoteAccessAllowed`` says, so it runs in a network namespace of its own (``unshare -n``
as root, ``unshare -rn`` otherwise) behind :mod:`segx.formats.loopback_relay`, whose one
door is a socket bound here on the host's 127.0.0.1; its DICOM (DIMSE) server is off.

    with local_orthanc(folder) as pacs:
        pacs.upload(files)
        ... monailabel start_server --studies {pacs.dicomweb} ...
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import requests

#: Where Debian's orthanc-dicomweb puts its plugin.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: Orthanc's port inside its own network namespace (nothing else there to clash with).
INNER_PORT = 8042


@cache
def namespace_command() -> tuple[list[str] | None, str | None]:
    """(the ``unshare`` command that gives a process a network namespace here, None), or
    (None, why none can be made); tried once per process."""
    if shutil.which("unshare") is None:
        return None, "unshare (util-linux) is not installed"
    candidates = [["unshare", "-n"], ["unshare", "-rn"]] if os.geteuid() == 0 else [["unshare", "-rn"]]
    errors = []
    for prefix in candidates:
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
        if probe.returncode == 0:
            return prefix, None
        errors.append(f"{' '.join(prefix)}: {probe.stderr.strip()}")
    return None, "no network namespace can be made here, so Orthanc cannot be kept on loopback (" + "; ".join(errors) + ")"


def orthanc_problem() -> str | None:
    """Why a local Orthanc with DICOMweb cannot start here (None when it can)."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.exists():
        return f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; Debian: apt-get install orthanc-dicomweb)"
    return namespace_command()[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(process: subprocess.Popen, answers, name: str, log_file: Path, timeout: float, interval: float = 0.2) -> None:
    """Wait until a started server ``answers()`` (True; a refused connection is "not yet").

    Raises:
        RuntimeError: the process exited, or ``timeout`` seconds passed (naming ``log_file``).
    """
    deadline = time.time() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}; see {log_file}")
        try:
            if answers():
                return
        except requests.ConnectionError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{name} did not start within {timeout:g} s; see {log_file}")
        time.sleep(interval)


@dataclass
class Orthanc:
    """A running Orthanc: ``url`` (REST API) and ``dicomweb`` (its DICOMweb root)."""

    url: str
    process: subprocess.Popen

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, files) -> list[str]:
        """Store DICOM files through Orthanc's REST API; returns their Orthanc ids."""
        ids = []
        for file in files:
            response = requests.post(f"{self.url}/instances", data=Path(file).read_bytes(), timeout=60)
            response.raise_for_status()
            ids.append(response.json()["ID"])
        return ids

    def series(self, study_uid: str | None = None) -> list[dict]:
        """QIDO-RS: the series (DICOM JSON) of one study, or of all studies."""
        url = f"{self.dicomweb}/studies/{study_uid}/series" if study_uid else f"{self.dicomweb}/series"
        response = requests.get(url, params={"includefield": "all"}, timeout=60)
        response.raise_for_status()
        return response.json() if response.content else []


@contextmanager
def local_orthanc(folder: str | Path, port: int | None = None, timeout: float = 60):
    """Start Orthanc reachable on the host's 127.0.0.1 only (a free port unless ``port``),
    storing in ``folder``; yields an :class:`Orthanc` once its REST API answers, stops it
    on exit.

    Raises:
        RuntimeError: Orthanc or its DICOMweb plugin is missing, no network namespace can
            be made, the port is taken, or Orthanc did not start.
    """
    problem = orthanc_problem()
    if problem:
        raise RuntimeError(problem)
    folder = Path(folder)
    (folder / "storage").mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "SegX local PACS",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": INNER_PORT,
        "RemoteAccessAllowed": True,  # in its namespace the relay is the only client there can be
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "HttpTimeout": 600,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", port or 0))
    except OSError as error:
        listener.close()
        raise RuntimeError(f"port {port} on 127.0.0.1 is taken ({error.strerror})") from None
    listener.listen(128)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    relay = Path(__file__).with_name("loopback_relay.py")
    command = [*namespace_command()[0], sys.executable, "-I", str(relay), str(listener.fileno()), str(INNER_PORT), "Orthanc", str(folder / "orthanc.json")]
    log = open(folder / "orthanc.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()])
    listener.close()  # the relay holds it now
    try:
        wait_until_up(process, lambda: requests.get(f"{url}/system", timeout=2).ok, "Orthanc", folder / "orthanc.log", timeout)
        yield Orthanc(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
