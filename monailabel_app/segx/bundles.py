"""MONAI bundles loaded the way ``monai.bundle run`` loads them.

A model-zoo bundle decides for itself which weights its network gets: a
``CheckpointLoader`` (in ``handlers``, ``validate#handlers`` or a component of its own such
as ``checkpointloader``) whose ``load_path`` is an expression of the bundle's switches
(wholeBody_ct_segmentation: ``@bundle_root + '/models/' + @modelname``, ``modelname`` being
``model.pt`` if ``@displayable_configs#highres`` else ``model_lowres.pt``). Here:

- :func:`read_bundle` parses ``configs/inference.*`` with ``bundle_root`` set, and the
  overrides a user would pass to ``monai.bundle run --key value`` applied by id;
- :func:`checkpoint_of` evaluates the bundle's own ``load_path`` (only that expression:
  the loader, evaluator and data loaders are never built), its ``load_dict`` key and
  ``strict``; without a loader, ``models/model.pt``;
- :func:`build_network_def` builds ``network_def`` and names the root cause when MONAI's
  config parser fails (``segx.config`` loads ``models/model.ts`` instead when the chosen
  checkpoint is absent and a TorchScript file is there);
- :func:`metadata_names` reads label or class names from ``configs/metadata.json``
  (``network_data_format.outputs.pred.channel_def``), and :func:`metadata_input` its input
  channels and spatial dimensions.

A bundle is code (``$`` expressions and ``_target_`` run Python): only an admin installs
one (``segx.config`` keeps bundles inside the configuration's folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Known breaks between zoo bundles and the installed MONAI, keyed by a phrase of the error.
KNOWN_INCOMPATIBILITIES = {
    "'img_size'": "MONAI 1.5 removed SwinUNETR's img_size argument (bundles written for MONAI < 1.5 still pass it): "
                  "delete it from the bundle's network_def",
    "'dimensions'": "MONAI 1.0 renamed the networks' dimensions argument to spatial_dims: rename it in the bundle's network_def",
}  # fmt: skip


class BundleError(ValueError):
    """A bundle that cannot be loaded; the message names the root cause."""


@dataclass
class Checkpoint:
    """What a bundle's checkpoint loader would load: the file, the key of its ``load_dict``
    that holds the network (``model``) and whether loading is strict."""

    path: Path
    key: str | None = None
    strict: bool = True
    chosen_by: str = "the default models/model.pt"


def read_bundle(folder: Path, overrides: dict | None = None) -> Any:
    """A bundle's inference configuration (``configs/inference.{json,yaml,yml}``), parsed,
    ``bundle_root`` set to the folder, and ``overrides`` (``{"displayable_configs#highres":
    false, "network_def#out_channels": 3}``) applied by id, as ``monai.bundle run`` does.

    Raises:
        FileNotFoundError: no inference configuration.
        BundleError: an override names no key of the bundle.
    """
    from monai.bundle import ConfigParser

    found = [folder / "configs" / f"inference{s}" for s in (".json", ".yaml", ".yml")]
    found = [c for c in found if c.exists()]
    if not found:
        raise FileNotFoundError(f"bundle {folder.name} has no configs/inference.json or .yaml")
    parser = ConfigParser()
    parser.read_config(str(found[0]))
    parser["bundle_root"] = str(folder)
    missing = object()
    for key, value in (overrides or {}).items():
        parent = key.rsplit("#", 1)[0] if "#" in key else None
        if parser.get(key, missing) is missing and (parent is None or parser.get(parent, missing) is missing):
            raise BundleError(f"bundle override {key!r}: the bundle {folder.name} has no such key")
        parser[key] = value
    return parser


def _loader_ids(parser) -> list[str]:
    """Ids of the CheckpointLoader components of a parsed bundle (top level, or items of a
    list such as ``handlers`` / ``validate#handlers``)."""
    found = []

    def visit(node, prefix: str) -> None:
        if isinstance(node, dict):
            if str(node.get("_target_", "")).split(".")[-1] == "CheckpointLoader":
                found.append(prefix)
                return
            for key, value in node.items():
                visit(value, f"{prefix}#{key}" if prefix else str(key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                visit(value, f"{prefix}#{index}")

    visit(parser.get(), "")
    return found


def checkpoint_of(parser, folder: Path) -> Checkpoint:
    """The checkpoint the bundle's own loader chooses (its ``load_path`` evaluated with the
    bundle's switches and overrides), else ``models/model.pt``."""
    loaders = _loader_ids(parser)
    if not loaders:
        return Checkpoint(folder / "models" / "model.pt")
    loader = loaders[0]
    try:
        path = Path(str(parser.get_parsed_content(f"{loader}#load_path")))
    except Exception as error:  # an expression of the bundle's: name its root cause
        raise BundleError(f"bundle {folder.name}: cannot evaluate {loader}#load_path: {root_cause(error)}") from error
    load_dict = parser.get(f"{loader}#load_dict", {}) or {}
    key = next(iter(load_dict), None) if isinstance(load_dict, dict) and len(load_dict) == 1 else None
    strict = parser.get(f"{loader}#strict", True)
    return Checkpoint(path if path.is_absolute() else folder / path, key, bool(strict) if isinstance(strict, bool) else True, f"its {loader}")


def root_cause(error: BaseException) -> str:
    """``Type: message`` of the innermost exception of ``error``'s chain (MONAI's parser
    wraps the real error in "Failed to instantiate component ..."), with the fix when it is
    a known MONAI-version break."""
    seen, cause = set(), error
    while id(cause) not in seen and (cause.__cause__ or cause.__context__) is not None:
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    text = f"{type(cause).__name__}: {cause}"
    hints = [hint for phrase, hint in KNOWN_INCOMPATIBILITIES.items() if phrase in text]
    return text + (f" ({hints[0]})" if hints else "")


def build_network_def(parser, folder: Path):
    """The bundle's ``network_def`` (weights not loaded).

    Raises:
        BundleError: naming the root cause (and the fix of a known MONAI-version break).
    """
    try:
        return parser.get_parsed_content("network_def")
    except Exception as error:
        raise BundleError(f"bundle {folder.name}: cannot build network_def: {root_cause(error)}") from error


def _metadata(folder: Path) -> dict:
    path = folder / "configs" / "metadata.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError as error:
        raise BundleError(f"bundle {folder.name}: configs/metadata.json is not JSON: {error}") from None


def metadata_names(folder: Path) -> dict[int, str]:
    """Channel index -> name of the bundle's output (``network_data_format.outputs.pred.
    channel_def`` of ``configs/metadata.json``), empty when not given."""
    outputs = _metadata(folder).get("network_data_format", {}).get("outputs", {})
    output = outputs.get("pred") or next(iter(outputs.values()), {})
    channels = output.get("channel_def", {}) if isinstance(output, dict) else {}
    try:
        return {int(index): str(name) for index, name in channels.items()}
    except (TypeError, ValueError):
        raise BundleError(f"bundle {folder.name}: metadata channel_def must map channel numbers to names") from None


def metadata_input(folder: Path) -> tuple[int | None, int | None]:
    """``(channels, spatial dimensions)`` of the bundle's ``image`` input from its metadata
    (``num_channels``, the length of ``spatial_shape``); None where not given."""
    inputs = _metadata(folder).get("network_data_format", {}).get("inputs", {})
    image = inputs.get("image") or next(iter(inputs.values()), {})
    if not isinstance(image, dict):
        return None, None
    shape = image.get("spatial_shape")
    return image.get("num_channels"), (len(shape) if isinstance(shape, list) and shape else None)
