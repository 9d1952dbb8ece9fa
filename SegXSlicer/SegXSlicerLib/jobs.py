"""The module's server round trips, written as worker jobs: plain data in, plain data out,
no Qt and no MRML (see :mod:`.worker`). Each takes the job's context first."""

import time
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from .client import SegXClient, ServerError
from .results import Readout, parse_segx_reply
from .volumeio import decode_nrrd, encode_nrrd, encode_png, encode_volume
from .worker import JobContext

#: Active learning strategy of the SegX server: lowest SegU certainty first.
STRATEGY = "segu_lowest_certainty"


@dataclass
class VolumeData:
    """A volume copied out of the scene on the main thread.

    Attributes:
        array: voxels ``(K, J, I)`` or ``(K, J, I, C)`` (Slicer's ``arrayFromVolume`` order).
        ijk_to_ras: 4x4 IJK-to-RAS matrix.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray


@dataclass
class Explanation:
    """Everything one Run brings back, on the uploaded volume's voxel grid ``(K, J, I)``.

    Attributes:
        readout: prediction, probabilities and certainty.
        heatmaps: ``"segx"`` and ``"explanation"`` (raw, normalised) float32 maps.
        region: the segmenter's label map (uint8); ``segment_names`` its value -> name.
    """

    model: str
    readout: Readout
    heatmaps: Dict[str, np.ndarray]
    region: np.ndarray
    segment_names: Dict[int, str]


def _on_grid(content: bytes, shape, what: str) -> np.ndarray:
    if not content:
        raise ServerError(f"the server sent no {what} image")
    array, _ = decode_nrrd(content)
    if array.shape != tuple(shape):
        raise ServerError(f"the server's {what} has shape {array.shape}, the volume {tuple(shape)}")
    return array


def explain(
    context: JobContext,
    client: SegXClient,
    model: str,
    volume: VolumeData,
    class_name: Optional[str] = None,
    method: str = "gradcam",
) -> Explanation:
    """Upload ``volume`` and fetch the SegX map, the raw explanation and the clinical
    region of ``class_name`` (default: the predicted class) with ``method``. The server
    caches results by image content, so only the first request runs the networks."""
    context.report(0.05, "preparing the upload")
    file_name, content = encode_volume(volume.array, volume.ijk_to_ras)
    grid = volume.array.shape[:3]
    params = {"method": method}
    if class_name:
        params["class"] = class_name
    context.report(0.1, f"{model}: classifying, explaining, segmenting on the server")
    reply, segx = client.infer(f"{model}_segx", file_name, content, dict(params, layer="segx"))
    readout = parse_segx_reply(reply)
    context.report(0.7, "fetching the raw explanation")
    _, raw = client.infer(f"{model}_segx", file_name, content, dict(params, layer="explanation"))
    context.report(0.85, "fetching the clinical region")
    region_reply, region = client.infer(f"{model}_segmentation", file_name, content, {})
    names = {int(value): str(name) for name, value in region_reply.get("label_names", {}).items()}
    context.report(0.95, "reading the maps")
    return Explanation(
        model=model,
        readout=readout,
        heatmaps={"segx": _on_grid(segx, grid, "SegX map"), "explanation": _on_grid(raw, grid, "raw explanation")},
        region=_on_grid(region, grid, "clinical region").astype(np.uint8),
        segment_names=names,
    )


@dataclass
class Sample:
    """The next image to label: its datastore id, the strategy's reply and the file."""

    image_id: str
    reply: dict
    file_name: str
    content: bytes


def next_sample(context: JobContext, client: SegXClient, model: Optional[str]) -> Optional[Sample]:
    """The unlabeled image with the lowest SegU certainty and its file, or ``None`` when
    every image is labelled."""
    context.report(0.1, "asking the server for the least certain unlabeled image")
    reply = client.next_sample(STRATEGY, model)
    if not reply.get("id"):
        return None
    context.report(0.6, f"downloading {reply['id']}")
    file_name, content = client.download_image(reply["id"])
    return Sample(str(reply["id"]), reply, file_name, content)


def submit_label(context: JobContext, client: SegXClient, image_id: str, labels: np.ndarray, ijk_to_ras: np.ndarray) -> dict:
    """Save a label map ``(K, J, I)`` (uint8 label values) as the ``final`` label of a
    datastore image: PNG for a single slice (the grid of a 2D image), else NRRD."""
    labels = np.asarray(labels, dtype=np.uint8)
    context.report(0.2, f"uploading the label of {image_id}")
    if labels.shape[0] == 1:
        return client.save_label(image_id, "label.png", encode_png(labels))
    return client.save_label(image_id, "label.nrrd", encode_nrrd(labels, ijk_to_ras, compress=True))


def train(context: JobContext, client: SegXClient, trainer: str, params: Optional[dict] = None, poll_seconds: float = 2.0) -> dict:
    """Start ``trainer`` and wait until it finishes. Cancelling stops the training on the
    server.

    Returns:
        the final ``GET /train/`` status.

    Raises:
        ServerError: the training failed on the server.
    """
    context.report(0.05, f"starting {trainer}")
    client.train(trainer, params)
    started = time.monotonic()
    while True:
        try:
            context.report(0.5, f"{trainer}: training for {time.monotonic() - started:.0f} s")
            time.sleep(poll_seconds)
            context.check()
        except Exception:
            client.stop_training()
            raise
        status = client.train_status()
        state = str(status.get("status", "")).upper()
        if state not in ("RUNNING", "SUBMITTED", "QUEUED"):
            if state != "DONE":
                raise ServerError(f"{trainer} ended with status {state or 'unknown'}: {status.get('details', '')!s:.300}")
            return status
