"""Model configurations from files: every ``*.yaml``/``*.yml``/``*.json`` in the models
folders is one model configuration NAME (the file stem). A broken file is logged with the
file and the field, a missing weight file with the path looked for; the other models keep
working."""

from __future__ import annotations

import logging
from pathlib import Path

from monailabel.interfaces.config import TaskConfig

from segx.config import CONFIG_SUFFIXES, NETWORK_MODULES_CONF, ConfigError, allow_network_modules

from ..infers.runtime import ModelRuntime, resolve_device
from ..infers.tasks import infer_tasks

logger = logging.getLogger(__name__)


#: Files next to the configurations that are not configurations: training logs (``segx train``).
NOT_CONFIGS = ("_training",)


def find_config_files(folders: list[Path]) -> dict[str, Path]:
    """NAME -> config file over all folders (a later folder overrides an earlier one)."""
    found: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in CONFIG_SUFFIXES and path.is_file() and not path.stem.endswith(NOT_CONFIGS):
                    found[path.stem] = path
    return found


class SegXModelConfig(TaskConfig):
    """One model configuration file -> one :class:`ModelRuntime` and its three infer tasks."""

    def __init__(self, config_file: Path):
        super().__init__()
        self.config_file = config_file
        self.runtime: ModelRuntime | None = None

    def init(self, name: str, model_dir: str, conf: dict, planner=None, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        cache_mb = float(conf.get("cache_mb", 1024))
        self.runtime = ModelRuntime(name, self.config_file, resolve_device(conf.get("device", "auto")), int(cache_mb * 2**20))
        self.labels = self.runtime.pair.class_names

    def infer(self):
        return infer_tasks(self.runtime)

    def trainer(self):
        return None


def load_model_configs(folders: list[Path], selected: str, conf: dict) -> tuple[dict[str, SegXModelConfig], dict[str, str]]:
    """Load the selected models (comma-separated names, or ``all``).

    ``conf["network_modules"]`` (comma-separated module names) is the admin's addition to
    the modules a configuration's ``network:`` may come from (see :mod:`segx.config`); it
    holds for this process, reloads and trainers included.

    Returns:
        ``(models, unavailable)``: the loaded configs by NAME, and NAME -> reason for those
        that could not be loaded (broken config, missing weights, unknown name).

    Raises:
        ConfigError: ``network_modules`` names something that is not a dotted module name.
    """
    allowed = allow_network_modules(conf.get(NETWORK_MODULES_CONF, ""))
    if allowed:
        logger.info(f"network modules allowed by --conf {NETWORK_MODULES_CONF}: {', '.join(allowed)}")
    files = find_config_files(folders)
    names = list(files) if selected.strip() in ("", "all") else [n.strip() for n in selected.split(",") if n.strip()]
    models: dict[str, SegXModelConfig] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        if name not in files:
            unavailable[name] = f"no model configuration {name!r} in {[str(f) for f in folders]}; available: {sorted(files)}"
            logger.error(unavailable[name])
            continue
        model = SegXModelConfig(files[name])
        try:
            model.init(name, str(files[name].parent), conf)
        except (ConfigError, ValueError) as error:
            unavailable[name] = f"model {name!r} is not offered: {error}"
            logger.error(unavailable[name])
            continue
        models[name] = model
        logger.info(f"model {name}: {files[name]} on {model.runtime.device}")
    return models, unavailable
