"""A model configuration builds only what it may: networks from allowed modules only (a
refused module is never imported), paths inside the configuration's folder, every other
key data or a name in a fixed table. The table below classifies every key the loader
reads; ``test_the_loader_reads_only_classified_keys`` fails when the loader starts reading
one that is not in it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BrightRegion

from segx import config as segx_config
from segx.certainty import Combination
from segx.config import (
    BUILTIN_MODELS_DIR,
    FILE_ARGS,
    NETWORK_MODULES_ENV,
    ConfigError,
    allow_network_modules,
    load_model_pair,
    weight_files,
)
from segx.preprocessing import Preprocessing

# ---------------------------------------------------------------------------------------
# The classified table: key -> rule (from reading segx/config.py, segx/certainty.py and
# segx/preprocessing.py). SECTION: a mapping whose own keys are listed one by one.

SECTION = "section: its keys are classified one by one"
ALLOW_LIST = "code: module allow-list (exact module) + nn.Module class / annotated builder / torchvision builder; refused modules never imported"
ARGS = "data: constructor keyword arguments (YAML/JSON values only); FILE_ARGS refused"
CONFINED = "file: path inside the configuration's folder or its subfolders (symlinks resolved); torch.load(weights_only=True) / torch.jit.load"
BUNDLE = "code: bundle folder inside the configuration's folder (its inference config and model files too); a bundle is code an admin installs"
TABLE = "name looked up in a fixed table"
LAYER = "name looked up in the network's named_modules()"
DATA = "data: numbers, names, lists, mappings; never imported or opened"

TOP_KEYS = {
    "classes": DATA,
    "spatial_dims": DATA,
    "multi_label": DATA,
    "region_labels": DATA,
    "classifier": SECTION,
    "segmenter": SECTION,
    "certainty": SECTION,
    "certainty.variant": TABLE,  # certainty.VARIANTS
    "certainty.low": DATA,
    "certainty.high": DATA,
    "certainty.high_accuracy": DATA,
    "certainty.low_accuracy": DATA,
    "certainty.n_validation": DATA,
    "certainty.min_support": DATA,
    "certainty.confidence": DATA,
    "certainty.combination": DATA,  # Combination.from_config: a VARIANTS name and numbers
    "recipe": TABLE,  # segx.training.RECIPES, looked up by the server's trainers (lib/trainers)
}
NETWORK_KEYS = {  # both classifier and segmenter
    "network": ALLOW_LIST,
    "args": ARGS,
    "weights": CONFINED,
    "torchscript": CONFINED,
    "bundle": BUNDLE,
    "memory_format": TABLE,  # config.MEMORY_FORMATS
    "runtime": TABLE,  # onnxrt.RUNTIMES
    "input": SECTION,
    "strict": DATA,  # a bool: load_state_dict(strict=...)
    "key_map": DATA,  # state_dict key prefixes renamed (strings only)
    "bundle_overrides": "code: values set by id into the bundle's configuration, as `monai.bundle run --key value` (a bundle is code an admin installs)",
}
INPUT_KEYS = {  # Preprocessing(**input): its dataclass fields, nothing else
    "channels": DATA,
    "spatial_size": DATA,
    "intensity": TABLE,  # INTENSITY_MODES, or a numeric window
    "orientation": DATA,  # axis codes checked by MONAI's Orientationd
    "spacing": DATA,
    "resize": TABLE,  # RESIZE_MODES
    "inferer": TABLE,  # INFERERS
    "roi_size": DATA,
    "overlap": DATA,
    "sw_batch_size": DATA,
}
CLASSIFIER_KEYS = {"output_key": DATA, "target_layer": LAYER}
SEGMENTER_KEYS = {"output": TABLE, "labels": DATA}  # output: logits | probabilities | label

KEY_TABLE = {
    **TOP_KEYS,
    **{f"{part}.{key}": rule for part in ("classifier", "segmenter") for key, rule in NETWORK_KEYS.items()},
    **{f"{part}.input.{key}": rule for part in ("classifier", "segmenter") for key, rule in INPUT_KEYS.items()},
    **{f"classifier.{key}": rule for key, rule in CLASSIFIER_KEYS.items()},
    **{f"segmenter.{key}": rule for key, rule in SEGMENTER_KEYS.items()},
}


#: Sections the loader iterates: ``Preprocessing(**input)`` then reads each key (recorded
#: and classified one by one), and Preprocessing refuses any key not among its fields.
ITERATED_SECTIONS = ("classifier.input", "segmenter.input")


def classified(key: str) -> bool:
    """``key`` (dotted; ``X.*``: X iterated) is in the table, or lies under a listed key
    that is not a SECTION (a data mapping such as ``classifier.args``)."""
    if key in KEY_TABLE or key.removesuffix(".*") in ITERATED_SECTIONS:
        return True
    parts = key.split(".")
    return any(KEY_TABLE.get(".".join(parts[:n])) not in (None, SECTION) for n in range(1, len(parts)))


class Recording(dict):
    """A configuration dict that notes every key read from it (and ``PATH.*`` when it is
    iterated); nested dicts are Recordings too."""

    def __init__(self, data=(), path: str = "", log: set | None = None):
        self._path, self._log = path, log if log is not None else set()
        super().__init__({k: Recording(v, self._at(k), self._log) if isinstance(v, dict) else v for k, v in dict(data).items()})

    def _at(self, key) -> str:
        return f"{self._path}.{key}" if self._path else str(key)

    def __getitem__(self, key):
        self._log.add(self._at(key))
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._log.add(self._at(key))
        return super().get(key, default)

    def __contains__(self, key):
        self._log.add(self._at(key))
        return super().__contains__(key)

    def pop(self, key, *default):
        self._log.add(self._at(key))
        return super().pop(key, *default)

    def _all(self):
        self._log.add(self._at("*"))

    def __iter__(self):  # also makes f(**recording) go through keys() and __getitem__
        self._all()
        return super().__iter__()

    def keys(self):
        self._all()
        return super().keys()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()


def keys_read(monkeypatch, config_file: Path) -> set[str]:
    """Every key read while loading ``config_file`` (the pair, its weight files, its
    certainty combination)."""
    log: set[str] = set()
    read = segx_config.read_config
    monkeypatch.setattr(segx_config, "read_config", lambda path: Recording(read(path), "", log))
    pair = load_model_pair(config_file)
    weight_files(config_file)
    Combination.from_config(pair.config)
    monkeypatch.setattr(segx_config, "read_config", read)
    return log


# ---------------------------------------------------------------------------------------
# Helpers: a copy of the shipped demo2d pair, tiny bundles, a module with a canary.


@pytest.fixture(autouse=True)
def no_admin_modules(monkeypatch):
    """No module allowed beyond the built-in ones unless a test says so."""
    monkeypatch.delenv(NETWORK_MODULES_ENV, raising=False)
    allow_network_modules(())
    yield
    allow_network_modules(())


def demo2d(folder: Path, name: str = "pair.yaml", change=None) -> Path:
    """The shipped demo2d pair copied into ``folder`` (weights in ``folder/weights``),
    ``change(config)`` applied."""
    (folder / "weights").mkdir(parents=True, exist_ok=True)
    for part in ("classifier", "segmenter"):
        shutil.copy(BUILTIN_MODELS_DIR / "weights" / f"demo2d_{part}.pt", folder / "weights")
    config = yaml.safe_load((BUILTIN_MODELS_DIR / "demo2d.yaml").read_text())
    if change:
        change(config)
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def write_bundle(folder: Path, with_preprocessing: bool = True) -> Path:
    """A bundle whose network is ``models/model.ts`` (the BrightRegion segmenter) and whose
    preprocessing does nothing."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    torch.jit.script(BrightRegion()).save(str(folder / "models" / "model.ts"))
    inference = {"preprocessing": {"_target_": "Compose", "transforms": []}} if with_preprocessing else {}
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    return folder


def canary_module(tmp_path: Path, monkeypatch, package: bool = False) -> tuple[str, Path]:
    """A module on sys.path, new to this process, that writes ``canary`` when imported and
    defines ``MyNet`` (in ``NAME.sub`` for a package). Returns ``(NAME, canary)``."""
    name = f"segx_canary_{uuid.uuid4().hex[:12]}"
    canary = tmp_path / "canary.txt"
    code = (
        f"import pathlib\nimport torch\npathlib.Path({str(canary)!r}).write_text('imported')\n\n"
        "class MyNet(torch.nn.Module):\n"
        "    def __init__(self, n=2):\n        super().__init__()\n        self.fc = torch.nn.Linear(4, n)\n\n"
        "    def forward(self, x):\n        return self.fc(x.flatten(1)[:, :4])\n"
    )
    root = tmp_path / "site"
    root.mkdir()
    if package:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"import pathlib\npathlib.Path({str(canary)!r}).write_text('imported')\n")
        (root / name / "sub.py").write_text(code)
    else:
        (root / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(root))
    return name, canary


def mynet_pair(folder: Path, network: str) -> Path:
    """demo2d with the classifier replaced by ``network`` (a MyNet) and its state_dict."""
    torch.save({"fc.weight": torch.zeros(2, 4), "fc.bias": torch.zeros(2)}, folder / "mynet.pt")

    def change(config):
        config["classifier"] = {"network": network, "args": {"n": 2}, "weights": "mynet.pt", "target_layer": "fc",
                                "input": {"channels": 1, "spatial_size": [2, 2]}}  # fmt: skip

    return demo2d(folder, change=change)


def refusal(path: Path) -> str:
    """The ConfigError message of loading ``path``; it names the file."""
    with pytest.raises(ConfigError) as error:
        load_model_pair(path)
    message = str(error.value)
    assert str(path.resolve()) in message, message
    return message


# ---------------------------------------------------------------------------------------
# network: the allow-list


@pytest.mark.parametrize(
    "network, args",
    [
        ("os.system", {"command": "touch {canary}"}),
        ("subprocess.Popen", {"args": ["touch", "{canary}"]}),
        ("builtins.eval", {}),
        ("torch.nn.Module", {}),  # torch.nn: layers, not networks; not on the list
        ("torch.nn.Linear", {"in_features": 4, "out_features": 2}),
        ("torchvision.models.resnet.resnet18", {"num_classes": 2}),  # a submodule of an allowed module
        ("monai.networks.nets.resnet.ResNet", {}),
        ("segx.cli.main", {}),
    ],
)
def test_networks_from_modules_off_the_list_are_refused(tmp_path, network, args):
    canary = tmp_path / "canary.txt"
    args = {k: (v.format(canary=canary) if isinstance(v, str) else [a.format(canary=canary) for a in v] if isinstance(v, list) else v) for k, v in args.items()}
    path = demo2d(tmp_path, change=lambda c: c["classifier"].update(network=network, args=args))
    message = refusal(path)
    module = network.rpartition(".")[0]
    assert "classifier.network" in message and repr(network) in message and f"module {module!r} is not allowed" in message
    assert f"--conf network_modules {module}" in message and f"{NETWORK_MODULES_ENV}={module}" in message
    assert not canary.exists()


@pytest.mark.parametrize(
    "network",
    [
        "get_pretrained_resnet_medicalnet",  # a function of monai.networks.nets that downloads, not a builder
        "monai.networks.nets.drop_connect",
        "torchvision.models.get_model_builder",
        "segx.networks.torch",  # a module object
        "FlexUNetEncoderRegister",  # a class, not an nn.Module
        "_resnet",
    ],
)
def test_names_in_allowed_modules_must_build_a_network(tmp_path, network):
    path = demo2d(tmp_path, change=lambda c: c["classifier"].update(network=network, args={}))
    message = refusal(path)
    assert "classifier.network" in message and (repr(network) in message or repr(network.rpartition(".")[2]) in message)


def test_an_allowed_module_still_builds_only_networks(tmp_path, monkeypatch):
    """Even an admin who allows ``os`` gets no ``os.system`` (the second check)."""
    monkeypatch.setenv(NETWORK_MODULES_ENV, "os, subprocess")
    canary = tmp_path / "canary.txt"
    for network, args in (("os.system", {"command": f"touch {canary}"}), ("subprocess.Popen", {"args": ["touch", str(canary)]})):
        path = demo2d(tmp_path, change=lambda c: c["classifier"].update(network=network, args=args))
        assert "not a torch.nn.Module class" in refusal(path)
    assert not canary.exists()


def test_a_module_off_the_list_is_never_imported(tmp_path, monkeypatch):
    name, canary = canary_module(tmp_path, monkeypatch)
    path = mynet_pair(tmp_path, f"{name}.MyNet")
    message = refusal(path)
    assert f"{NETWORK_MODULES_ENV}={name}" in message
    assert not canary.exists() and name not in sys.modules

    monkeypatch.setenv(NETWORK_MODULES_ENV, f"some.other, {name}")
    pair = load_model_pair(path)
    assert type(pair.classifier).__name__ == "MyNet" and canary.exists()
    assert pair.classifier(torch.zeros(1, 1, 2, 2)).shape == (1, 2)


def test_submodules_of_an_allowed_module_are_not_allowed(tmp_path, monkeypatch):
    name, canary = canary_module(tmp_path, monkeypatch, package=True)
    path = mynet_pair(tmp_path, f"{name}.sub.MyNet")
    monkeypatch.setenv(NETWORK_MODULES_ENV, name)
    assert f"module '{name}.sub' is not allowed" in refusal(path)
    assert not canary.exists() and name not in sys.modules
    monkeypatch.setenv(NETWORK_MODULES_ENV, f"{name}.sub")
    assert type(load_model_pair(path).classifier).__name__ == "MyNet"


def test_the_server_allows_modules_by_its_conf(tmp_path, monkeypatch):
    """``--conf network_modules`` reaches the loader through ``load_model_configs``
    (also for later reloads: it holds for the process)."""
    from lib.configs.segx_model import load_model_configs

    name, canary = canary_module(tmp_path, monkeypatch)
    mynet_pair(tmp_path, f"{name}.MyNet")
    models, unavailable = load_model_configs([tmp_path], "pair", {"device": "cpu"})
    assert not models and "--conf network_modules" in unavailable["pair"] and not canary.exists()

    models, unavailable = load_model_configs([tmp_path], "pair", {"device": "cpu", "network_modules": f"{name}"})
    assert not unavailable and type(models["pair"].runtime.pair.classifier).__name__ == "MyNet"
    assert load_model_pair(tmp_path / "pair.yaml")  # a reload, as ModelRuntime does


def test_load_model_pair_takes_modules_from_its_caller(tmp_path, monkeypatch):
    name, _ = canary_module(tmp_path, monkeypatch)
    path = mynet_pair(tmp_path, f"{name}.MyNet")
    assert type(load_model_pair(path, network_modules=[name]).classifier).__name__ == "MyNet"


def test_module_lists_name_modules_only(tmp_path, monkeypatch):
    path = demo2d(tmp_path)
    monkeypatch.setenv(NETWORK_MODULES_ENV, "../evil")
    with pytest.raises(ConfigError, match=f"{NETWORK_MODULES_ENV}.*not a dotted module name"):
        load_model_pair(path)
    with pytest.raises(ConfigError, match="network_modules.*not a dotted module name"):
        allow_network_modules("os;rm")


def test_torchvision_builders_load_with_a_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "resnet18.pt")

    def change(config):
        config["classifier"] = {"network": "torchvision.models.resnet18", "args": {"num_classes": 2}, "weights": "resnet18.pt",
                                "input": {"channels": 3, "spatial_size": [64, 64], "intensity": "divide255"}}  # fmt: skip

    pair = load_model_pair(demo2d(tmp_path, change=change))
    assert isinstance(pair.classifier, torchvision.models.ResNet)
    with torch.no_grad():
        assert pair.classifier(torch.rand(1, 3, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("key, value", [("weights", "DEFAULT"), ("pretrained", True), ("pretrained", "/etc/passwd"), ("pretrained_url", "http://example.org/x.pt")])
def test_arguments_that_read_or_download_files_are_refused(tmp_path, key, value):
    network = "torchvision.models.resnet18" if key == "weights" else "DenseNet"
    path = demo2d(tmp_path, change=lambda c: c["classifier"].update(network=network, args={**c["classifier"]["args"], key: value}))
    assert f"classifier.args.{key}: refused" in refusal(path)
    assert key in FILE_ARGS


# ---------------------------------------------------------------------------------------
# Paths: inside the configuration's folder


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the models folder with a valid state_dict, TorchScript file and
    bundle in it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    shutil.copy(BUILTIN_MODELS_DIR / "weights" / "demo2d_classifier.pt", folder / "classifier.pt")
    torch.jit.script(BrightRegion()).save(str(folder / "segmenter.ts"))
    write_bundle(folder / "bundle")
    return folder


def escapes(outside: Path, models: Path) -> dict[str, tuple[str, str]]:
    """name -> (key, value) of each escape, links made in ``models``."""
    (models / "link.pt").symlink_to(outside / "classifier.pt")
    (models / "linked_dir").symlink_to(outside)
    return {
        "dotdot": ("classifier.weights", "../../etc/passwd"),
        "absolute": ("classifier.weights", "/etc/passwd"),
        "absolute_valid": ("classifier.weights", str(outside / "classifier.pt")),
        "dotdot_valid": ("classifier.weights", "../outside/classifier.pt"),
        "symlink": ("classifier.weights", "link.pt"),
        "symlinked_folder": ("classifier.weights", "linked_dir/classifier.pt"),
        "torchscript": ("segmenter.torchscript", "../outside/segmenter.ts"),
        "torchscript_absolute": ("segmenter.torchscript", str(outside / "segmenter.ts")),
        "bundle": ("segmenter.bundle", "../outside/bundle"),
        "bundle_symlinked": ("segmenter.bundle", "linked_dir/bundle"),
    }


ESCAPES = ["dotdot", "absolute", "absolute_valid", "dotdot_valid", "symlink", "symlinked_folder", "torchscript", "torchscript_absolute", "bundle", "bundle_symlinked"]


@pytest.mark.parametrize("escape", ESCAPES)
def test_paths_out_of_the_configuration_folder_are_refused(tmp_path, outside, escape):
    models = tmp_path / "models"
    models.mkdir()
    key, value = escapes(outside, models)[escape]
    part, field = key.split(".")

    def change(config):
        if field == "weights":
            config[part][field] = value
        else:
            config[part] = {field: value, "labels": {1: "lesion"}}

    path = demo2d(models, change=change)
    message = refusal(path)
    assert f"{key}: {value!r} refused: it lies outside the configuration's folder" in message
    with pytest.raises(ConfigError, match="outside the configuration's folder"):
        weight_files(path)


@pytest.mark.parametrize("inner", ["configs/inference.json", "models/model.ts"])
def test_a_bundle_file_linked_out_of_the_folder_is_refused(tmp_path, outside, inner):
    models = tmp_path / "models"
    bundle = write_bundle(models / "bundle")
    (bundle / inner).unlink()
    (bundle / inner).symlink_to(outside / "bundle" / inner)
    path = demo2d(models, change=lambda c: c.update(segmenter={"bundle": "bundle", "labels": {1: "lesion"}}))
    message = refusal(path)
    assert f"segmenter.bundle ({inner}): " in message and "outside the configuration's folder" in message


def test_paths_inside_the_folder_load_however_written(tmp_path):
    """An absolute path inside the folder, a symlink that stays inside, ``..`` that comes
    back, a bundle and a TorchScript file in subfolders: all load."""
    models = tmp_path / "models"
    write_bundle(models / "bundles" / "bright")
    (models / "ts").mkdir(parents=True)
    torch.jit.script(BrightRegion()).save(str(models / "ts" / "bright.ts"))
    inside = models / "weights" / "demo2d_classifier.pt"

    def absolute_and_bundle(config):
        config["classifier"]["weights"] = str(inside)
        config["segmenter"] = {"bundle": "bundles/bright", "labels": {1: "lesion"}}

    assert load_model_pair(demo2d(models, "a.yaml", absolute_and_bundle)).segmenter_output == "logits"
    (models / "same.pt").symlink_to(inside)

    def link_and_torchscript(config):
        config["classifier"]["weights"] = "same.pt"
        config["segmenter"] = {"torchscript": "ts/../ts/bright.ts", "labels": {1: "lesion"}, "input": {"channels": 3}}

    path = demo2d(models, "b.yaml", link_and_torchscript)
    assert load_model_pair(path) and weight_files(path)[0] == inside.resolve()


# ---------------------------------------------------------------------------------------
# Every key the loader reads is classified


def test_the_input_keys_are_the_preprocessing_fields():
    assert set(INPUT_KEYS) == {f.name for f in dataclasses.fields(Preprocessing) if f.init}


@pytest.mark.parametrize("shipped", sorted(p.name for p in BUILTIN_MODELS_DIR.glob("*.yaml")))
def test_the_shipped_configurations_load_and_read_only_classified_keys(monkeypatch, shipped):
    read = keys_read(monkeypatch, BUILTIN_MODELS_DIR / shipped)
    assert {k for k in read if not classified(k)} == set()
    assert "classifier.network" in read and "segmenter.weights" in read


def test_the_loader_reads_only_classified_keys(tmp_path, monkeypatch):
    """Configurations exercising every branch (state_dict, TorchScript, bundle with and
    without ``input:``, every option), with keys the loader must not care about: every
    key read is in the table, and every key of the table is read by one of them."""
    models = tmp_path / "models"
    write_bundle(models / "bundle")
    torch.jit.script(BrightRegion()).save(str(models / "bright.ts"))
    full_input = {"channels": 3, "spatial_size": [64, 64], "intensity": [0, 255], "orientation": None, "spacing": None,
                  "resize": "resize", "inferer": "simple", "roi_size": None, "overlap": 0.25, "sw_batch_size": 1}  # fmt: skip

    def everything(config):
        config["name"] = "ignored"
        config["multi_label"] = False
        config["region_labels"] = {"melanoma": [1]}
        config["recipe"] = "demo2d"
        config["certainty"].update(low=0.2, high=0.8)  # levels set: their fields are read
        config["classifier"].update(output_key=0, target_layer="features", memory_format="contiguous", runtime="torch", input=full_input, unread="x",
                                    strict=True, key_map={"features.": "features."})  # fmt: skip
        config["segmenter"] = {"torchscript": "bright.ts", "output": "logits", "labels": {1: "lesion"}, "input": dict(full_input, inferer="sliding_window", roi_size=[32, 32])}

    def bundles(config):
        config["segmenter"] = {"bundle": "bundle", "labels": {1: "lesion"}, "bundle_overrides": {"preprocessing#transforms": []}}
        config["certainty"]["combination"] = None

    def bundle_with_input(config):
        config["segmenter"] = {"bundle": "bundle", "labels": {1: "lesion"}, "input": {"channels": 3}}
        (models / "classifier_bundle" / "configs").mkdir(parents=True)
        (models / "classifier_bundle" / "models").mkdir()
        network_def = {"_target_": config["classifier"]["network"], **config["classifier"]["args"]}
        (models / "classifier_bundle" / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def}))
        shutil.copy(models / config["classifier"]["weights"], models / "classifier_bundle" / "models" / "model.pt")
        config["classifier"] = {"bundle": "classifier_bundle", "bundle_overrides": {"network_def#out_channels": 2}, "input": config["classifier"]["input"]}

    read = set()
    for name, change in (("plain.yaml", None), ("everything.yaml", everything), ("bundle.yaml", bundles), ("bundle_input.json", bundle_with_input)):
        path = demo2d(models, name, change)
        if path.suffix == ".json":
            path.write_text(json.dumps(yaml.safe_load(path.read_text())))
        read |= keys_read(monkeypatch, path)
    unclassified = sorted(k for k in read if not classified(k))
    assert unclassified == [], f"the loader reads keys that tests/test_config_allowlist.py does not classify: {unclassified}"
    never_read = sorted(k for k, rule in KEY_TABLE.items() if rule != SECTION and k not in read)
    assert never_read == [], f"table keys no configuration here exercised (extend the configurations): {never_read}"


def test_the_key_table_confines_every_path_key(tmp_path):
    """Every key the table calls a file or a bundle is refused outside the folder."""
    for key, rule in KEY_TABLE.items():
        if rule not in (CONFINED, BUNDLE):
            continue
        part, field = key.split(".")
        folder = tmp_path / key
        folder.mkdir()

        def change(config):
            config[part] = {**({"network": "DenseNet", "args": {}} if field == "weights" else {}), field: "../elsewhere", "labels": {1: "x"}}

        assert f"{key}: '../elsewhere' refused" in refusal(demo2d(folder, change=change))
