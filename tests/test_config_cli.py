"""Model configuration files (network + state_dict, TorchScript, MONAI bundle) and the
``segx explain`` command, including output geometry."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from monai.networks.nets import UNet, resnet10
from PIL import Image as PILImage

from segx.certainty import VARIANTS
from segx.cli import main
from segx.config import ConfigError, MissingWeightsError, load_model_pair

CLASSIFIER_ARGS = {"spatial_dims": 3, "n_input_channels": 1, "num_classes": 2}
SEGMENTER_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2]}


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    torch.save(resnet10(**CLASSIFIER_ARGS).state_dict(), tmp_path / "classifier.pt")
    torch.save(UNet(**SEGMENTER_ARGS).state_dict(), tmp_path / "segmenter.pt")
    config = {
        "name": "organ3d",
        "spatial_dims": 3,
        "classes": ["healthy", "tumour"],
        "classifier": {
            "network": "resnet10",
            "args": CLASSIFIER_ARGS,
            "weights": "classifier.pt",
            "input": {"channels": 1, "spatial_size": [32, 32, 32], "intensity": "minmax"},
        },
        "segmenter": {
            "network": "UNet",
            "args": SEGMENTER_ARGS,
            "weights": "segmenter.pt",
            "labels": {1: "liver", 2: "spleen"},
            "input": {"channels": 1, "intensity": "minmax"},
        },
        "region_labels": {"tumour": [1]},
    }
    (tmp_path / "organ3d.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def edit_config(model_dir, change):
    path = model_dir / "organ3d.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))
    return path


def test_network_with_state_dict(model_dir):
    pair = load_model_pair(model_dir / "organ3d.yaml")
    assert pair.config["classes"] == ["healthy", "tumour"]  # the parsed file travels with the pair
    assert pair.class_names == ["healthy", "tumour"] and pair.spatial_dims == 3
    assert pair.segment_names == {1: "liver", 2: "spleen"}
    assert pair.region_of(1) == [1] and pair.region_of(0) == [1, 2]
    expected = torch.load(model_dir / "classifier.pt", weights_only=True)
    for name, value in pair.classifier.state_dict().items():
        assert torch.equal(value, expected[name])


def test_torchscript_and_bundle(model_dir):
    torch.manual_seed(1)
    segmenter = UNet(**SEGMENTER_ARGS).eval()
    torch.jit.script(segmenter).save(str(model_dir / "segmenter.ts"))
    bundle = model_dir / "classifier_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(
        json.dumps({"network_def": {"_target_": "monai.networks.nets.resnet10", **CLASSIFIER_ARGS}})
    )
    classifier = resnet10(**CLASSIFIER_ARGS)
    torch.save(classifier.state_dict(), bundle / "models" / "model.pt")

    def use_both(config):
        config["classifier"] = {"bundle": "classifier_bundle", "input": config["classifier"]["input"]}
        config["segmenter"] = {"torchscript": "segmenter.ts", "labels": {1: "liver", 2: "spleen"}}

    pair = load_model_pair(edit_config(model_dir, use_both))
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pair.segmenter(x), segmenter(x))
        torch.testing.assert_close(pair.classifier(x), classifier.eval()(x))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["classifier"].update(weights="nowhere.pt"), "classifier.weights: weight file not found"),
        (lambda c: c["classifier"].update(network="NoSuchNet"), "classifier.network: unknown MONAI network"),
        (lambda c: c.pop("classes"), "missing field classes"),
        (lambda c: c["segmenter"]["args"].update(out_channels=5), "segmenter.weights: weights .* do not fit"),
        (lambda c: c["classifier"]["input"].update(intensity="sparkle"), "classifier.input: unknown intensity"),
        (lambda c: c.update(certainty={"variant": "nope"}), "certainty.variant"),
        (lambda c: c.update(region_labels={"cancer": [1]}), "unknown classes"),
        (lambda c: c["segmenter"].update(torchscript="x.ts"), "exactly one of network, torchscript, bundle"),
        (lambda c: c["classifier"].update(memory_format="nhwc"), "classifier.memory_format: unknown format"),
        (lambda c: c["segmenter"].update(memory_format="channels_last"), "segmenter.memory_format: channels_last does not fit"),  # 3D
        (lambda c: c["classifier"].update(runtime="tensorrt"), "classifier.runtime: unknown runtime 'tensorrt'"),
    ],
)
def test_broken_configs_name_the_file_and_field(model_dir, change, message):
    path = edit_config(model_dir, change)
    with pytest.raises(ConfigError, match=message) as error:
        load_model_pair(path)
    assert str(path) in str(error.value)


def demo2d_config(folder, name: str) -> dict:
    """The shipped demo2d configuration with absolute weight paths, written to
    ``folder/name``; returned for changing and writing again."""
    from segx.config import BUILTIN_MODELS_DIR

    config = yaml.safe_load((BUILTIN_MODELS_DIR / "demo2d.yaml").read_text())
    (folder / "weights").mkdir(exist_ok=True)
    for section in ("classifier", "segmenter"):
        shutil.copy(BUILTIN_MODELS_DIR / config[section]["weights"], folder / "weights")
    (folder / name).write_text(yaml.safe_dump(config))
    return config


def test_channels_last_keeps_the_outputs_and_lays_the_weights_out_as_nhwc(tmp_path):
    """``memory_format: channels_last`` (a speed option) changes the weights' layout, not
    what the networks compute."""
    config = demo2d_config(tmp_path, "plain.yaml")
    config["classifier"]["memory_format"] = config["segmenter"]["memory_format"] = "channels_last"
    (tmp_path / "nhwc.yaml").write_text(yaml.safe_dump(config))
    plain, nhwc = load_model_pair(tmp_path / "plain.yaml"), load_model_pair(tmp_path / "nhwc.yaml")
    convolution = next(m for m in nhwc.classifier.modules() if isinstance(m, torch.nn.Conv2d))
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last) and not convolution.weight.is_contiguous()
    x = torch.rand(3, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(nhwc.classifier(x), plain.classifier(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(nhwc.segmenter(x), plain.segmenter(x), atol=1e-5, rtol=1e-4)


def test_onnxruntime_gives_the_torch_results_and_runs_the_plain_forwards(tmp_path):
    """``runtime: onnxruntime`` (a speed option) runs the segmenter and the classifier's
    exact-CAM forward through ONNX Runtime, and every figure stays what torch computes."""
    from segx.engine import explain_many
    from segx.demo.phantoms import generate

    config = demo2d_config(tmp_path, "torch.yaml")
    config["classifier"]["runtime"] = config["segmenter"]["runtime"] = "onnxruntime"
    (tmp_path / "ort.yaml").write_text(yaml.safe_dump(config))
    generate(tmp_path / "data", 2, 6, seed=2, split="test", progress=False)
    images = sorted(str(p) for p in (tmp_path / "data" / "images").iterdir())
    reference = explain_many(load_model_pair(tmp_path / "torch.yaml"), images, classes="predicted")
    pair = load_model_pair(tmp_path / "ort.yaml")
    explain_many(pair, images[:1], classes="predicted")  # the first call exports each network (tracing its torch forward)
    torch_calls = []
    for network in (pair.classifier, pair.segmenter):
        network.register_forward_hook(lambda module, inputs, output: torch_calls.append(module))
    ours = explain_many(pair, images, classes="predicted")
    assert torch_calls == []  # a batch of another size reuses the export: every forward ran in ONNX Runtime
    for a, b in zip(reference, ours):
        assert a.predicted == b.predicted and a.classes == b.classes and a.method == b.method == "cam"
        np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-5)
        torch.testing.assert_close(b.explanation, a.explanation, atol=1e-4, rtol=1e-4)
        assert float((b.segmentation != a.segmentation).float().mean()) < 1e-3  # a boundary pixel may flip on a 1e-5 tie
        assert b.segu.value == pytest.approx(a.segu.value, abs=1e-3)
    with pytest.raises(ConfigError, match="onnxruntime is offered for `network:` sections only"):
        config["segmenter"] = {**config["segmenter"], "torchscript": "x.ts"}
        del config["segmenter"]["network"]
        (tmp_path / "ts.yaml").write_text(yaml.safe_dump(config))
        load_model_pair(tmp_path / "ts.yaml")


def test_missing_weights_error_carries_the_path(model_dir):
    path = edit_config(model_dir, lambda c: c["segmenter"].update(weights="gone.pt"))
    with pytest.raises(MissingWeightsError) as error:
        load_model_pair(path)
    assert error.value.weights == model_dir / "gone.pt"


def test_unparseable_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("classes: [a, b\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_model_pair(path)


def test_cli_writes_float32_maps_with_the_source_geometry(model_dir, capsys):
    rotated = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -5], [0, 0, 3, 7], [0, 0, 0, 1]])
    image_path = model_dir / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 24, 16), dtype=np.float32), rotated), str(image_path))
    out = model_dir / "out"
    arguments = ["explain", str(image_path), "--config", str(model_dir / "organ3d.yaml"), "--out", str(out)]
    assert main(arguments) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["probabilities"]) == {"healthy", "tumour"}
    assert 0.0 <= summary["segu"]["value"] <= 1.0 and summary["segu"]["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["segmentation.nrrd", f"segx_{summary['predicted']}.nrrd"]  # the default layers only
    assert main(arguments + ["--layers", "segx", "explanation", "mask", "--classes", "healthy", "tumour"]) == 0
    assert {"segx_tumour.nrrd", "explanation_healthy.nrrd", "mask_tumour.nrrd"} <= {p.name for p in out.iterdir()}
    source = sitk.ReadImage(str(image_path))
    for name, pixel in [("segx_tumour.nrrd", sitk.sitkFloat32), ("explanation_healthy.nrrd", sitk.sitkFloat32), ("segmentation.nrrd", sitk.sitkUInt8)]:
        written = sitk.ReadImage(str(out / name))
        assert written.GetPixelID() == pixel
        assert written.GetSize() == source.GetSize()
        assert np.allclose(written.GetSpacing(), source.GetSpacing())
        assert np.allclose(written.GetOrigin(), source.GetOrigin())
        assert np.allclose(written.GetDirection(), source.GetDirection())


def test_cli_reports_errors_without_a_traceback(model_dir, capsys):
    assert main(["explain", str(model_dir / "missing.nii.gz"), "--config", str(model_dir / "organ3d.yaml")]) == 2
    assert "image file not found" in capsys.readouterr().err


def test_cli_explains_with_a_built_in_model_by_name(tmp_path, capsys):
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    image[20:44, 16:40] = 90  # a dark lesion on light skin
    PILImage.fromarray(image).save(tmp_path / "skin.png")
    assert main(["explain", str(tmp_path / "skin.png"), "--model", "ham10000"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["predicted"] in summary["probabilities"] and len(summary["probabilities"]) == 7
    assert summary["segu"]["variant"] == "region_margin" and list(summary["certainty"]) == [summary["predicted"]]  # the default variant only
    assert summary["certainty"][summary["predicted"]] == {"region_margin": pytest.approx(summary["segu"]["value"], abs=1e-6)}
    assert main(["explain", str(tmp_path / "skin.png"), "--model", "ham10000", "--variants", *VARIANTS]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["certainty"][summary["predicted"]]) == set(VARIANTS) and len(summary["certainty"]) == 7
    assert main(["explain", str(tmp_path / "skin.png"), "--model", "no_such_model"]) == 2
    assert "built-in models are" in capsys.readouterr().err
