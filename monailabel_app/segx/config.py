"""Model-pair configuration files: one YAML or JSON file per model configuration.

Each network is a MONAI network name with arguments and a state_dict, a TorchScript file,
or a MONAI bundle folder. Relative paths are resolved against the config file's folder::

    name: demo2d
    spatial_dims: 2
    classes: [benign, malignant]        # class labels, logit order
    multi_label: false                  # softmax (false) or one sigmoid per class
    classifier:
      network: DenseNet121              # any monai.networks.nets name, or module.Class
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
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import onnxrt
from .certainty import DEFAULT_VARIANT, VARIANTS, load_levels
from .pair import ModelPair
from .preprocessing import BundlePipeline, Preprocessing, read_bundle

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


def _network_class(name: str, config_file: Path, field: str):
    import monai.networks.nets as nets

    if "." not in name:
        if not hasattr(nets, name):
            raise ConfigError(f"{config_file}: {field}: unknown MONAI network {name!r}")
        return getattr(nets, name)
    module_name, _, class_name = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"{config_file}: {field}: cannot import {name!r}: {error}") from error


def _load_state_dict(model: nn.Module, weights: Path, config_file: Path, field: str) -> None:
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(f"{config_file}: {field}: cannot read weights {weights}: {error}") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ConfigError(f"{config_file}: {field}: weights {weights} do not fit the network: {error}") from error


def _bundle(folder: Path, config_file: Path, field: str):
    """A bundle's parsed inference configuration (see :func:`segx.preprocessing.read_bundle`)."""
    try:
        return read_bundle(folder)
    except FileNotFoundError as error:
        raise ConfigError(f"{config_file}: {field}: {error}") from error


def _bundle_network(folder: Path, config_file: Path, field: str) -> nn.Module:
    """A bundle's ``network_def`` with ``models/model.pt``, or its ``models/model.ts``."""
    parser = _bundle(folder, config_file, field)
    scripted = folder / "models" / "model.ts"
    weights = folder / "models" / "model.pt"
    if not weights.exists() and scripted.exists():
        return torch.jit.load(str(scripted), map_location="cpu")
    if not weights.exists():
        raise MissingWeightsError(config_file, field, weights)
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as error:
        raise ConfigError(f"{config_file}: {field}: bundle {folder}: cannot build network_def: {error}") from error
    _load_state_dict(network, weights, config_file, field)
    return network


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def load_network(section: dict, config_file: Path, field: str) -> nn.Module:
    """Build one network from its config section (``network`` + ``args`` + ``weights``,
    ``torchscript`` or ``bundle``), weights loaded, in eval mode, its weights in the
    section's ``memory_format`` (``channels_last`` makes 2D convolutions run in NHWC order,
    which oneDNN often runs faster on CPU; docs/BENCHMARKS.md)."""
    name = section.get("memory_format", "contiguous")
    if name not in MEMORY_FORMATS:
        raise ConfigError(f"{config_file}: {field}.memory_format: unknown format {name!r}; choose one of {sorted(MEMORY_FORMATS)}")
    network = _load_network(section, config_file, field)
    try:
        return network.to(memory_format=MEMORY_FORMATS[name])
    except RuntimeError as error:  # 3D weights (rank 5) have no channels_last
        raise ConfigError(f"{config_file}: {field}.memory_format: {name} does not fit this network: {error}") from error


def _runtime(section: dict, config_file: Path, field: str) -> str:
    """The section's ``runtime`` (``torch``, or ``onnxruntime``: plain CPU forwards by ONNX
    Runtime, :mod:`segx.onnxrt`, for ``network:`` sections only), checked before loading."""
    name = section.get("runtime", "torch")
    if name not in onnxrt.RUNTIMES:
        raise ConfigError(f"{config_file}: {field}.runtime: unknown runtime {name!r}; choose one of {list(onnxrt.RUNTIMES)}")
    if name == "onnxruntime" and "network" not in section:
        raise ConfigError(f"{config_file}: {field}.runtime: onnxruntime is offered for `network:` sections only")
    return name


def _load_network(section: dict, config_file: Path, field: str) -> nn.Module:
    base = config_file.parent
    kinds = [k for k in ("network", "torchscript", "bundle") if k in section]
    if len(kinds) != 1:
        raise ConfigError(f"{config_file}: {field}: give exactly one of network, torchscript, bundle")
    if kinds[0] == "torchscript":
        path = base / section["torchscript"]
        if not path.exists():
            raise MissingWeightsError(config_file, f"{field}.torchscript", path)
        return torch.jit.load(str(path), map_location="cpu").eval()
    if kinds[0] == "bundle":
        return _bundle_network(base / section["bundle"], config_file, f"{field}.bundle").eval()
    network_class = _network_class(section["network"], config_file, f"{field}.network")
    try:
        network = network_class(**section.get("args", {}))
    except Exception as error:
        raise ConfigError(f"{config_file}: {field}.args: cannot build {section['network']}: {error}") from error
    weights = base / _require(section, "weights", f"{field}.", config_file)
    if not weights.exists():
        raise MissingWeightsError(config_file, f"{field}.weights", weights)
    _load_state_dict(network, weights, config_file, f"{field}.weights")
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
            return BundlePipeline(_bundle(config_file.parent / section["bundle"], config_file, field), section["bundle"])
        return Preprocessing(**section.get("input", {}))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{config_file}: {field}.input: {error}") from error


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as stream:
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
            files.append(config_file.parent / section["weights"])
        if "torchscript" in section:
            files.append(config_file.parent / section["torchscript"])
        if "bundle" in section:
            models = config_file.parent / section["bundle"] / "models"
            files += [models / "model.pt", models / "model.ts"]
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


def load_model_pair(path: str | Path) -> ModelPair:
    """Read a model configuration file and build its :class:`ModelPair` (networks on CPU).

    Returns:
        the pair; ``pair.config`` is the parsed configuration dict.

    Raises:
        ConfigError: naming the file and the field; :class:`MissingWeightsError` when a
            weight file is missing.
    """
    config_file = Path(path).resolve()
    config = read_config(config_file)
    classes = _require(config, "classes", "", config_file)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"{config_file}: classes: expected a non-empty list of names")
    classifier_section = _require(config, "classifier", "", config_file)
    segmenter_section = _require(config, "segmenter", "", config_file)
    certainty = config.get("certainty") or {}
    variant = certainty.get("variant", DEFAULT_VARIANT)
    if variant not in VARIANTS:
        raise ConfigError(f"{config_file}: certainty.variant: unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    try:
        levels = load_levels(config) if "high" in certainty else None
    except TypeError as error:
        raise ConfigError(f"{config_file}: certainty: {error}") from error
    runtimes = {"classifier": _runtime(classifier_section, config_file, "classifier"), "segmenter": _runtime(segmenter_section, config_file, "segmenter")}
    labels = segmenter_section.get("labels", {1: "region"})
    segmenter_input = _preprocessing(segmenter_section, config_file, "segmenter")
    default_output = segmenter_input.output if isinstance(segmenter_input, BundlePipeline) else "logits"
    try:
        pair = ModelPair(
            classifier=logits_only(load_network(classifier_section, config_file, "classifier"), classifier_section.get("output_key"), len(classes)),
            segmenter=load_network(segmenter_section, config_file, "segmenter"),
            class_names=classes,
            spatial_dims=int(config.get("spatial_dims", 2)),
            multi_label=bool(config.get("multi_label", False)),
            segmenter_output=segmenter_section.get("output", default_output),
            segment_names={int(k): str(v) for k, v in labels.items()},
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
