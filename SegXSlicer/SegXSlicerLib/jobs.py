"""The module's server round trips, written as worker jobs: plain data in, plain data out,
no Qt and no MRML (see :mod:`.worker`). Each takes the job's context first."""

import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from .client import SegXClient, ServerError
from .results import Readout, parse_segx_reply
from .volumeio import decode_nrrd, encode_nrrd, encode_png, encode_volume
from .worker import JobContext

#: Active learning strategy *Next sample* asks unless the settings name another: MONAI
#: Label's ``random``. In replayed sessions on JSRT and HAM10000 no strategy (``first``,
#: ``epistemic``, ``segu_lowest_certainty``) needed fewer labels than it, and it needs no
#: scoring (docs/RESULTS.md, "Annotation sessions").
STRATEGY = "random"


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
class Upload:
    """A volume uploaded once per Run (a MONAI Label session), kept to upload it again if
    the session expires before the last layer is fetched.

    Attributes:
        file_name, content: what was sent (gzip NRRD, or PNG for a colour photograph).
        grid: the volume's voxel grid ``(K, J, I)``; every map must come back on it.
        ijk_to_ras: the geometry the server reads from the file, which every map must
            come back with; ``None`` for PNG (a photograph has no geometry to check).
        session_id: the server's id of the upload.
    """

    file_name: str
    content: bytes
    grid: Tuple[int, int, int]
    ijk_to_ras: Optional[np.ndarray]
    session_id: str = ""


@dataclass
class Explanation:
    """Everything one Run brings back, on the uploaded volume's voxel grid ``(K, J, I)``.

    Attributes:
        readout: prediction, probabilities and certainty.
        heatmaps: float32 maps fetched so far by layer: ``"segx"`` (explanation x
            clinical region) always, ``"explanation"`` (raw, normalised) once shown.
        region: the segmenter's label map (uint8); ``segment_names`` its value -> name.
        upload: the uploaded volume; ``params`` the request (class, method) that the
            other layers are fetched with.
    """

    model: str
    readout: Readout
    heatmaps: Dict[str, np.ndarray]
    region: np.ndarray
    segment_names: Dict[int, str]
    upload: Optional[Upload] = None
    params: Dict[str, str] = field(default_factory=dict)


def same_geometry(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two IJK-to-RAS matrices agree to 1e-4 of their largest entry (at least
    1e-4 mm): NRRD text and float32 round-offs pass, a swapped or flipped axis does not."""
    tolerance = 1e-4 * max(float(np.abs(b).max()), 1.0)
    return bool(np.allclose(a, b, rtol=0.0, atol=tolerance))


def _on_grid(content: bytes, sent: Upload, what: str) -> np.ndarray:
    """The map in a reply, checked against the upload: same grid and same geometry."""
    if not content:
        raise ServerError(f"the server sent no {what} image")
    array, ijk_to_ras = decode_nrrd(content)
    if array.shape != tuple(sent.grid):
        raise ServerError(f"the server's {what} has shape {array.shape}, the volume {tuple(sent.grid)}")
    if sent.ijk_to_ras is not None and not same_geometry(ijk_to_ras, sent.ijk_to_ras):
        raise ServerError(
            f"the server's {what} is not in the volume's geometry (IJK-to-RAS {np.round(ijk_to_ras, 4).tolist()} "
            f"instead of {np.round(sent.ijk_to_ras, 4).tolist()}): an axis was swapped or flipped"
        )
    return array


def upload(context: JobContext, client: SegXClient, volume: VolumeData) -> Upload:
    """Upload ``volume`` once as a MONAI Label session: gzip NRRD (PNG for a colour
    photograph)."""
    context.report(0.02, "compressing the volume")
    file_name, content = encode_volume(volume.array, volume.ijk_to_ras)
    geometry = None if file_name.endswith(".png") else np.asarray(volume.ijk_to_ras, dtype=float)
    sent = Upload(file_name, content, tuple(volume.array.shape[:3]), geometry)
    context.report(0.05, f"uploading {len(content) / 2**20:.1f} MiB")
    sent.session_id = client.create_session(file_name, content)
    return sent


def _infer(client: SegXClient, task: str, sent: Upload, params: dict) -> Tuple[dict, bytes]:
    """``task`` on the uploaded session; a session that expired is uploaded again once."""
    try:
        return client.infer(task, params, session_id=sent.session_id)
    except ServerError as error:
        if error.status != 404 or "session" not in (error.detail or ""):
            raise
    sent.session_id = client.create_session(sent.file_name, sent.content)
    return client.infer(task, params, session_id=sent.session_id)


def explain(
    context: JobContext,
    client: SegXClient,
    model: str,
    volume: VolumeData,
    class_name: Optional[str] = None,
    method: str = "gradcam",
) -> Explanation:
    """Upload ``volume`` once, then fetch the SegX map (with the readouts) of
    ``class_name`` (default: the predicted class) by ``method`` and the clinical region.
    The raw explanation is fetched only when shown (:func:`fetch_layer`); the server
    caches results by image content, so only the first request runs the networks."""
    sent = upload(context, client, volume)
    params = {"method": method}
    if class_name:
        params["class"] = class_name
    context.report(0.2, f"{model}: classifying, explaining, segmenting on the server")
    reply, segx = _infer(client, f"{model}_segx", sent, dict(params, layer="segx"))
    readout = parse_segx_reply(reply)
    context.report(0.8, "fetching the clinical region")
    region_reply, region = _infer(client, f"{model}_segmentation", sent, {})
    names = {int(value): str(name) for name, value in region_reply.get("label_names", {}).items()}
    context.report(0.95, "reading the maps")
    return Explanation(
        model=model,
        readout=readout,
        heatmaps={"segx": _on_grid(segx, sent, "SegX map")},
        region=_on_grid(region, sent, "clinical region").astype(np.uint8),
        segment_names=names,
        upload=sent,
        params=params,
    )


def fetch_layer(context: JobContext, client: SegXClient, explanation: Explanation, layer: str) -> np.ndarray:
    """Another map of a Run (``"explanation"``: the raw, normalised explanation) from its
    uploaded session, without uploading the volume again (unless the session expired)."""
    context.report(0.2, f"fetching the {layer} map")
    _, content = _infer(client, f"{explanation.model}_segx", explanation.upload, dict(explanation.params, layer=layer))
    return _on_grid(content, explanation.upload, f"{layer} map")


@dataclass
class Sample:
    """The next image to label: its datastore id, the strategy's reply and the file."""

    image_id: str
    reply: dict
    file_name: str
    content: bytes


def next_sample(context: JobContext, client: SegXClient, model: Optional[str], client_id: str = "", release: str = "",
                strategy: str = STRATEGY) -> Optional[Sample]:  # fmt: skip
    """The unlabeled image ``strategy`` gives out that no other annotator holds, and its
    file, or ``None`` when there is none; ``release`` (a skip) gives that image back first."""
    context.report(0.1, f"asking the server for the next unlabeled image ({strategy})")
    reply = client.next_sample(strategy, model, client_id, release)
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
