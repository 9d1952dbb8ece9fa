"""The ``segx`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .certainty import VARIANTS
from .explainers import METHODS


def _explain(args: argparse.Namespace) -> int:
    from .config import load_model_pair
    from .engine import explain
    from .export import save_volume

    pair, _ = load_model_pair(args.config)
    result = explain(
        pair,
        args.image,
        classes=args.classes,
        method=args.method,
        margin_mm=args.margin_mm,
        variants=sorted(VARIANTS),
        device=args.device,
    )
    summary = {
        "image": str(args.image),
        "predicted": result.predicted_label,
        "probabilities": {name: round(float(p), 6) for name, p in zip(result.class_names, result.probabilities)},
        "method": result.method,
        "segu": {**vars(result.segu), "level": result.level},
        "certainty": {
            result.class_names[c]: {v: round(cert.value, 6) for v, cert in per_variant.items()}
            for c, per_variant in result.certainty.items()
        },
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
    }
    if args.out:
        out = Path(args.out)
        files = [save_volume(out / "segmentation.nrrd", result.segmentation, result.affine, dtype="uint8")]
        for c in result.classes:
            name = result.class_names[c]
            files.append(save_volume(out / f"explanation_{name}.nrrd", result.map_of("explanation_normalised", c), result.affine))
            files.append(save_volume(out / f"segx_{name}.nrrd", result.map_of("segx", c), result.affine))
        summary["files"] = [str(f) for f in files]
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segx", description="SegX explanations and SegU certainty for MONAI models.")
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser("explain", help="explain one image with a model configuration")
    explain.add_argument("image", help="NIfTI, NRRD, MHA, PNG, JPEG or DICOM file")
    explain.add_argument("--config", required=True, help="model configuration file (YAML or JSON)")
    explain.add_argument("--classes", nargs="+", help="classes to explain (names or indices; default all)")
    explain.add_argument("--method", default="gradcam", choices=METHODS)
    explain.add_argument("--margin-mm", type=float, default=0.0, help="grow the clinical region by this margin")
    explain.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    explain.add_argument("--out", help="folder for float32 NRRD maps and the label map")
    explain.set_defaults(run=_explain)
    parser.epilog = f"SegU variants: {', '.join(sorted(VARIANTS))}"
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"segx: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
