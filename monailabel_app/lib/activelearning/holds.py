"""Annotators' holds, one rule for every strategy the server offers.

MONAI Label's active-learning route records, in an image's info, which client got it from
which strategy and when (``strategy.<name>.client_id`` and ``ts``). An image another
client got from *any* strategy less than ``hold_seconds`` ago is held: no strategy gives it
out. A client releases an image it holds by naming it in ``release`` (a skip: the image is
not given back in the same answer, and other annotators may have it at once). A request
that names its ``model`` is given only images with that model's number of spatial axes
(MONAI Label's ``random``, ``first`` and ``epistemic`` do not look at the model: on a
datastore of 2D pictures and 3D volumes they would give a 3D model's annotator a picture).
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from segx.headers import spatial_dims

logger = logging.getLogger(__name__)


@lru_cache(maxsize=None)
def image_axes(path: str) -> int | None:
    """The spatial axes of the image at ``path`` (:func:`segx.headers.spatial_dims`; None:
    unreadable), read once for every strategy."""
    try:
        return spatial_dims(path)
    except (ValueError, OSError) as error:
        logger.warning(f"active learning: {Path(path).name} left out: {error}")
        return None


def holder(info: dict, hold_seconds: float, now: float) -> str | None:
    """The client holding an image (by its datastore ``info``), or None."""
    records = [r for r in info.get("strategy", {}).values() if isinstance(r, dict) and r.get("client_id")]
    recent = [r for r in records if now - float(r.get("ts", 0)) < hold_seconds]
    return str(max(recent, key=lambda r: float(r.get("ts", 0)))["client_id"]) if recent else None


def release(datastore: Datastore, image_id: str, client: str) -> None:
    """End ``client``'s hold on ``image_id`` (its records' time set to 0; other clients'
    records are left alone)."""
    info = datastore.get_image_info(image_id)
    records = {name: dict(r, ts=0) if isinstance(r, dict) and str(r.get("client_id")) == client else r for name, r in info.get("strategy", {}).items()}
    datastore.update_image_info(image_id, {"strategy": records})


class _Without:
    """A datastore whose unlabeled images leave some out (the held and the released ones);
    everything else is the datastore's."""

    def __init__(self, datastore: Datastore, left_out: set[str]):
        self._datastore, self._left_out = datastore, left_out

    def get_unlabeled_images(self, *args, **kwargs):
        return [i for i in self._datastore.get_unlabeled_images(*args, **kwargs) if i not in self._left_out]

    def __getattr__(self, name):
        return getattr(self._datastore, name)


class Held(Strategy):
    """``strategy`` (any :class:`Strategy`, MONAI Label's own as they ship) over the
    unlabeled images no other client holds, after ``release`` of the request's image."""

    def __init__(self, strategy: Strategy, hold_seconds: float, model_dims: dict[str, int]):
        super().__init__(f"{strategy.description} (not an image another annotator holds, nor one the named model cannot take; 'release' skips one)")
        self.strategy, self.hold_seconds, self.model_dims = strategy, hold_seconds, model_dims

    def __call__(self, request, datastore: Datastore):
        client = str(request.get("client_id") or "")
        dims = self.model_dims.get(str(request.get("model") or ""))
        left_out = set()
        if request.get("release"):
            release(datastore, str(request["release"]), client)
            left_out.add(str(request["release"]))
        now = time.time()
        for image_id in datastore.get_unlabeled_images():
            owner = holder(datastore.get_image_info(image_id), self.hold_seconds, now)
            if owner not in (None, client) or (dims is not None and image_axes(datastore.get_image_uri(image_id)) != dims):
                left_out.add(image_id)
        return self.strategy(request, _Without(datastore, left_out))
