"""The ``segx`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .certainty import VARIANTS
from .explainers import METHODS
from .formats.export import LAYERS
from .training import RECIPES


def _bundle_overrides(given: list[str] | None) -> dict[str, dict]:
    """``["segmenter:highres=true", ...]`` -> ``{"segmenter": {"highres": True}}`` (values
    read as YAML, as ``monai.bundle run --key value`` reads them)."""
    import yaml

    overrides: dict[str, dict] = {}
    for item in given or []:
        field, _, assignment = item.partition(":")
        key, equals, value = assignment.partition("=")
        if field not in ("classifier", "segmenter") or not key or not equals:
            raise SystemExit(f"--bundle-override {item!r}: write classifier:KEY=VALUE or segmenter:KEY=VALUE (KEY as monai.bundle run takes it)")
        overrides.setdefault(field, {})[key] = yaml.safe_load(value)
    return overrides


def _explain(args: argparse.Namespace) -> int:
    from .config import load_model_pair, model_config_file
    from .engine import explain
    from .formats.dicom import Provenance
    from .formats.export import result_summary, write_dicom, write_layers

    config_file = model_config_file(args.config)
    pair = load_model_pair(config_file, bundle_overrides=_bundle_overrides(args.bundle_override))
    image, series = _image_or_series(Path(args.image), args.dicom_out)
    result = explain(
        pair,
        image,
        classes=args.classes,
        method=args.method,
        margin_mm=args.margin_mm,
        variants=args.variants,
        device=args.device,
    )
    summary = {"image": str(args.image), **result_summary(result)}
    if args.out:
        written = [pair.class_index(c) for c in args.classes] if args.classes else [result.predicted]
        summary["files"] = [str(f) for f in write_layers(result, args.out, args.layers, written)]
    if args.dicom_out:
        summary["dicom_files"] = [str(f) for f in write_dicom(result, series, Provenance.of_config(config_file), pair.certainty_variant, args.dicom_out)]
    print(json.dumps(summary, indent=2))
    return 0


def _image_or_series(path: Path, dicom_out: str | None):
    """(image to explain, its :class:`~segx.formats.dicom.Series` or None): a folder is read as one
    DICOM series (checked, see :func:`segx.formats.dicom.read_series`) and explained as a volume."""
    if not path.is_dir():
        if dicom_out:
            raise ValueError("--dicom-out needs a DICOM series folder as the image (the objects reference its instances)")
        return path, None
    from .formats.dicom import read_series

    series = read_series(path)
    return series.image(), series


def _to_dicom(args: argparse.Namespace) -> int:
    from .formats.dicom import write_series
    from .imageio import read_image

    image = read_image(args.image)
    if image.array.dim() != 4 or image.array.shape[0] != 1:
        raise ValueError(f"{args.image}: a DICOM series holds one greyscale volume; this image is {tuple(image.array.shape)} (C, ...)")
    files = write_series(image.array[0].numpy(), image.affine, args.out, args.modality, args.patient_id, series_description=args.description)
    print(f"wrote {len(files)} {args.modality} slices to {args.out}")
    return 0


def _pacs(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from .formats.dicom import write_series
    from .imageio import read_image
    from .formats.pacs import local_orthanc, orthanc_problem

    if orthanc_problem():
        raise ValueError(orthanc_problem())
    folder = Path(args.folder)
    with local_orthanc(folder, port=args.port) as pacs:
        for number, file in enumerate(args.load, 1):
            image = read_image(file)
            with tempfile.TemporaryDirectory() as series:
                name = Path(file).name.split(".")[0]
                files = write_series(image.array[0].numpy(), image.affine, series, patient_id=f"SEGX-{number:03d}", series_description=name)
                pacs.upload(files)
            print(f"stored {file} as a CT series of {len(files)} slices")
        print(f"local PACS (Orthanc) at {pacs.url}, DICOMweb at {pacs.dicomweb}; storage in {folder}. Ctrl-C stops it.")
        print(f"serve it: monailabel start_server --app monailabel_app --studies {pacs.dicomweb} --conf models demo3d --host 127.0.0.1")
        while pacs.process.poll() is None:
            time.sleep(1)
    return 0


def _viewer(args: argparse.Namespace) -> int:
    from .formats.viewer import ViewerServer

    server = ViewerServer(args.pacs, args.build, port=args.port)
    studies = [args.study] if args.study else _study_uids(args.pacs)
    print(f"OHIF on {args.pacs} at {server.url} (loopback only; Ctrl-C stops it)")
    for study in studies:
        print(f"open: {server.study_url(study)}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()
    return 0


def _study_uids(dicomweb: str) -> list[str]:
    """The StudyInstanceUIDs a DICOMweb root lists (QIDO-RS), none when it does not answer."""
    import requests

    try:
        response = requests.get(f"{dicomweb.rstrip('/')}/studies", timeout=10)
        return [study["0020000D"]["Value"][0] for study in (response.json() if response.ok and response.content else [])]
    except (requests.RequestException, ValueError, KeyError):
        return []  # the viewer's own study list shows them once the PACS answers


def _phantoms(args: argparse.Namespace) -> int:
    from .demo.phantoms import generate

    out = generate(args.out, args.dim, args.count, args.seed, args.split)
    print(f"wrote {args.count} {args.dim}D {args.split} phantoms to {out} (labels.csv, images/, masks/)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .training import train

    log = train(args.recipe, args.data, args.out, args.limit)
    print(json.dumps({k: v for k, v in log.items() if not k.endswith("losses")}, indent=2))
    return 0


def _al_simulate(args: argparse.Namespace) -> int:
    from .demo.sessions import simulate, write_analysis

    if args.reanalyse:
        analysis = write_analysis(args.out, args.resamples)
    elif not (args.data and args.setup):
        raise ValueError("al-simulate needs --data and --setup (or --reanalyse with the --out of an earlier run)")
    else:
        analysis = simulate(args.data, args.setup, args.out, args.seeds, tuple(args.strategies), args.resamples)
    print(Path(args.out) / "report.md")
    print("AL " + json.dumps({"labels_to_target": analysis["labels_to_target"], "saving_vs_random": analysis["saving_vs_random"], "seconds": analysis["seconds"]}))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.out, args.n2d, args.n3d, args.seed)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import main as evaluate_main

    return evaluate_main(args.model, args.data, args.out, args.methods, args.device, args.split, args.limit, args.mc_samples, args.seed,
                         not args.no_evidence, args.ray, args.target_layer, **_layout(args))  # fmt: skip


def _explain_batch(args: argparse.Namespace) -> int:
    from .evaluation.batch import main as batch_main

    return batch_main(args.config, args.inputs, args.out, args.method, args.layers, args.format, args.device, args.ray)


def _calibrate(args: argparse.Namespace) -> int:
    from .evaluation.calibrate import calibrate
    from .config import model_config_file
    from .evaluation.datasets import Layout

    summary = calibrate(model_config_file(args.model), args.data, Layout(**_layout(args)), args.split, args.limit, args.device, args.variant, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


def _shortcut(args: argparse.Namespace) -> int:
    from .training.shortcut import main as shortcut_main

    return shortcut_main(args.model, args.data, args.out, args.recipe, args.shortcut_class, args.epochs, args.learning_rate, args.train_rate,
                         args.test_rate, args.mc_samples, args.limit, args.seed, args.device, **_layout(args))  # fmt: skip


def _layout(args: argparse.Namespace) -> dict:
    return {"labels_csv": args.labels_csv, "image_column": args.image_column, "label_column": args.label_column, "mask_dir": args.mask_dir}


def _add_dataset_arguments(parser: argparse.ArgumentParser, split: str | None) -> None:
    """Options naming a model configuration and a labelled dataset folder (segx.evaluation.datasets)."""
    parser.add_argument("--model", required=True, help="model configuration name (model_configs/) or file")
    parser.add_argument("--data", required=True, help="folder with images/, a mask folder and a labels CSV")
    parser.add_argument("--labels-csv", default="labels.csv", help="CSV file name inside --data")
    parser.add_argument("--image-column", default="image_id")
    parser.add_argument("--label-column", default="label", help="class names or indices")
    parser.add_argument("--mask-dir", default="masks", help="mask folder inside --data")
    parser.add_argument("--split", default=split, help=f"only rows whose split column has this value (default {split})")
    parser.add_argument("--limit", type=int, help="this many studies, drawn at random per class in proportion (stratified)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit draw")
    parser.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segx", description="SegX explanations and SegU certainty for MONAI models.")
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser("explain", help="explain one image with a model configuration")
    explain.add_argument("image", help="NIfTI, NRRD, MHA, PNG, JPEG or DICOM file, or a folder holding one DICOM series")
    explain.add_argument("--config", "--model", dest="config", required=True, help="model configuration file (YAML or JSON) or built-in model name")
    explain.add_argument("--classes", nargs="+", help="classes whose maps are written (names or indices; default the predicted class)")
    explain.add_argument("--method", default="gradcam", choices=METHODS)
    explain.add_argument("--margin-mm", type=float, default=0.0, help="grow the clinical region by this margin")
    explain.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    explain.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), help="SegU variants for every explained class (default: the model's own, for the predicted class)")
    explain.add_argument("--out", help="folder for the layers, gzip NRRD (float32 maps per class, uint8 label map)")
    explain.add_argument("--bundle-override", action="append", metavar="PART:KEY=VALUE",
                         help="override a key of the classifier's or segmenter's bundle, as monai.bundle run --KEY VALUE (e.g. segmenter:displayable_configs#highres=false); repeatable")  # fmt: skip
    explain.add_argument("--layers", nargs="+", choices=list(LAYERS), default=["segx", "segmentation"], help="layers written to --out (default: segx segmentation)")
    explain.add_argument("--dicom-out", help="folder for DICOM SEG, Parametric Maps and SR of the predicted class (the image must be a DICOM series folder)")
    explain.set_defaults(run=_explain)

    to_dicom = commands.add_parser("to-dicom", help="write a volume (NIfTI, NRRD, MHA) as a CT or MR DICOM series")
    to_dicom.add_argument("image")
    to_dicom.add_argument("out", help="folder for the slices")
    to_dicom.add_argument("--modality", choices=("CT", "MR"), default="CT")
    to_dicom.add_argument("--patient-id", default="SEGX-DEMO")
    to_dicom.add_argument("--description", default="", help="SeriesDescription")
    to_dicom.set_defaults(run=_to_dicom)

    pacs = commands.add_parser("pacs", help="run a local PACS (Orthanc + DICOMweb, loopback only) holding the given volumes as CT series")
    pacs.add_argument("--load", nargs="*", default=[], help="volumes (NIfTI, NRRD, MHA) stored as CT series")
    pacs.add_argument("--folder", default="pacs_storage", help="Orthanc's storage and configuration (kept between runs)")
    pacs.add_argument("--port", type=int, default=8042)
    pacs.set_defaults(run=_pacs)

    viewer = commands.add_parser("viewer", help="serve the OHIF web viewer (pinned build from the npm registry) on a PACS's DICOMweb, on loopback")
    viewer.add_argument("--pacs", default="http://127.0.0.1:8042/dicom-web", help="the PACS's DICOMweb root (default: make pacs's)")
    viewer.add_argument("--port", type=int, default=3000)
    viewer.add_argument("--build", choices=["ohif", "monailabel"], default="ohif",
                        help="ohif: the pinned OHIF release from the npm registry (default); monailabel: the OHIF build inside the monailabel package")  # fmt: skip
    viewer.add_argument("--study", help="a StudyInstanceUID whose viewer URL is printed (default: every study of the PACS)")
    viewer.set_defaults(run=_viewer)

    phantoms = commands.add_parser("phantoms", help="generate phantom studies with a spurious marker")
    phantoms.add_argument("out", help="output folder (images/, masks/, labels.csv)")
    phantoms.add_argument("--dim", type=int, choices=(2, 3), required=True)
    phantoms.add_argument("--count", type=int, required=True)
    phantoms.add_argument("--seed", type=int, default=0)
    phantoms.add_argument("--split", default="test", choices=("train", "val", "test"))
    phantoms.set_defaults(run=_phantoms)

    train = commands.add_parser("train", help="train a model pair recipe on a dataset folder")
    train.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    train.add_argument("--data", required=True, help="dataset folder of the recipe (images, masks, labels CSV with a split column)")
    train.add_argument("--limit", type=int, help="at most this many studies per split (a quick try)")
    train.add_argument("--out", required=True, help="folder for NAME.yaml and weights/")
    train.set_defaults(run=_train)

    demo = commands.add_parser("demo", help="end-to-end demo over a real MONAI Label server")
    demo.add_argument("--out", default="demo_output")
    demo.add_argument("--n2d", type=int, default=40, help="2D test studies")
    demo.add_argument("--n3d", type=int, default=4, help="3D test studies")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=_demo)
    evaluate = commands.add_parser("evaluate", help="accuracy, Dice, raw vs SegX and SegU figures on a labelled dataset")
    _add_dataset_arguments(evaluate, None)
    evaluate.add_argument("--methods", nargs="+", default=["gradcam", "gradcam++", "layercam"], choices=METHODS, help="explanation methods compared raw vs SegX; the first one's maps give every SegU variant, each further one its SegU in the default variant")
    evaluate.add_argument("--mc-samples", type=int, default=10, help="forward passes of the MC dropout baseline (0: no MC dropout and no TTA baseline)")
    evaluate.add_argument("--no-evidence", action="store_true", help="skip the region-only controls, ROAD and the randomisation check (faster)")
    evaluate.add_argument("--ray", metavar="auto|ADDRESS", help="run the studies on a Ray cluster (auto: the running one, or a new local one); rows are identical")
    evaluate.add_argument("--target-layer", help="CAM target layer (dotted module name) instead of the configuration's, e.g. an earlier stage for finer maps")
    evaluate.add_argument("--out", required=True, help="output folder; rows.jsonl there makes an interrupted run resume")
    evaluate.set_defaults(run=_evaluate)

    batch = commands.add_parser("explain-batch", help="explain every study of a worklist (files, folders, DICOM series): maps + JSON per study, resumable")
    batch.add_argument("inputs", nargs="+", help="image files, folders of images and DICOM series, or DICOM series folders")
    batch.add_argument("--config", "--model", dest="config", required=True, help="model configuration file (YAML or JSON) or built-in model name")
    batch.add_argument("--out", required=True, help="output folder: one folder per study, results.jsonl (an interrupted run resumes), worklist.csv")
    batch.add_argument("--method", default="gradcam", choices=METHODS)
    batch.add_argument("--layers", nargs="+", choices=list(LAYERS), default=["segx", "segmentation"], help="layers of the predicted class written per study")
    batch.add_argument("--format", default="nrrd", choices=("nrrd", "nifti", "dicom"), help="layer files: gzip NRRD, NIfTI, or DICOM SEG + Parametric Maps + SR (DICOM series inputs only)")
    batch.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (in-process runs)")
    batch.add_argument("--ray", metavar="auto|ADDRESS", help="run on a Ray cluster (auto: the running one, or a new local one); --out must be on a file system every node shares")
    batch.set_defaults(run=_explain_batch)

    shortcut = commands.add_parser("shortcut", help="shortcut benchmark: a coloured patch beside one class's lesions in train/val, anywhere in test; "
                                   "fine-tune, calibrate, evaluate, compare certainty scores")  # fmt: skip
    _add_dataset_arguments(shortcut, None)
    shortcut.add_argument("--recipe", required=True, choices=sorted(RECIPES), help="training settings for the fine-tuning (loss weighting, flips, batch size)")
    shortcut.add_argument("--shortcut-class", required=True, help="the class whose train/val pictures get the patch")
    shortcut.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (best on patched val kept)")
    shortcut.add_argument("--learning-rate", type=float, default=5e-4)
    shortcut.add_argument("--train-rate", type=float, default=0.5, help="share of the shortcut class's train/val pictures patched")
    shortcut.add_argument("--test-rate", type=float, default=0.5, help="share of all test pictures patched")
    shortcut.add_argument("--mc-samples", type=int, default=10, help="forward passes of the MC dropout baseline")
    shortcut.add_argument("--out", required=True, help="output folder: data/ (patched pictures), weights, evaluation/, shortcut.md")
    shortcut.set_defaults(run=_shortcut)

    from .demo.sessions import SETUPS, STRATEGIES

    sessions = commands.add_parser("al-simulate", help="replay annotation sessions per active learning strategy through the live server "
                                   "(official MONAILabelClient): learning curves, labels to 95%% of the full-data figure, savings vs random")  # fmt: skip
    sessions.add_argument("--data", help="a data set folder (images/, masks/, a CSV with a split column; see segx train)")
    sessions.add_argument("--setup", choices=sorted(SETUPS), help="the recipe and the reduced scale (image size, pool, rounds, epochs)")
    sessions.add_argument("--reanalyse", action="store_true", help="analyse the runs.json of --out again (no replay)")
    sessions.add_argument("--seeds", type=int, default=3)
    sessions.add_argument("--strategies", nargs="+", default=list(STRATEGIES), help="server strategy names")
    sessions.add_argument("--resamples", type=int, default=400, help="bootstrap draws (seeds and test images)")
    sessions.add_argument("--out", required=True, help="output folder: data/, runs/, runs.json, analysis.json, learning_curves.png, report.md")
    sessions.set_defaults(run=_al_simulate)

    calibrate = commands.add_parser("calibrate", help="choose the default SegU variant and its levels on a validation split")
    _add_dataset_arguments(calibrate, "val")
    calibrate.add_argument("--variant", choices=sorted(VARIANTS), help="keep this SegU variant (default: the best on the split)")
    calibrate.set_defaults(run=_calibrate)
    parser.epilog = f"SegU variants: {', '.join(sorted(VARIANTS))}"
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"segx: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segx: interrupted (any server it started has been stopped)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
