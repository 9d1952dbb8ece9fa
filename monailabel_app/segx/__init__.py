"""SegX core: explanations of a classifier aligned with the clinical region found by a
segmentation model (SegX), and a certainty score from how far the unrefined explanation
strays from that region (SegU). Imports neither monailabel nor slicer (one exception:
``segx.demo.sessions`` replays annotation sessions with MONAI Label's official client).

    from segx import explain, load_model_pair
    result = explain(load_model_pair("pair.yaml"), "image.nii.gz")

Rooms (each imports only the rooms before it; tests/test_architecture.py reads every
import and fails otherwise):

- ``segx`` (this package's modules): the method. Model pairs and their configurations
  (``pair``, ``config``, ``bundles``, ``networks``, ``preprocessing``, ``onnxrt``), reading
  images (``imageio``, ``headers``), explainers, SegX refinement, SegU certainty, the engine.
- ``segx.formats``: results as files and DICOM, the PACS.
- ``segx.evaluation``: datasets, metrics, controls, whole-dataset runs, calibration, worklists.
- ``segx.training``: training recipes, the one training loop (``engine``), the shortcut experiment.
- ``segx.demo``: phantoms, the end-to-end demo, the test server helper, replayed annotation sessions.
- ``segx.cli``: the command line, over all of them.
"""

from .certainty import VARIANTS, Certainty, LevelThresholds, calibrate_levels, save_levels, segu
from .config import load_model_pair
from .engine import SegXResult, explain
from .explainers import METHODS, explain_classes, find_target_layer
from .imageio import Image, as_image, read_image
from .pair import ModelPair
from .preprocessing import Preprocessing
from .refine import expand_region, segx_map, top_k_mask

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "VARIANTS",
    "Certainty",
    "Image",
    "LevelThresholds",
    "ModelPair",
    "Preprocessing",
    "SegXResult",
    "as_image",
    "calibrate_levels",
    "expand_region",
    "explain",
    "explain_classes",
    "find_target_layer",
    "load_model_pair",
    "read_image",
    "save_levels",
    "segu",
    "segx_map",
    "top_k_mask",
]
