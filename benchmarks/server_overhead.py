"""Server overhead: ``POST /infer/NAME_segx`` over HTTP against in-process ``segx.explain``.

Two model configurations are written to a temporary folder (YAML + state_dict weights,
random with a fixed seed, nothing downloaded):

* ``bench2d``: MONAI ``DenseNet121`` 2D (3 in, 7 classes, input 224 x 224, ``divide255``)
  + MONAI ``UNet`` 2D (2 out, channels (16, 32, 64, 128), strides (2, 2, 2), input
  224 x 224, ``divide255``); image: a 224 x 224 RGB PNG (bright disc on noise);
* ``bench3d``: ``DenseNet121`` 3D (1 in, 3 classes, input 96^3, ``minmax``) + ``UNet`` 3D
  (same channels, input 96^3, ``minmax``); image: a 96^3 float32 NIfTI (``.nii.gz``,
  1.5 mm spacing, bright ball on noise).

A real ``monailabel start_server --app monailabel_app`` serves both on a free loopback port
(``--conf device cpu``). Two workloads per dimension, on the SAME image files:

* ``http``: ``requests.post(URL/infer/NAME_segx?output=image, files={"file": ...})`` with
  the whole reply read (upload + server work + NRRD heatmap download), status 200;
* ``inprocess``: ``segx.explain(pair, path)`` with default arguments on the pair built by
  ``segx.config.load_model_pair`` from the same configuration file (what the server's
  SegX task runs, minus its NRRD writing).

The server caches results by image content, so every call gets its own file: the base
image with one pixel changed (a different value per file), used once over HTTP and once
in-process. Method: ``torch.set_num_threads(--threads)`` here; the server is started with
``OMP_NUM_THREADS=MKL_NUM_THREADS=--threads`` in its environment (torch takes its
intra-op thread count from it), so both sides may use the same number of threads. One
warm-up call of each workload, then ``--repeats`` interleaved rounds (http 2D,
in-process 2D, http 3D, in-process 3D, ...); medians. Before every timed call the script
sleeps ``--settle`` seconds (default 0.3, untimed): after writing its NRRD reply the
server's OpenBLAS worker thread busy-waits (``sched_yield``) for about 0.1 s, which on a
2-core machine would otherwise slow down the in-process call that follows by 2-3x. Each
call is thus timed as a single request on an otherwise idle machine. Per dimension ``d``::

    ratio_d = median(http) / median(inprocess)

The warm-up reply is checked against the in-process result (``max_abs_diff_d``: the
server's heatmap against ``result.map_of("segx", result.predicted)``). The server's CPU
seconds per request (its process tree, from psutil) are reported as ``server_cpu_s_d``.
The last printed line is ``RESULT {json}``. ``--quick`` uses 3 rounds (about 25 s on 2
cores, the full run about 35 s; the server starts in about 6 s).

    python benchmarks/server_overhead.py [--quick] [--threads 2] [--repeats 7] [--settle 0.3] [--seed 0]
        [--server-env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests
import torch
import yaml
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"
sys.path.insert(0, str(APP_DIR))

import segx  # noqa: E402
from common import add_timing_arguments, checked_repeats, cpu_name  # noqa: E402
from segx.demo import running_server  # noqa: E402
from segx.config import load_model_pair  # noqa: E402

WORKLOADS = ("http", "inprocess")
UNET = {"out_channels": 2, "channels": [16, 32, 64, 128], "strides": [2, 2, 2]}


@dataclass
class Case:
    """One dimension: its model configuration, base image and per-call image files."""

    name: str  # "2d" / "3d"
    model: str  # configuration name
    config_file: Path
    files: list[Path] = field(default_factory=list)  # files[0]: warm-up
    pair: segx.ModelPair | None = None


def write_config(folder: Path, name: str, dims: int, channels: int, n_classes: int, size: int, intensity: str, seed: int) -> Path:
    """``NAME.yaml`` + ``NAME_classifier.pt`` + ``NAME_segmenter.pt`` (seeded random weights)."""
    from monai.networks.nets import DenseNet121, UNet

    torch.manual_seed(seed)
    classifier_args = {"spatial_dims": dims, "in_channels": channels, "out_channels": n_classes}
    segmenter_args = {"spatial_dims": dims, "in_channels": channels, **UNET}
    torch.save(DenseNet121(**classifier_args).state_dict(), folder / f"{name}_classifier.pt")
    torch.save(UNet(**segmenter_args).state_dict(), folder / f"{name}_segmenter.pt")
    preprocessing = {"channels": channels, "spatial_size": [size] * dims, "intensity": intensity}
    config = {
        "spatial_dims": dims,
        "classes": [f"class{c}" for c in range(n_classes)],
        "classifier": {"network": "DenseNet121", "args": classifier_args, "weights": f"{name}_classifier.pt", "input": preprocessing},
        "segmenter": {"network": "UNet", "args": segmenter_args, "weights": f"{name}_segmenter.pt", "labels": {1: "region"}, "input": preprocessing},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_images_2d(folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
    """``count`` 224 x 224 RGB PNGs: a bright disc on noise, pixel (0, 0) = (k, 255 - k, 7)."""
    from PIL import Image

    yy, xx = np.mgrid[:224, :224]
    image = rng.normal(60, 20, size=(224, 224, 3))
    image[(yy - 120) ** 2 + (xx - 100) ** 2 < 50**2] += np.array([150, 110, 90])
    image = np.clip(image, 0, 255).astype(np.uint8)
    files = []
    for k in range(count):
        image[0, 0] = (k % 256, 255 - k % 256, 7)
        path = folder / f"image2d_{k:03d}.png"
        Image.fromarray(image).save(path)
        files.append(path)
    return files


def write_images_3d(folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
    """``count`` 96^3 float32 NIfTIs (1.5 mm): a bright ball on noise, voxel (0, 0, 0) = 0.5 + k / 1000."""
    import nibabel as nib

    zz, yy, xx = np.mgrid[:96, :96, :96]
    volume = rng.normal(0.1, 0.05, size=(96, 96, 96))
    volume[(zz - 50) ** 2 + (yy - 44) ** 2 + (xx - 48) ** 2 < 22**2] += 0.7
    volume = volume.astype(np.float32)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    files = []
    for k in range(count):
        volume[0, 0, 0] = 0.5 + k / 1000
        path = folder / f"image3d_{k:03d}.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), str(path))
        files.append(path)
    return files


def log_config(tmp: Path) -> Path:
    """MONAI Label's default logging configuration with the log file in ``tmp`` (by default
    the server appends to ``monailabel_app/logs/app.log`` in the repository)."""
    import monailabel

    text = (Path(monailabel.__file__).parent / "logging.json").read_text()
    path = tmp / "logging.json"
    path.write_text(text.replace("${LOGDIR}", str(tmp)).replace("${LOGFILE}", str(tmp / "app.log")))
    return path


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def server_cpu_seconds(process: subprocess.Popen) -> float:
    """User + system CPU seconds of the server's process tree so far."""
    total = 0.0
    try:
        root = psutil.Process(process.pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def http_call(url: str, case: Case, path: Path) -> bytes:
    """POST the file to ``/infer/NAME_segx?output=image``; the reply's bytes (status 200)."""
    with open(path, "rb") as stream:
        response = requests.post(f"{url}/infer/{case.model}_segx?output=image", files={"file": (path.name, stream)}, timeout=600)
    if response.status_code != 200:
        raise RuntimeError(f"{case.model}_segx on {path.name}: HTTP {response.status_code}: {response.text[:500]}")
    return response.content


def inprocess_call(case: Case, path: Path) -> segx.SegXResult:
    """What the server's SegX task runs: ``segx.explain`` with default arguments."""
    return segx.explain(case.pair, str(path))


def check_reply(reply: bytes, result: segx.SegXResult, tmp: Path) -> float:
    """Max |server heatmap - in-process SegX map of the predicted class|."""
    from monai.transforms import LoadImage

    path = tmp / "reply.nrrd"
    path.write_bytes(reply)
    served = np.asarray(LoadImage(image_only=True, reader="ITKReader")(str(path)), dtype=np.float32)
    expected = result.map_of("segx", result.predicted).detach().cpu().numpy().astype(np.float32)
    if served.shape != expected.shape:
        raise RuntimeError(f"server heatmap {served.shape} vs in-process {expected.shape}")
    return float(np.abs(served - expected).max())


def measure(cases: list[Case], url: str, process: subprocess.Popen, repeats: int, settle: float, tmp: Path, progress: tqdm) -> dict[str, dict]:
    """Warm-up (file 0, with the reply check), then ``repeats`` interleaved rounds."""
    times = {c.name: {w: [] for w in WORKLOADS} for c in cases}
    cpu = {c.name: [] for c in cases}
    sizes = {}
    diffs = {}
    for case in cases:
        reply = http_call(url, case, case.files[0])
        diffs[case.name] = check_reply(reply, inprocess_call(case, case.files[0]), tmp)
        sizes[case.name] = (case.files[0].stat().st_size, len(reply))
    progress.update(1)
    for k in range(1, repeats + 1):
        for case in cases:
            path = case.files[k]
            time.sleep(settle)
            cpu_start = server_cpu_seconds(process)
            start = time.perf_counter()
            http_call(url, case, path)
            times[case.name]["http"].append(time.perf_counter() - start)
            cpu[case.name].append(server_cpu_seconds(process) - cpu_start)
            time.sleep(settle)
            start = time.perf_counter()
            inprocess_call(case, path)
            times[case.name]["inprocess"].append(time.perf_counter() - start)
        progress.update(1)
    results = {}
    for case in cases:
        medians = {w: statistics.median(v) for w, v in times[case.name].items()}
        results[case.name] = {
            "http_s": medians["http"],
            "inprocess_s": medians["inprocess"],
            "ratio": medians["http"] / medians["inprocess"],
            "overhead_s": medians["http"] - medians["inprocess"],
            "server_cpu_s": statistics.median(cpu[case.name]),
            "upload_bytes": sizes[case.name][0],
            "reply_bytes": sizes[case.name][1],
            "max_abs_diff": diffs[case.name],
        }
    return results


def print_table(cases: list[Case], results: dict[str, dict]) -> None:
    header = f"{'case':<5} {'model':<8} {'upload':>9} {'reply':>9} {'http s':>8} {'in-proc s':>10} {'http/in-proc':>13} {'overhead s':>11} {'server cpu s':>13} {'max|diff|':>10}"
    print(header)
    print("-" * len(header))
    for case in cases:
        r = results[case.name]
        print(
            f"{case.name:<5} {case.model:<8} {r['upload_bytes'] / 1e3:>7.0f}kB {r['reply_bytes'] / 1e3:>7.0f}kB {r['http_s']:>8.3f} {r['inprocess_s']:>10.3f}"
            f" {r['ratio']:>13.2f} {r['overhead_s']:>11.3f} {r['server_cpu_s']:>13.3f} {r['max_abs_diff']:>10.2e}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_arguments(parser, "torch threads, here and in the server (default 2)", "3 rounds (about a minute on 2 cores)")
    parser.add_argument("--settle", type=float, default=0.3, help="untimed pause before every timed call, seconds (default 0.3)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment variable for the server (repeatable), e.g. OMP_WAIT_POLICY=ACTIVE")
    parser.add_argument("--startup-timeout", type=float, default=240, help="seconds to wait for the server's /info")
    args = parser.parse_args(argv)
    repeats = checked_repeats(parser, args)
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env expects KEY=VALUE")
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    torch.set_num_threads(args.threads)

    import monai
    import monailabel

    print(f"torch {torch.__version__}, monai {monai.__version__}, monailabel {monailabel.__version__}, segx {segx.__version__}")
    print(f"device cpu ({cpu_name()}), cpu cores {os.cpu_count()}, repeats {repeats} (+1 warm-up), seed {args.seed}")
    print(f"threads: in-process torch.set_num_threads({args.threads}); server env OMP_NUM_THREADS=MKL_NUM_THREADS={args.threads}")
    if extra_env:
        print(f"extra server environment: {extra_env}")
    print(f"settle {args.settle} s before every timed call (other busy processes distort CPU timings)")
    if args.quick:
        print(f"QUICK MODE: {repeats} rounds; use the full mode for reported numbers")

    with tempfile.TemporaryDirectory(prefix="segx_server_bench_") as tmp_name:
        tmp = Path(tmp_name)
        models, studies, images = tmp / "models", tmp / "studies", tmp / "images"
        for folder in (models, studies, images):
            folder.mkdir()
        rng = np.random.default_rng(args.seed)
        cases = [
            Case("2d", "bench2d", write_config(models, "bench2d", 2, 3, 7, 224, "divide255", args.seed)),
            Case("3d", "bench3d", write_config(models, "bench3d", 3, 1, 3, 96, "minmax", args.seed)),
        ]
        cases[0].files = write_images_2d(images, repeats + 1, rng)
        cases[1].files = write_images_3d(images, repeats + 1, rng)
        for case in cases:
            case.pair = load_model_pair(case.config_file)

        start = time.perf_counter()
        log_file = tmp / "server.log"
        server_env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), **extra_env}
        extra_args = ["--conf", "device", "cpu", "--log_config", str(log_config(tmp))]
        names = [c.model for c in cases]
        with running_server(studies, ",".join(names), log_file, models, server_env, extra_args, args.startup_timeout) as server:
            print(f"server {server.url} up in {time.perf_counter() - start:.1f} s (pid {server.process.pid})")
            try:
                offered = requests.get(f"{server.url}/info/", timeout=10).json()
                missing = [f"{n}_segx" for n in names if f"{n}_segx" not in offered["models"]]
                if missing:
                    raise RuntimeError(f"server does not offer {missing}: {offered.get('unavailable_models')}")
                with tqdm(total=repeats + 1, desc="warm-up + rounds", file=sys.stderr) as progress:
                    results = measure(cases, server.url, server.process, repeats, args.settle, tmp, progress)
            except Exception:
                print(log_tail(log_file), file=sys.stderr)
                raise
    print_table(cases, results)

    summary = {f"{key}_{name}": value for name, r in results.items() for key, value in r.items()}
    summary.update(quick=args.quick, settle=args.settle, server_env=extra_env, threads=args.threads, repeats=repeats, torch=torch.__version__, device="cpu")
    print("RESULT " + json.dumps(summary, sort_keys=True))
    return summary


if __name__ == "__main__":
    main()
