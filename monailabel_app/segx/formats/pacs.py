"""A local PACS for tests, demos and benchmarks: Orthanc with its DICOMweb plugin (Debian
packages ``orthanc`` and ``orthanc-dicomweb``), on loopback, with a throw-away storage
folder and a configuration written here (never the system service).

    with local_orthanc(folder) as pacs:
        pacs.upload(files)
        ... monailabel start_server --studies {pacs.dicomweb} ...
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

#: Where Debian's orthanc-dicomweb puts its plugin.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_problem() -> str | None:
    """Why a local Orthanc with DICOMweb cannot start here (None when it can)."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.exists():
        return f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; Debian: apt-get install orthanc-dicomweb)"
    return None


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
    """Start Orthanc on 127.0.0.1 (a free port unless ``port``), storing in ``folder``;
    yields an :class:`Orthanc` once its REST API answers, stops it on exit.

    Raises:
        RuntimeError: Orthanc or its DICOMweb plugin is missing, or it did not start.
    """
    problem = orthanc_problem()
    if problem:
        raise RuntimeError(problem)
    folder = Path(folder)
    (folder / "storage").mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = {
        "Name": "SegX local PACS",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "HttpTimeout": 600,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = open(folder / "orthanc.log", "w")
    process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
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
