"""Bundles as the model zoo ships them: the bundle's own checkpoint choice and switches
(Project-MONAI/model-zoo ``models/wholeBody_ct_segmentation/configs/inference.json``: a
top-level ``checkpointloader`` loads ``model.pt`` or ``model_lowres.pt`` by
``@displayable_configs#highres``; :func:`write_wholebody_layout` writes that layout, the
other tests a loader among the ``handlers`` as spleen_ct_segmentation has it), overrides as
``monai.bundle run --key value`` takes them, TorchScript-only bundles, label names from
``configs/metadata.json``, errors that name their root cause, and weight-loading options
(``strict: false``, ``key_map``) for checkpoints of another network.

Each segmentation is compared with ``monai.bundle run`` of the same bundle with the same
switches, on RAS and LPS storage of one CT phantom; a control loads the other checkpoint
and must disagree."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from bundle_networks import RampThreshold, zoo_inference

from segx import explain
from segx.config import ConfigError, MissingWeightsError, load_model_pair
from segx.demo.phantoms import SPACING_3D, phantom_3d

WINDOW, PIXDIM, ROI = (-57.0, 164.0), (2.0, 2.0, 2.0), (32, 32, 32)
CLASSIFIER_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_features": 8, "growth_rate": 8, "block_config": [2, 2]}
#: wholeBody_ct_segmentation's switch, in the zoo's expression style
SWITCHED_LOADER = {"_target_": "CheckpointLoader", "load_path": "$@ckpt_dir + '/model.pt' if @highres else @ckpt_dir + '/model_lowres.pt'",
                   "load_dict": {"model": "@network"}, "strict": True}  # fmt: skip
METADATA = {"version": "0.1.0", "name": "ramp", "network_data_format": {
    "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [96, 96, 96]}},
    "outputs": {"pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "soft tissue"}}}}}  # fmt: skip


def ramp(scale: float) -> RampThreshold:
    network = RampThreshold()
    with torch.no_grad():
        network.scale.fill_(scale)
    return network


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def write_zoo_bundle(folder: Path, checkpoints: dict, scripted: bool = False) -> Path:
    """A bundle in the zoo's layout: ``configs/inference.json`` with a ``highres`` switch
    choosing the checkpoint, ``configs/metadata.json``, and ``models/`` with
    ``checkpoints`` (file name -> network) saved as the zoo saves them."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    inference = zoo_inference({"_target_": "bundle_networks.RampThreshold"}, PIXDIM, WINDOW, ROI)
    inference.update(highres=False, ckpt_dir="$@bundle_root + '/models'", handlers=[SWITCHED_LOADER])
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA))
    for name, network in checkpoints.items():
        if scripted:
            torch.jit.trace(network, torch.rand(1, 1, *ROI)).save(str(folder / "models" / name))  # the sliding window's input
        else:
            torch.save(network.state_dict(), folder / "models" / name)
    return folder


def bundle_run(folder: Path, **overrides) -> dict:
    """``monai.bundle run`` of the bundle on every NIfTI of ``data/`` -> name -> labels."""
    from monai.bundle import run

    run(run_id="run", config_file=str(folder / "configs" / "inference.json"), meta_file=str(folder / "configs" / "metadata.json"),
        bundle_root=str(folder), **overrides)  # fmt: skip
    return {p.name.split("_seg")[0]: np.asarray(nib.load(p).dataobj) for p in (folder / "eval").glob("*_seg.nii.gz")}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A two-checkpoint bundle (high-resolution weights mark soft tissue, low-resolution
    weights its complement), CT phantoms stored RAS and LPS in ``data/``, and the reference
    labels of ``monai.bundle run`` with each switch setting."""
    from test_bundles import lps_storage

    folder = write_zoo_bundle(tmp_path_factory.mktemp("zoo") / "bundle", {"model.pt": ramp(20.0), "model_lowres.pt": ramp(-20.0)})
    (folder / "data").mkdir()
    phantom = phantom_3d(np.random.default_rng(8), label=1, marker=False)
    ras = np.diag([*SPACING_3D, 1.0])
    ras[:3, 3] = (-47.0, -40.0, -55.0)
    nib.save(nib.Nifti1Image(phantom.image, ras), str(folder / "data" / "ras.nii.gz"))
    nib.save(nib.Nifti1Image(*lps_storage(phantom.image, ras)), str(folder / "data" / "lps.nii.gz"))
    references = {"lowres": bundle_run(folder), "highres": bundle_run(folder, highres=True)}
    torch.manual_seed(0)
    from monai.networks.nets import DenseNet

    torch.save(DenseNet(**CLASSIFIER_ARGS).state_dict(), folder.parent / "classifier.pt")
    return folder, references


def pair_config(folder: Path, name: str, segmenter: dict) -> Path:
    """A SegX configuration beside the bundle: a small DenseNet classifier and ``segmenter``."""
    config = {
        "spatial_dims": 3,
        "classes": ["cyst", "tumour"],
        "classifier": {"network": "DenseNet", "args": CLASSIFIER_ARGS, "weights": "classifier.pt",
                       "input": {"channels": 1, "orientation": "RAS", "spacing": [3.0, 3.0, 3.0], "intensity": list(WINDOW), "spatial_size": [32, 32, 40], "resize": "pad_crop"}},  # fmt: skip
        "segmenter": segmenter,
    }
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def segment(config: Path, image: Path) -> tuple:
    pair = load_model_pair(config)
    return pair, explain(pair, image).segmentation.numpy()


@pytest.mark.parametrize("storage", ["ras", "lps"])
@pytest.mark.parametrize("switch", ["lowres", "highres"])
def test_the_bundles_own_checkpoint_choice_and_overrides_are_honoured(zoo, storage, switch):
    folder, references = zoo
    overrides = {"highres": True} if switch == "highres" else {}
    config = pair_config(folder.parent, f"{switch}.yaml", {"bundle": "bundle", **({"bundle_overrides": overrides} if overrides else {})})
    _, labels = segment(config, folder / "data" / f"{storage}.nii.gz")
    reference = references[switch][storage]
    assert 0.05 < reference.mean() < 0.95, "the reference must mark part of the volume"
    assert labels.shape == reference.shape and dice(labels == 1, reference == 1) >= 0.98
    other = references["highres" if switch == "lowres" else "lowres"][storage]
    assert dice(labels == 1, other == 1) < 0.5, "control: the other checkpoint's answer must differ"


def write_wholebody_layout(folder: Path) -> Path:
    """The switch and loader as Project-MONAI/model-zoo's
    ``models/wholeBody_ct_segmentation/configs/inference.json`` writes them: a
    ``displayable_configs#highres`` flag (default true) choosing ``pixdim`` and
    ``modelname``, a top-level ``checkpointloader`` component (not a handler) whose
    ``load_path`` is ``@bundle_root + '/models/' + @modelname``, applied by
    ``initialize: $@checkpointloader(@evaluator)``."""
    folder = write_zoo_bundle(folder, {"model.pt": ramp(20.0), "model_lowres.pt": ramp(-20.0)})
    inference = json.loads((folder / "configs" / "inference.json").read_text())
    inference.pop("highres"), inference.pop("ckpt_dir")
    inference["displayable_configs"] = {"highres": True, "sw_batch_size": 1}
    inference["modelname"] = "$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'"
    inference["pixdim"] = f"$[{PIXDIM[0]}] * 3 if @displayable_configs#highres else [{2 * PIXDIM[0]}] * 3"
    inference["preprocessing"]["transforms"][3]["pixdim"] = "@pixdim"  # Spacingd
    inference["handlers"] = [{"_target_": "StatsHandler", "iteration_log": False}]
    inference["checkpointloader"] = {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/' + @modelname",
                                     "load_dict": {"model": "@network"}}  # fmt: skip
    inference["initialize"] = ["$@checkpointloader(@evaluator)"]
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    return folder


@pytest.mark.parametrize("highres", [True, False])
def test_the_wholebody_layout_switch_chooses_weights_and_spacing(zoo, tmp_path, highres):
    """The real wholeBody layout, its switch overridden by id as `monai.bundle run
    --displayable_configs#highres false` takes it: segx equals the bundle's own run with
    the same override, and the other setting's run differs (other weights, other spacing)."""
    import shutil

    folder = write_wholebody_layout(tmp_path / "bundle")
    shutil.copytree(zoo[0] / "data", folder / "data")
    shutil.copy(zoo[0].parent / "classifier.pt", tmp_path)
    reference = bundle_run(folder, **{"displayable_configs#highres": highres})["lps"]
    other = bundle_run(folder, **{"displayable_configs#highres": not highres})["lps"]
    config = pair_config(tmp_path, "pair.yaml", {"bundle": "bundle", "bundle_overrides": {"displayable_configs#highres": highres}})
    _, labels = segment(config, folder / "data" / "lps.nii.gz")
    assert dice(labels == 1, reference == 1) >= 0.98
    assert dice(labels == 1, other == 1) < 0.5


def test_label_names_come_from_the_bundles_metadata(zoo):
    folder, _ = zoo
    pair, _ = segment(pair_config(folder.parent, "metadata.yaml", {"bundle": "bundle"}), folder / "data" / "ras.nii.gz")
    assert pair.segment_names == {1: "soft tissue"}
    wrong = pair_config(folder.parent, "wrong.yaml", {"bundle": "bundle", "labels": {3: "liver"}})
    with pytest.raises(ConfigError, match=r"values \[3\] are not outputs of the bundle.*soft tissue"):
        load_model_pair(wrong)


def test_a_missing_chosen_checkpoint_is_named_with_who_chose_it(zoo, tmp_path):
    only_highres = write_zoo_bundle(tmp_path / "bundle", {"model.pt": ramp(20.0)})
    (tmp_path / "classifier.pt").write_bytes((zoo[0].parent / "classifier.pt").read_bytes())
    with pytest.raises(MissingWeightsError, match=r"model_lowres\.pt") as refused:
        load_model_pair(pair_config(tmp_path, "pair.yaml", {"bundle": "bundle"}))
    assert "handlers#0" in str(refused.value)
    assert load_model_pair(pair_config(tmp_path, "high.yaml", {"bundle": "bundle", "bundle_overrides": {"highres": True}})) is not None
    with pytest.raises(ConfigError, match="no such key"):
        load_model_pair(pair_config(tmp_path, "typo.yaml", {"bundle": "bundle", "bundle_overrides": {"hires": True}}))
    assert only_highres.exists()


def test_a_torchscript_only_bundle_segments_as_its_weights_do(zoo, tmp_path):
    folder, references = zoo
    scripted = write_zoo_bundle(tmp_path / "bundle", {"model.ts": ramp(20.0)}, scripted=True)
    (tmp_path / "classifier.pt").write_bytes((folder.parent / "classifier.pt").read_bytes())
    _, labels = segment(pair_config(tmp_path, "pair.yaml", {"bundle": "bundle"}), folder / "data" / "lps.nii.gz")
    assert dice(labels == 1, references["highres"]["lps"] == 1) >= 0.98
    assert scripted.exists()


def test_a_network_def_error_names_its_root_cause_and_the_fix(zoo, tmp_path):
    folder, _ = zoo
    broken = write_zoo_bundle(tmp_path / "bundle", {"model_lowres.pt": ramp(-20.0)})
    inference = json.loads((broken / "configs" / "inference.json").read_text())
    inference["network_def"] = {"_target_": "SwinUNETR", "img_size": [32, 32, 32], "in_channels": 1, "out_channels": 2, "feature_size": 12}
    (broken / "configs" / "inference.json").write_text(json.dumps(inference))
    (tmp_path / "classifier.pt").write_bytes((folder.parent / "classifier.pt").read_bytes())
    with pytest.raises(ConfigError) as refused:
        load_model_pair(pair_config(tmp_path, "pair.yaml", {"bundle": "bundle"}))
    message = str(refused.value)
    assert "unexpected keyword argument 'img_size'" in message and "MONAI 1.5 removed" in message


def test_weights_of_another_network_load_with_strict_false_and_a_key_map(tmp_path):
    """A SwinUNETR checkpoint (as saved by DataParallel: ``module.`` prefixes) into
    segx.networks.SwinClassifier: refused as is, loaded with ``key_map`` + ``strict: false``
    (the encoder's weights equal the checkpoint's; the head is reported as not loaded)."""
    from monai.networks.nets import SwinUNETR
    from segx.networks import SwinClassifier

    swin_args = {"in_channels": 1, "spatial_dims": 3, "feature_size": 12, "num_heads": [1, 2, 3, 6], "window_size": 4}
    torch.manual_seed(3)
    unetr = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=3, num_heads=(1, 2, 3, 6), window_size=4)
    torch.save({"module." + k: v for k, v in unetr.state_dict().items()}, tmp_path / "swinunetr.pt")
    torch.jit.trace(ramp(20.0), torch.rand(1, 1, *ROI)).save(str(tmp_path / "seg.ts"))
    base = {"spatial_dims": 3, "classes": ["a", "b"], "segmenter": {"torchscript": "seg.ts", "input": {"channels": 1}}}

    def config(name, **options):
        classifier = {"network": "segx.networks.SwinClassifier", "args": {**swin_args, "num_classes": 2}, "weights": "swinunetr.pt",
                      "input": {"channels": 1, "spatial_size": [64, 64, 64]}, **options}  # fmt: skip
        (tmp_path / name).write_text(yaml.safe_dump({**base, "classifier": classifier}))
        return tmp_path / name

    with pytest.raises(ConfigError, match="strict: false loads what fits"):
        load_model_pair(config("strict.yaml"))
    with pytest.raises(ConfigError, match="no weight of swinunetr.pt fits"):
        load_model_pair(config("no_map.yaml", strict=False))
    pair = load_model_pair(config("mapped.yaml", strict=False, key_map={"module.": ""}))
    loaded = pair.classifier.state_dict()
    name = next(k for k in loaded if k.startswith("swinViT.") and k.endswith("weight"))
    assert torch.equal(loaded[name], unetr.state_dict()[name])
    assert isinstance(SwinClassifier, type)


def test_a_served_zoo_bundle_answers_with_the_labels_of_the_cli(zoo, tmp_path):
    """The switched bundle with ``bundle_overrides`` behind ``monailabel start_server``:
    the official client's segmentation equals what ``explain`` gives in this process and
    what ``monai.bundle run --highres true`` gives."""
    import shutil

    import SimpleITK as sitk
    from monailabel.client import MONAILabelClient
    from segx.demo import running_server

    folder, references = zoo
    models = tmp_path / "models"
    shutil.copytree(folder, models / "bundle", ignore=shutil.ignore_patterns("eval", "data"))
    shutil.copy(folder.parent / "classifier.pt", models)
    config = pair_config(models, "served.yaml", {"bundle": "bundle", "bundle_overrides": {"highres": True}})
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(folder / "data" / "ras.nii.gz", studies / "ct.nii.gz")
    _, expected = segment(config, studies / "ct.nii.gz")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent)}  # the bundle's network class lives in tests/bundle_networks.py
    with running_server(studies, "served", tmp_path / "server.log", models_dir=models, env=env) as server:
        result_file, _ = MONAILabelClient(server.url, tmpdir=str(tmp_path)).infer("served_segmentation", "ct", {})
    served = sitk.GetArrayFromImage(sitk.ReadImage(result_file)).transpose()
    assert served.shape == expected.shape
    assert dice(served == 1, expected == 1) >= 0.99
    assert dice(served == 1, references["highres"]["ras"] == 1) >= 0.98


def test_the_command_line_overrides_a_bundle_switch(zoo, tmp_path):
    import SimpleITK as sitk
    from segx.cli import main

    folder, references = zoo
    config = pair_config(folder.parent, "cli.yaml", {"bundle": "bundle"})
    image = folder / "data" / "lps.nii.gz"
    assert main(["explain", str(image), "--config", str(config), "--out", str(tmp_path / "high"), "--bundle-override", "segmenter:highres=true"]) == 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "high" / "segmentation.nrrd"))).transpose()
    assert dice(labels == 1, references["highres"]["lps"] == 1) >= 0.98
    assert dice(labels == 1, references["lowres"]["lps"] == 1) < 0.5
    with pytest.raises(SystemExit, match="segmenter:KEY=VALUE"):
        main(["explain", str(image), "--config", str(config), "--bundle-override", "highres=true"])
