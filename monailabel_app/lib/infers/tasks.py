"""The three infer tasks of every model configuration: classification, segmentation and
SegX/SegU. All three read from the model's shared, cached :class:`ModelRuntime`."""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from segx import METHODS, VARIANTS
from segx.explainers import INPUT_METHODS, default_method, is_scripted
from segx.formats.export import save_volume

from .runtime import ModelRuntime, run_in_torch_thread

LAYERS = ("segx", "explanation", "mask")
EXTENSIONS = (".nrrd", ".nii.gz", ".nii", ".mha")


def _param(request: dict, key: str, default: Any) -> Any:
    value = request.get(key)
    return default if value in (None, "") else value


def _write(array, affine, request: dict, dtype) -> str:
    extension = _param(request, "result_extension", ".nrrd")
    if extension not in EXTENSIONS:
        raise ValueError(f"unsupported result_extension {extension!r}; choose one of {EXTENSIONS}")
    path = tempfile.NamedTemporaryFile(suffix=extension, delete=False).name
    return str(save_volume(path, array, affine, dtype=dtype))


class _SegXTask(InferTask):
    """Common part: the runtime, validity and the task description."""

    kind: str = ""
    infer_type: str = InferType.OTHERS

    def __init__(self, runtime: ModelRuntime, description: str, config: dict | None = None):
        pair = runtime.pair
        labels = pair.class_names if self.kind != "segmentation" else {n: v for v, n in pair.segment_names.items()}
        super().__init__(self.infer_type, labels, pair.spatial_dims, description, config)
        self.runtime = runtime

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        """Answer in the process's torch thread (see :class:`ModelRuntime`):
        ``(result file or None, JSON)``."""
        return run_in_torch_thread(self.respond, request)

    @property
    def methods(self) -> tuple[str, ...]:
        """The explanation methods this model supports (no CAM without forward hooks)."""
        return INPUT_METHODS if is_scripted(self.runtime.pair.classifier) else METHODS

    def check(self, request: dict) -> None:
        """Refuse bad params before any work (``ValueError`` with the reason)."""
        method = _param(request, "method", default_method(self.runtime.pair.classifier))
        if method not in METHODS:
            raise ValueError(f"unknown explanation method {method!r}; choose one of {self.methods}")
        if method not in self.methods:
            raise ValueError(f"explanation method {method!r} needs forward hooks, which {self.runtime.name}'s TorchScript classifier "
                             f"does not support; choose one of {self.methods}")  # fmt: skip

    def _result(self, request: dict):
        self.check(request)
        method = _param(request, "method", default_method(self.runtime.pair.classifier))
        return self.runtime.explain(request["image"], method, float(_param(request, "margin_mm", 0.0)))


class ClassificationTask(_SegXTask):
    """Class probabilities: ``{"prediction": [{"idx", "label", "score"}, ...]}``, most probable first."""

    kind = "classification"
    infer_type = InferType.CLASSIFICATION

    def respond(self, request):
        result = self._result(request)
        order = np.argsort(-result.probabilities, kind="stable")
        prediction = [{"idx": int(i), "label": result.class_names[i], "score": float(result.probabilities[i])} for i in order]
        return None, {"prediction": prediction, "latencies": result.timings}


class SegmentationTask(_SegXTask):
    """The segmenter's label map (uint8, named labels) in the source geometry."""

    kind = "segmentation"
    infer_type = InferType.SEGMENTATION

    def respond(self, request):
        result = self._result(request)
        path = _write(result.segmentation, result.affine, request, np.uint8)
        names = {name: value for value, name in result.segment_names.items()}
        return path, {"label_names": names, "latencies": result.timings}


class SegXTask(_SegXTask):
    """SegX heatmap (float32 whatever ``result_dtype`` says) for one class, with SegU.

    Params: ``class`` (name or index; default the predicted class), ``method``,
    ``variant`` (SegU), ``layer`` (``segx``, ``explanation`` or ``mask``), ``margin_mm``.
    """

    kind = "segx"

    def __init__(self, runtime: ModelRuntime, description: str):
        super().__init__(
            runtime,
            description,
            config={"class": "", "method": default_method(runtime.pair.classifier), "variant": runtime.pair.certainty_variant, "layer": "segx"},
        )

    def check(self, request: dict) -> None:
        super().check(request)
        variant = _param(request, "variant", self.runtime.pair.certainty_variant)
        if variant not in VARIANTS:
            raise ValueError(f"unknown SegU variant {variant!r}; choose one of {sorted(VARIANTS)}")
        layer = _param(request, "layer", "segx")
        if layer not in LAYERS:
            raise ValueError(f"unknown layer {layer!r}; choose one of {LAYERS}")
        if _param(request, "class", None) is not None:
            self.runtime.pair.class_index(_param(request, "class", None))

    def _chosen(self, request: dict):
        """The (cached) result with the requested class index, SegU variant, the
        predicted class's certainty and its level (None when not calibrated)."""
        pair = self.runtime.pair
        variant = _param(request, "variant", pair.certainty_variant)
        requested = _param(request, "class", None)
        result = self._result(request)
        class_index = pair.class_index(requested) if requested is not None else result.predicted
        certainty = result.certainty_of(result.predicted, variant)
        level = pair.levels.level(certainty.value) if pair.levels and pair.levels.variant == variant else None
        return result, class_index, variant, certainty, level

    def dicom_objects(self, request: dict, series, sink) -> dict:
        """SEG, Parametric Maps and SR of the request's result on its source DICOM
        ``series`` (see :func:`segx.formats.dicom.result_objects`), each passed to ``sink`` as soon
        as it is built; the networks run only when the result is not cached."""
        from segx import __version__
        from segx.formats.dicom import Provenance, result_objects

        def build():
            result, class_index, variant, _, level = self._chosen(request)
            provenance = Provenance(self.runtime.name, self.runtime.weights_digest, __version__)
            objects = {}
            for name, dataset in result_objects(result, class_index, series, provenance, variant, level):
                objects[name] = dataset
                sink(dataset)
            return objects

        return run_in_torch_thread(build)

    def respond(self, request):
        layer = _param(request, "layer", "segx")
        result, class_index, variant, predicted_certainty, level = self._chosen(request)
        layer_map = result.map_of("explanation_normalised" if layer == "explanation" else layer, class_index)
        path = _write(layer_map, result.affine, request, np.uint8 if layer == "mask" else np.float32)
        return path, {
            "label_names": result.class_names,
            "probabilities": {n: float(p) for n, p in zip(result.class_names, result.probabilities)},
            "predicted": result.predicted_label,
            "class": result.class_names[class_index],
            "layer": layer,
            "method": result.method,
            "segu": {
                "certainty": predicted_certainty.value,
                "level": level,
                "variant": variant,
                "reason": predicted_certainty.reason,
            },
            "certainty_per_class": {result.class_names[c]: result.certainty_of(c, variant).value for c in result.classes},
            "latencies": result.timings,
        }


def infer_tasks(runtime: ModelRuntime) -> dict[str, InferTask]:
    """``NAME_classification``, ``NAME_segmentation`` and ``NAME_segx`` for one model."""
    name = runtime.name
    return {
        f"{name}_classification": ClassificationTask(runtime, f"{name}: class probabilities"),
        f"{name}_segmentation": SegmentationTask(runtime, f"{name}: clinical region label map"),
        f"{name}_segx": SegXTask(runtime, f"{name}: SegX heatmap aligned to the clinical region, with SegU certainty"),
    }
