"""SegX MONAI Label app.

    monailabel start_server --app monailabel_app --studies DIR --conf models NAMES

``--conf`` keys:

- ``models``: comma-separated model configuration names, or ``all`` (default);
- ``models_dir``: extra folders of model configuration files (``os.pathsep``-separated),
  read after the built-in ``model_configs/``;
- ``device``: ``auto`` (GPU when present, default), ``cpu`` or ``cuda``;
- ``max_upload_mb``: uploads above it are refused with 413 (default 1024);
- ``max_voxels``: images whose header declares more voxels are refused with 413 before
  they are decoded (default 200 000 000);
- ``cache_mb``: memory for cached SegX results per model (default 1024);
- ``hold_minutes``: an image given to one annotator by any strategy (``segu_lowest_certainty``,
  and MONAI Label's ``random``, ``first`` and ``epistemic``) is not given to another for
  this long (default 15) unless the first releases it (``release``: the image id);
- ``epistemic_model``: the model whose segmenter MONAI Label's ``epistemic`` scoring and
  strategy use (default: the first model with a trainable segmenter; without one neither is
  offered);
- ``tokens_file``: API tokens (``lib/tokens.py``); with it every route needs a bearer token
  and admin-only routes the admin role (see ``lib/security.py``);
- ``network_modules``: comma-separated Python modules that model configurations may take
  ``network:`` classes from, beyond ``monai.networks.nets``, ``torchvision.models`` and
  ``segx.networks`` (exact modules, not their submodules; only modules whose code you
  trust: see ``segx/config.py``); read by ``load_model_configs`` from ``conf``;
- ``allowed_hosts``: host names clients may use besides IP addresses, ``localhost`` and
  this computer's name (comma-separated; ``*``: any);
- ``cors_origins``: web sites (``https://viewer.example.org``) whose pages may call the
  server (comma-separated; default none).

Only the routes of the route table (``lib/routes.py``) are served, each to its role; every
file a client sends goes through ``lib/ingest.py``; ids and tags are plain names, and no
answer names a folder of the server (``docs/SECURITY.md``). Start it on loopback
(``--host 127.0.0.1``) unless ``tokens_file`` is set.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.tasks.activelearning.first import First  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from lib.activelearning.epistemic import epistemic_scoring  # noqa: E402
from lib.activelearning.holds import Held  # noqa: E402
from monailabel.tasks.activelearning.epistemic import Epistemic  # noqa: E402
from lib.activelearning.segu import SegULowestCertainty, SegUScoring  # noqa: E402
from lib.configs.segx_model import load_model_configs  # noqa: E402
from lib.dicomweb import dicomweb_datastore  # noqa: E402
from lib.endpoints import install_activelearning_route, install_infer_route, install_train_route  # noqa: E402
from lib.security import install_gate, public  # noqa: E402
from lib.uploads import install_upload_routes  # noqa: E402
from segx.headers import DEFAULT_MAX_VOXELS  # noqa: E402
from lib.tokens import Tokens  # noqa: E402
from lib.trainers.pair_trainers import trainers_for  # noqa: E402

logger = logging.getLogger(__name__)


class SegXApp(MONAILabelApp):
    """Classification, segmentation and SegX/SegU tasks for every model configuration."""

    def __init__(self, app_dir: str, studies: str, conf: dict):
        # numpy's BLAS is barely used here, but its worker threads spin ~0.1 s after each
        # call (e.g. writing a result) and steal the cores torch needs
        threadpool_limits(limits=1, user_api="blas")
        folders = [Path(app_dir) / "model_configs"]
        folders += [Path(p) for p in conf.get("models_dir", "").split(os.pathsep) if p]
        self.models, self.unavailable = load_model_configs(folders, conf.get("models", "all"), conf)
        self.max_upload_bytes = int(float(conf.get("max_upload_mb", 1024)) * 2**20)
        self.max_voxels = int(float(conf.get("max_voxels", DEFAULT_MAX_VOXELS)))
        self.segu_scoring = SegUScoring({name: model.runtime for name, model in self.models.items()})
        trainable = [name for name, model in self.models.items() if "network" in model.runtime.config["segmenter"]]
        self.epistemic_model = conf.get("epistemic_model", trainable[0] if trainable else None)
        if self.epistemic_model is not None and self.epistemic_model not in trainable:
            raise ValueError(f"epistemic_model: {self.epistemic_model!r} is not a loaded model with a trainable segmenter ({trainable})")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SegX",
            description="Classifier explanations aligned to the clinical region (SegX) with certainty (SegU)",
            version="0.1.0",
        )
        self.tokens = Tokens(Path(conf["tokens_file"])) if conf.get("tokens_file") else None
        install_infer_route(self, self.max_upload_bytes, self.max_voxels)
        install_activelearning_route(self)
        install_train_route(self)
        install_upload_routes(self, self.max_upload_bytes, self.max_voxels, self.label_values)
        from monailabel.app import app as fastapi_app  # the server's FastAPI app (imported by uvicorn)
        from monailabel.config import settings

        folders = {"studies": studies, "app": app_dir, "sessions": settings.MONAI_LABEL_SESSION_PATH or str(Path.home() / ".cache" / "monailabel"),
                   "tmp": tempfile.gettempdir(), "home": str(Path.home()), "python": sys.prefix}  # fmt: skip
        folders.update({f"models{i}": folder for i, folder in enumerate(conf.get("models_dir", "").split(os.pathsep)) if folder})
        install_gate(fastapi_app, self.tokens, conf, self.max_upload_bytes, folders)
        _warn_if_exposed(self.tokens)

    def label_values(self) -> set[int]:
        """Label values the segmenters of the loaded models know (a saved label may hold
        these and 0)."""
        return {int(value) for model in self.models.values() for value in model.runtime.pair.segment_names}

    def init_infers(self):
        tasks = {}
        for model in self.models.values():
            tasks.update(model.infer())
        return tasks

    def init_trainers(self):
        trainers = {}
        for model in self.models.values():
            trainers.update(trainers_for(model.runtime, self.studies))
        return trainers

    def init_scoring_methods(self):
        methods = {"segu": self.segu_scoring}
        if self.epistemic_model:
            methods["epistemic"] = epistemic_scoring(self.models[self.epistemic_model].runtime)
        return methods

    def init_strategies(self):
        hold = float(self.conf.get("hold_minutes", 15)) * 60
        strategies = {SegULowestCertainty.name: SegULowestCertainty(self.segu_scoring), "random": Random(), "first": First()}
        if self.epistemic_model:
            strategies["epistemic"] = Epistemic()
        model_dims = {name: model.runtime.pair.spatial_dims for name, model in self.models.items()}
        return {name: Held(strategy, hold, model_dims) for name, strategy in strategies.items()}

    def infer_tasks(self) -> dict:
        return self._infers

    def init_datastore(self):
        """MONAI Label's datastore, whose image and label info carry no server paths."""
        datastore = super().init_datastore()
        for name in ("get_image_info", "get_label_info"):
            read = getattr(datastore, name)
            setattr(datastore, name, lambda *args, _read=read: {k: v for k, v in _read(*args).items() if k != "path"})
        return datastore

    def init_remote_datastore(self):
        """A DICOMweb URL as ``--studies``: our DICOMweb datastore (checked series, results
        stored back as DICOM; see ``lib/dicomweb.py``). Other remote kinds: MONAI Label's."""
        from monailabel.config import settings

        if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
            return super().init_remote_datastore()
        return dicomweb_datastore(self.studies, self.max_voxels)

    def info(self):
        info = super().info()
        info["unavailable_models"] = {name: public(reason) for name, reason in self.unavailable.items()}
        return info


def _warn_if_exposed(tokens) -> None:
    """Warn when the server listens beyond this computer without API tokens (MONAI Label
    binds 0.0.0.0 unless ``--host`` is given)."""
    host = sys.argv[sys.argv.index("--host") + 1] if "--host" in sys.argv[:-1] else "0.0.0.0"
    if tokens is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(f"the server listens on {host} without API tokens: anyone who reaches it can read, label, "
                       "delete and train. Use --host 127.0.0.1, or --conf tokens_file FILE (python monailabel_app/lib/tokens.py)")  # fmt: skip
