"""MONAI Label's ``epistemic`` active learning, run as it ships: its ``EpistemicScoring``
(v2: the mean over voxels of the entropy of ``simulation_size`` softmax outputs with
dropout on) writes ``epistemic_entropy`` into each unlabeled image's info, and its
``Epistemic`` strategy gives out the image with the highest. Its scoring runs a
``BasicInferTask``; :class:`DropoutSegmentation` is that task for one model's segmenter
(its weights file, the model's own input pipeline, ``train_mode`` so dropout samples).

A segmenter without dropout layers gives the same output every pass: the score is then
the entropy of its one softmax output. ``POST /scoring/epistemic`` scores with the weights
in use (MONAI Label skips images scored with the same weight file timestamp); an image
it cannot score is skipped (:class:`EachImageEpistemicScoring`).
"""

from __future__ import annotations

import logging

import numpy as np
from monai.inferers import SimpleInferer
from monai.transforms import Activationsd, LoadImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.tasks.scoring.epistemic_v2 import EpistemicScoring

from segx.config import load_network

from ..infers.runtime import ModelRuntime
from ..security import public

logger = logging.getLogger(__name__)


class DropoutSegmentation(BasicInferTask):
    """The segmenter of ``runtime`` as MONAI Label's ``BasicInferTask``, in train mode:
    ``pred`` is the softmax ``(L, *size)`` at the network's input size."""

    def __init__(self, runtime: ModelRuntime):
        section = runtime.config["segmenter"]
        self.preprocessing = runtime.pair.segmenter_input
        super().__init__(
            path=str(runtime.config_file.parent / section["weights"]),
            network=load_network(section, runtime.config_file, "segmenter"),
            type=InferType.SEGMENTATION,
            labels={name: value for value, name in runtime.pair.segment_names.items()},
            dimension=runtime.pair.spatial_dims,
            description=f"{runtime.name}: segmenter with dropout on (epistemic scoring)",
            train_mode=True,
            skip_writer=True,
        )
        self.device = runtime.device

    def pre_transforms(self, data=None):
        return [LoadImaged(keys="image", ensure_channel_first=True, image_only=True), self._to_network_input]

    def _to_network_input(self, data: dict) -> dict:
        image = data["image"]
        return {**data, "image": self.preprocessing(image.as_tensor(), np.asarray(image.affine))[0]}

    def inferer(self, data=None):
        return SimpleInferer()

    def inverse_transforms(self, data=None):
        return []  # scored at the network's input size

    def post_transforms(self, data=None):
        return [Activationsd(keys="pred", softmax=True)]

    def __call__(self, request, callbacks=None):
        return super().__call__({**request, "device": str(self.device)}, callbacks)


class EachImageEpistemicScoring(EpistemicScoring):
    """MONAI Label's scoring, but an image it cannot score (a 3D volume for a 2D
    segmenter, an unreadable file) is logged and left unscored: as shipped, one such image
    fails the whole scoring (HTTP 500) and no image gets a score."""

    def run_scoring(self, image_id, simulation_size, model_ts, datastore):
        try:
            return super().run_scoring(image_id, simulation_size, model_ts, datastore)
        except Exception as error:  # noqa: BLE001 (any failure of one image; the others go on)
            logger.warning(f"epistemic scoring: {image_id} skipped: {type(error).__name__}: {public(str(error))}")


def epistemic_scoring(runtime: ModelRuntime, simulation_size: int = 5) -> EpistemicScoring:
    """MONAI Label's scoring of ``runtime``'s segmenter, image by image."""
    return EachImageEpistemicScoring(DropoutSegmentation(runtime), simulation_size=simulation_size)
