"""``segx train``: train a model pair on a dataset folder and write its model configuration.

A dataset folder holds ``images/``, ``masks/`` (same file names; label maps) and
``labels.csv`` with ``image_id,label,split,file``. Recipes name the networks, the
preprocessing and the training settings; ``demo2d`` and ``demo3d`` train on the phantoms
of :mod:`segx.phantoms`. After training, SegU level thresholds are calibrated on the
``val`` split (never ``test``) and stored in the configuration.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from .certainty import calibrate_levels, save_levels
from .config import load_model_pair
from .engine import explain
from .imageio import read_image
from .metrics import dice
from .pair import Preprocessing


@dataclass
class Recipe:
    """How to train one model pair; the fields become its model configuration."""

    name: str
    spatial_dims: int
    classes: list[str]
    classifier: dict
    segmenter: dict
    classifier_input: dict
    segmenter_input: dict
    segment_names: dict[int, str]
    region_labels: dict[str, list[int]] = field(default_factory=dict)
    epochs: int = 10
    segmenter_epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 2e-3
    seed: int = 0
    phantoms: dict[str, int] = field(default_factory=dict)  # split -> count for `segx train --phantoms`


RECIPES = {
    "demo2d": Recipe(
        name="demo2d",
        spatial_dims=2,
        classes=["nevus", "melanoma"],
        classifier={"network": "DenseNet", "args": {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "init_features": 16, "growth_rate": 8, "block_config": [2, 2, 2]}},
        segmenter={"network": "UNet", "args": {"spatial_dims": 2, "in_channels": 3, "out_channels": 2, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}},
        classifier_input={"channels": 3, "spatial_size": [128, 128], "intensity": "divide255"},
        segmenter_input={"channels": 3, "spatial_size": [128, 128], "intensity": "divide255"},
        segment_names={1: "lesion"},
        epochs=12,
        segmenter_epochs=6,
        phantoms={"train": 320, "val": 80},
    ),
    "demo3d": Recipe(
        name="demo3d",
        spatial_dims=3,
        classes=["cyst", "tumour"],
        classifier={"network": "DenseNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_features": 8, "growth_rate": 8, "block_config": [2, 2, 2]}},
        segmenter={"network": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}},
        classifier_input={"channels": 1, "spatial_size": [64, 64, 48], "intensity": [-50, 250]},
        segmenter_input={"channels": 1, "spatial_size": [64, 64, 48], "intensity": [-200, 300]},
        segment_names={1: "liver", 2: "kidney"},
        region_labels={"cyst": [1], "tumour": [1]},
        epochs=24,
        segmenter_epochs=6,
        batch_size=8,
        phantoms={"train": 128, "val": 32},
    ),
}


def read_split(data: Path, split: str) -> list[dict]:
    """Rows of ``labels.csv`` in one split."""
    with open(data / "labels.csv", newline="") as stream:
        return [row for row in csv.DictReader(stream) if row.get("split", split) == split]


def _load(data: Path, rows: list[dict], recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(classifier inputs ``(N, C, *S)``, segmenter inputs ``(N, C, *S)``, segmenter masks
    ``(N, 1, *S)`` long, labels ``(N,)``)."""
    classifier_input = Preprocessing(**recipe.classifier_input)
    segmenter_input = Preprocessing(**recipe.segmenter_input)
    size = tuple(recipe.segmenter_input["spatial_size"])
    images, segmenter_images, masks, labels = [], [], [], []
    for row in tqdm(rows, desc="loading", leave=False):
        image = read_image(data / "images" / row["file"]).array
        images.append(classifier_input(image)[0])
        segmenter_images.append(segmenter_input(image)[0])
        mask = read_image(data / "masks" / row["file"]).array[:1]
        if recipe.spatial_dims == 2:
            mask = (mask > 127).float() if float(mask.max()) > 1 else mask
        mask = torch.nn.functional.interpolate(mask[None], size=size, mode="nearest-exact")[0]
        masks.append(mask.round().long())
        labels.append(recipe.classes.index(row["label"]))
    return torch.stack(images), torch.stack(segmenter_images), torch.stack(masks), torch.as_tensor(labels)


def _fit(network, inputs, targets, loss_function, epochs, recipe: Recipe, desc: str) -> list[float]:
    """Mini-batch AdamW; returns the mean loss per epoch."""
    optimiser = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate)
    generator = torch.Generator().manual_seed(recipe.seed)
    losses = []
    network.train()
    progress = tqdm(range(epochs), desc=desc)
    for _ in progress:
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            optimiser.zero_grad()
            loss = loss_function(network(inputs[batch]), targets[batch])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(order))
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
    network.eval()
    return losses


def _network(spec: dict, seed: int) -> torch.nn.Module:
    import monai.networks.nets as nets

    torch.manual_seed(seed)
    return getattr(nets, spec["network"])(**spec["args"])


def train(recipe_name: str, data: str | Path, out: str | Path) -> dict:
    """Train the recipe's classifier and segmenter on ``data`` (train split), calibrate SegU
    levels on the val split, write ``out/NAME.yaml`` and ``out/weights/NAME_*.pt``.

    Returns:
        the training log (losses, validation accuracy and Dice, thresholds, seconds).
    """
    from monai.losses import DiceCELoss

    if recipe_name not in RECIPES:
        raise ValueError(f"unknown recipe {recipe_name!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[recipe_name]
    data, out = Path(data), Path(out)
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    train_rows, val_rows = read_split(data, "train"), read_split(data, "val")
    if not train_rows or not val_rows:
        raise ValueError(f"{data / 'labels.csv'} needs train and val rows")
    images, segmenter_images, masks, labels = _load(data, train_rows, recipe)
    counts = torch.bincount(labels, minlength=len(recipe.classes)).float()
    class_weights = counts.sum() / (len(counts) * counts.clamp_min(1))

    classifier = _network(recipe.classifier, recipe.seed)
    classifier_losses = _fit(classifier, images, labels, torch.nn.CrossEntropyLoss(weight=class_weights), recipe.epochs, recipe, f"{recipe.name} classifier")
    segmenter = _network(recipe.segmenter, recipe.seed)
    segmenter_losses = _fit(segmenter, segmenter_images, masks, DiceCELoss(to_onehot_y=True, softmax=True), recipe.segmenter_epochs, recipe, f"{recipe.name} segmenter")

    weights = out / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    torch.save(classifier.state_dict(), weights / f"{recipe.name}_classifier.pt")
    torch.save(segmenter.state_dict(), weights / f"{recipe.name}_segmenter.pt")
    config = {
        "spatial_dims": recipe.spatial_dims,
        "classes": recipe.classes,
        "classifier": {**recipe.classifier, "weights": f"weights/{recipe.name}_classifier.pt", "input": recipe.classifier_input},
        "segmenter": {**recipe.segmenter, "weights": f"weights/{recipe.name}_segmenter.pt", "labels": recipe.segment_names, "input": recipe.segmenter_input},
        "region_labels": recipe.region_labels,
        "certainty": {"variant": "mass_inside"},
    }
    config_file = out / f"{recipe.name}.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    pair, _ = load_model_pair(config_file)
    certainties, correct, dices = [], [], []
    for row in tqdm(val_rows, desc=f"{recipe.name} validation"):
        result = explain(pair, data / "images" / row["file"])
        truth = read_image(data / "masks" / row["file"]).array[0] > (127 if recipe.spatial_dims == 2 else 0)
        predicted_region = result.segmentation > 0
        dices.append(dice(predicted_region, truth))
        certainties.append(result.segu.value)
        correct.append(result.predicted == recipe.classes.index(row["label"]))
    levels = calibrate_levels(certainties, correct, "mass_inside")
    save_levels(config_file, levels)
    log = {
        "recipe": recipe.name,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "classifier_losses": classifier_losses,
        "segmenter_losses": segmenter_losses,
        "val_accuracy": float(np.mean(correct)),
        "val_dice": float(np.mean(dices)),
        "levels": {"low": levels.low, "high": levels.high},
        "seconds": time.perf_counter() - start,
    }
    (out / f"{recipe.name}_training.json").write_text(json.dumps(log, indent=2) + "\n")
    return log
