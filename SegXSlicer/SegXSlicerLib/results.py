"""What the server said, as the module shows it: the SegX-capable models of ``/info`` and
the readouts of one SegX reply (prediction, probability table, SegU certainty with a
traffic-light level and the server's reason, per-class certainty)."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .client import ServerError

#: Traffic-light colour per calibrated certainty level; ``None``: thresholds not calibrated.
LEVEL_COLOURS = {"high": "#2e7d32", "medium": "#f9a825", "low": "#c62828", None: "#757575"}


@dataclass
class ModelInfo:
    """One model configuration that offers SegX (``NAME_segx`` in ``/info``).

    Attributes:
        name: ``NAME``; the tasks are ``NAME_segx`` and ``NAME_segmentation``.
        classes: the classifier's class names, in index order.
        dimension: 2 or 3.
        segment_names: segmenter label value -> name (``{1: "liver", 2: "kidney"}``).
        trainer: the segmenter's trainer (``NAME_segmenter``), or ``None`` when the
            server cannot train it (e.g. a TorchScript segmenter).
    """

    name: str
    classes: List[str]
    dimension: int
    segment_names: Dict[int, str] = field(default_factory=dict)
    trainer: Optional[str] = None


def segx_models(info: dict) -> List[ModelInfo]:
    """The SegX-capable models of an ``/info`` reply, sorted by name."""
    tasks = info.get("models", {})
    trainers = info.get("trainers", {})
    models = []
    for task_name, task in sorted(tasks.items()):
        if not task_name.endswith("_segx"):
            continue
        name = task_name[: -len("_segx")]
        labels = tasks.get(f"{name}_segmentation", {}).get("labels", {})
        segment_names = {int(value): label for label, value in labels.items()} if isinstance(labels, dict) else {}
        models.append(
            ModelInfo(
                name=name,
                classes=[str(label) for label in task.get("labels", [])],
                dimension=int(task.get("dimension", 3)),
                segment_names=segment_names,
                trainer=f"{name}_segmenter" if f"{name}_segmenter" in trainers else None,
            )
        )
    return models


def unavailable_models(info: dict) -> Dict[str, str]:
    """Model name -> why the server cannot run it (e.g. a missing weight file)."""
    return {str(name): str(reason) for name, reason in info.get("unavailable_models", {}).items()}


@dataclass
class ProbabilityRow:
    """One row of the probability table."""

    label: str
    probability: float
    certainty: Optional[float]
    predicted: bool


@dataclass
class Readout:
    """The readouts of one ``NAME_segx`` reply.

    Attributes:
        predicted: the predicted class; ``explained``: the class the map explains.
        probabilities: class -> probability, in the server's class order.
        certainty: SegU certainty of the predicted class in [0, 1]; ``level`` its
            calibrated level (``high``/``medium``/``low``, ``None`` if not calibrated);
            ``variant`` the SegU variant; ``reason`` the server's one-line explanation.
        certainty_per_class: class -> SegU certainty of that class's explanation.
    """

    predicted: str
    explained: str
    method: str
    layer: str
    probabilities: Dict[str, float]
    certainty: float
    level: Optional[str]
    variant: str
    reason: str
    certainty_per_class: Dict[str, float]
    latencies: Dict[str, float]

    def probability_rows(self) -> List[ProbabilityRow]:
        """All classes, most probable first (ties keep the server's order)."""
        rows = [
            ProbabilityRow(label, p, self.certainty_per_class.get(label), label == self.predicted)
            for label, p in self.probabilities.items()
        ]
        return sorted(rows, key=lambda row: -row.probability)

    def prediction_text(self) -> str:
        """``"melanoma (p = 0.91)"``."""
        return f"{self.predicted} (p = {self.probabilities.get(self.predicted, float('nan')):.2f})"

    def certainty_text(self) -> str:
        """``"0.42 (low)"``, or ``"0.42 (not calibrated)"`` without level thresholds."""
        return f"{self.certainty:.2f} ({self.level or 'not calibrated'})"

    def level_colour(self) -> str:
        """Traffic-light colour (``#rrggbb``) of the certainty level."""
        return LEVEL_COLOURS.get(self.level, LEVEL_COLOURS[None])


def parse_segx_reply(reply: dict) -> Readout:
    """A :class:`Readout` from the ``params`` JSON of a ``NAME_segx`` reply.

    Raises:
        ServerError: a field is missing or has the wrong type.
    """
    try:
        segu = reply["segu"]
        probabilities = {str(k): float(v) for k, v in reply["probabilities"].items()}
        return Readout(
            predicted=str(reply["predicted"]),
            explained=str(reply.get("class", reply["predicted"])),
            method=str(reply.get("method", "")),
            layer=str(reply.get("layer", "segx")),
            probabilities=probabilities,
            certainty=float(segu["certainty"]),
            level=segu.get("level"),
            variant=str(segu.get("variant", "")),
            reason=str(segu.get("reason", "")),
            certainty_per_class={str(k): float(v) for k, v in reply.get("certainty_per_class", {}).items()},
            latencies={str(k): float(v) for k, v in reply.get("latencies", {}).items() if isinstance(v, (int, float))},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ServerError(f"the SegX reply is incomplete or malformed ({type(error).__name__}: {error})") from None
