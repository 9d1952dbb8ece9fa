"""Model-pair configuration files: one YAML or JSON file per model configuration.

Each network is a MONAI network name with arguments and a state_dict, a TorchScript file,
or a MONAI bundle folder. Paths are resolved against the config file's folder and must
stay in it (see "What a configuration may name" below)::

    name: demo2d
    spatial_dims: 2
    classes: [benign, malignant]        # class labels, logit order
    multi_label: false                  # softmax (false) or one sigmoid per class
    classifier:
      network: DenseNet121              # a monai.networks.nets name, or module.Name from an
                                        # allowed module (below), e.g. torchvision.models.resnet18
      args: {spatial_dims: 2, in_channels: 3, out_channels: 2}
      weights: demo2d_classifier.pt     # state_dict
      # torchscript: classifier.ts      # ... or a TorchScript file
      # bundle: my_bundle/              # ... or a MONAI bundle folder (without input:
      #                                 #     its own preprocessing, inferer, postprocessing)
      input: {channels: 3, spatial_size: [128, 128], intensity: divide255}
      # 3D: input: {channels: 1, orientation: RAS, spacing: [1.5, 1.5, 2.0],
      #             intensity: [-57, 164], spatial_size: [96, 96, 96], resize: pad_crop}
      # output_key: 0                   # which entry of a tuple/dict output is the logits
      target_layer: class_layers.relu   # optional, auto-detected
      # memory_format: channels_last    # optional (2D): often faster convolutions on CPU
      # runtime: onnxruntime            # optional: plain CPU forwards by ONNX Runtime (faster)
    segmenter:
      network: UNet
      args: {spatial_dims: 2, in_channels: 3, out_channels: 2, channels: [8, 16], strides: [2]}
      weights: demo2d_segmenter.pt
      output: logits                    # logits | probabilities | label
      labels: {1: lesion}               # label value -> name
      input: {channels: 3, intensity: divide255}
      # input: {..., inferer: sliding_window, roi_size: [96, 96, 96], overlap: 0.25}
    region_labels: {malignant: [1]}     # optional; default: every foreground label
    certainty: {variant: mass_inside, low: 0.3, high: 0.6, ...}   # optional, calibrated
    recipe: ham10000                    # optional: the training recipe the server's trainers follow

What a configuration may name. A configuration file is data, and whoever can write one
(an upload into a models folder) must not gain code execution from it:

- ``network:`` comes from an allow-list of *modules*: ``monai.networks.nets`` (bare names),
  ``torchvision.models`` and ``segx.networks`` (:data:`BUILTIN_NETWORK_MODULES`), plus the
  modules an admin names: the server's ``--conf network_modules a.b,c.d``, or the
  environment variable ``SEGX_NETWORK_MODULES=a.b,c.d`` (for the ``segx`` command on a
  researcher's own machine; the server honours it too, as whoever sets a server's
  environment is its admin). ``module.Name`` is allowed only if ``module`` *equals* an
  allowed module: submodules are not included (``torchvision.models.resnet.resnet18`` is
  refused; name ``torchvision.models.resnet18``, or have the admin allow the submodule).
  A module that is not allowed is never imported. ``Name`` must be a class deriving from
  ``torch.nn.Module``, a function annotated to return one (MONAI's ``resnet10``), or a
  torchvision builder registered in ``torchvision.models.list_models()`` (built by
  ``torchvision.models.get_model(name, **args)``). Anything else (``os.system``,
  ``subprocess.Popen``, ``torch.nn.Linear``) is a :class:`ConfigError` that says how to
  allow a module.
- ``args:`` is plain YAML/JSON data passed to the constructor; arguments that read or
  download files (:data:`FILE_ARGS`: ``pretrained``, ``pretrained_url``, ``weights``, ...) are
  refused: the weights come from ``weights:`` alone.
- ``weights:``, ``torchscript:`` and ``bundle:`` are paths inside the configuration's folder
  or its subfolders: ``..``, absolute paths elsewhere and symlinks that lead out are refused.
  ``weights`` is read with ``torch.load(weights_only=True)``; ``torchscript`` with
  ``torch.jit.load``. A MONAI bundle **is code**: its ``configs/inference.*`` runs Python
  through ``$`` expressions and ``_target_``, by design. Only an admin should install a
  bundle; the folder rule keeps a configuration from pointing at one elsewhere.
- Every other key is data or a name looked up in a fixed table: ``input.intensity``,
  ``resize``, ``inferer`` (:mod:`segx.preprocessing`), ``memory_format``, ``runtime``,
  ``segmenter.output``, ``certainty.variant``; ``classifier.target_layer`` is looked up in
  the network's ``named_modules()``, ``output_key`` indexes its output. The full table is
  in ``tests/test_config_allowlist.py``, which fails when the loader reads a key it lacks.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import os
import typing
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from . import onnxrt
from .certainty import DEFAULT_VARIANT, VARIANTS, load_levels
from .pair import ModelPair
from .bundles import BundleError, build_network_def, checkpoint_of, metadata_input, metadata_names, read_bundle
from .preprocessing import BundlePipeline, Preprocessing

logger = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


class ConfigError(ValueError):
    """A model configuration file is invalid; the message names the file and the field."""


class MissingWeightsError(ConfigError):
    """A network's weight file does not exist (we never run with random weights)."""

    def __init__(self, config_file: Path, field: str, weights: Path):
        super().__init__(f"{config_file}: {field}: weight file not found: {weights}")
        self.weights = weights


def read_config(path: str | Path) -> dict:
    """Parse a YAML or JSON configuration file into a dict."""
    path = Path(path)
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigError(f"{path}: model configurations are {CONFIG_SUFFIXES} files")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except Exception as error:  # OSError, JSONDecodeError, YAMLError: one clear message
        raise ConfigError(f"{path}: cannot parse: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return config


def _require(section: dict, key: str, where: str, config_file: Path) -> Any:
    if key not in section:
        raise ConfigError(f"{config_file}: missing field {where}{key}")
    return section[key]


#: Modules a configuration may take networks from without an admin's say-so.
BUILTIN_NETWORK_MODULES = ("monai.networks.nets", "torchvision.models", "segx.networks")
#: The environment variable naming more allowed modules (comma-separated), for the ``segx``
#: CLI and Python use; the server takes ``--conf network_modules`` (and honours it too).
NETWORK_MODULES_ENV = "SEGX_NETWORK_MODULES"
#: The server's ``--conf`` key naming more allowed modules (comma-separated).
NETWORK_MODULES_CONF = "network_modules"
#: Constructor arguments that make a network read a file or download one (MONAI 1.5
#: ``ResNet``'s ``pretrained`` path, ``HoVerNet``'s ``pretrained_url``, ``Transchex``'s
#: hub/file arguments, torchvision's ``weights``): a network's weights come from
#: ``weights:`` alone. Refused when given a value other than None/false.
FILE_ARGS = ("pretrained", "pretrained_url", "path_or_repo_id", "filename", "cache_dir", "weights", "weights_backbone")

_admin_network_modules: tuple[str, ...] = ()


def _module_names(names: str | Iterable[str], source: str) -> tuple[str, ...]:
    """Comma-separated (or listed) dotted module names, checked to be names (no paths)."""
    names = names.split(",") if isinstance(names, str) else list(names)
    names = tuple(n.strip() for n in names if n and n.strip())
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"{source}: {name!r} is not a dotted module name")
    return names


def allow_network_modules(names: str | Iterable[str]) -> tuple[str, ...]:
    """Set the modules an admin allows beyond :data:`BUILTIN_NETWORK_MODULES` for this
    process (the server's ``--conf network_modules``; replaces an earlier call)."""
    global _admin_network_modules
    _admin_network_modules = _module_names(names, f"--conf {NETWORK_MODULES_CONF}")
    return _admin_network_modules


def allowed_network_modules(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The modules networks may come from: the built-in ones, the admin's
    (:func:`allow_network_modules`), ``$SEGX_NETWORK_MODULES`` (read now) and ``extra``."""
    from_env = _module_names(os.environ.get(NETWORK_MODULES_ENV, ""), f"${NETWORK_MODULES_ENV}")
    return tuple(dict.fromkeys((*BUILTIN_NETWORK_MODULES, *_admin_network_modules, *from_env, *_module_names(extra, "network_modules"))))


def _builds_a_module(obj: Any) -> bool:
    """A class deriving from ``nn.Module``, or a function whose return annotation is one
    (MONAI's ``resnet10``)."""
    if isinstance(obj, type):
        return issubclass(obj, nn.Module)
    if not inspect.isfunction(obj):
        return False
    try:
        returned = typing.get_type_hints(obj).get("return")
    except Exception:  # an annotation that does not resolve: not a declared builder
        return False
    return isinstance(returned, type) and issubclass(returned, nn.Module)


def _network_class(name: Any, config_file: Path, field: str, modules: Iterable[str] | None = None) -> Callable[..., nn.Module]:
    """The class or builder function that ``network:`` names, from an allowed module only.

    ``name`` is a bare ``monai.networks.nets`` name (``UNet``) or ``module.Name``; its module
    part must equal an allowed module exactly (submodules are not included: an admin names
    each module), and the module is imported only once it is found allowed. ``Name`` must
    be a class deriving from ``nn.Module``, a function annotated to return one, or, in
    ``torchvision.models``, a builder that ``torchvision.models.list_models()`` registers
    (built with ``torchvision.models.get_model``).
    """
    modules = allowed_network_modules() if modules is None else tuple(modules)
    if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"{config_file}: {field}: expected a network name (UNet, module.Class), got {name!r}")
    module_name, _, attribute = name.rpartition(".")
    module_name = module_name or "monai.networks.nets"
    if module_name not in modules:
        raise ConfigError(
            f"{config_file}: {field}: network {name!r} refused: module {module_name!r} is not allowed "
            f"(allowed: {', '.join(modules)}; submodules are not included). An admin who trusts that module's code "
            f"allows it with the server's `--conf {NETWORK_MODULES_CONF} {module_name}` or, for the segx command, "
            f"the environment variable {NETWORK_MODULES_ENV}={module_name} (comma-separated)"
        )
    if attribute.startswith("_"):
        raise ConfigError(f"{config_file}: {field}: {name!r} is private, not a network")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{config_file}: {field}: cannot import {module_name!r}: {error}") from error
    if module_name == "torchvision.models" and attribute in module.list_models():
        return functools.partial(module.get_model, attribute)
    if not hasattr(module, attribute):
        unknown = "unknown MONAI network" if module_name == "monai.networks.nets" else f"no network in {module_name}:"
        raise ConfigError(f"{config_file}: {field}: {unknown} {attribute!r}")
    network_class = getattr(module, attribute)
    if not _builds_a_module(network_class):
        raise ConfigError(f"{config_file}: {field}: {name!r} refused: not a torch.nn.Module class or a builder function annotated to return one")
    return network_class


def _network_args(section: dict, config_file: Path, field: str) -> dict:
    """The section's ``args``: a mapping of plain values, none of :data:`FILE_ARGS` set."""
    args = section.get("args", {})
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ConfigError(f"{config_file}: {field}.args: expected a mapping of argument names to values")
    for key in FILE_ARGS:
        if args.get(key) not in (None, False):
            raise ConfigError(f"{config_file}: {field}.args.{key}: refused: arguments that make a network read or download "
                              f"files are not accepted ({', '.join(FILE_ARGS)}); give a state_dict in {field}.weights")  # fmt: skip
    return args


def _confined(value: Any, config_file: Path, field: str) -> Path:
    """A path field (``weights``, ``torchscript``, ``bundle``) resolved against the
    configuration's folder, symlinks followed; a :class:`ConfigError` unless it lies in that
    folder or one of its subfolders (``..``, absolute paths elsewhere, links out: refused)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{config_file}: {field}: expected a path relative to the configuration's folder, got {value!r}")
    base = config_file.parent.resolve()
    try:
        path = (base / value).resolve()
    except (OSError, ValueError, RuntimeError) as error:  # a NUL byte, a symlink loop
        raise ConfigError(f"{config_file}: {field}: bad path {value!r}: {error}") from error
    if not path.is_relative_to(base):
        raise ConfigError(f"{config_file}: {field}: {value!r} refused: it lies outside the configuration's folder "
                          "(weights, TorchScript files and bundles must be in that folder or its subfolders, symlinks included)")  # fmt: skip
    return path


def _load_state_dict(model: nn.Module, weights: Path, config_file: Path, field: str, section: dict, key: str | None = None, strict: bool = True) -> None:
    """Load a state_dict file into ``model``: the entry ``key`` of a checkpoint dict (a
    bundle loader's ``load_dict`` key), else its ``state_dict``/``model`` entry, else the
    dict itself. The section's ``key_map`` (``{"swinViT.": "encoder."}``) renames key
    prefixes first; ``strict: false`` loads what fits and logs what did not (refused when
    nothing fits)."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(f"{config_file}: {field}: cannot read weights {weights}: {error}") from error
    for entry in ((key,) if key else ()) + ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(entry), dict):
            state = state[entry]
            break
    key_map = section.get("key_map") or {}
    if not isinstance(key_map, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in key_map.items()):
        raise ConfigError(f"{config_file}: {field}.key_map: expected a mapping of key prefixes to new prefixes")
    for old, new in key_map.items():
        state = {new + name[len(old):] if name.startswith(old) else name: value for name, value in state.items()}
    strict = section.get("strict", strict)
    if not isinstance(strict, bool):
        raise ConfigError(f"{config_file}: {field}.strict: expected true or false")
    try:
        missing, unexpected = model.load_state_dict(state, strict=strict)
    except RuntimeError as error:
        raise ConfigError(f"{config_file}: {field}: weights {weights.name} do not fit the network: {error} "
                          "(strict: false loads what fits; key_map renames key prefixes)") from error  # fmt: skip
    if missing or unexpected:
        if len(missing) == len(model.state_dict()):
            raise ConfigError(f"{config_file}: {field}: no weight of {weights.name} fits the network (first keys: "
                              f"{sorted(state)[:3]}, the network's: {sorted(model.state_dict())[:3]}); set key_map")  # fmt: skip
        logger.warning(f"{config_file.name}: {field}: {weights.name}: {len(missing)} network keys not loaded "
                       f"{sorted(missing)[:5]}, {len(unexpected)} checkpoint keys not used {sorted(unexpected)[:5]}")  # fmt: skip


BUNDLE_FILES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml", "models/model.pt", "models/model.ts")


def _bundle_folder(value: Any, config_file: Path, field: str) -> Path:
    """The ``bundle:`` folder, confined to the configuration's folder (:func:`_confined`),
    as are the files read from it (:data:`BUNDLE_FILES`: a symlink out is refused too)."""
    folder = _confined(value, config_file, field)
    for name in BUNDLE_FILES:
        _confined(str(folder / name), config_file, f"{field} ({name})")
    return folder


def _bundle(folder: Path, config_file: Path, field: str, section: dict):
    """A bundle's parsed inference configuration with the section's ``bundle_overrides``
    (see :func:`segx.bundles.read_bundle`)."""
    overrides = section.get("bundle_overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
        raise ConfigError(f"{config_file}: {field}_overrides: expected a mapping of bundle keys (a#b#c) to values")
    try:
        return read_bundle(folder, overrides)
    except (FileNotFoundError, BundleError) as error:
        raise ConfigError(f"{config_file}: {field}: {error}") from error


def _bundle_network(section: dict, config_file: Path, field: str) -> nn.Module:
    """A bundle's network with the weights its own checkpoint loader chooses
    (:func:`segx.bundles.checkpoint_of`), or its ``models/model.ts`` when that file is all
    there is."""
    folder = _bundle_folder(section["bundle"], config_file, f"{field}.bundle")
    parser = _bundle(folder, config_file, f"{field}.bundle", section)
    try:
        checkpoint = checkpoint_of(parser, folder)
    except BundleError as error:
        raise ConfigError(f"{config_file}: {field}.bundle: {error}") from error
    weights = _confined(str(checkpoint.path), config_file, f"{field}.bundle (checkpoint chosen by {checkpoint.chosen_by})")
    scripted = folder / "models" / "model.ts"
    if not weights.exists():
        if scripted.exists():
            return torch.jit.load(str(scripted), map_location="cpu")
        raise MissingWeightsError(config_file, f"{field}.bundle (the checkpoint {checkpoint.chosen_by} chooses)", weights)
    try:
        network = build_network_def(parser, folder)
    except BundleError as error:
        raise ConfigError(f"{config_file}: {field}.bundle: {error}") from error
    _load_state_dict(network, weights, config_file, f"{field}.bundle", section, checkpoint.key, checkpoint.strict)
    logger.info(f"{config_file.name}: {field}: bundle {folder.name}: weights {weights.name} (chosen by {checkpoint.chosen_by})")
    return network


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def load_network(section: dict, config_file: Path, field: str, network_modules: Iterable[str] | None = None) -> nn.Module:
    """Build one network from its config section (``network`` + ``args`` + ``weights``,
    ``torchscript`` or ``bundle``), weights loaded, in eval mode, its weights in the
    section's ``memory_format`` (``channels_last`` makes 2D convolutions run in NHWC order,
    which oneDNN often runs faster on CPU; docs/BENCHMARKS.md). ``network_modules``: the
    modules ``network:`` may name (default :func:`allowed_network_modules`)."""
    name = section.get("memory_format", "contiguous")
    if not isinstance(name, str) or name not in MEMORY_FORMATS:
        raise ConfigError(f"{config_file}: {field}.memory_format: unknown format {name!r}; choose one of {sorted(MEMORY_FORMATS)}")
    network = _load_network(section, config_file, field, network_modules)
    try:
        return network.to(memory_format=MEMORY_FORMATS[name])
    except RuntimeError as error:  # 3D weights (rank 5) have no channels_last
        raise ConfigError(f"{config_file}: {field}.memory_format: {name} does not fit this network: {error}") from error


def _runtime(section: dict, config_file: Path, field: str) -> str:
    """The section's ``runtime`` (``torch``, or ``onnxruntime``: plain CPU forwards by ONNX
    Runtime, :mod:`segx.onnxrt`, for ``network:`` sections only), checked before loading."""
    name = section.get("runtime", "torch")
    if not isinstance(name, str) or name not in onnxrt.RUNTIMES:
        raise ConfigError(f"{config_file}: {field}.runtime: unknown runtime {name!r}; choose one of {list(onnxrt.RUNTIMES)}")
    if name == "onnxruntime" and "network" not in section:
        raise ConfigError(f"{config_file}: {field}.runtime: onnxruntime is offered for `network:` sections only")
    return name


def _load_network(section: dict, config_file: Path, field: str, network_modules: Iterable[str] | None = None) -> nn.Module:
    kinds = [k for k in ("network", "torchscript", "bundle") if k in section]
    if len(kinds) != 1:
        raise ConfigError(f"{config_file}: {field}: give exactly one of network, torchscript, bundle")
    if kinds[0] == "torchscript":
        path = _confined(section["torchscript"], config_file, f"{field}.torchscript")
        if not path.exists():
            raise MissingWeightsError(config_file, f"{field}.torchscript", path)
        return torch.jit.load(str(path), map_location="cpu").eval()
    if kinds[0] == "bundle":
        return _bundle_network(section, config_file, field).eval()
    # every check before anything is imported or built
    network_class = _network_class(section["network"], config_file, f"{field}.network", network_modules)
    args = _network_args(section, config_file, field)
    weights = _confined(_require(section, "weights", f"{field}.", config_file), config_file, f"{field}.weights")
    try:
        network = network_class(**args)
    except Exception as error:
        raise ConfigError(f"{config_file}: {field}.args: cannot build {section['network']}: {error}") from error
    if not isinstance(network, nn.Module):
        raise ConfigError(f"{config_file}: {field}.network: {section['network']} built a {type(network).__name__}, not a torch.nn.Module")
    if not weights.exists():
        raise MissingWeightsError(config_file, f"{field}.weights", weights)
    _load_state_dict(network, weights, config_file, f"{field}.weights", section)
    return network.eval()


def logits_only(network: nn.Module, key: int | str | None, n_classes: int) -> nn.Module:
    """Make a classifier that returns a tuple, list or dict (MONAI's ``ViT`` returns
    ``(logits, hidden_states)``) return its logits ``(B, n_classes)``: the entry ``key``
    (index or name, ``classifier.output_key`` in a configuration) if given, else the first
    tensor of that shape. A forward hook, so module names (CAM target layers) stay as
    they are; TorchScript classifiers must return the tensor themselves.

    Raises (at the first forward):
        ValueError: no such tensor in the output.
    """
    if isinstance(network, torch.jit.ScriptModule):
        return network

    def pick(module, inputs, output):
        if torch.is_tensor(output):
            return None
        if key is not None:
            chosen = output[key]
        else:
            items = list(output.values()) if isinstance(output, dict) else list(output)
            chosen = next((t for t in items if torch.is_tensor(t) and t.dim() == 2 and t.shape[1] == n_classes), None)
        if not torch.is_tensor(chosen):
            raise ValueError(f"the classifier returns a {type(output).__name__} without a (batch, {n_classes}) logits tensor; "
                             "set classifier.output_key to its index or name")  # fmt: skip
        return chosen

    network.register_forward_hook(pick)
    return network


def _preprocessing(section: dict, config_file: Path, field: str) -> Preprocessing | BundlePipeline:
    """The network's ``input:`` as MONAI transforms; for a bundle without ``input:``, the
    bundle's own preprocessing, inferer and postprocessing."""
    try:
        if "bundle" in section and "input" not in section:
            folder = _bundle_folder(section["bundle"], config_file, f"{field}.bundle")
            return BundlePipeline(_bundle(folder, config_file, f"{field}.bundle", section), section["bundle"])
        return Preprocessing(**section.get("input", {}))
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{config_file}: {field}.input: {error}") from error


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks; of a folder (a DICOM series),
    over its files' names and bytes in name order."""
    import hashlib

    digest, folder = hashlib.sha256(), Path(path).is_dir()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()) if folder else [Path(path)]:
        if folder:
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def weights_digest(path: str | Path) -> str:
    """16 hex digits identifying a configuration's weights: SHA-256 over the SHA-256 of
    each existing weight file (:func:`weight_files`), in their order."""
    import hashlib

    digests = "".join(file_digest(f) for f in weight_files(path) if f.exists())
    return hashlib.sha256(digests.encode()).hexdigest()[:16]


def weight_files(path: str | Path) -> list[Path]:
    """The files a configuration's networks are loaded from (state_dicts, TorchScript
    files, bundle model files), existing or not."""
    config_file = Path(path).resolve()
    config = read_config(config_file)
    files = []
    for field in ("classifier", "segmenter"):
        section = config.get(field) or {}
        if "weights" in section:
            files.append(_confined(section["weights"], config_file, f"{field}.weights"))
        if "torchscript" in section:
            files.append(_confined(section["torchscript"], config_file, f"{field}.torchscript"))
        if "bundle" in section:
            folder = _bundle_folder(section["bundle"], config_file, f"{field}.bundle")
            files += [checkpoint_of(_bundle(folder, config_file, f"{field}.bundle", section), folder).path, folder / "models" / "model.ts"]
    return files


#: The model configurations shipped with the app.
BUILTIN_MODELS_DIR = Path(__file__).resolve().parents[1] / "model_configs"


def model_config_file(name_or_path: str | Path) -> Path:
    """A configuration file given by path, or by the name of a built-in model (``ham10000``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    builtin = BUILTIN_MODELS_DIR / f"{name_or_path}.yaml"
    if builtin.exists():
        return builtin
    names = sorted(p.stem for p in BUILTIN_MODELS_DIR.glob("*.yaml"))
    raise ConfigError(f"no model configuration {str(name_or_path)!r}: not a file, and the built-in models are {names}")


def _names_and_dims(config: dict, classifier: dict, segmenter: dict, config_file: Path) -> tuple[list[str], dict[int, str], int]:
    """``(class names, segmenter label -> name, spatial dims)`` from the configuration, or,
    where it is silent, from the bundles' ``configs/metadata.json`` (``channel_def``,
    ``spatial_shape``); given on both sides they must agree (a ConfigError names both)."""

    def bundle_folder(section, field):
        return _bundle_folder(section["bundle"], config_file, f"{field}.bundle") if "bundle" in section else None

    try:
        class_folder, label_folder = bundle_folder(classifier, "classifier"), bundle_folder(segmenter, "segmenter")
        class_meta = metadata_names(class_folder) if class_folder else {}
        label_meta = {k: v for k, v in metadata_names(label_folder).items() if k != 0} if label_folder else {}
        dims_meta = {metadata_input(f)[1] for f in (class_folder, label_folder) if f} - {None}
    except BundleError as error:
        raise ConfigError(f"{config_file}: {error}") from error
    if "classes" not in config and not class_meta:
        raise ConfigError(f"{config_file}: missing field classes (or a classifier bundle whose metadata names them)")
    classes = config.get("classes", [class_meta[k] for k in sorted(class_meta)])
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"{config_file}: classes: expected a non-empty list of names (or a classifier bundle whose metadata names them)")
    if class_meta and len(class_meta) != len(classes):
        raise ConfigError(f"{config_file}: classes: {len(classes)} names {classes}, the classifier bundle's metadata has {len(class_meta)}: {sorted(class_meta.values())}")
    labels = segmenter.get("labels", label_meta or {1: "region"})
    if not isinstance(labels, dict):
        raise ConfigError(f"{config_file}: segmenter.labels: expected a mapping of label values to names")
    labels = {int(k): str(v) for k, v in labels.items()}
    if label_meta and not set(labels) <= set(label_meta):
        raise ConfigError(f"{config_file}: segmenter.labels: values {sorted(set(labels) - set(label_meta))} are not outputs of the bundle, whose metadata names {label_meta}")
    spatial_dims = int(config.get("spatial_dims", next(iter(dims_meta), 2)))
    if len(dims_meta) > 1 or (dims_meta and spatial_dims not in dims_meta):
        raise ConfigError(f"{config_file}: spatial_dims: {spatial_dims}, the bundles' metadata says {sorted(dims_meta)}")
    return classes, labels, spatial_dims


def load_model_pair(path: str | Path, network_modules: Iterable[str] = (), bundle_overrides: dict[str, dict] | None = None) -> ModelPair:
    """Read a model configuration file and build its :class:`ModelPair` (networks on CPU).
    ``network_modules``: modules allowed for ``network:`` beyond :func:`allowed_network_modules`;
    ``bundle_overrides``: ``{"segmenter": {"highres": True}}``, added to (and over) the
    sections' own ``bundle_overrides`` (``segx explain --bundle-override``).

    Returns:
        the pair; ``pair.config`` is the parsed configuration dict.

    Raises:
        ConfigError: naming the file and the field; :class:`MissingWeightsError` when a
            weight file is missing.
    """
    config_file = Path(path).resolve()
    config = read_config(config_file)
    modules = allowed_network_modules(network_modules)
    for field, extra in (bundle_overrides or {}).items():
        section = _require(config, field, "", config_file)
        if "bundle" not in section:
            raise ConfigError(f"{config_file}: {field}: bundle overrides given, but the {field} is not a bundle")
        section["bundle_overrides"] = {**(section.get("bundle_overrides") or {}), **extra}
    classifier_section = _require(config, "classifier", "", config_file)
    segmenter_section = _require(config, "segmenter", "", config_file)
    classes, labels, spatial_dims = _names_and_dims(config, classifier_section, segmenter_section, config_file)
    certainty = config.get("certainty") or {}
    variant = certainty.get("variant", DEFAULT_VARIANT)
    if variant not in VARIANTS:
        raise ConfigError(f"{config_file}: certainty.variant: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    try:
        levels = load_levels(config) if "high" in certainty else None
    except TypeError as error:
        raise ConfigError(f"{config_file}: certainty: {error}") from error
    recipe = config.get("recipe")  # the training recipe (segx.training.RECIPES) the server's trainers follow
    if recipe is not None and not (isinstance(recipe, str) and recipe.isidentifier()):
        raise ConfigError(f"{config_file}: recipe: a recipe name (letters, digits, '_'), not {recipe!r}")
    runtimes = {"classifier": _runtime(classifier_section, config_file, "classifier"), "segmenter": _runtime(segmenter_section, config_file, "segmenter")}
    segmenter_input = _preprocessing(segmenter_section, config_file, "segmenter")
    default_output = segmenter_input.output if isinstance(segmenter_input, BundlePipeline) else "logits"
    try:
        pair = ModelPair(
            classifier=logits_only(load_network(classifier_section, config_file, "classifier", modules), classifier_section.get("output_key"), len(classes)),
            segmenter=load_network(segmenter_section, config_file, "segmenter", modules),
            class_names=classes,
            spatial_dims=spatial_dims,
            multi_label=bool(config.get("multi_label", False)),
            segmenter_output=segmenter_section.get("output", default_output),
            segment_names=labels,
            region_labels={k: [int(v) for v in vs] for k, vs in config.get("region_labels", {}).items()},
            classifier_input=_preprocessing(classifier_section, config_file, "classifier"),
            segmenter_input=segmenter_input,
            target_layer=classifier_section.get("target_layer"),
            certainty_variant=variant,
            levels=levels,
            config=config,
        )
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{config_file}: {error}") from error
    for network, runtime in ((pair.classifier, runtimes["classifier"]), (pair.segmenter, runtimes["segmenter"])):
        if runtime == "onnxruntime":
            onnxrt.enable(network)
    return pair
