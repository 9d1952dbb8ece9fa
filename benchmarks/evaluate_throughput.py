"""Throughput of ``segx evaluate`` against the reference code's approach, side by side.

The same model pair and the same labelled images are processed two ways, producing the
same per-study figures (prediction, max softmax probability, segmentation Dice, top-5 %
IoU of the raw Grad-CAM map and of the SegX map against the ground-truth mask, SegU share
of CAM mass inside the region):

* ``ours``: ``segx.evaluation.evaluate.study_records(pair, studies, ["gradcam"], mc_samples=0)``, the
  work of ``segx evaluate --methods gradcam --mc-samples 0 --no-evidence`` (the command runs
  the evidence pass unless ``--no-evidence``; ``study_records`` does not by default): Grad-CAM
  and the segmenter on 16 studies at a time; it also computes every SegU variant, the pointing game and
  relevance mass, which the reference skips;
* ``ours_torch``: the same with every forward in torch (the configuration's ``runtime:``
  switched off; the shipped HAM10000 model runs its plain CPU forwards in ONNX Runtime);
* ``reference``: the approach of the paper's reference code (torch): a classifier forward for the
  prediction, then one pytorch-grad-cam ``GradCAM`` call for the predicted class
  (``ClassifierOutputTarget``), the map copied to numpy and resized to the image grid,
  ``np.percentile`` binarisation of the top 5 %, and the segmenter run separately.

Both read the image with ``segx.imageio.read_image`` and use the pair's preprocessing.
Method: ``torch.set_num_threads(--threads)``; one warm-up study each; then ``--repeats``
interleaved rounds over the ``--limit`` studies (ours, reference, ours, ...); per workload
the median round time. ``images_per_second = n / median``, ``speedup_vs_reference = reference median /
ours median`` (how many times faster ``segx evaluate`` is). Agreement: the mean raw and
SegX IoU of both, which must be close (they differ only by the binarisation tie rule and
the resizing).

Defaults: the built-in ``ham10000`` model on the HAM10000 test split in ../shared/data;
without them, the shipped ``demo2d`` model on generated phantoms.

    python benchmarks/evaluate_throughput.py [--model NAME] [--data DIR] [--limit 50] [--repeats 5] [--threads 2] [--device cuda [--autocast]] [--ray]

With ``--ray``, also ``segx evaluate --ray``'s studies/s on a local Ray with 1 and 2 worker
CPUs (one actor of one torch thread per CPU) over the same studies, and the efficiency
``throughput(2) / (2 x throughput(1))``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monailabel_app"))

from common import cpu_name  # noqa: E402
from segx import onnxrt  # noqa: E402
from segx.config import BUILTIN_MODELS_DIR, load_model_pair, model_config_file  # noqa: E402
from segx.evaluation.datasets import Layout, Study, find_studies  # noqa: E402
from segx.evaluation.evaluate import study_records  # noqa: E402
from segx.explainers import find_target_layer  # noqa: E402
from segx.imageio import read_image  # noqa: E402
from segx.pair import ModelPair  # noqa: E402
from segx.training import RECIPES  # noqa: E402

SHARED_HAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "ham10000"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def reference_record(pair: ModelPair, study: Study, cam, device: str = "cpu") -> dict:
    """The reference approach for one study (see the module docstring)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    image = read_image(study.image)
    x = pair.classifier_input(image.array).to(device)
    with torch.no_grad():
        probabilities = pair.classifier(x).float().softmax(1)[0].cpu().numpy()
    predicted = int(probabilities.argmax())
    grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(predicted)])[0]
    size = tuple(image.spatial_shape)
    heatmap = F.interpolate(torch.from_numpy(np.ascontiguousarray(grayscale))[None, None], size=size, mode="bilinear").numpy()[0, 0]
    with torch.no_grad():
        labels = pair.segmenter(pair.segmenter_input(image.array).to(device)).argmax(1, keepdim=True).float().cpu()
    region = F.interpolate(labels, size=size, mode="nearest").numpy()[0, 0] > 0
    truth = read_image(study.mask).array[0].numpy() > 0
    segx_map = heatmap * region
    raw_top = heatmap >= np.percentile(heatmap, 95)
    segx_top = segx_map >= np.percentile(segx_map, 95)
    dice = 2 * np.count_nonzero(region & truth) / max(np.count_nonzero(region) + np.count_nonzero(truth), 1)
    return {"msp": float(probabilities.max()), "dice": dice, "iou_raw": _iou(raw_top, truth), "iou_segx": _iou(segx_top, truth),
            "segu": float(segx_map.sum() / max(heatmap.sum(), 1e-12))}  # fmt: skip


def _studies(args) -> tuple[ModelPair, list[Study], str, object]:
    """The pair and the studies; a temporary folder of phantoms when HAM10000 is absent."""
    if args.model is None and (BUILTIN_MODELS_DIR / "ham10000.yaml").exists() and SHARED_HAM.is_dir():
        args.model, args.data = "ham10000", str(SHARED_HAM)
    keep = None
    if args.model is None or args.data is None:
        from segx.demo.phantoms import generate

        keep = tempfile.TemporaryDirectory()
        args.model, args.data = "demo2d", keep.name
        generate(keep.name, 2, args.limit, seed=args.seed, split="test", progress=False)
    pair = load_model_pair(model_config_file(args.model))
    layout = RECIPES["ham10000"].layout if Path(args.data).resolve() == SHARED_HAM.resolve() else Layout()
    studies, _ = find_studies(pair.class_names, args.data, layout, "test", args.limit)
    return pair, studies, args.model, keep


def ray_throughput(config_file: Path, studies: list[Study], workers: int) -> float:
    """Studies per second of ``segx evaluate --ray`` (same rows as ``ours``) on a local Ray
    with ``workers`` CPUs, i.e. that many actors of one torch thread each; the time counts
    from the first batch sent to the last row back, actor start-up and model loading included."""
    import ray

    from segx.evaluation.evaluate import ray_study_records

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        start = time.perf_counter()
        done = sum(len(batch) for batch in ray_study_records(config_file, studies, ["gradcam"], 0, False, "auto"))
        return done / (time.perf_counter() - start)
    finally:
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model configuration name or file (default ham10000, else demo2d)")
    parser.add_argument("--data", help="dataset folder (default ../shared/data/ham10000, test split)")
    parser.add_argument("--limit", type=int, default=50, help="studies per round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantoms (fallback data)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both workloads)")
    parser.add_argument("--autocast", action="store_true", help="float16 autocast around both workloads (CUDA)")
    parser.add_argument("--ray", action="store_true", help="also studies/s of --ray with 1 and 2 local workers, and the efficiency")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pair, studies, model, keep = _studies(args)
    pair.to(args.device)
    precision = torch.autocast("cuda", dtype=torch.float16) if args.autocast else contextlib.nullcontext()
    from pytorch_grad_cam import GradCAM

    _, layer = find_target_layer(pair.classifier, pair.target_layer)
    torch_pair = load_model_pair(model_config_file(model)).to(args.device)  # the same pair with every forward in torch
    for network in (torch_pair.classifier, torch_pair.segmenter):
        onnxrt.disable(network)
    with GradCAM(model=pair.classifier, target_layers=[layer]) as cam:
        workloads = {
            "ours": lambda chosen: study_records(pair, chosen, ["gradcam"], args.device, mc_samples=0, desc="segx evaluate"),
            "ours_torch": lambda chosen: study_records(torch_pair, chosen, ["gradcam"], args.device, mc_samples=0, desc="segx evaluate, torch"),
            "reference": lambda chosen: [reference_record(pair, s, cam, args.device) for s in tqdm(chosen, desc="reference")],
        }
        with precision:
            for run in workloads.values():  # warm-up
                run(studies[:2])
        times = {name: [] for name in workloads}
        outputs = {}
        for _ in range(args.repeats):
            for name, run in workloads.items():
                start = time.perf_counter()
                with precision:
                    outputs[name] = run(studies)
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "model": model,
        "n": len(studies),
        "repeats": args.repeats,
        "threads": args.threads,
        "cpu": cpu_name(),
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "autocast": args.autocast,
        "images_per_second_ours": len(studies) / median["ours"],
        "images_per_second_reference": len(studies) / median["reference"],
        "speedup_vs_reference": median["reference"] / median["ours"],
        "runtimes": {name: "onnxruntime" if onnxrt.enabled(network) else "torch" for name, network in (("classifier", pair.classifier), ("segmenter", pair.segmenter))},
        "images_per_second_ours_torch": len(studies) / median["ours_torch"],
        "speedup_vs_reference_torch_only": median["reference"] / median["ours_torch"],
        "iou_raw_ours": float(np.mean([r["iou_raw_gradcam"] for r in outputs["ours"]])),
        "iou_raw_reference": float(np.mean([r["iou_raw"] for r in outputs["reference"]])),
        "iou_segx_ours": float(np.mean([r["iou_segx_gradcam"] for r in outputs["ours"]])),
        "iou_segx_reference": float(np.mean([r["iou_segx"] for r in outputs["reference"]])),
    }
    if args.ray:
        for workers in (1, 2):
            result[f"ray_studies_per_second_{workers}_workers"] = ray_throughput(model_config_file(model), studies, workers)
        result["ray_efficiency_2_workers"] = result["ray_studies_per_second_2_workers"] / (2 * result["ray_studies_per_second_1_workers"])
    if keep is not None:
        keep.cleanup()
    print(f"segx evaluate {result['images_per_second_ours']:.1f} images/s (runtimes {result['runtimes']}; all in torch: "
          f"{result['images_per_second_ours_torch']:.1f}), reference {result['images_per_second_reference']:.1f} images/s, "
          f"speedup {result['speedup_vs_reference']:.2f} (torch only: {result['speedup_vs_reference_torch_only']:.2f})")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
