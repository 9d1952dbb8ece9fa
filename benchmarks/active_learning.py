"""Annotation sessions: labels saved per strategy (replays) and what two annotators wait for.

* **replays** (``segx al-simulate``, segx/demo/sessions.py) per data set of ``--datasets``
  (``../shared/data/<name>``, setup of the same name): every strategy and the full-data
  reference for ``--seeds`` seeds through the live server and the official
  ``MONAILabelClient``. ``--reuse`` reads an earlier run's ``analysis.json`` under ``--out``
  instead of replaying (the replays take most of an hour per data set on 2 cores).
* **latencies**: a real ``monailabel start_server`` with a copy of the shipped ``demo2d``
  model on ``--studies`` 2D phantoms; two annotators at once, each a thread with the Slicer
  module's client (``SegXSlicer/SegXSlicerLib/client.py``) and its own ``client_id``, take
  ``--images`` images each from ``--strategy``: *next sample* (the strategy's answer and
  the image downloaded: what the module waits for before it loads the image) and
  *submit* (``PUT /datastore/label`` answered: the label stored). Then one of them starts
  a training of the segmenter (``--epochs``): *train -> weights published* (the weight file
  replaced) and *train -> in use* (the first SegX answer after that whose segmentation
  differs from the one before training).

Last line ``RESULT {json}``: ``labels_to_target_<figure>_<strategy>_<dataset>`` (null: not
reached within the replay), ``saving_vs_random_<figure>_<strategy>_<dataset>`` with
``..._ci``, ``dice_mean_after_seed_minus_random_<strategy>_<dataset>`` with ``..._ci``,
``next_sample_p50_s`` / ``_p95_s``, ``submit_p50_s`` / ``_p95_s``, ``train_to_published_s``,
``train_to_in_use_s``.

    python benchmarks/active_learning.py [--datasets jsrt ham10000] [--reuse] [--out al_runs]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path[:0] = [str(ROOT / "monailabel_app"), str(ROOT / "SegXSlicer"), str(Path(__file__).resolve().parent)]

from common import cpu_name  # noqa: E402
from SegXSlicerLib.client import SegXClient  # noqa: E402
from segx.demo import MODELS_DIR, running_server  # noqa: E402
from segx.demo.phantoms import generate  # noqa: E402
from segx.demo.sessions import simulate  # noqa: E402


def replays(datasets: list[str], out: Path, seeds: int, reuse: bool) -> dict:
    figures = {}
    for name in datasets:
        folder = out / name
        if reuse and (folder / "analysis.json").exists():
            analysis = json.loads((folder / "analysis.json").read_text())
        elif (SHARED / name).exists():
            analysis = simulate(SHARED / name, name, folder, seeds)
        else:
            print(f"{name}: no data at {SHARED / name}; skipped", flush=True)
            continue
        for figure, table in analysis["labels_to_target"].items():
            for strategy, entry in table.items():
                figures[f"labels_to_target_{figure}_{strategy}_{name}"] = entry["labels"] if math.isfinite(entry["labels"]) else None  # None: not reached
                figures[f"labels_to_target_{figure}_{strategy}_{name}_ci"] = entry["ci"]
        for figure, table in analysis["saving_vs_random"].items():
            for strategy, entry in table.items():
                figures[f"saving_vs_random_{figure}_{strategy}_{name}"] = entry["saving"]
                figures[f"saving_vs_random_{figure}_{strategy}_{name}_ci"] = entry["ci"]
        for strategy, entry in analysis["mean_after_seed_vs_random"]["dice"].items():
            figures[f"dice_mean_after_seed_minus_random_{strategy}_{name}"] = round(entry["difference"], 4)
            figures[f"dice_mean_after_seed_minus_random_{strategy}_{name}_ci"] = [round(v, 4) for v in entry["ci"]]
        figures[f"full_{name}"] = analysis["full"]
        figures[f"replay_seconds_{name}"] = analysis["seconds"]
    return figures


def _percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def latencies(studies_n: int, images: int, strategy: str, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="segx_al_bench_") as tmp:
        tmp = Path(tmp)
        generate(tmp / "phantoms", 2, studies_n, 11, "test", progress=False)
        studies = tmp / "studies"
        studies.mkdir()
        for image in (tmp / "phantoms" / "images").glob("*.png"):
            shutil.copy(image, studies / image.name)
        models = tmp / "models"
        (models / "weights").mkdir(parents=True)
        shutil.copy(MODELS_DIR / "demo2d.yaml", models)
        for part in ("classifier", "segmenter"):
            shutil.copy(MODELS_DIR / "weights" / f"demo2d_{part}.pt", models / "weights")
        masks = tmp / "phantoms" / "masks"
        waits = {"next_sample": [], "submit": []}
        lock = threading.Lock()
        with running_server(studies, "demo2d", tmp / "server.log", models_dir=models) as server:
            errors = []

            def annotator(name: str) -> None:
                client = SegXClient(server.url)
                try:
                    for _ in range(images):
                        start = time.perf_counter()
                        sample = client.next_sample(strategy, "demo2d", client_id=name)
                        client.download_image(sample["id"])
                        shown = time.perf_counter()
                        mask = (np.asarray(Image.open(masks / f"{sample['id']}.png")) > 0).astype(np.uint8)
                        buffer = io.BytesIO()
                        Image.fromarray(mask).save(buffer, format="PNG")
                        stored_start = time.perf_counter()
                        client.save_label(sample["id"], "label.png", buffer.getvalue())
                        stored = time.perf_counter()
                        with lock:
                            waits["next_sample"].append(shown - start)
                            waits["submit"].append(stored - stored_start)
                except Exception as error:  # reported, not hidden
                    errors.append(f"{name}: {error}")

            threads = [threading.Thread(target=annotator, args=(f"annotator{i}",)) for i in (1, 2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise RuntimeError("; ".join(errors))

            client = SegXClient(server.url)
            weights = models / "weights" / "demo2d_segmenter.pt"
            before_bytes = weights.read_bytes()
            probe = sorted(studies.glob("*.png"))[0]
            upload = (probe.name, probe.read_bytes())
            before_image = client.infer("demo2d_segmentation", {}, upload=upload)[1]
            start = time.perf_counter()
            client.train("demo2d_segmenter", {"max_epochs": epochs})
            while weights.read_bytes() == before_bytes:
                time.sleep(0.05)
            published = time.perf_counter() - start
            while client.infer("demo2d_segmentation", {}, upload=upload)[1] == before_image:
                time.sleep(0.05)
            in_use = time.perf_counter() - start
            while client.train_status().get("status") == "RUNNING":
                time.sleep(0.2)
    next_p50, next_p95 = _percentiles(waits["next_sample"])
    submit_p50, submit_p95 = _percentiles(waits["submit"])
    return {"strategy": strategy, "annotators": 2, "images_each": images, "next_sample_p50_s": round(next_p50, 3), "next_sample_p95_s": round(next_p95, 3),
            "submit_p50_s": round(submit_p50, 3), "submit_p95_s": round(submit_p95, 3), "train_epochs": epochs,
            "train_to_published_s": round(published, 2), "train_to_in_use_s": round(in_use, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["jsrt", "ham10000"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="al_runs", help="replay outputs (one folder per data set)")
    parser.add_argument("--reuse", action="store_true", help="read out/<dataset>/analysis.json where it exists")
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--images", type=int, default=8, help="images each annotator labels")
    parser.add_argument("--strategy", default="segu_lowest_certainty")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    result = {"cpu": cpu_name(), **replays(args.datasets, Path(args.out), args.seeds, args.reuse)}
    for strategy in dict.fromkeys([args.strategy, "random"]):
        result[strategy] = latencies(args.studies, args.images, strategy, args.epochs)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
