"""Networks for the bundle tests (importable by ``monai.bundle`` as ``bundle_networks.X``:
pytest puts ``tests/`` on ``sys.path``)."""

import torch
from torch import nn


class RampThreshold(nn.Module):
    """A segmenter whose output is a known function of the preprocessed intensity *and* the
    position: logits ``(B, 2, X, Y, Z)`` with foreground ``scale * min(x - 0.3, ramp)``,
    ``ramp`` rising from -1 to 1 along the first spatial axis of its input. So it marks
    soft-tissue voxels (above 30 % of the window) in the upper half of the first axis: fed an
    unoriented volume, it marks a different half, which no flip-invariant check would see."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1.0, 1.0, x.shape[2], device=x.device).view(1, 1, -1, *([1] * (x.dim() - 3)))
        foreground = self.scale * torch.minimum(x - 0.3, ramp.expand_as(x))
        return torch.cat([torch.zeros_like(foreground), foreground], dim=1)


class RampUNet(nn.Module):
    """A MONAI UNet's cost with :class:`RampThreshold`'s known answer: the UNet runs (so
    time and memory are those of a real CT segmenter), and its output is added with weight
    0 to the ramp's logits. The labels mark soft tissue in the upper half of the first
    axis: a minority of the body, on one side, so a flipped or shifted result scores far
    below an exact one (``benchmarks/clinical_volume.py`` prints that control)."""

    def __init__(self, **unet_args):
        super().__init__()
        from monai.networks.nets import UNet

        self.unet = UNet(**unet_args)
        self.ramp = RampThreshold()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ramp(x) + 0.0 * self.unet(x)


def zoo_preprocessing(pixdim, window, extra=()) -> dict:
    """A model-zoo CT bundle's ``preprocessing`` (spleen_ct_segmentation's order): load,
    channel first, RAS, resample to ``pixdim`` mm, window to [0, 1], then ``extra``."""
    return {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim), "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": window[0], "a_max": window[1], "b_min": 0.0, "b_max": 1.0, "clip": True},
        *extra,
    ]}  # fmt: skip


def zoo_inference(network_def: dict, pixdim, window, roi_size, sw_batch_size: int = 1) -> dict:
    """A whole ``configs/inference.json`` as the model zoo writes them: every NIfTI of
    ``data/`` through :func:`zoo_preprocessing`, a sliding window, softmax, ``Invertd``,
    argmax, ``SaveImaged`` to ``eval/<name>_seg.nii.gz``, run by a SupervisedEvaluator."""
    return {
        "imports": ["$import glob"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": zoo_preprocessing(pixdim, window, [{"_target_": "EnsureTyped", "keys": "image"}]),
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi_size), "sw_batch_size": sw_batch_size, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg", "output_dtype": "$np.uint8",
             "resample": False, "separate_folder": False},
        ]},  # fmt: skip
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'", "load_dict": {"model": "@network"}}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader", "network": "@network",
                      "inferer": "@inferer", "postprocessing": "@postprocessing", "val_handlers": "@handlers", "amp": False},  # fmt: skip
        "initialize": [],
        "run": ["$@evaluator.run()"],
    }
