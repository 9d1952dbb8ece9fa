"""The one-call API: classifier + segmenter + image -> probabilities, explanations, SegX
maps, clinical region and SegU certainty."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import onnxrt
from .certainty import NEEDS_RUNNER_UP, VARIANTS, Certainty, segu
from .explainers import explain_classes, gradcam_batch, normalise
from .imageio import Image, as_image
from .pair import ModelPair
from .preprocessing import Prepared, resize
from .refine import distance_to_region_mm, expand_region, segx_map
from .tensors import any_true

#: Largest image accepted by default (voxels per channel): 512 x 512 x 512.
MAX_VOXELS = 512**3


@dataclass
class SegXResult:
    """Everything one :func:`explain` call computes, on the input image's grid ``S``.

    Attributes:
        class_names: all ``C`` class labels.
        probabilities: ``(C,)`` softmax (or sigmoid for multi-label) probabilities.
        predicted: index of the most probable class.
        classes: the ``K`` explained class indices (order of the map tensors); the
            predicted class (and its runner-up, for SegU variants that need it) is appended
            when it was not requested.
        method: explanation method actually used (``cam`` is exact Grad-CAM).
        explanation: raw, unnormalised maps ``(K, *S)`` (>= 0).
        explanation_normalised: (property) ``explanation`` min-max scaled to [0, 1], ``(K, *S)``.
        segx: (property) ``explanation_normalised * clinical_mask``, ``(K, *S)`` in [0, 1].
        clinical_mask: region per explained class ``(K, *S)``, float (binary 0/1 or soft).
        segmentation: segmenter label map ``(*S)``, uint8 (int64 for label values over 255:
            a label map is 1 byte per voxel where it can be).
        segment_names: label value -> name.
        certainty: per explained class index, per SegU variant computed so far, a
            :class:`Certainty`; :meth:`certainty_of` computes (and stores) any other.
        segu: certainty of the predicted class with the pair's default variant.
        level: ``high``/``medium``/``low`` from the pair's calibrated thresholds, or None.
        spacing, affine: geometry of ``S``.
        timings: seconds per stage.
        top_percent: k of the top-k % rule used by ``topk_inside``.
        explanation_grid: the explainer's own grid (the CAM target layer's, or the
            network input's for input attributions) and the network input's size: how
            coarse the evidence is before it is resampled to ``S``.
    """

    class_names: list[str]
    probabilities: np.ndarray
    predicted: int
    classes: list[int]
    method: str
    explanation: torch.Tensor
    clinical_mask: torch.Tensor
    segmentation: torch.Tensor
    segment_names: dict[int, str]
    certainty: dict[int, dict[str, Certainty]]
    segu: Certainty
    level: str | None
    spacing: tuple[float, ...]
    affine: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    top_percent: float = 5.0
    explanation_grid: dict = field(default_factory=dict)
    _distances: dict = field(default_factory=dict, init=False, repr=False)
    _regions: dict = field(default_factory=dict, init=False, repr=False)

    def certainty_of(self, class_index: int, variant: str) -> Certainty:
        """SegU ``variant`` of an explained class, from the stored raw map and region
        (no network runs); one distance transform per distinct region, memoised."""
        if class_index not in self.classes:
            raise ValueError(f"class {class_index} was not explained; explained: {self.classes}")
        per_variant = self.certainty.setdefault(class_index, {})
        if variant not in per_variant:
            k = self.classes.index(class_index)
            region = self.binary_region(class_index)
            options = {"spacing": self.spacing, "percent": self.top_percent}
            if variant in NEEDS_RUNNER_UP:
                p = np.clip(self.probabilities.astype(float), 1e-12, 1.0)
                if len(self.class_names) == 1:
                    options["logit_margin"] = float(np.log(p[0] / max(1.0 - p[0], 1e-12)))
                else:
                    runner_up = self.runner_up(class_index)
                    if runner_up not in self.classes:
                        raise ValueError(f"SegU variant {variant!r} needs the map of class {runner_up} (the runner-up); explain it too")
                    options["runner_up"] = self.explanation[self.classes.index(runner_up)]
                    options["logit_margin"] = float(np.log(p[class_index] / p[runner_up]))
            if variant == "distance_decay" and any_true(region):
                key = hash(region.cpu().numpy().tobytes())
                if key not in self._distances:
                    self._distances[key] = distance_to_region_mm(region, self.spacing)
                options["distance"] = self._distances[key]
            per_variant[variant] = segu(self.explanation[k], region, variant, **options)
        return per_variant[variant]

    def binary_region(self, class_index: int) -> torch.Tensor:
        """The clinical region of an explained class as a bool map ``S`` (``mask >= 0.5``),
        computed once."""
        if class_index not in self._regions:
            self._regions[class_index] = self.clinical_mask[self.classes.index(class_index)] >= 0.5
        return self._regions[class_index]

    def runner_up(self, class_index: int) -> int:
        """The most probable class other than ``class_index`` (lower index on ties)."""
        return runner_up(self.probabilities, class_index)

    @property
    def predicted_label(self) -> str:
        return self.class_names[self.predicted]

    # The normalised and SegX maps are computed when read, not stored: on a large volume
    # each is 4 bytes per voxel and class, and most callers read one class of one of them.
    @property
    def explanation_normalised(self) -> torch.Tensor:
        return normalise(self.explanation)

    @property
    def segx(self) -> torch.Tensor:
        return segx_map(self.explanation_normalised, self.clinical_mask)

    def map_of(self, layer: str, class_index: int) -> torch.Tensor:
        """One layer (``segx``, ``explanation``, ``explanation_normalised``, ``mask``) for a class,
        shape ``S``."""
        if class_index not in self.classes:
            raise ValueError(f"class {class_index} was not explained; explained: {self.classes}")
        layers = {
            "segx": lambda k: segx_map(normalise(self.explanation[k : k + 1])[0], self.clinical_mask[k]),
            "explanation": lambda k: self.explanation[k],
            "explanation_normalised": lambda k: normalise(self.explanation[k : k + 1])[0],
            "mask": lambda k: self.clinical_mask[k],
        }
        if layer not in layers:
            raise ValueError(f"unknown layer {layer!r}; choose one of {sorted(layers)}")
        return layers[layer](self.classes.index(class_index))


def runner_up(probabilities: np.ndarray, class_index: int) -> int:
    """The most probable class of ``probabilities (C,)`` other than ``class_index`` (lower
    index on ties)."""
    others = np.delete(np.arange(len(probabilities)), class_index)
    return int(others[np.argmax(probabilities[others])])


def _segment_all(pair: ModelPair, images: list[Image], device: torch.device, prepared: list[Prepared] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Segmenter on each image -> ``(probabilities (L, *S), labels (*S))`` on its grid,
    through the segmenter's pipeline (its inferer, then every preprocessing step undone);
    one batched forward when the preprocessed inputs share a shape. ``prepared``: the
    images already through an equal pipeline (the classifier's)."""
    pipeline = pair.segmenter_input
    prepared = prepared or [pipeline.prepare(image.array, image.affine) for image in images]
    xs = [p.input[None].to(device) for p in prepared]
    network = onnxrt.runner(pair.segmenter, device)
    if len({tuple(x.shape) for x in xs}) == 1:
        outputs = list(pipeline.run(network, torch.cat(xs)))
    else:
        outputs = [pipeline.run(network, x)[0] for x in xs]
    nearest = pair.segmenter_output == "label"
    return [_segmenter_output(pair, pipeline.postprocess(output.float(), p, nearest)) for output, p in zip(outputs, prepared)]


def _segmenter_output(pair: ModelPair, output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One segmenter output on the image grid ``(L, *S)`` -> ``(probabilities (L, *S),
    labels (*S))``. A label-map segmenter has no probabilities (``None``): its regions come
    from the labels alone (a one-hot map on the source grid would cost 4 bytes per voxel and
    label: 19 GB for a 105-label CT bundle)."""
    if pair.segmenter_output == "label":
        labels = output[0].round()
        n_labels = max(int(labels.max()) + 1, max(pair.segment_names, default=0) + 1)
        return None, labels.to(_label_dtype(n_labels))
    if output.shape[0] == 1:
        foreground = output[0] if pair.segmenter_output == "probabilities" else output[0].sigmoid()
        probabilities = torch.stack([1 - foreground, foreground])
    else:
        probabilities = output if pair.segmenter_output == "probabilities" else _softmax_(output)
    return probabilities, _argmax_channels(probabilities)


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over axis 0 of ``(L, *S)`` in place (``Tensor.softmax`` makes a copy of the
    L label maps on the image grid: 4 L bytes per voxel)."""
    logits.sub_(logits.amax(0, keepdim=True)).exp_()
    return logits.div_(logits.sum(0, keepdim=True))


def _classify_explain(pair: ModelPair, xs: list[torch.Tensor], indices: list[int], method: str) -> tuple[torch.Tensor, list[torch.Tensor], str]:
    """Classifier inputs ``(1, C_in, *s)`` -> ``(logits (B, C), maps (K, *s') per image,
    method used)``; Grad-CAM runs once on the batch when the inputs share a shape."""
    if method == "gradcam" and len({tuple(x.shape) for x in xs}) == 1:
        logits, maps, used = gradcam_batch(pair.classifier, torch.cat(xs), indices, pair.target_layer)
        return logits, list(maps), used
    outputs = [explain_classes(pair.classifier, x, indices, method, pair.target_layer) for x in xs]
    return torch.stack([o.logits for o in outputs]), [o.maps for o in outputs], outputs[0].method


def _label_dtype(n_labels: int) -> torch.dtype:
    """uint8 for label values 0..255, else int64."""
    return torch.uint8 if n_labels <= 256 else torch.long


def _argmax_channels(probabilities: torch.Tensor) -> torch.Tensor:
    """``probabilities.argmax(0)`` for ``(L, *S)`` as ``L - 1`` elementwise comparisons
    (torch's reduction over the outer axis is ~10x slower on CPU); ties -> lower label."""
    labels = torch.zeros(probabilities.shape[1:], dtype=_label_dtype(probabilities.shape[0]), device=probabilities.device)
    best = probabilities[0]
    for label in range(1, probabilities.shape[0]):
        better = probabilities[label] > best
        labels[better] = label
        best = torch.maximum(best, probabilities[label])
    return labels


def explain(
    pair: ModelPair,
    image: "str | Path | np.ndarray | torch.Tensor | Image",
    classes: Sequence[int | str] | None = None,
    method: str = "gradcam",
    spacing: Sequence[float] | None = None,
    margin_mm: float = 0.0,
    soft_mask: bool = False,
    variants: Sequence[str] | None = None,
    top_percent: float = 5.0,
    device: str | torch.device = "cpu",
    autocast: bool = False,
    max_voxels: int = MAX_VOXELS,
) -> SegXResult:
    """Explain a classifier's decision on one image and align it with the clinical region.

    Args:
        pair: the classifier + segmenter description.
        image: file path (NIfTI, NRRD, MHA, PNG, JPEG, DICOM), or array/tensor ``(C, *S)``
            or ``S`` (one channel). Files keep their voxel index order (MONAI's readers:
            ``(W, H)`` for pictures, ``(X, Y, Z)`` for volumes); arrays their own.
        classes: classes to explain (names or indices); default all classes.
        method: an explanation method of :data:`segx.explainers.METHODS`.
        spacing: voxel size in mm for array input (files carry their own).
        margin_mm: grow each clinical region by this many mm before refining.
        soft_mask: multiply by the region's probability instead of the binary region.
        variants: SegU variants computed now for every explained class (default: the
            pair's ``certainty_variant``, for the predicted class); others are computed on
            demand by :meth:`SegXResult.certainty_of` without running the networks.
        top_percent: k of the top-k % rule used by the ``topk_inside`` variant.
        device: ``cpu``, ``cuda`` or a torch device; the pair is moved there.
        autocast: run the networks under float16 autocast (CUDA only).
        max_voxels: refuse larger images (per channel).

    Returns:
        a :class:`SegXResult` on the image's grid.
    """
    image = as_image(image, pair.spatial_dims, tuple(spacing) if spacing else None)
    return explain_many(pair, [image], classes, method, margin_mm, soft_mask, variants, top_percent, device, autocast, max_voxels)[0]


def explain_many(
    pair: ModelPair,
    images: "Sequence[str | Path | np.ndarray | torch.Tensor | Image]",
    classes: "Sequence[int | str] | str | None" = None,
    method: str = "gradcam",
    margin_mm: float = 0.0,
    soft_mask: bool = False,
    variants: Sequence[str] | None = None,
    top_percent: float = 5.0,
    device: str | torch.device = "cpu",
    autocast: bool = False,
    max_voxels: int = MAX_VOXELS,
) -> list[SegXResult]:
    """:func:`explain` for several images at once (arrays are taken at 1 mm spacing; pass
    :class:`~segx.imageio.Image` objects for other spacings). With Grad-CAM the classifier
    and the segmenter each run once on the whole batch when the preprocessed inputs share a
    shape (a fixed ``spatial_size``), otherwise image by image; results are the same either
    way. Each result's ``timings`` are those of the batch. ``classes="predicted"`` keeps
    each image's predicted class and its runner-up (enough for every SegU variant): the
    maps of all classes come from the same pass, only these two are resampled and refined."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    device = torch.device(device)
    if autocast and device.type != "cuda":
        raise ValueError("autocast is supported on CUDA devices only")
    images = [as_image(image, pair.spatial_dims) for image in images]
    for image in images:
        if int(np.prod(image.spatial_shape)) > max_voxels:
            raise ValueError(f"image of {image.spatial_shape} voxels exceeds the limit of {max_voxels} voxels")
    only_predicted = classes == "predicted"
    indices = list(range(len(pair.class_names))) if classes is None or only_predicted else [pair.class_index(c) for c in classes]
    if not indices:
        raise ValueError("no class to explain")
    requested_variants = bool(variants)
    variants = list(variants or [pair.certainty_variant])
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown SegU variant {unknown}; choose from {sorted(VARIANTS)}")
    pair.to(device)
    amp = torch.autocast("cuda", dtype=torch.float16) if autocast else contextlib.nullcontext()
    timings["load"] = time.perf_counter() - start

    tick = time.perf_counter()
    with amp:
        prepared = [pair.classifier_input.prepare(image.array, image.affine) for image in images]
        xs = [p.input[None].to(device) for p in prepared]
        logits, maps, used = _classify_explain(pair, xs, indices, method)
    logits = logits.double()  # float64 probabilities keep saturated classes apart for ranking (AUROC)
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the classifier produced non-finite outputs for this image: are its intensities in a sensible range?")
    all_probabilities = logits.sigmoid() if pair.multi_label else logits.softmax(1)
    explained = []
    needs_runner_up = (only_predicted or bool(set(variants + [pair.certainty_variant]) & set(NEEDS_RUNNER_UP))) and len(pair.class_names) > 1
    for x, p, probabilities, image_maps in zip(xs, prepared, all_probabilities, maps):
        predicted, image_indices = int(probabilities.argmax()), list(indices)
        image_maps = image_maps.float()
        needed = [predicted] + ([runner_up(probabilities.detach().cpu().numpy(), predicted)] if needs_runner_up else [])
        missing = [c for c in needed if c not in image_indices]  # the headline certainty needs these maps
        if missing:
            with amp:
                extra = explain_classes(pair.classifier, x, missing, method, pair.target_layer).maps.float()
            image_maps, image_indices = torch.cat([image_maps, extra]), image_indices + missing
        if only_predicted:  # every class's map came from the same pass; only these go on
            image_maps, image_indices = image_maps[[image_indices.index(c) for c in needed]], needed
        on_input = resize(image_maps, x.shape[2:])  # the explainer's grid -> the network input's (the one grid-to-grid mapping)
        grid = {"maps": list(image_maps.shape[1:]), "input": list(x.shape[2:])}
        explained.append((probabilities, predicted, image_indices, pair.classifier_input.restore(on_input, p).float(), grid))
    timings["classify_explain"] = time.perf_counter() - tick

    tick = time.perf_counter()
    with torch.no_grad(), amp:
        segmented = _segment_all(pair, images, device, prepared if pair.segmenter_input == pair.classifier_input else None)
    timings["segment"] = time.perf_counter() - tick

    geometry = [(image.spacing, image.affine) for image in images]
    del images, prepared, xs  # the decoded images are not needed any more (memory: 4+ bytes per voxel)
    results = []
    for i, ((spacing, affine), (probabilities, predicted, image_indices, raw, grid)) in enumerate(zip(geometry, explained)):
        tick = time.perf_counter()
        (region_probabilities, segmentation), segmented[i] = segmented[i], None  # probabilities: freed after the regions
        regions: dict[tuple, torch.Tensor] = {}  # classes sharing segmenter labels share a region
        for c in image_indices:
            key = tuple(pair.region_of(c))
            if key not in regions:
                regions[key] = _clinical_region(pair, c, segmentation, region_probabilities, margin_mm, spacing, soft_mask)
        del region_probabilities
        clinical_mask = torch.stack([regions[tuple(pair.region_of(c))] for c in image_indices])
        result = SegXResult(
            class_names=list(pair.class_names),
            probabilities=probabilities.detach().cpu().numpy(),
            predicted=predicted,
            classes=image_indices,
            method=used,
            explanation=raw,
            clinical_mask=clinical_mask,
            segmentation=segmentation,
            segment_names=dict(pair.segment_names),
            certainty={},
            segu=None,
            level=None,
            spacing=spacing,
            affine=affine,
            timings=dict(timings),
            top_percent=top_percent,
            explanation_grid=grid,
        )
        result.timings["refine"] = time.perf_counter() - tick
        tick = time.perf_counter()
        for c in image_indices if requested_variants else [predicted]:  # any other: on demand
            for variant in variants:
                result.certainty_of(c, variant)
        result.segu = result.certainty_of(predicted, pair.certainty_variant)
        if pair.levels and pair.levels.variant == result.segu.variant:
            result.level = pair.levels.level(result.segu.value)
        result.timings["certainty"] = time.perf_counter() - tick
        result.timings["total"] = time.perf_counter() - start
        results.append(result)
    return results


def _clinical_region(
    pair: ModelPair,
    class_index: int,
    segmentation: torch.Tensor,
    probabilities: torch.Tensor | None,
    margin_mm: float,
    spacing: Sequence[float],
    soft: bool,
) -> torch.Tensor:
    """Clinical region of a class on the image grid, float ``(*S)``.

    Binary: the class's segmenter labels, grown by ``margin_mm``. Soft: the summed
    probability of those labels ``(L, *S) -> (*S)``, raised to 1 inside the grown region
    when a margin is set (a label-map segmenter, ``probabilities`` None: the binary region).
    """
    labels = pair.region_of(class_index)
    region = torch.isin(segmentation, torch.as_tensor(labels, device=segmentation.device))
    region = expand_region(region, margin_mm, spacing).float()
    if not soft:
        return region
    if probabilities is None:  # a label-map segmenter: its labels are certain
        return region
    present = [label for label in labels if label < probabilities.shape[0]]
    soft_region = probabilities[present].sum(0).clamp(0, 1) if present else torch.zeros_like(region)
    return torch.maximum(soft_region, region) if margin_mm > 0 else soft_region
