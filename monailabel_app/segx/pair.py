"""The description of a classifier + segmenter pair and of their input preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .certainty import DEFAULT_VARIANT, LevelThresholds

INTENSITY_MODES = ("none", "divide255", "minmax", "zscore")


@dataclass
class Preprocessing:
    """How an image ``(C, *S)`` becomes a network input ``(1, channels, *spatial_size)``.

    Attributes:
        channels: input channels the network expects; 3 -> 1 averages, 1 -> 3 repeats.
        spatial_size: resize target (bi/trilinear); None keeps the image size.
        intensity: ``none``, ``divide255``, ``minmax`` (to [0, 1]), ``zscore``, or a window
            ``[a, b]`` mapped to [0, 1] with clipping.
    """

    channels: int = 1
    spatial_size: Sequence[int] | None = None
    intensity: str | Sequence[float] = "none"

    def __post_init__(self):
        if isinstance(self.intensity, str) and self.intensity not in INTENSITY_MODES:
            raise ValueError(f"unknown intensity mode {self.intensity!r}; choose one of {INTENSITY_MODES} or [a, b]")
        if not isinstance(self.intensity, str) and (len(self.intensity) != 2 or self.intensity[0] >= self.intensity[1]):
            raise ValueError(f"intensity window must be [low, high] with low < high, got {self.intensity}")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Image ``(C, *S)`` -> network input ``(1, channels, *spatial_size)`` float32."""
        x = image.float()
        if x.shape[0] != self.channels:
            if x.shape[0] == 3 and self.channels == 1:
                x = x.mean(0, keepdim=True)
            elif x.shape[0] == 1:
                x = x.expand(self.channels, *x.shape[1:])
            else:
                raise ValueError(f"the image has {x.shape[0]} channels, the model expects {self.channels}")
        if self.intensity == "divide255":
            x = x / 255.0
        elif self.intensity == "minmax":
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
        elif self.intensity == "zscore":
            x = (x - x.mean()) / x.std().clamp_min(1e-8)
        elif not isinstance(self.intensity, str):
            low, high = self.intensity
            x = ((x - low) / (high - low)).clamp(0, 1)
        x = x[None]
        if self.spatial_size is not None and tuple(x.shape[2:]) != tuple(self.spatial_size):
            if len(self.spatial_size) != x.dim() - 2:
                raise ValueError(f"spatial_size {tuple(self.spatial_size)} does not match a {x.dim() - 2}D image")
            mode = "bilinear" if x.dim() == 4 else "trilinear"
            x = F.interpolate(x, size=tuple(self.spatial_size), mode=mode, align_corners=False)
        return x.contiguous()


@dataclass
class ModelPair:
    """A classifier and the segmenter that finds its clinically relevant region.

    Attributes:
        classifier: maps ``(1, C_in, *S)`` to logits ``(1, C)``.
        segmenter: maps ``(1, C_in, *S)`` to logits or probabilities ``(1, L, *S)``
            (softmax over ``L >= 2`` channels, sigmoid for ``L == 1``), or to a label map
            ``(1, 1, *S)`` when ``segmenter_output == "label"``.
        class_names: the ``C`` class labels.
        spatial_dims: 2 or 3.
        multi_label: sigmoid per class instead of softmax.
        segmenter_output: ``logits``, ``probabilities`` or ``label``.
        segment_names: segmenter label value -> name (0 is background).
        region_labels: class name -> segmenter labels forming its clinical region;
            classes not listed use every foreground label.
        classifier_input, segmenter_input: preprocessing of each network.
        target_layer: CAM target layer (None: auto-detected).
        certainty_variant: default SegU variant.
        levels: calibrated certainty level thresholds, if any.
    """

    classifier: nn.Module
    segmenter: nn.Module
    class_names: list[str]
    spatial_dims: int = 2
    multi_label: bool = False
    segmenter_output: str = "logits"
    segment_names: dict[int, str] = field(default_factory=lambda: {1: "region"})
    region_labels: dict[str, list[int]] = field(default_factory=dict)
    classifier_input: Preprocessing = field(default_factory=Preprocessing)
    segmenter_input: Preprocessing = field(default_factory=Preprocessing)
    target_layer: str | None = None
    certainty_variant: str = DEFAULT_VARIANT
    levels: LevelThresholds | None = None

    def __post_init__(self):
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.segmenter_output not in ("logits", "probabilities", "label"):
            raise ValueError(f"segmenter_output must be logits, probabilities or label, got {self.segmenter_output!r}")
        unknown = sorted(set(self.region_labels) - set(self.class_names))
        if unknown:
            raise ValueError(f"region_labels names unknown classes {unknown}; classes are {self.class_names}")
        self.classifier.eval()
        self.segmenter.eval()

    def class_index(self, name_or_index: str | int) -> int:
        """Index of a class given by name or index; ValueError if unknown."""
        if isinstance(name_or_index, str) and name_or_index in self.class_names:
            return self.class_names.index(name_or_index)
        try:
            index = int(name_or_index)
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < len(self.class_names):
            raise ValueError(f"unknown class {name_or_index!r}; classes are {self.class_names}")
        return index

    def region_of(self, class_index: int) -> list[int]:
        """Segmenter labels that form the clinical region of a class."""
        name = self.class_names[class_index]
        return list(self.region_labels.get(name, sorted(self.segment_names)))

    def to(self, device: str | torch.device) -> "ModelPair":
        """Move both networks to ``device`` (a no-op when they are already there)."""
        device = torch.device(device)
        for network in (self.classifier, self.segmenter):
            current = next(network.parameters(), None)
            if current is None or current.device != device:
                network.to(device)
        return self
