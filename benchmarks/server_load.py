"""Server under load: several annotators at once, then memory over many distinct images.

A real ``monailabel start_server --app monailabel_app`` serves the shipped ``demo2d`` and
``demo3d`` models (``--conf device cpu --conf cache_mb CACHE``) on phantom studies
(``--n2d`` 2D and ``--n3d`` 3D, generated here) on a free loopback port.

* **load**: ``--clients`` threads (default 8), each with its own ``client_id``, send
  ``--requests`` requests each (default 25), a fixed seeded mix: SegX of a datastore image
  (random model-compatible study, layer, class), SegX of an uploaded PNG, the next sample
  (``segu_lowest_certainty``), ``/info`` and the datastore listing. Every request's wall
  time and status are recorded; ``/info`` separately.
* **memory**: ``--sequential`` requests (default 500), one after the other, each uploading
  a 2D image nobody sent before (one pixel changed), so that every request is a cache miss.
  The server's RSS (its process tree, psutil) is read before and after every 100.
* **memory per voxel**: a SegX request (``demo3d``) on uploaded gzip NIfTI CTs of
  256 x 256 x 128 and 384 x 384 x 128 voxels: the server's peak RSS growth during the
  request per voxel of the image (``VmHWM`` reset before each).
* **/info while an upload streams**: one client uploads a ``--upload-mb`` NIfTI session in
  1 MiB pieces (10 ms apart, a slow network), another calls ``/info`` meanwhile.

Last line ``RESULT {json}``: ``failures`` (non-2xx or errors under load), ``p50_s`` /
``p95_s`` of all load requests, ``info_p95_s``, ``rss_mb`` at 0, 100, ..., N sequential
requests, ``rss_growth_mb`` and the configured ``cache_mb``, ``rss_bytes_per_voxel`` per
image size, ``info_p95_during_upload_s``.

    python benchmarks/server_load.py [--clients 8] [--requests 25] [--sequential 500] [--cache-mb 128]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "monailabel_app"), str(Path(__file__).resolve().parent)]

from common import cpu_name  # noqa: E402
from segx.demo import running_server  # noqa: E402
from segx.demo.phantoms import generate  # noqa: E402


def rss_mb(process: psutil.Process) -> float:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def rss_per_voxel(server, folder: Path) -> dict:
    """Peak RSS growth per voxel of one demo3d SegX request on uploaded CTs of two sizes."""
    import nibabel as nib

    figures = {}
    for shape in ((256, 256, 128), (384, 384, 128)):
        path = folder / "large.nii.gz"
        volume = (np.random.default_rng(0).random(shape) * 200 - 100).astype(np.int16)
        nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
        data = path.read_bytes()
        send = lambda: requests.post(f"{server.url}/infer/demo3d_segx", params={"output": "json"}, files={"file": ("ct.nii.gz", data)}, timeout=900).raise_for_status()  # noqa: E731
        figures["x".join(map(str, shape))] = round(server.peak_rss_per_voxel(send, int(np.prod(shape))), 1)
        print(f"memory per voxel {shape}: {figures['x'.join(map(str, shape))]} bytes", flush=True)
    return figures


def info_during_upload(url: str, folder: Path, megabytes: int) -> float:
    """p95 of ``/info`` (s) while another client streams a ``megabytes`` session upload."""
    import nibabel as nib

    path = folder / "upload.nii"
    nib.save(nib.Nifti1Image(np.zeros((512, 512, megabytes * 2), np.int16), np.eye(4)), str(path))
    boundary = "segxbenchmark"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="ct.nii"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()

    def body():
        yield head
        with open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                yield chunk
                time.sleep(0.01)
        yield f"\r\n--{boundary}--\r\n".encode()

    uploading = threading.Thread(target=lambda: requests.put(f"{url}/session/", data=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=900))
    uploading.start()
    times = []
    while uploading.is_alive():
        start = time.perf_counter()
        requests.get(f"{url}/info/", timeout=300)
        times.append(time.perf_counter() - start)
        time.sleep(0.05)
    uploading.join()
    print(f"/info during a {megabytes} MB upload: {len(times)} calls, max {max(times, default=0):.3f} s", flush=True)
    return statistics.quantiles(times, n=20)[18] if len(times) >= 2 else max(times, default=0.0)


def client(url: str, number: int, count: int, studies: dict, latencies: list, info: list, failures: list) -> None:
    rng = random.Random(number)
    session = requests.Session()
    for index in range(count):
        kind = rng.choice(["segx_id", "segx_id", "segx_upload", "next", "info", "datastore"])
        start = time.perf_counter()
        try:
            if kind == "segx_id":
                model = rng.choice(["demo2d", "demo3d"])
                params = {"layer": rng.choice(["segx", "explanation", "mask"]), "class": rng.choice([0, 1])}
                response = session.post(f"{url}/infer/{model}_segx", params={"image": rng.choice(studies[model]), "output": "json"},
                                        data={"params": json.dumps(params)}, timeout=300)  # fmt: skip
            elif kind == "segx_upload":
                response = session.post(f"{url}/infer/demo2d_segx", params={"output": "all"}, files={"file": ("x.png", png(10_000 * number + index))}, timeout=300)
            elif kind == "next":
                response = session.post(f"{url}/activelearning/segu_lowest_certainty", json={"model": "demo2d", "client_id": f"annotator{number}"}, timeout=300)
            elif kind == "info":
                response = session.get(f"{url}/info/", timeout=300)
            else:
                response = session.get(f"{url}/datastore/", timeout=300)
            ok = response.status_code < 300
        except requests.RequestException as error:
            ok, response = False, error
        seconds = time.perf_counter() - start
        latencies.append(seconds)
        if kind == "info":
            info.append(seconds)
        if not ok:
            failures.append(f"{kind}: {getattr(response, 'status_code', response)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--cache-mb", type=int, default=128)
    parser.add_argument("--n2d", type=int, default=8)
    parser.add_argument("--n3d", type=int, default=2)
    parser.add_argument("--upload-mb", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        studies = folder / "studies"
        studies.mkdir()
        for dim, count in ((2, args.n2d), (3, args.n3d)):
            for image in sorted((generate(folder / f"generated{dim}", dim, count, seed=5, progress=False) / "images").iterdir()):
                shutil.copy(image, studies)
        ids = {"demo2d": [p.stem for p in studies.glob("*.png")], "demo3d": [p.name[: -len(".nii.gz")] for p in studies.glob("*.nii.gz")]}
        extra = ["--conf", "device", "cpu", "--conf", "cache_mb", str(args.cache_mb), "--conf", "max_upload_mb", str(2 * args.upload_mb)]
        with running_server(studies, "demo2d,demo3d", folder / "server.log", extra_args=extra) as server:
            process = next(p for p in [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
                           if "monailabel.main" in " ".join(p.cmdline()))  # fmt: skip
            latencies, info, failures = [], [], []
            threads = [threading.Thread(target=client, args=(server.url, n, args.requests, ids, latencies, info, failures)) for n in range(args.clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            load_seconds = time.perf_counter() - started
            print(f"load: {len(latencies)} requests in {load_seconds:.1f} s, {len(failures)} failures {failures[:5]}", flush=True)
            memory = [round(rss_mb(process), 1)]
            session = requests.Session()
            for index in range(1, args.sequential + 1):
                response = session.post(f"{server.url}/infer/demo2d_segx", params={"output": "json"}, files={"file": ("x.png", png(10**6 + index))}, timeout=300)
                if response.status_code >= 300:
                    failures.append(f"sequential: {response.status_code}")
                if index % 100 == 0:
                    memory.append(round(rss_mb(process), 1))
                    print(f"sequential {index}: RSS {memory[-1]} MB", flush=True)
            per_voxel = rss_per_voxel(server, folder)
            info_upload = info_during_upload(server.url, folder, args.upload_mb)
    quantiles = statistics.quantiles(latencies, n=20)
    result = {
        "clients": args.clients, "requests_per_client": args.requests, "failures": len(failures),
        "p50_s": round(statistics.median(latencies), 3), "p95_s": round(quantiles[18], 3),
        "info_p95_s": round(statistics.quantiles(info, n=20)[18] if len(info) >= 2 else max(info, default=0.0), 3),
        "load_seconds": round(load_seconds, 1), "sequential": args.sequential, "rss_mb": memory,
        "rss_growth_mb": round(memory[-1] - memory[0], 1), "cache_mb": args.cache_mb,
        "rss_bytes_per_voxel": per_voxel, "info_p95_during_upload_s": round(info_upload, 3), "upload_mb": args.upload_mb, "cpu": cpu_name(),
    }  # fmt: skip
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
