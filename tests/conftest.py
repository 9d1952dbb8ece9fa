"""Shared fixtures: the core package on sys.path, small model configurations written the
way a research group would (config file + weights), and a studies folder."""

import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image as PILImage

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "monailabel_app"
sys.path.insert(0, str(APP_DIR))

#: Affine of the 3D test volumes: rotated axes, anisotropic spacing, an offset origin.
AFFINE_3D = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -5], [0, 0, 3, 7], [0, 0, 0, 1]])


class BrightRegion(torch.nn.Module):
    """Segmenter with a known answer: label 1 where the channel mean exceeds 0.5.
    Input ``(1, C, *S)`` in [0, 1], output logits ``(1, 2, *S)``."""

    def forward(self, x):
        foreground = 20 * (x.mean(1, keepdim=True) - 0.5)
        return torch.cat([-foreground, foreground], dim=1)


def write_toy_models(folder: Path) -> Path:
    """Model configurations ``toy2d`` (DenseNet121, 3 classes) and ``toy3d`` (ResNet10,
    2 classes), each with a TorchScript segmenter, plus ``broken`` (unknown network) and
    ``noweights`` (missing weight file)."""
    from monai.networks.nets import DenseNet121, resnet10

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(DenseNet121(spatial_dims=2, in_channels=3, out_channels=3).state_dict(), folder / "toy2d_classifier.pt")
    torch.save(resnet10(spatial_dims=3, n_input_channels=1, num_classes=2).state_dict(), folder / "toy3d_classifier.pt")
    torch.jit.script(BrightRegion()).save(str(folder / "bright_region.ts"))
    toy2d = {
        "spatial_dims": 2,
        "classes": ["benign", "malignant", "other"],
        "classifier": {
            "network": "DenseNet121",
            "args": {"spatial_dims": 2, "in_channels": 3, "out_channels": 3},
            "weights": "toy2d_classifier.pt",
            "input": {"channels": 3, "spatial_size": [64, 64], "intensity": "divide255"},
        },
        "segmenter": {"torchscript": "bright_region.ts", "labels": {1: "lesion"}, "input": {"channels": 3, "intensity": "divide255"}},
    }
    toy3d = {
        "spatial_dims": 3,
        "classes": ["healthy", "tumour"],
        "classifier": {
            "network": "resnet10",
            "args": {"spatial_dims": 3, "n_input_channels": 1, "num_classes": 2},
            "weights": "toy3d_classifier.pt",
            "input": {"channels": 1, "spatial_size": [32, 32, 32], "intensity": [0, 1]},
        },
        "segmenter": {"torchscript": "bright_region.ts", "labels": {1: "organ"}, "input": {"channels": 1, "intensity": [0, 1]}},
    }
    broken = dict(toy2d, classifier=dict(toy2d["classifier"], network="NoSuchNetwork"))
    noweights = dict(toy2d, classifier=dict(toy2d["classifier"], weights="not_trained_yet.pt"))
    for name, config in [("toy2d", toy2d), ("toy3d", toy3d), ("broken", broken), ("noweights", noweights)]:
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return folder


def write_vit_model(models: Path) -> None:
    """``vit2d``: a MONAI ``ViT`` classifier (returns ``(logits, hidden_states)``, 4 x 4 patch
    grid and a class token) with the toy TorchScript segmenter."""
    from monai.networks.nets import ViT

    vit_args = {"in_channels": 3, "img_size": [64, 64], "patch_size": 16, "spatial_dims": 2, "classification": True,
                "num_classes": 3, "hidden_size": 48, "mlp_dim": 96, "num_layers": 2, "num_heads": 4}  # fmt: skip
    torch.manual_seed(6)
    torch.save(ViT(**vit_args).state_dict(), models / "vit2d_classifier.pt")
    config = yaml.safe_load((models / "toy2d.yaml").read_text())
    config["classifier"] = {"network": "ViT", "args": vit_args, "weights": "vit2d_classifier.pt",
                            "input": {"channels": 3, "spatial_size": [64, 64], "intensity": "divide255"}}  # fmt: skip
    (models / "vit2d.yaml").write_text(yaml.safe_dump(config))


def write_swin_model(models: Path) -> None:
    """``swin3d``: a :class:`segx.networks.SwinClassifier` (SwinUNETR's encoder + a head,
    random weights) on 64^3 inputs with the toy TorchScript segmenter."""
    from segx.networks import SwinClassifier

    swin_args = {"in_channels": 1, "num_classes": 2, "spatial_dims": 3, "feature_size": 12, "num_heads": [1, 2, 3, 6], "window_size": 4}
    torch.manual_seed(7)
    torch.save(SwinClassifier(**swin_args).state_dict(), models / "swin3d_classifier.pt")
    config = yaml.safe_load((models / "toy3d.yaml").read_text())
    config["classifier"] = {"network": "segx.networks.SwinClassifier", "args": swin_args, "weights": "swin3d_classifier.pt",
                            "input": {"channels": 1, "spatial_size": [64, 64, 64], "intensity": [0, 1]}}  # fmt: skip
    (models / "swin3d.yaml").write_text(yaml.safe_dump(config))


def square_rgb(height: int, width: int, box: tuple) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)``: dark skin, a bright square ``box = (r0, r1, c0, c1)``."""
    image = np.full((height, width, 3), 50, dtype=np.uint8)
    r0, r1, c0, c1 = box
    image[r0:r1, c0:c1] = 230
    return image


def organ_volume(shape=(20, 24, 16), box=(5, 12, 6, 14, 4, 10)) -> np.ndarray:
    """float32 volume in [0, 1] with a bright box (the 'organ')."""
    volume = np.full(shape, 0.1, dtype=np.float32)
    a0, a1, b0, b1, c0, c1 = box
    volume[a0:a1, b0:b1, c0:c1] = 0.9
    return volume


def write_studies(folder: Path) -> Path:
    """Three 2D PNG studies and two 3D NIfTI studies."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, box in enumerate([(10, 30, 5, 25), (5, 45, 5, 35), (20, 24, 20, 24)]):
        PILImage.fromarray(square_rgb(50, 40, box)).save(folder / f"skin{i}.png")
    for i, box in enumerate([(5, 12, 6, 14, 4, 10), (2, 18, 2, 20, 2, 14)]):
        nib.save(nib.Nifti1Image(organ_volume(box=box), AFFINE_3D), str(folder / f"ct{i}.nii.gz"))
    return folder


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory) -> Path:
    return write_toy_models(tmp_path_factory.mktemp("models"))


def eval_summary(printed: str) -> dict:
    """The summary of ``segx evaluate``'s last line (``EVAL {json}``) without its timing and
    provenance (which name the command)."""
    summary = json.loads(printed.strip().splitlines()[-1][len("EVAL "):])
    for key in ("seconds", "provenance"):
        summary.pop(key)
    return summary


def venv_env() -> dict:
    """Environment for subprocesses: this interpreter's bin first on PATH (the
    ``monailabel`` launcher runs ``python -m monailabel.main``)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


#: Rotated axes, anisotropic spacing, offset origin of the Slicer tests' 3D studies:
#: catches any LPS/RAS or axis mix-up.
SLICER_AFFINE = np.array([[0, -1.5, 0, 10], [1.5, 0, 0, -5], [0, 0, 2.5, 7], [0, 0, 0, 1]])


def write_models(folder: Path) -> Path:
    """``slicer2d`` / ``slicer3d``: copies of the demo models and weights; ``noweights``:
    a configuration whose classifier weights are missing."""
    (folder / "weights").mkdir(parents=True)
    configs = APP_DIR / "model_configs"
    for dim in (2, 3):
        for part in ("classifier", "segmenter"):
            shutil.copy(configs / "weights" / f"demo{dim}d_{part}.pt", folder / "weights")
        shutil.copy(configs / f"demo{dim}d.yaml", folder / f"slicer{dim}d.yaml")
    config = yaml.safe_load((configs / "demo2d.yaml").read_text())
    config["classifier"]["weights"] = "weights/not_trained_yet.pt"
    (folder / "noweights.yaml").write_text(yaml.safe_dump(config))
    return folder


def write_phantom_studies(folder: Path) -> Path:
    """Two 2D (PNG) and two 3D (NIfTI, rotated affine) phantom studies."""
    from segx.demo.phantoms import generate

    generate(folder / "generated", 2, 2, seed=11, progress=False)
    generate(folder / "generated", 3, 2, seed=11, progress=False)
    studies = folder / "studies"
    studies.mkdir()
    for path in sorted((folder / "generated" / "images").iterdir()):
        if path.suffix == ".png":
            shutil.copy(path, studies)
        else:
            nib.save(nib.Nifti1Image(np.asarray(nib.load(path).dataobj), SLICER_AFFINE), str(studies / path.name))
    return studies


@pytest.fixture(scope="session")
def slicer_server(tmp_path_factory):
    """(URL, studies folder) of a running server for the Slicer module's tests (the demo
    models as ``slicer2d``/``slicer3d``, ``noweights``; phantom studies), stopped afterwards."""
    from segx.demo import running_server

    root = tmp_path_factory.mktemp("slicer_live")
    models = write_models(root / "models")
    studies = write_phantom_studies(root)
    with running_server(studies, "slicer2d,slicer3d,noweights", root / "server.log", models_dir=models) as server:
        yield server.url, studies


