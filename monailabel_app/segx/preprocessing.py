"""How an image reaches a network and how the network's output returns to the image grid.

Both pipelines here are MONAI dictionary transforms on the key ``image``, so every spatial
step (orientation, spacing, resize, pad/crop, a bundle's own crops) is recorded on the
``MetaTensor`` and undone by MONAI's :class:`~monai.transforms.Invertd`: a segmentation or
an explanation computed on the network's grid lands on the source voxels it came from.
The commonest ``input:`` (a fixed intensity range and a resize) is computed directly, with
the same arithmetic as those transforms and their inverse (see :meth:`Preprocessing.prepare`).

- :class:`Preprocessing`: the ``input:`` section of a model configuration.
- :class:`BundlePipeline`: a MONAI bundle's own ``preprocessing``, ``inferer`` and
  ``postprocessing``, as its authors wrote them (MONAI Label's bundle tasks drop the
  loader in the same way and feed the already-loaded image).

Axis order: an image is ``(C, *S)`` with ``S`` in the source file's voxel index order
(MONAI's ``LoadImage`` order); its affine maps those indices to RAS millimetres.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from monai.transforms import (
    Compose,
    Invertd,
    NormalizeIntensityd,
    Orientationd,
    ResizeWithPadOrCropd,
    Resized,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)

INTENSITY_MODES = ("none", "divide255", "minmax", "zscore")
RESIZE_MODES = ("resize", "pad_crop")
INFERERS = ("simple", "sliding_window")


def as_meta_tensor(array: torch.Tensor, affine: np.ndarray) -> MetaTensor:
    """A channel-first image ``(C, *S)`` and its 4x4 voxel-to-RAS affine as the MetaTensor
    MONAI's loaders produce (``original_channel_dim`` 0, so ``EnsureChannelFirstd`` keeps it)."""
    spatial = array.dim() - 1
    return MetaTensor(
        array.float(),
        affine=torch.as_tensor(affine, dtype=torch.float64),
        meta={"original_channel_dim": 0, "spatial_shape": np.asarray(array.shape[1:]), "space": "RAS", "spatial_dims": spatial},
    )


@dataclass
class Prepared:
    """An image on a network's grid and the way back to its own grid.

    Attributes:
        input: the network input ``(channels, *s)``, float32.
        record: the MetaTensor carrying MONAI's applied transforms (read by ``Invertd``), or
            None when :class:`Preprocessing` computed ``input`` directly (scaling + resize).
        source_shape: the image's spatial shape ``S``.
    """

    input: torch.Tensor
    record: MetaTensor | None
    source_shape: tuple[int, ...]


class _Pipeline:
    """``prepare`` an image, ``run`` a network through the inferer, ``restore`` outputs."""

    transforms: Compose
    _inferer: Inferer

    def prepare(self, array: torch.Tensor, affine: np.ndarray) -> Prepared:
        """Image ``(C, *S)`` -> network-grid image ``(channels, *s)`` with the record of its
        applied transforms (for :meth:`restore`)."""
        record = self.transforms({"image": as_meta_tensor(array, affine)})["image"]
        return Prepared(record.as_tensor().float(), record, tuple(array.shape[1:]))

    def __call__(self, image: torch.Tensor, affine: np.ndarray | None = None) -> torch.Tensor:
        """Image ``(C, *S)`` -> network input ``(1, channels, *s)``, a plain float32 tensor
        (the affine defaults to 1 mm voxels)."""
        affine = np.eye(4) if affine is None else affine
        return self.prepare(image, affine).input[None].contiguous()

    def run(self, network: Callable, x: torch.Tensor) -> torch.Tensor:
        """Network outputs ``(B, L, *s)`` for inputs ``(B, channels, *s)`` through the inferer."""
        return self._inferer(x, network)

    def restore(self, maps: torch.Tensor, prepared: Prepared, nearest: bool = False) -> torch.Tensor:
        """Maps ``(K, *s)`` on the network grid of ``prepared`` -> ``(K, *S)`` on the source
        grid, every recorded transform undone (``nearest`` for label maps)."""
        if prepared.record is None:
            return resize(maps.detach(), prepared.source_shape, nearest)
        if not prepared.record.applied_operations:  # nothing spatial was done (Invertd refuses an empty Compose)
            return maps.detach()
        inverted = Invertd(keys="maps", transform=self.transforms, orig_keys="image", nearest_interp=nearest)(
            {"maps": MetaTensor(maps.detach()), "image": prepared.record}  # Invertd reads the record only beside a MetaTensor
        )["maps"]
        return inverted.as_tensor() if isinstance(inverted, MetaTensor) else torch.as_tensor(inverted)

    def postprocess(self, output: torch.Tensor, prepared: Prepared, nearest: bool = False) -> torch.Tensor:
        """A segmenter's output ``(L, *s)`` -> ``(L', *S)`` on the source grid."""
        return self.restore(output, prepared, nearest)


def resize(maps: torch.Tensor, size: Sequence[int], nearest: bool = False) -> torch.Tensor:
    """MONAI's ``Resize(size, mode)`` (no anti-aliasing, ``align_corners`` None: the
    defaults of ``Resized`` and of its inverse) of ``(K, *s)`` -> float32 ``(K, *size)``
    on a plain tensor: the ``torch.nn.functional.interpolate`` call of
    ``monai.transforms.spatial.functional.resize``, without its MetaTensor bookkeeping."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps.float()
    mode = "nearest" if nearest else ("bilinear" if len(size) == 2 else "trilinear")
    return F.interpolate(maps[None].float(), size=tuple(int(s) for s in size), mode=mode)[0]


@dataclass
class Preprocessing(_Pipeline):
    """The ``input:`` section of a model configuration, as MONAI transforms applied in the
    order channels, orientation, spacing, intensity, spatial size.

    Attributes:
        channels: input channels the network expects; 3 -> 1 averages, 1 -> 3 repeats.
        spatial_size: network input size, or None to keep the (resampled) size.
        intensity: ``none``, ``divide255``, ``minmax`` (to [0, 1]), ``zscore``, or a window
            ``[a, b]`` mapped to [0, 1] with clipping.
        orientation: axis codes to reorient to (``RAS``, MONAI's convention), or None.
        spacing: voxel size in mm to resample to (``Spacingd``, bilinear), or None.
        resize: how to reach ``spatial_size``: ``resize`` (bi/trilinear) or ``pad_crop``
            (centred, as ``ResizeWithPadOrCrop``).
        inferer: ``simple`` (one forward) or ``sliding_window`` (segmenters only).
        roi_size, overlap, sw_batch_size: the sliding window's options.
    """

    channels: int = 1
    spatial_size: Sequence[int] | None = None
    intensity: str | Sequence[float] = "none"
    orientation: str | None = None
    spacing: Sequence[float] | None = None
    resize: str = "resize"
    inferer: str = "simple"
    roi_size: Sequence[int] | None = None
    overlap: float = 0.25
    sw_batch_size: int = 1

    def __post_init__(self):
        if isinstance(self.intensity, str) and self.intensity not in INTENSITY_MODES:
            raise ValueError(f"unknown intensity mode {self.intensity!r}; choose one of {INTENSITY_MODES} or [a, b]")
        if not isinstance(self.intensity, str) and (len(self.intensity) != 2 or self.intensity[0] >= self.intensity[1]):
            raise ValueError(f"intensity window must be [low, high] with low < high, got {self.intensity}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize {self.resize!r}; choose one of {RESIZE_MODES}")
        if self.inferer not in INFERERS:
            raise ValueError(f"unknown inferer {self.inferer!r}; choose one of {INFERERS}")
        if self.inferer == "sliding_window" and not self.roi_size:
            raise ValueError("inferer sliding_window needs roi_size")
        if self.spacing is not None and any(float(s) <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive millimetres, got {self.spacing}")
        self.transforms = Compose(self._resampling("image", nearest=False) + self._intensity() + self._sizing("image", nearest=False))
        # a fixed intensity range and a plain resize: computed directly by prepare()
        self._direct = self.orientation is None and self.spacing is None and self.resize == "resize" and self.intensity not in ("minmax", "zscore")
        self._inferer = (
            SlidingWindowInferer(roi_size=tuple(self.roi_size), overlap=self.overlap, sw_batch_size=self.sw_batch_size)
            if self.inferer == "sliding_window"
            else SimpleInferer()
        )

    def label_transforms(self, key: str = "label") -> list[Callable]:
        """The spatial steps alone, nearest-neighbour, for a training label map on ``key``."""
        return self._resampling(key, nearest=True) + self._sizing(key, nearest=True)

    def _resampling(self, key: str, nearest: bool) -> list[Callable]:
        steps: list[Callable] = []
        if self.orientation:
            steps.append(Orientationd(key, axcodes=self.orientation))
        if self.spacing is not None:
            steps.append(Spacingd(key, pixdim=tuple(float(s) for s in self.spacing), mode="nearest" if nearest else "bilinear"))
        return steps

    def _sizing(self, key: str, nearest: bool) -> list[Callable]:
        if self.spatial_size is None:
            return []
        size = tuple(int(s) for s in self.spatial_size)
        if self.resize == "pad_crop":
            return [ResizeWithPadOrCropd(key, spatial_size=size)]
        return [Resized(key, spatial_size=size, mode="nearest" if nearest else ("bilinear" if len(size) == 2 else "trilinear"))]

    def _intensity(self) -> list[Callable]:
        if self.intensity == "divide255":
            return [ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0, b_max=1)]
        if self.intensity == "minmax":
            return [ScaleIntensityd("image", minv=0.0, maxv=1.0)]
        if self.intensity == "zscore":
            return [NormalizeIntensityd("image")]
        if not isinstance(self.intensity, str):
            low, high = (float(v) for v in self.intensity)
            return [ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0, b_max=1, clip=True)]
        return []

    def prepare(self, array: torch.Tensor, affine: np.ndarray) -> Prepared:
        if self.spatial_size is not None and len(self.spatial_size) != array.dim() - 1:
            raise ValueError(f"spatial_size {tuple(self.spatial_size)} does not match a {array.dim() - 1}D image")
        array = _with_channels(array, self.channels)
        if not self._direct:
            return super().prepare(array, affine)
        # Hand-written because faster: MONAI's ScaleIntensityRanged + Resized on a MetaTensor
        # take ~11 ms for a 600 x 450 colour picture, ~9 of them bookkeeping for Invertd; the
        # same arithmetic on a plain tensor takes ~2 ms (docs/BENCHMARKS.md). Equal to
        # MONAI's Compose and Invertd: tests/test_preprocessing.py.
        x = array.float()
        if self.intensity != "none":
            low, high = (0.0, 255.0) if self.intensity == "divide255" else (float(v) for v in self.intensity)
            x = (x - low) / (high - low)
            x = x if self.intensity == "divide255" else x.clamp(0.0, 1.0)
        if self.spatial_size is not None:
            x = resize(x, self.spatial_size)
        return Prepared(x, None, tuple(array.shape[1:]))



def _with_channels(array: torch.Tensor, channels: int) -> torch.Tensor:
    """``(C, *S)`` -> ``(channels, *S)``: colour to grey by the mean, grey to colour by
    repetition (no MONAI transform averages channels; neither step is spatial)."""
    if array.shape[0] == channels:
        return array
    if array.shape[0] == 3 and channels == 1:
        return array.float().mean(0, keepdim=True)
    if array.shape[0] == 1:
        return array.expand(channels, *array.shape[1:])
    raise ValueError(f"the image has {array.shape[0]} channels, the model expects {channels}")


#: Bundle transforms that read or write files; the image arrives loaded, outputs are ours.
_IO_TRANSFORMS = ("LoadImaged", "LoadImage", "SaveImaged", "SaveImage")


class BundlePipeline(_Pipeline):
    """A MONAI bundle's ``preprocessing`` (without its loader), ``inferer`` and
    ``postprocessing`` (without its writer; its ``Invertd`` undoes *these* transforms, and
    one is appended when the bundle has none), parsed with ``monai.bundle``.

    Attributes:
        output: what ``postprocessing`` leaves: ``label`` (after ``AsDiscreted`` argmax or
            threshold), ``probabilities`` (after softmax/sigmoid ``Activationsd``) or
            ``logits``.
        spatial_dims: from the first spatial transform's size, when stated.
    """

    def __init__(self, parser: Any, source: str):
        if "preprocessing" not in parser:
            raise ValueError(f"bundle {source} has no preprocessing section: give the network an input: section")
        try:
            preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
            self._inferer = parser.get_parsed_content("inferer", instantiate=True) if "inferer" in parser else SimpleInferer()
            postprocessing = parser.get_parsed_content("postprocessing", instantiate=True) if "postprocessing" in parser else Compose([])
        except Exception as error:  # the bundle's own config: one clear message naming it
            raise ValueError(f"bundle {source}: cannot build preprocessing/inferer/postprocessing: {error}") from error
        self.transforms = Compose([t for t in _flat(preprocessing) if type(t).__name__ not in _IO_TRANSFORMS])
        post = []
        for transform in _flat(postprocessing):
            name = type(transform).__name__
            if name in _IO_TRANSFORMS:
                continue
            if isinstance(transform, Invertd):  # the bundle's refers to its own Compose (with the loader)
                transform = copy.copy(transform)
                transform.transform = self.transforms
            post.append(transform)
        if not any(isinstance(t, Invertd) for t in post):
            post.append(Invertd("pred", transform=self.transforms, orig_keys="image", nearest_interp=False))
        self.post = Compose(post)
        self.output = _output_kind(post)

    def postprocess(self, output: torch.Tensor, prepared: Prepared, nearest: bool = False) -> torch.Tensor:
        """The bundle's own postprocessing (its ``AsDiscreted`` decides about labels)."""
        restored = self.post({"pred": MetaTensor(output.detach()), "image": prepared.record})["pred"]
        return restored.as_tensor() if isinstance(restored, MetaTensor) else torch.as_tensor(restored)


def _flat(transforms: Any) -> list:
    """A Compose (possibly nested) or a list -> its transforms in order."""
    if isinstance(transforms, Compose):
        return list(transforms.flatten().transforms)
    return [t for item in transforms for t in _flat(item)] if isinstance(transforms, (list, tuple)) else [transforms]


def _output_kind(post: list) -> str:
    """What a bundle's postprocessing leaves: ``label``, ``probabilities`` or ``logits``."""
    kind = "logits"
    for transform in post:
        name = type(transform).__name__
        if name == "Activationsd" and (any(transform.softmax) or any(transform.sigmoid)):
            kind = "probabilities"
        if name == "AsDiscreted" and (any(transform.argmax) or any(t is not None for t in transform.threshold)):
            kind = "label"
    return kind


