"""A research group's 3D bundle at clinical size: ``segx explain`` vs the bundle's own inference.

The CT is ``../shared/data/ct3d/example_ct.nii.gz`` resampled to 0.8 x 0.8 x 1.5 mm
(458 x 379 x 224 voxels; a phantom of that size when the data are absent). The segmenter is
a MONAI bundle written as the model zoo's CT bundles are (Orientationd RAS, Spacingd
1.5 x 1.5 x 2, ScaleIntensityRanged -57..164, SlidingWindowInferer 96^3, Activationsd,
Invertd, AsDiscreted, SaveImaged; a MONAI UNet of the spleen bundle's size with seeded
weights: speed and agreement do not depend on training). The classifier is a 3D ResNet-18
on the CT at 3 mm.

- reference: ``monai.bundle.run`` of the bundle (load, preprocess, sliding window,
  postprocess, write the label map) plus the classifier's forward on its own MONAI
  preprocessing, in one process;
- segx: ``segx explain CT --config pair.yaml --out DIR`` (both networks, Grad-CAM,
  SegX, the default SegU variant, the default layers written as gzip NRRD).

Each side runs in a fresh process (rounds interleaved); the ratios are of medians of wall
time and of peak resident memory (``ru_maxrss``, which includes ~0.5 GB of Python + torch).

    .venv/bin/python benchmarks/clinical_volume.py [--quick] [--threads 2]

A second bundle has many labels (``--many-labels``, default 105, as wholeBody_ct_segmentation):
the same UNet with 105 output channels, post-processed as that bundle does (softmax,
argmax, then ``Invertd`` of the label map with nearest interpolation).

The 2-label bundle's network is ``bundle_networks.RampUNet``: the spleen-sized UNet runs
(its cost is measured) but the labels are a known function of intensity and position
(soft tissue in the upper half of the first axis, a minority on one side), so
``dice_vs_bundle`` can see a geometry error: ``dice_flipped_control`` is the Dice of segx's
labels flipped left-right and front-back, ``labelled_share`` the bundle's foreground share.

Last line: ``RESULT {json}`` with ``time_ratio``, ``rss_ratio``, ``dice_vs_bundle``,
``dice_flipped_control``, ``labelled_share`` and, for
the many-label bundle, ``time_ratio_many_labels``, ``rss_ratio_many_labels``,
``dice_vs_bundle_many_labels``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import add_timing_arguments, checked_repeats, cpu_name

ROOT = Path(__file__).resolve().parents[1]
SOURCE_CT = ROOT.parent / "shared" / "data" / "ct3d" / "example_ct.nii.gz"
CLINICAL_SPACING = (0.8, 0.8, 1.5)
WINDOW = (-57.0, 164.0)
UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"}
RESNET = {"spatial_dims": 3, "n_input_channels": 1, "num_classes": 2}
CLASSIFIER_INPUT = {"channels": 1, "orientation": "RAS", "spacing": [3.0, 3.0, 3.0], "intensity": list(WINDOW), "spatial_size": [128, 112, 112]}


def prepare(folder: Path, seed: int, labels: int = 2) -> None:
    """The clinical CT in ``bundle/data/ct.nii.gz``, the bundle (a UNet with ``labels``
    output channels; beyond 2, post-processed as wholeBody_ct_segmentation: argmax before
    ``Invertd``), the classifier weights and ``pair.yaml``."""
    import nibabel as nib
    import torch
    import yaml
    from monai.networks.nets import UNet, resnet18
    from monai.transforms import Spacing

    bundle = folder / "bundle"
    for sub in ("configs", "models", "data"):
        (bundle / sub).mkdir(parents=True)
    if SOURCE_CT.exists():
        source = nib.load(SOURCE_CT)
        volume, affine = np.asarray(source.dataobj, dtype=np.float32), source.affine
    else:  # no shared data: a phantom body at 3 mm of the same extent
        from segx.demo.phantoms import phantom_3d

        volume, affine = phantom_3d(np.random.default_rng(seed), 1, False).image, np.diag([3.0, 3.0, 3.0, 1.0])
    from monai.data import MetaTensor

    resampled = Spacing(pixdim=CLINICAL_SPACING, mode="bilinear")(MetaTensor(volume[None], affine=torch.as_tensor(affine)))
    nib.save(nib.Nifti1Image(resampled[0].numpy().astype(np.int16), resampled.affine.numpy()), str(bundle / "data" / "ct.nii.gz"))
    from bundle_networks import zoo_inference  # the model zoo's CT bundle layout, shared with tests/test_bundles.py

    unet = {**UNET, "out_channels": labels}
    # two labels: a UNet's cost with a known, one-sided answer (bundle_networks.RampUNet), so Dice can see a flip
    network_def = {"_target_": "bundle_networks.RampUNet", **unet} if labels == 2 else {"_target_": "UNet", **unet}
    inference = zoo_inference(network_def, [1.5, 1.5, 2.0], WINDOW, [96, 96, 96])
    if labels > 2:  # wholeBody's order: the label map, not 105 probability maps, is inverted
        softmax, invert, argmax, save = inference["postprocessing"]["transforms"]
        inference["postprocessing"]["transforms"] = [softmax, argmax, {**invert, "nearest_interp": True}, save]
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "name": "clinical_unet"}))
    torch.manual_seed(seed)
    from bundle_networks import RampUNet

    torch.save((RampUNet(**unet) if labels == 2 else UNet(**unet)).state_dict(), bundle / "models" / "model.pt")
    torch.save(resnet18(**RESNET).state_dict(), folder / "classifier.pt")
    pair = {
        "spatial_dims": 3,
        "classes": ["normal", "lesion"],
        "classifier": {"network": "resnet18", "args": RESNET, "weights": "classifier.pt", "input": CLASSIFIER_INPUT},
        "segmenter": {"bundle": "bundle", "labels": {1: "organ"}},
    }
    (folder / "pair.yaml").write_text(yaml.safe_dump(pair))


def run_reference(folder: Path) -> None:
    """The bundle's own inference + the classifier's forward (one process)."""
    import torch
    from monai.bundle import run
    from monai.networks.nets import resnet18

    from segx.preprocessing import Preprocessing
    from segx.imageio import read_image

    bundle = folder / "bundle"
    run(run_id="run", config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"), bundle_root=str(bundle))
    classifier = resnet18(**RESNET)
    classifier.load_state_dict(torch.load(folder / "classifier.pt", weights_only=True))
    image = read_image(bundle / "data" / "ct.nii.gz")
    with torch.no_grad():
        classifier.eval()(Preprocessing(**CLASSIFIER_INPUT)(image.array, image.affine)).softmax(1)


def run_segx(folder: Path) -> None:
    from segx.cli import main

    (folder / "segx_out").mkdir(exist_ok=True)
    with open(folder / "segx_summary.json", "w") as stream:
        sys.stdout, saved = stream, sys.stdout
        try:
            code = main(["explain", str(folder / "bundle" / "data" / "ct.nii.gz"), "--config", str(folder / "pair.yaml"), "--out", str(folder / "segx_out")])
        finally:
            sys.stdout = saved
    if code != 0:
        raise SystemExit(code)


def measured(role: str, folder: Path, threads: int) -> dict:
    """Run one side in a fresh process: ``{"seconds", "peak_rss_mb"}``."""
    output = subprocess.run(
        [sys.executable, __file__, "--role", role, "--folder", str(folder), "--threads", str(threads)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    ).stdout  # fmt: skip
    return json.loads(output.strip().splitlines()[-1])


def dice_vs_bundle(folder: Path) -> tuple[float, float, float]:
    """``(Dice of label 1 between segx and the bundle, the same with segx's labels flipped
    along the first two axes (a control that must score far lower), the share of the
    volume the bundle labels 1)``."""
    import nibabel as nib
    import SimpleITK as sitk

    reference = np.asarray(nib.load(folder / "bundle" / "eval" / "ct_seg.nii.gz").dataobj) == 1
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "segx_out" / "segmentation.nrrd"))).transpose() == 1

    def dice(a, b):
        return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))

    return dice(reference, ours), dice(reference, ours[::-1, ::-1]), float(reference.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_arguments(parser, "torch threads of each side", "3 rounds instead of 7")
    parser.add_argument("--role", choices=("reference", "segx"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--many-labels", type=int, default=105, help="output channels of the many-label bundle")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "monailabel_app"), str(ROOT / "tests")]
    import torch

    torch.set_num_threads(args.threads)
    if args.role:
        start = time.perf_counter()
        (run_reference if args.role == "reference" else run_segx)(Path(args.folder))
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    repeats = checked_repeats(parser, args)
    result = {"benchmark": "clinical_volume", "cpu": cpu_name(), "threads": args.threads, "repeats": repeats}
    for labels, suffix in ((2, ""), (args.many_labels, "_many_labels")):
        with tempfile.TemporaryDirectory() as tmp:
            result.update({f"{key}{suffix}": value for key, value in compare(Path(tmp), args, repeats, labels).items()})
    print("RESULT " + json.dumps(result))


def compare(folder: Path, args, repeats: int, labels: int) -> dict:
    """The bundle's own run and segx's, interleaved in fresh processes: medians and ratios."""
    import nibabel as nib

    prepare(folder, args.seed, labels)
    shape = nib.load(folder / "bundle" / "data" / "ct.nii.gz").shape
    rounds = {"reference": [], "segx": []}
    for round_index in range(repeats):
        for role in ("reference", "segx") if round_index % 2 == 0 else ("segx", "reference"):
            rounds[role].append(measured(role, folder, args.threads))
            print(f"{labels} labels, round {round_index + 1}/{repeats} {role}: {rounds[role][-1]}", file=sys.stderr)
    dice, flipped, share = dice_vs_bundle(folder)
    summary = json.loads((folder / "segx_summary.json").read_text())
    medians = {role: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "peak_rss_mb")} for role, runs in rounds.items()}
    return {
        "labels": labels,
        "shape": list(shape),
        "source": SOURCE_CT.name if SOURCE_CT.exists() else "phantom",
        "reference_seconds": round(medians["reference"]["seconds"], 2),
        "segx_seconds": round(medians["segx"]["seconds"], 2),
        "reference_peak_rss_mb": round(medians["reference"]["peak_rss_mb"]),
        "segx_peak_rss_mb": round(medians["segx"]["peak_rss_mb"]),
        "time_ratio": round(medians["segx"]["seconds"] / medians["reference"]["seconds"], 3),
        "rss_ratio": round(medians["segx"]["peak_rss_mb"] / medians["reference"]["peak_rss_mb"], 3),
        "dice_vs_bundle": round(dice, 4),
        "dice_flipped_control": round(flipped, 4),
        "labelled_share": round(share, 4),
        "segx_timings_s": summary["timings_s"],
    }


if __name__ == "__main__":
    main()
