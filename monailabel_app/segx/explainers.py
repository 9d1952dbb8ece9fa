"""Explanation maps for a classifier: fast Grad-CAM / CAM, pytorch-grad-cam methods,
occlusion and integrated gradients.

Every explainer takes one preprocessed image ``x`` of shape ``(1, C_in, *S)`` with
``S = (H, W)`` or ``(D, H, W)`` and a list of ``K`` class indices, and returns an
:class:`ExplainerOutput` with the classifier logits ``(C,)`` and *raw* (unnormalised,
non-negative) maps ``(K, *s)`` at the explainer's own resolution ``s`` (the target
layer's grid for CAM methods, ``S`` for input attributions). Use :func:`resample` and
:func:`normalise` to bring them to an image grid and to [0, 1].

Thread safety: no hook outlives a call. The fast Grad-CAM hook acts only for the thread
that registered it, so concurrent calls on one shared model do not mix state.
pytorch-grad-cam keeps global hooks while it runs, so its calls are serialised per model.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from . import onnxrt

#: Target layers of the MONAI (and torchvision) classifiers, by class name.
DEFAULT_TARGET_LAYERS = {
    "DenseNet": "class_layers.relu",
    "DenseNet121": "class_layers.relu",
    "DenseNet169": "class_layers.relu",
    "DenseNet201": "class_layers.relu",
    "DenseNet264": "class_layers.relu",
    "ResNet": "layer4",
    "ResNetFeatures": "layer4",
    "SENet": "layer4",
    "SEResNet50": "layer4",
    "SEResNet101": "layer4",
    "SEResNet152": "layer4",
    "SEResNext50": "layer4",
    "SEResNext101": "layer4",
    "EfficientNetBN": "_bn1",
    "EfficientNet": "_bn1",
}

CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "xgradcam", "eigencam", "scorecam")
INPUT_METHODS = ("occlusion", "integrated_gradients")
METHODS = CAM_METHODS + INPUT_METHODS


@dataclass
class ExplainerOutput:
    """Result of one explainer call.

    Attributes:
        logits: classifier output for the image, shape ``(C,)``, detached.
        maps: raw non-negative explanation maps, shape ``(K, *s)``, one per class.
        classes: the ``K`` class indices, in the order of ``maps``.
        method: the method that produced the maps (``"cam"`` when the exact CAM
            shortcut replaced Grad-CAM).
    """

    logits: torch.Tensor
    maps: torch.Tensor
    classes: list[int]
    method: str


def is_scripted(model: nn.Module) -> bool:
    """True for TorchScript modules, which accept no Python hooks."""
    return isinstance(model, torch.jit.ScriptModule)


def default_method(model: nn.Module) -> str:
    """Grad-CAM where hooks work, integrated gradients for TorchScript models."""
    return "integrated_gradients" if is_scripted(model) else "gradcam"


def find_target_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """Resolve the CAM target layer: ``name`` if given, else the known layer for MONAI's
    DenseNet / ResNet / SEResNet / EfficientNetBN, else the first norm of the last block of
    a transformer (a ``blocks`` list, as MONAI's ``ViT``: its tokens are laid out on the
    patch grid, see :func:`tokens_to_grid`), else the last stage of a Swin encoder, else the
    last Conv2d/Conv3d.

    Returns:
        ``(dotted_name, module)``.
    """
    if is_scripted(model):
        raise ValueError(
            "CAM methods need forward hooks, which TorchScript models do not support; "
            f"use one of {INPUT_METHODS}"
        )
    modules = dict(model.named_modules())
    name = name or DEFAULT_TARGET_LAYERS.get(type(model).__name__) or _last_transformer_block(model) or _last_swin_stage(modules)
    if name is None:
        convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
        if not convs:
            raise ValueError(f"no convolution found in {type(model).__name__}; set target_layer")
        name = convs[-1]
    if name not in modules:
        raise ValueError(f"target layer {name!r} not found in {type(model).__name__}")
    return name, modules[name]


def _last_transformer_block(model: nn.Module) -> str | None:
    """``blocks.<last>.norm1`` (or the block itself) of a model with a ``blocks`` list."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        return None
    last = f"blocks.{len(blocks) - 1}"
    return f"{last}.norm1" if hasattr(blocks[-1], "norm1") else last


def _last_swin_stage(modules: dict[str, nn.Module]) -> str | None:
    """The last stage of a MONAI Swin transformer (SwinUNETR's encoder, e.g. in
    :class:`segx.networks.SwinClassifier`): its output is channels-first ``(B, Ch, *s)``."""
    stages = [name for name, module in modules.items() if type(module).__name__ == "BasicLayer" and "swin" in type(module).__module__]
    return stages[-1] if stages else None


def tokens_to_grid(tokens: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Transformer tokens ``(B, N, D)`` of an input of spatial size ``spatial`` -> a feature
    map ``(B, D, *grid)`` on the patch grid, so that CAM methods can weight it. Patches are
    taken as cubes of one size dividing every axis; a leading class token (``N`` = patches
    + 1) is dropped.

    Raises:
        ValueError: no such patch grid holds ``N`` or ``N - 1`` tokens.
    """
    count = tokens.shape[1]
    for patches, offset in ((count, 0), (count - 1, 1)):
        for patch in range(1, min(spatial) + 1):
            grid = [size // patch for size in spatial]
            if all(size % patch == 0 for size in spatial) and math.prod(grid) == patches:
                return tokens[:, offset:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
    raise ValueError(
        f"the target layer gives {count} tokens, which no patch grid of a {tuple(spatial)} input holds; "
        "set target_layer to a layer with a spatial output"
    )


def _as_feature_map(output: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """A layer output as ``(B, Ch, *s)``: feature maps as they are, tokens on their grid."""
    return tokens_to_grid(output, spatial) if output.dim() == 3 and len(spatial) in (2, 3) else output


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``(K, *s)`` to [0, 1]: ``(m - min) / (max - min)``.

    Scale-invariant (no epsilon, so maps of tiny magnitude keep their shape); a constant
    map becomes all zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    shifted = flat - flat.min(dim=1, keepdim=True).values  # the one copy: scaled in place below
    peak = shifted.max(dim=1, keepdim=True).values
    return shifted.div_(torch.where(peak > 0, peak, 1)).mul_(peak > 0).reshape(maps.shape)


@contextlib.contextmanager
def _capture_activation(layer: nn.Module, copies: int, spatial: Sequence[int] = ()) -> Iterator[dict]:
    """Capture ``layer``'s output during one forward of the calling thread.

    With ``copies > 0`` the output is replaced by ``copies`` detached copies that require
    grad, and grad mode is switched on from there: the rest of the forward builds a graph
    from the activation only, never through the backbone. Yields a dict with
    ``activation`` ``(B, Ch, *s)`` (transformer tokens laid out on the patch grid of an
    input of size ``spatial``) and ``leaf`` ``(B * copies, ...)``, the layer's output as the
    network uses it (each item's copies adjacent).
    """
    state: dict = {"activation": None, "leaf": None}
    owner = threading.get_ident()

    def hook(module, inputs, output):
        if threading.get_ident() != owner:
            return None
        if state["activation"] is not None:
            raise ValueError("the target layer runs more than once per forward; choose another layer")
        if not torch.is_tensor(output):
            raise ValueError("the target layer must return a single tensor")
        state["activation"] = _as_feature_map(output.detach(), spatial)
        if copies == 0:
            return None
        torch.set_grad_enabled(True)
        state["leaf"] = output.detach().repeat_interleave(copies, dim=0).requires_grad_(True)
        return state["leaf"]

    handle = layer.register_forward_hook(hook)
    try:
        yield state
    finally:
        handle.remove()


_gap_linear_heads: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _gap_linear_head(model: nn.Module, layer_name: str, activation: torch.Tensor, logits: torch.Tensor):
    """The ``nn.Linear`` head if ``logits == Linear(mean_spatial(activation))``, else None.

    The check is numerical (relative to the logits' distance from the bias, so tiny
    activations cannot pass by accident): it holds for any architecture whose head after
    the target layer is global average pooling + linear; the verdict is remembered per
    model and layer.
    """
    verdicts = _gap_linear_heads.setdefault(model, {})
    if layer_name in verdicts:
        return verdicts[layer_name]
    channels = activation.shape[1]
    candidates = [m for m in model.modules() if isinstance(m, nn.Linear) and m.in_features == channels]
    head = None
    if candidates:
        pooled = activation.flatten(2).mean(-1)
        with torch.no_grad():
            predicted = candidates[-1](pooled.to(candidates[-1].weight.dtype))
            bias = candidates[-1].bias if candidates[-1].bias is not None else 0.0
            signal, predicted_signal = logits.float() - bias, predicted.float() - bias
        scale = float(signal.abs().max()) if predicted.shape == logits.shape else 0.0
        if scale > 0 and float((predicted_signal - signal).abs().max()) <= 1e-4 * scale:
            head = candidates[-1]
    verdicts[layer_name] = head
    return head


def _check_input(x: torch.Tensor, classes: Sequence[int]) -> None:
    if x.dim() not in (4, 5) or x.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, C, H, W) or (1, C, D, H, W), got {tuple(x.shape)}")
    if not classes:
        raise ValueError("no class to explain")


def _check_classes(classes: Sequence[int], num_classes: int) -> None:
    unknown = [c for c in classes if not 0 <= c < num_classes]
    if unknown:
        raise ValueError(f"unknown class index {unknown}: the classifier has {num_classes} classes")


def gradcam_batch(
    model: nn.Module,
    x: torch.Tensor,
    classes: Sequence[int],
    target_layer: str | None = None,
    allow_cam: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Grad-CAM of all ``classes`` for every image of a batch, from one forward pass.

    ``map_bc = ReLU(sum_k alpha_bck A_bk)`` with ``alpha_bck = mean_x d logit_bc / d A_bk(x)``
    and ``A`` the target layer's activation ``(B, Ch, *s)``. The backbone runs once without
    autograd; only the layers after the target run with autograd, on ``K`` copies of each
    image's activation (one per class), and gradients are taken with respect to those
    copies only (parameters get no gradient). When the head is global-average-pool +
    linear (checked numerically) and ``allow_cam``, the exact CAM ``alpha_ck = W_ck / N`` is
    used and no backward runs at all. The model must treat batch items independently (eval
    mode).

    Args:
        model: classifier in eval mode, returning logits ``(B, C)``.
        x: images ``(B, C_in, *S)``.
        classes: ``K`` class indices, explained for every image.
        target_layer: dotted module name; auto-detected when None.
        allow_cam: permit the exact CAM shortcut.

    Returns:
        ``(logits (B, C), maps (B, K, *s) >= 0, method)`` with method ``cam`` or ``gradcam``.
    """
    with model_lock(model):
        return _gradcam_batch(model, x, classes, target_layer, allow_cam)


def _gradcam_batch(model: nn.Module, x: torch.Tensor, classes: Sequence[int], target_layer: str | None, allow_cam: bool):
    """:func:`gradcam_batch`, with the model's lock held."""
    if x.dim() not in (4, 5):
        raise ValueError(f"expected images of shape (B, C, H, W) or (B, C, D, H, W), got {tuple(x.shape)}")
    if not classes:
        raise ValueError("no class to explain")
    layer_name, layer = find_target_layer(model, target_layer)
    if allow_cam and _gap_linear_heads.get(model, {}).get(layer_name, True) is not None:
        if onnxrt.usable(model, x.device):
            logits, output = onnxrt.forward(model, x, layer_name, layer)
            activation = _as_feature_map(output, x.shape[2:])
        else:
            with torch.no_grad(), _capture_activation(layer, copies=0, spatial=x.shape[2:]) as state:
                logits = model(x)
            activation = state["activation"]
        _check_classes(classes, logits.shape[1])
        head = _gap_linear_head(model, layer_name, activation, logits)
        if head is not None:
            activation = activation.float()
            n_positions = activation[0, 0].numel()
            weights = head.weight[list(classes)].detach().float() / n_positions
            maps = torch.einsum("kc,bc...->bk...", weights, activation).clamp_min(0)
            return logits.detach(), maps, "cam"
    logits, activation, gradients = _activation_gradients(model, x, classes, layer_name, layer)
    spatial = tuple(range(3, gradients.dim()))
    weights = gradients.float().mean(dim=spatial)
    maps = torch.einsum("bkc,bc...->bk...", weights, activation.float()).clamp_min(0)
    return logits, maps, "gradcam"


def _activation_gradients(model: nn.Module, x: torch.Tensor, classes: Sequence[int], layer_name: str, layer: nn.Module):
    """The target layer's activation ``A (B, Ch, *s)`` and ``d logit_bc / d A`` for every
    image and class, ``(B, K, Ch, *s)``, from one forward: the backbone runs without
    autograd, only the layers after the target run with autograd on ``K`` copies of each
    image's activation, and gradients are taken with respect to those copies (no full
    backward, no parameter gradients). Returns ``(logits (B, C), A, gradients)``."""
    copies = len(classes)
    with torch.no_grad(), _capture_activation(layer, copies=copies, spatial=x.shape[2:]) as state:
        logits = model(x)
    if state["leaf"] is None:
        raise ValueError(f"target layer {layer_name!r} did not run during the forward pass")
    _check_classes(classes, logits.shape[1])
    rows = torch.arange(logits.shape[0], device=logits.device)
    targets = torch.as_tensor(list(classes), device=logits.device).repeat(len(x))
    with torch.enable_grad():
        (gradients,) = torch.autograd.grad(logits[rows, targets].sum(), state["leaf"])
    gradients = _as_feature_map(gradients, x.shape[2:])
    return logits[::copies].detach(), state["activation"], gradients.reshape(len(x), copies, *gradients.shape[1:])


def fast_gradcam(
    model: nn.Module,
    x: torch.Tensor,
    classes: Sequence[int],
    target_layer: str | None = None,
    allow_cam: bool = True,
) -> ExplainerOutput:
    """Grad-CAM of all ``classes`` of one image ``x (1, C_in, *S)`` from one forward pass
    (see :func:`gradcam_batch`); maps ``(K, *s)``."""
    _check_input(x, classes)
    logits, maps, method = gradcam_batch(model, x, classes, target_layer, allow_cam)
    return ExplainerOutput(logits[0], maps[0], list(classes), method)


_model_locks: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock of ``model`` that every explainer and baseline holds while it runs the
    model: pytorch-grad-cam's hooks record the forwards of *every* thread, and MC dropout
    switches dropout layers to train mode, so no other thread may run the same model
    meanwhile (re-entrant: an explainer may call another)."""
    with _model_locks_guard:
        return _model_locks.setdefault(model, threading.RLock())


#: pytorch-grad-cam methods whose weights come from the target layer's gradients.
GRADIENT_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "xgradcam")


def _pgc_class(method: str):
    import pytorch_grad_cam as pgc

    return {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "hirescam": pgc.HiResCAM,
        "layercam": pgc.LayerCAM,
        "xgradcam": pgc.XGradCAM,
        "eigencam": pgc.EigenCAM,
        "scorecam": pgc.ScoreCAM,
    }[method]


def pytorch_grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    classes: Sequence[int],
    method: str,
    target_layer: str | None = None,
) -> ExplainerOutput:
    """Raw maps of a pytorch-grad-cam method at the target layer's resolution.

    Uses the library's own weighting (``get_cam_image``) and ReLU, but neither its
    normalisation nor its resizing (scipy cubic zoom in 3D). Gradient methods get the
    target layer's activation and gradients of all classes from
    :func:`_activation_gradients` (one forward, gradients through the head only) instead of
    the library's hooks, which run one forward and one backward down to the input per class
    (the same gradients: tests/test_explainers.py). Gradient-free methods (EigenCAM,
    ScoreCAM) run the library's own forward. Calls on one model are serialised.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _check_input(x, classes)
    if method == "scorecam" and x.dim() == 5:
        raise ValueError("scorecam supports 2D images only")
    layer_name, layer = find_target_layer(model, target_layer)
    cam_class = _pgc_class(method)
    reshape = lambda output: _as_feature_map(output, x.shape[2:])  # noqa: E731 (transformer tokens -> grid)
    with model_lock(model):
        if method in GRADIENT_METHODS:
            logits, activation, gradients = _activation_gradients(model, x, classes, layer_name, layer)
            activations, per_class = activation.float().cpu().numpy(), [g.float().cpu().numpy() for g in gradients[0, :, None]]
            logits = logits[0]
        with torch.enable_grad(), cam_class(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
            if method not in GRADIENT_METHODS:
                image = x.detach().clone().requires_grad_(True)
                logits = cam.activations_and_grads(image)[0].detach()
                _check_classes(classes, logits.shape[0])
                activations, per_class = cam.activations_and_grads.activations[0].numpy(), [None] * len(classes)
            maps = [torch.as_tensor(cam.get_cam_image(x, layer, [ClassifierOutputTarget(c)], activations, g, False)[0]).clamp_min(0)
                    for c, g in zip(classes, per_class)]  # fmt: skip
    return ExplainerOutput(logits, torch.stack(maps).to(x.device), list(classes), method)


def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    classes: Sequence[int],
    grid: int | None = None,
    batch_size: int = 16,
) -> ExplainerOutput:
    """Occlusion sensitivity: ``map_c[p] = max(0, logit_c(x) - logit_c(x with patch p set to
    the image mean))`` on a ``grid^d`` partition of the image (default 8 per axis in 2D,
    4 in 3D). Needs only forward passes, so it works for any model, TorchScript included;
    all classes come from the same ``grid^d`` forwards. Maps have shape ``(K, grid, ...)``.
    """
    _check_input(x, classes)
    spatial = x.shape[2:]
    grid = grid or (8 if len(spatial) == 2 else 4)
    edges = [torch.linspace(0, n, grid + 1).round().long().tolist() for n in spatial]
    cells = list(torch.cartesian_prod(*[torch.arange(grid)] * len(spatial)).reshape(-1, len(spatial)).tolist())
    fill = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    drops = []
    with torch.no_grad():
        logits = model(x)[0]
        _check_classes(classes, logits.shape[0])
        for start in range(0, len(cells), batch_size):
            chunk = cells[start : start + batch_size]
            batch = x.repeat(len(chunk), *([1] * (x.dim() - 1)))
            for i, cell in enumerate(chunk):
                region = tuple(slice(edges[a][c], edges[a][c + 1]) for a, c in enumerate(cell))
                batch[(i, slice(None)) + region] = fill[0].expand_as(batch[(i, slice(None)) + region])
            drops.append(logits[None] - model(batch))
    drop = torch.cat(drops)[:, list(classes)].clamp_min(0)
    return ExplainerOutput(logits, drop.T.reshape(len(classes), *([grid] * len(spatial))), list(classes), "occlusion")


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    classes: Sequence[int],
    steps: int = 16,
    batch_size: int = 8,
) -> ExplainerOutput:
    """Integrated gradients from a black baseline, summed over input channels:
    ``map_c = ReLU(sum_ch (x - 0) * mean_i d logit_c / d x (x * (i + 0.5) / steps))``
    (midpoint rule, ``steps`` points). Works for any differentiable model, TorchScript
    included. Maps have the input's shape ``(K, *S)``.
    """
    _check_input(x, classes)
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    with torch.no_grad():
        logits = model(x)[0]
    _check_classes(classes, logits.shape[0])
    maps = []
    with torch.enable_grad():
        for c in classes:
            total = torch.zeros_like(x)
            for start in range(0, steps, batch_size):
                a = alphas[start : start + batch_size].reshape(-1, *([1] * (x.dim() - 1)))
                scaled = (x.detach() * a).requires_grad_(True)
                (gradient,) = torch.autograd.grad(model(scaled)[:, c].sum(), scaled)
                total += gradient.sum(0, keepdim=True)
            maps.append((x * total / steps).sum(1)[0].clamp_min(0).detach())
    return ExplainerOutput(logits, torch.stack(maps), list(classes), "integrated_gradients")


def explain_classes(
    model: nn.Module,
    x: torch.Tensor,
    classes: Sequence[int],
    method: str = "gradcam",
    target_layer: str | None = None,
) -> ExplainerOutput:
    """Dispatch to the explainer named ``method`` (one of :data:`METHODS`)."""
    explainers: dict[str, Callable[[], ExplainerOutput]] = {
        "gradcam": lambda: fast_gradcam(model, x, classes, target_layer),
        "occlusion": lambda: occlusion(model, x, classes),
        "integrated_gradients": lambda: integrated_gradients(model, x, classes),
    }
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {METHODS}")
    with model_lock(model):
        if method in explainers:
            return explainers[method]()
        return pytorch_grad_cam(model, x, classes, method, target_layer)
