"""Active learning with SegU: score unlabeled images by certainty, label the least certain
first.

Scores live in each image's datastore info under ``segu``::

    {"segu": {"<model>": {"certainty": 0.42, "level": "low", "variant": "mass_inside",
                          "predicted": "mel", "weights": "<digest of the weights>"}}}
"""

from __future__ import annotations

import logging
import threading

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from segx.explainers import default_method

from ..infers.runtime import ModelRuntime
from ..security import public

logger = logging.getLogger(__name__)


def _selected(runtimes: dict[str, ModelRuntime], request: dict) -> dict[str, ModelRuntime]:
    model = request.get("model")
    if model and model not in runtimes:
        raise ValueError(f"unknown model {model!r}; available: {sorted(runtimes)}")
    return {model: runtimes[model]} if model else runtimes


class SegUScoring(ScoringMethod):
    """Write each unlabeled image's SegU certainty (per model) into its datastore info.
    Images already scored with the current weights of a model are skipped."""

    def __init__(self, runtimes: dict[str, ModelRuntime]):
        super().__init__("SegU certainty of every unlabeled image, per model (skips images scored with the same weights)")
        self.runtimes = runtimes
        self._one_at_a_time = threading.Lock()

    def __call__(self, request, datastore: Datastore):
        with self._one_at_a_time:  # two first calls at once: the second finds the images scored
            return self._score(request, datastore)

    def _score(self, request, datastore: Datastore):
        runtimes = _selected(self.runtimes, request)
        images = datastore.get_unlabeled_images()
        counts = {"scored": 0, "skipped": 0, "failed": 0}
        for number, image_id in enumerate(images, start=1):
            scores = dict(datastore.get_image_info(image_id).get("segu", {}))
            for name, runtime in runtimes.items():
                if scores.get(name, {}).get("weights") == runtime.weights_digest:
                    counts["skipped"] += 1
                    continue
                try:
                    result = runtime.explain(datastore.get_image_uri(image_id), default_method(runtime.pair.classifier), 0.0)
                except Exception as error:  # a 2D image for a 3D model, or a model that breaks: the others go on
                    logger.warning(f"SegU scoring: {name} on {image_id}: {type(error).__name__}: {error}")
                    scores[name] = {"error": public(f"{type(error).__name__}: {error}"), "weights": runtime.weights_digest}
                    counts["failed"] += 1
                    continue
                scores[name] = {
                    "certainty": result.segu.value,
                    "level": result.level,
                    "variant": result.segu.variant,
                    "predicted": result.predicted_label,
                    "weights": runtime.weights_digest,
                }
                counts["scored"] += 1
            datastore.update_image_info(image_id, {"segu": scores})
            logger.info(f"SegU scoring: {number}/{len(images)} {image_id}")
        return counts


class SegULowestCertainty(Strategy):
    """The unlabeled image whose prediction is least certain (lowest SegU over the models,
    or for ``model`` when the request names one). Unscored images are scored first.
    Annotators' holds are :class:`lib.activelearning.holds.Held`'s, as for every strategy."""

    name = "segu_lowest_certainty"

    def __init__(self, scoring: SegUScoring):
        super().__init__("Unlabeled image with the lowest SegU certainty first")
        self.scoring = scoring

    def __call__(self, request, datastore: Datastore):
        runtimes = _selected(self.scoring.runtimes, request)
        self.scoring({"model": request.get("model")}, datastore)
        candidates = []
        for image_id in datastore.get_unlabeled_images():
            info = datastore.get_image_info(image_id)
            for name in runtimes:
                score = info.get("segu", {}).get(name, {})
                if "certainty" in score:
                    candidates.append((score["certainty"], image_id, name, score))
        if not candidates:
            return {}
        certainty, image_id, name, score = min(candidates, key=lambda c: (c[0], c[1]))
        return {"id": image_id, "certainty": certainty, "model": name, "level": score.get("level"), "predicted": score.get("predicted")}
