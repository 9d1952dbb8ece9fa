"""Explanation overhead of ``segx.explain`` against plain inference and pytorch-grad-cam.

For a MONAI DenseNet121 classifier and a MONAI UNet segmenter with random weights (fixed
seed, nothing downloaded), in 2D (3 x 224 x 224, 7 classes) and 3D (1 x 96^3, 3 classes),
three workloads are timed on the same image:

* ``baseline``: classifier forward + segmenter forward under ``torch.no_grad``;
* ``ours``: ``segx.explain(pair, image, method="gradcam")`` for ALL classes, including the
  SegX maps and the SegU certainty of every class (default variant ``mass_inside``);
* ``pgc``: the same work done with pytorch-grad-cam: ``GradCAM(model,
  target_layers=[model.class_layers.relu])`` called once per class with
  ``ClassifierOutputTarget(c)`` (its own resizing to the input size), plus the segmenter
  forward, the SegX product ``maps * region`` and ``segx.certainty.segu`` (default
  variant) for every class, with region = segmenter argmax > 0.

Method: ``torch.set_num_threads(--threads)``; one warm-up call of each workload; then
``--repeats`` interleaved rounds (baseline, ours, pgc, baseline, ours, pgc, ...); the
median time of each workload is reported. Per dimension ``d`` in {2d, 3d}::

    ratio_d     = median(ours) / median(baseline)
    ratio_pgc_d = median(pgc)  / median(baseline)
    max_abs_diff_d = max |ours.explanation_normalised - pgc maps|   (all classes, all voxels;
                                                                     both in [0, 1] on the input grid)

The last printed line is ``RESULT {json}`` with these keys plus the medians in seconds.
``--quick`` uses a 64^3 3D image and 3 rounds (under a minute on 2 CPU cores).

    python benchmarks/explain_overhead.py [--quick] [--threads 2] [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monailabel_app"))

import segx  # noqa: E402
from common import add_timing_arguments, checked_repeats, cpu_name  # noqa: E402
from segx.certainty import DEFAULT_VARIANT, segu  # noqa: E402

WORKLOADS = ("baseline", "ours", "pgc")


@dataclass
class Case:
    """One benchmark setting: a model pair and an image ``(C, *S)`` on the device."""

    name: str
    pair: segx.ModelPair
    image: torch.Tensor

    @property
    def classes(self) -> list[int]:
        return list(range(len(self.pair.class_names)))


def build_case(name: str, dims: int, channels: int, n_classes: int, size: int, device: torch.device, seed: int) -> Case:
    """Random-weight DenseNet121 + UNet (seeded) and a uniform random image."""
    from monai.networks.nets import DenseNet121, UNet

    torch.manual_seed(seed)
    classifier = DenseNet121(spatial_dims=dims, in_channels=channels, out_channels=n_classes)
    segmenter = UNet(spatial_dims=dims, in_channels=channels, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2))
    pair = segx.ModelPair(
        classifier,
        segmenter,
        class_names=[f"class{c}" for c in range(n_classes)],
        spatial_dims=dims,
        classifier_input=segx.Preprocessing(channels),
        segmenter_input=segx.Preprocessing(channels),
    ).to(device)
    image = torch.rand(channels, *[size] * dims, generator=torch.Generator().manual_seed(seed)).to(device)
    return Case(name, pair, image)


def run_baseline(case: Case) -> None:
    """Plain inference: classifier + segmenter forward."""
    x = case.image[None]
    with torch.no_grad():
        case.pair.classifier(x)
        case.pair.segmenter(x)


def run_ours(case: Case) -> torch.Tensor:
    """segx.explain for all classes (SegX + all SegU variants); normalised maps ``(K, *S)``."""
    result = segx.explain(case.pair, case.image, method="gradcam", device=case.image.device)
    return result.explanation_normalised


def run_pgc(case: Case) -> torch.Tensor:
    """The same work with pytorch-grad-cam; its normalised maps ``(K, *S)``."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = case.image[None]
    classifier, segmenter = case.pair.classifier, case.pair.segmenter
    with GradCAM(model=classifier, target_layers=[classifier.class_layers.relu]) as cam:
        maps = torch.stack([torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(c)])[0]) for c in case.classes])
    maps = maps.to(x.device)
    with torch.no_grad():
        region = segmenter(x)[0].argmax(0) > 0
    _segx_maps = maps * region  # the SegX product, as segx.refine.segx_map per class
    _certainty = {c: segu(maps[k], region, DEFAULT_VARIANT) for k, c in enumerate(case.classes)}
    return maps


def timed(function: Callable[[Case], object], case: Case) -> tuple[float, object]:
    """Wall-clock seconds of ``function(case)`` (CUDA synchronised) and its result."""
    synchronise = torch.cuda.synchronize if case.image.is_cuda else (lambda: None)
    synchronise()
    start = time.perf_counter()
    output = function(case)
    synchronise()
    return time.perf_counter() - start, output


def measure(case: Case, repeats: int, progress: tqdm) -> dict[str, float]:
    """Warm up, then interleave ``repeats`` rounds; medians, ratios and the map difference."""
    functions = {"baseline": run_baseline, "ours": run_ours, "pgc": run_pgc}
    outputs = {name: timed(function, case)[1] for name, function in functions.items()}
    progress.update(1)
    times: dict[str, list[float]] = {name: [] for name in WORKLOADS}
    for _ in range(repeats):
        for name in WORKLOADS:
            times[name].append(timed(functions[name], case)[0])
        progress.update(1)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        **{f"{name}_s": value for name, value in medians.items()},
        "ratio": medians["ours"] / medians["baseline"],
        "ratio_pgc": medians["pgc"] / medians["baseline"],
        "max_abs_diff": float((outputs["ours"].float().cpu() - outputs["pgc"].float().cpu()).abs().max()),
    }


def print_table(cases: list[Case], results: dict[str, dict[str, float]]) -> None:
    header = f"{'case':<5} {'image':<14} {'classes':>7} {'baseline s':>11} {'ours s':>9} {'pgc s':>9} {'ours/base':>10} {'pgc/base':>9} {'pgc/ours':>9} {'max|diff|':>10}"
    print(header)
    print("-" * len(header))
    for case in cases:
        r = results[case.name]
        shape = "x".join(str(s) for s in case.image.shape)
        print(
            f"{case.name:<5} {shape:<14} {len(case.classes):>7} {r['baseline_s']:>11.3f} {r['ours_s']:>9.3f} {r['pgc_s']:>9.3f}"
            f" {r['ratio']:>10.2f} {r['ratio_pgc']:>9.2f} {r['pgc_s'] / r['ours_s']:>9.2f} {r['max_abs_diff']:>10.2e}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_arguments(parser, "torch.set_num_threads (default 2)", "64^3 3D image and 3 rounds (< 1 min on 2 cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    repeats = checked_repeats(parser, args)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size_3d = 64 if args.quick else 96

    import monai
    from importlib.metadata import version

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"torch {torch.__version__}, monai {monai.__version__}, grad-cam {version('grad-cam')}, segx {segx.__version__}")
    print(f"device {device} ({device_name}), threads {torch.get_num_threads()}, repeats {repeats} (+1 warm-up), seed {args.seed}")
    print(f"cpu cores {os.cpu_count()} (other busy processes distort CPU timings)")
    if args.quick:
        print(f"QUICK MODE: 3D image {size_3d}^3 instead of 96^3, {repeats} rounds; use the full mode for reported numbers")

    cases = [
        build_case("2d", dims=2, channels=3, n_classes=7, size=224, device=device, seed=args.seed),
        build_case("3d", dims=3, channels=1, n_classes=3, size=size_3d, device=device, seed=args.seed),
    ]
    results = {}
    with tqdm(total=len(cases) * (repeats + 1), desc="warm-up + rounds", file=sys.stderr) as progress:
        for case in cases:
            progress.set_postfix_str(case.name)
            results[case.name] = measure(case, repeats, progress)
    print_table(cases, results)

    summary = {f"{key}_{name}": value for name, r in results.items() for key, value in r.items()}
    summary.update(quick=args.quick, device=str(device), threads=args.threads, repeats=repeats, size_3d=size_3d, torch=torch.__version__)
    print("RESULT " + json.dumps(summary, sort_keys=True))
    return summary


if __name__ == "__main__":
    main()
