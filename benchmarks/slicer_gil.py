"""Slicer module transfers while the main thread holds the GIL: MiB/s of one volume upload
(``SegXClient.create_session``, a MONAI Label session) and one download
(``SegXClient.download_image`` of a datastore image of the same size) made from a worker
thread, as the module's jobs make them, with the main thread either free-running
(sleeping: the GIL is free) or in a Slicer-style event loop (idle in C *holding* the GIL,
as Slicer's main thread does, then a short Python poll every 20 ms:
``slicer_harness.idle_holding_gil``).

- **thread**: the request runs in the worker thread (``big_reply=False``);
- **child**: the request runs in a child process (``big_reply=True``: ``SegXSlicerLib.transfer``).

The module sends uploads from the thread and receives maps and images in a child: the
choice these figures made.

A real ``monailabel start_server`` with the demo models serves on loopback; the volume is
a gzip NRRD of ``--mib`` MiB (noise, so gzip keeps its size), also the datastore's one
image. Rounds interleave the eight cases; medians. Last line ``RESULT {json}`` with the
MiB/s of each case and, per direction and way, the free-running over GIL-held ratio
(goal for the module's way, ``child``: <= 1.2).

    .venv/bin/python benchmarks/slicer_gil.py [--repeats 5] [--mib 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "monailabel_app"), str(ROOT / "SegXSlicer"), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

from common import cpu_name  # noqa: E402
from segx.demo import running_server  # noqa: E402
from SegXSlicerLib.client import SegXClient  # noqa: E402
from SegXSlicerLib.volumeio import encode_volume  # noqa: E402

POLL_S = 0.02


def transfer_seconds(send, hold_gil: bool) -> float:
    """Seconds of ``send()`` in a worker thread while the main thread waits its way."""
    from slicer_harness import idle_holding_gil

    done = threading.Event()
    worker = threading.Thread(target=lambda: (send(), done.set()))
    start = time.perf_counter()
    worker.start()
    while not done.is_set():
        if hold_gil:
            idle_holding_gil(POLL_S)
            sum(range(1000))  # the module's 20 ms poll: a little Python
        else:
            time.sleep(POLL_S)
    worker.join()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mib", type=int, default=32)
    args = parser.parse_args()
    voxels = args.mib * 2**20 // 2
    side = int(round((voxels / 64) ** 0.5))
    array = np.random.default_rng(0).integers(-1000, 1000, (64, side, side), dtype=np.int16)
    _, content = encode_volume(array, np.diag([0.7, 0.7, 1.5, 1.0]))
    size = len(content) / 2**20
    cases = [(direction, way, loop) for direction in ("upload", "download") for way in ("thread", "child") for loop in ("free", "gil")]
    seconds = {case: [] for case in cases}
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "volume.nrrd").write_bytes(content)  # the datastore's image, for the downloads
        with running_server(Path(work), "demo3d", Path(work) / "server.log") as server:
            client = SegXClient(server.url)
            requests_of = {
                "upload": lambda child: client._request("PUT", "/session/", client.infer_timeout, big_reply=child,
                                                       files={"files": ("volume.nrrd", content, "application/octet-stream")}),
                "download": lambda child: client._request("GET", "/datastore/image", client.infer_timeout, big_reply=child, params={"image": "volume"}),
            }  # fmt: skip
            for round_number in range(args.repeats):
                for direction, way, loop in cases:
                    send = lambda: requests_of[direction](way == "child")  # noqa: E731
                    seconds[(direction, way, loop)].append(transfer_seconds(send, loop == "gil"))
                    print(f"round {round_number + 1}/{args.repeats} {direction} {way} {loop}: {size / seconds[(direction, way, loop)][-1]:.1f} MiB/s", flush=True)
    mib_s = {case: size / statistics.median(values) for case, values in seconds.items()}
    result = {f"mib_s_{'_'.join(case)}": round(value, 1) for case, value in mib_s.items()}
    for direction in ("upload", "download"):
        for way in ("thread", "child"):
            result[f"{direction}_{way}_free_over_gil"] = round(mib_s[(direction, way, "free")] / mib_s[(direction, way, "gil")], 3)
    result.update(volume_mib=round(size, 1), rounds=args.repeats, cpu=cpu_name())
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
