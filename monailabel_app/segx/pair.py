"""The description of a classifier + segmenter pair."""

from __future__ import annotations

from dataclasses import dataclass, field
import torch
from torch import nn

from .certainty import DEFAULT_VARIANT, LevelThresholds
from .preprocessing import BundlePipeline, Preprocessing

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
        classifier_input, segmenter_input: each network's pipeline (a configuration's
            ``input:`` or a bundle's own), which also maps outputs back to the image grid.
        target_layer: CAM target layer (None: auto-detected).
        certainty_variant: default SegU variant.
        levels: calibrated certainty level thresholds, if any.
        config: the parsed configuration file the pair was loaded from (empty if built in code).
    """

    classifier: nn.Module
    segmenter: nn.Module
    class_names: list[str]
    spatial_dims: int = 2
    multi_label: bool = False
    segmenter_output: str = "logits"
    segment_names: dict[int, str] = field(default_factory=lambda: {1: "region"})
    region_labels: dict[str, list[int]] = field(default_factory=dict)
    classifier_input: Preprocessing | BundlePipeline = field(default_factory=Preprocessing)
    segmenter_input: Preprocessing | BundlePipeline = field(default_factory=Preprocessing)
    target_layer: str | None = None
    certainty_variant: str = DEFAULT_VARIANT
    levels: LevelThresholds | None = None
    config: dict = field(default_factory=dict, repr=False)

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
