"""``segx demo``: the whole product on phantom studies, end to end over HTTP.

Generates test phantoms, starts the real MONAI Label server with the ``demo2d`` and
``demo3d`` model configurations, runs classification, segmentation and SegX/SegU on every
study through the server, and writes ``demo_output/``: float32 NRRD heatmaps and label maps
(source geometry, ready for 3D Slicer), PNG panels, ``report.md``; the last printed line is
``DEMO {json}``. Also the server tooling the demo, the tests and the benchmarks share
(:func:`running_server`), and the phantoms (:mod:`.phantoms`).

Room rule (tests/test_architecture.py): imports every room but the CLI.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import requests
import torch

from ..imageio import read_image
from ..evaluation.metrics import certainty_auroc, topk_overlap
from ..formats.pacs import free_port, wait_until_up
from .phantoms import generate
from ..training import RECIPES, train

APP_DIR = Path(__file__).resolve().parents[2]  # monailabel_app/ (this file: monailabel_app/segx/demo/__init__.py)
MODELS_DIR = APP_DIR / "model_configs"


def ensure_demo_models(models_dir: Path = MODELS_DIR, seed: int = 0) -> None:
    """Train ``demo2d`` / ``demo3d`` on freshly generated phantoms if their weights are
    missing (the repository ships them; this is the reproduction path)."""
    for name, recipe in RECIPES.items():
        if not recipe.phantoms:
            continue
        if (models_dir / "weights" / f"{name}_classifier.pt").exists() and (models_dir / f"{name}.yaml").exists():
            continue
        print(f"training {name} (first use): phantoms, then classifier and segmenter", flush=True)
        data = models_dir / "training_data" / name
        for split, count in recipe.phantoms.items():
            generate(data, recipe.spatial_dims, count, seed, split)
        train(name, data, models_dir)


@dataclass
class RunningServer:
    """A started MONAI Label server: its URL and its process (the leader of its own
    process group)."""

    url: str
    process: subprocess.Popen

    def peak_rss_per_voxel(self, request, voxels: int) -> float:
        """Peak RSS growth of the server (its largest process) while ``request()`` runs, in
        bytes per voxel of an image of ``voxels`` voxels (Linux: the peak is reset through
        ``/proc/PID/clear_refs`` and read as ``VmHWM``)."""
        import psutil

        tree = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        pid = max(tree, key=lambda p: p.memory_info().rss).pid
        status = lambda key: int(next(line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith(key))) * 1024  # noqa: E731
        before = status("VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        request()
        return (status("VmHWM") - before) / voxels


@contextmanager
def running_server(
    studies: Path,
    models: str,
    log_file: Path,
    models_dir: Path | None = None,
    env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 300,
):
    """A ``monailabel start_server`` subprocess on a free 127.0.0.1 port; yields a
    :class:`RunningServer` once ``/info`` answers and stops it on exit (also on errors and
    Ctrl-C). ``env`` adds environment variables, ``extra_args`` command-line arguments."""
    port = free_port()
    process_env = dict(os.environ)
    process_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + process_env.get("PATH", "")
    process_env.setdefault("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")
    process_env.update(env or {})
    command = ["monailabel", "start_server", "--app", str(APP_DIR), "--studies", str(studies), "--conf", "models", models,
               "--host", "127.0.0.1", "--port", str(port), *extra_args]  # fmt: skip
    if models_dir:
        command += ["--conf", "models_dir", str(models_dir)]
    log = open(log_file, "w")
    process = subprocess.Popen(command, env=process_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        answers = lambda: requests.get(f"{url}/info/", timeout=2).status_code in (200, 401)  # noqa: E731 (401: up, with API tokens)
        wait_until_up(process, answers, "the MONAI Label server", log_file, timeout, interval=0.5)
        yield RunningServer(url, process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _infer(url: str, task: str, image: Path, out: Path | None = None, **params) -> dict:
    """POST one study to a task; saves the returned image to ``out`` when given."""
    output = "all" if out else "json"
    with open(image, "rb") as stream:
        response = requests.post(
            f"{url}/infer/{task}?output={output}",
            files={"file": (image.name, stream)},
            data={"params": json.dumps(params)},
            timeout=600,
        )
    if response.status_code != 200:
        raise RuntimeError(f"{task} on {image.name}: HTTP {response.status_code}: {response.text}")
    if not out:
        return response.json()
    reply, image = parse_multipart(response.headers["content-type"], response.content)
    out.write_bytes(image)
    return reply


def parse_multipart(content_type: str, body: bytes) -> tuple[dict, bytes | None]:
    """Split a MONAI Label ``output=all`` reply into its ``params`` JSON and ``image`` bytes."""
    boundary = content_type.split("boundary=")[1].strip().encode()
    params, image = {}, None
    for part in body.split(b"--" + boundary):
        if b"\r\n\r\n" not in part:
            continue
        head, content = part.split(b"\r\n\r\n", 1)
        content = content[:-2] if content.endswith(b"\r\n") else content
        if b'name="params"' in head:
            params = json.loads(content)
        elif b'name="image"' in head:
            image = content
    return params, image


def _panel(path: Path, image: np.ndarray, raw: np.ndarray, segx: np.ndarray, mask: np.ndarray, title: str, rgb: bool) -> None:
    """One row: image | raw explanation | SegX | clinical mask, with a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for axis, (name, overlay) in zip(axes, [("image", None), ("raw Grad-CAM", raw), ("SegX", segx), ("clinical region", mask)]):
        axis.imshow(image, cmap=None if rgb else "gray")
        if overlay is not None:
            shown = axis.imshow(np.ma.masked_less_equal(overlay, 0.05), cmap="jet", vmin=0, vmax=1, alpha=0.55)
        axis.set_title(name)
        axis.axis("off")
    fig.colorbar(shown, ax=axes, fraction=0.015, pad=0.01, label="relevance")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def _display(array: np.ndarray, dim: int, lesion: list[int], rgb: bool) -> np.ndarray:
    """MONAI-order array -> 2D picture: 2D images transposed to (H, W[, 3]); 3D volumes as
    the axial slice through the lesion, (Y, X)."""
    if dim == 2:
        return np.moveaxis(array, 0, -1).transpose(1, 0, 2) if rgb else array.T
    return array[:, :, lesion[2]].T


def run_demo(out: str | Path = "demo_output", n2d: int = 40, n3d: int = 4, seed: int = 7) -> dict:
    """Run the demo; returns the DEMO summary (also printed as the last line)."""
    start = time.perf_counter()
    out = Path(out)
    ensure_demo_models()
    studies = out / "studies"
    if studies.exists():
        import shutil

        shutil.rmtree(studies)
    print(f"generating {n2d} 2D and {n3d} 3D test phantoms in {studies}", flush=True)
    generate(studies, 2, n2d, seed, "test")
    generate(studies, 3, n3d, seed, "test")
    with open(studies / "labels.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    records = []
    with running_server(studies / "images", "demo2d,demo3d", out / "server.log") as server:
        url = server.url
        print(f"MONAI Label server running at {url}", flush=True)
        from tqdm import tqdm

        for row in tqdm(rows, desc="studies over HTTP"):
            dim = 2 if row["file"].endswith(".png") else 3
            model = f"demo{dim}d"
            image_path = studies / "images" / row["file"]
            folder = out / row["image_id"]
            folder.mkdir(parents=True, exist_ok=True)
            classification = _infer(url, f"{model}_classification", image_path)
            _infer(url, f"{model}_segmentation", image_path, folder / "segmentation.nrrd")
            _infer(url, f"{model}_segx", image_path, folder / "explanation.nrrd", layer="explanation")
            segx_reply = _infer(url, f"{model}_segx", image_path, folder / "segx.nrrd", layer="segx")
            records.append((row, dim, classification, segx_reply, folder))
    return _report(out, records, start)


def _report(out: Path, records: list, start: float) -> dict:
    """Metrics, panels and report.md from the server's answers."""
    lines = ["# SegX demo report", "", "| study | truth | marker | predicted | p | SegU certainty | level | IoU raw | IoU SegX |", "|---|---|---|---|---|---|---|---|---|"]
    iou_raw, iou_segx, certainty, correct = [], [], [], []
    for row, dim, classification, reply, folder in records:
        image = read_image(Path(out / "studies" / "images" / row["file"])).array.numpy()
        truth_region = read_image(out / "studies" / "masks" / row["file"]).array[0].numpy()
        truth_region = truth_region > 127 if dim == 2 else truth_region == 1
        raw = read_image(folder / "explanation.nrrd").array[0].numpy()
        segx = read_image(folder / "segx.nrrd").array[0].numpy()
        region = read_image(folder / "segmentation.nrrd").array[0].numpy() > 0
        iou_raw.append(topk_overlap(raw, truth_region, 5.0)["iou"])
        iou_segx.append(topk_overlap(segx, truth_region, 5.0)["iou"])
        predicted, segu = reply["predicted"], reply["segu"]
        certainty.append(segu["certainty"])
        correct.append(predicted == row["label"])
        lesion = [int(v) for v in row["lesion"].split()]
        rgb = dim == 2
        title = (f"{row['image_id']}: truth {row['label']}, marker {'yes' if row['marker'] == '1' else 'no'} | predicted "
                 f"{predicted} (p={reply['probabilities'][predicted]:.2f}) | SegU {segu['certainty']:.2f} ({segu['level']})")  # fmt: skip
        if rgb:
            picture = _display(image / 255.0, dim, lesion, rgb=True)
        else:
            picture = np.clip((_display(image[0], dim, lesion, rgb=False) + 200) / 500, 0, 1)  # soft-tissue window
        maps = [_display(m, dim, lesion, rgb=False) for m in (raw, segx, region.astype(float))]
        _panel(folder / "panel.png", picture, *maps, title, rgb)
        if dim == 3:
            mip = np.clip((image[0].max(2).T + 200) / 500, 0, 1)
            _panel(folder / "mip.png", mip, raw.max(2).T, segx.max(2).T, region.max(2).T.astype(float), title + " | MIP", False)
        lines.append(
            f"| [{row['image_id']}]({folder.name}/panel.png) | {row['label']} | {row['marker']} | {predicted} | "
            f"{reply['probabilities'][predicted]:.2f} | {segu['certainty']:.3f} | {segu['level']} | {iou_raw[-1]:.3f} | {iou_segx[-1]:.3f} |"
        )
    try:
        auroc = certainty_auroc(certainty, correct)
    except ValueError:  # every prediction right (or wrong): AUROC is undefined
        auroc = None
    summary = {
        "iou_raw": float(np.mean(iou_raw)),
        "iou_segx": float(np.mean(iou_segx)),
        "segu_auroc": auroc,
        "n_2d": sum(1 for r in records if r[1] == 2),
        "n_3d": sum(1 for r in records if r[1] == 3),
        "accuracy": float(np.mean(correct)),
        "seconds": round(time.perf_counter() - start, 1),
    }
    lines[1:1] = [
        "",
        f"Phantom test split: {summary['n_2d']} 2D and {summary['n_3d']} 3D studies, run over HTTP through the MONAI Label server.",
        "",
        f"- mean IoU of the top-5 % map against the ground-truth region: raw {summary['iou_raw']:.3f}, SegX {summary['iou_segx']:.3f}",
        "- SegU certainty (mass_inside) AUROC for correct vs wrong predictions: "
        + (f"{auroc:.3f}" if auroc is not None else "undefined (all predictions correct, or all wrong)"),
        f"- classification accuracy: {summary['accuracy']:.3f} (the marker misleads on half of the test studies)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def main(out: str, n2d: int, n3d: int, seed: int) -> int:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    summary = run_demo(out, n2d, n3d, seed)
    print(f"\nResults in {out}/: report.md, <study>/panel.png (3D: mip.png too), <study>/*.nrrd (drag into 3D Slicer).")
    print("Keep a server running for 3D Slicer with: make serve")
    print("DEMO " + json.dumps(summary))
    return 0
