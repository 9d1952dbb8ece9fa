"""Slicer module transfers: bytes and seconds of one Run for a 512 x 512 x 300 CT, the wave-1
way and the current way, against a live server.

A real ``monailabel start_server --app monailabel_app`` serves the shipped ``demo3d`` model
(``--conf device cpu``) on a free loopback port. The volume is a synthetic CT of
``--shape`` voxels (K, J, I; default 300 x 512 x 512, int16, 0.7 x 0.7 x 1.5 mm): air at
-1000 HU outside an elliptic body of soft tissue (40 HU) with a liver-like organ (60 HU)
and Gaussian noise of 12 HU everywhere (real scanners' noise, which is what limits gzip).

* **old** (the module before this change, reproduced request by request): the volume is
  uploaded with each of its three requests as raw NRRD (``NAME_segx`` layer ``segx`` with
  the readouts, ``NAME_segx`` layer ``explanation``, ``NAME_segmentation``) and every map
  comes back uncompressed (``result_extension=.nii``: the raw bytes the old server sent as
  NRRD, plus a 352-byte header);
* **new**: the module's own ``SegXSlicerLib.jobs.explain`` (one gzip NRRD upload as a MONAI
  Label session, the SegX map and the region back as gzip NRRD; the raw explanation is
  fetched only when the user shows it, so not in a Run).

Each way runs ``--repeats`` times, interleaved (old, new, old, new ...), each time on a new
volume (another noise seed), so the server computes every Run (its result cache is keyed
by the uploaded file's content). Bytes are the request bodies' file parts sent plus the
response bodies received; seconds are the wall time of the whole Run in the client
(encoding, transfers, server work, decoding). Medians. Last line ``RESULT {json}`` with
``uploads_per_run``, ``bytes_ratio`` (old bytes / new bytes) and ``seconds_ratio`` (old
seconds / new seconds).

    python benchmarks/slicer_transfer.py [--repeats 3] [--shape 300 512 512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "monailabel_app"), str(ROOT / "SegXSlicer"), str(Path(__file__).resolve().parent)]

from common import cpu_name  # noqa: E402
from segx.demo import running_server  # noqa: E402
from SegXSlicerLib import jobs  # noqa: E402
from SegXSlicerLib.client import SegXClient  # noqa: E402
from SegXSlicerLib.volumeio import encode_nrrd  # noqa: E402
from SegXSlicerLib.worker import JobContext  # noqa: E402

MODEL = "demo3d"


class CountingClient(SegXClient):
    """The module's client, counting file uploads and the bytes sent and received."""

    def __init__(self, url: str):
        super().__init__(url)
        self.uploads = self.sent = self.received = 0

    def _request(self, method, path, timeout, **kwargs):
        for _name, (_file_name, content, _type) in (kwargs.get("files") or {}).items():
            self.uploads += 1
            self.sent += len(content)
        response = super()._request(method, path, timeout, **kwargs)
        self.received += len(response.content)
        return response


def synthetic_ct(shape, seed: int) -> jobs.VolumeData:
    """int16 CT ``(K, J, I)`` with noise, and its IJK-to-RAS (0.7 x 0.7 x 1.5 mm)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cj, ci = shape[1] / 2, shape[2] / 2
    body = ((j - cj) / (0.42 * shape[1])) ** 2 + ((i - ci) / (0.45 * shape[2])) ** 2 <= 1
    organ = ((j - 0.45 * shape[1]) / (0.15 * shape[1])) ** 2 + ((i - 0.4 * shape[2]) / (0.18 * shape[2])) ** 2 + ((k - shape[0] / 2) / (0.3 * shape[0])) ** 2 <= 1
    volume = np.where(body, 40, -1000).astype(np.int16) + np.zeros(shape, np.int16)
    volume[np.broadcast_to(organ, shape)] = 60
    volume += rng.normal(0, 12, shape).astype(np.int16)
    return jobs.VolumeData(volume, np.diag([-0.7, -0.7, 1.5, 1.0]))


def old_run(client: CountingClient, volume: jobs.VolumeData) -> None:
    """The wave-1 module's Run: three uploads of the raw NRRD, three uncompressed maps."""
    upload = ("volume.nrrd", encode_nrrd(volume.array, volume.ijk_to_ras))
    raw = {"result_extension": ".nii"}
    for task, params in ((f"{MODEL}_segx", dict(raw, layer="segx")), (f"{MODEL}_segx", dict(raw, layer="explanation")), (f"{MODEL}_segmentation", raw)):
        _, content = client.infer(task, params, upload=upload)
        image = nib.Nifti1Image.from_bytes(content)
        assert image.shape == volume.array.shape[::-1], image.shape


def new_run(client: CountingClient, volume: jobs.VolumeData) -> None:
    """The module's Run now."""
    result = jobs.explain(JobContext(), client, MODEL, volume)
    assert result.heatmaps["segx"].shape == volume.array.shape


def measure(url: str, run, volume) -> dict:
    client = CountingClient(url)
    start = time.perf_counter()
    run(client, volume)
    return {"seconds": time.perf_counter() - start, "bytes": client.sent + client.received, "sent": client.sent,
            "received": client.received, "uploads": client.uploads}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("K", "J", "I"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        studies = Path(folder, "studies")
        studies.mkdir()
        with running_server(studies, MODEL, Path(folder, "server.log"), extra_args=["--conf", "device", "cpu"]) as server:
            warm = synthetic_ct((16, 64, 64), seed=999)
            new_run(CountingClient(server.url), warm)  # the first request loads the networks
            rows = {"old": [], "new": []}
            for repeat in range(args.repeats):
                for way, run in (("old", old_run), ("new", new_run)):
                    volume = synthetic_ct(tuple(args.shape), seed=2 * repeat + (way == "new"))
                    rows[way].append(measure(server.url, run, volume))
                    print(f"{way} #{repeat}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[way][-1].items()), flush=True)
    median = {way: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for way, runs in rows.items()}
    result = {
        "shape": list(args.shape),
        "raw_volume_mb": round(int(np.prod(args.shape)) * 2 / 1e6, 1),
        "uploads_per_run": median["new"]["uploads"],
        "uploads_per_run_old": median["old"]["uploads"],
        "mb_old": round(median["old"]["bytes"] / 1e6, 1),
        "mb_new": round(median["new"]["bytes"] / 1e6, 1),
        "mb_sent_new": round(median["new"]["sent"] / 1e6, 1),
        "mb_received_new": round(median["new"]["received"] / 1e6, 1),
        "bytes_ratio": round(median["old"]["bytes"] / median["new"]["bytes"], 2),
        "seconds_old": round(median["old"]["seconds"], 2),
        "seconds_new": round(median["new"]["seconds"], 2),
        "seconds_ratio": round(median["old"]["seconds"] / median["new"]["seconds"], 2),
        "repeats": args.repeats,
        "cpu": cpu_name(),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
