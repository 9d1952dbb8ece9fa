"""Explainers against pytorch-grad-cam, the exact CAM shortcut, hooks and threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet121, EfficientNetBN, resnet18
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from segx.explainers import (
    explain_classes,
    fast_gradcam,
    gradcam_batch,
    find_target_layer,
    integrated_gradients,
    normalise,
    occlusion,
    pytorch_grad_cam,
)
from segx.preprocessing import resize



@pytest.fixture(scope="module")
def densenet2d():
    torch.manual_seed(0)
    return DenseNet121(spatial_dims=2, in_channels=3, out_channels=7).eval()


@pytest.fixture(scope="module")
def resnet3d():
    torch.manual_seed(1)
    return resnet18(spatial_dims=3, n_input_channels=1, num_classes=3).eval()


def _pgc_maps(model, layer, x, classes, feature_grid=None):
    """pytorch-grad-cam GradCAM maps ``(K, ...)``, re-normalised with our scale-invariant
    min-max (its own adds 1e-7 to the maximum, which distorts maps of tiny magnitude such as
    a randomly initialised EfficientNet's). With ``feature_grid`` its
    resize is made the identity (it would otherwise use scipy cubic zoom in 3D, which
    our engine deliberately replaces by trilinear interpolation)."""
    with GradCAM(model=model, target_layers=[layer]) as cam:
        if feature_grid is not None:
            cam.get_target_width_height = lambda _: tuple(reversed(feature_grid))
        maps = np.stack([cam(x, targets=[ClassifierOutputTarget(c)])[0] for c in classes])
    return normalise(torch.as_tensor(maps)).numpy()


def _all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_fast_gradcam_matches_pytorch_grad_cam_2d(densenet2d):
    torch.manual_seed(2)
    x = torch.rand(1, 3, 224, 224)
    classes = [0, 3, 6]
    reference = _pgc_maps(densenet2d, densenet2d.class_layers.relu, x, classes)
    for allow_cam in (False, True):
        ours = fast_gradcam(densenet2d, x, classes, allow_cam=allow_cam)
        assert ours.method == ("cam" if allow_cam else "gradcam")
        maps = normalise(resize(ours.maps, (224, 224))).numpy()
        assert maps.shape == reference.shape
        assert np.abs(maps - reference).max() <= 1e-3
    assert not np.allclose(reference[0], reference[1]), "classes must give different maps"


def test_fast_gradcam_matches_pytorch_grad_cam_3d(resnet3d):
    torch.manual_seed(3)
    x = torch.rand(1, 1, 96, 96, 96)
    classes = [0, 1, 2]
    ours = fast_gradcam(resnet3d, x, classes, allow_cam=False)
    grid = tuple(ours.maps.shape[1:])
    reference = _pgc_maps(resnet3d, resnet3d.layer4, x, classes, feature_grid=grid)
    assert np.abs(normalise(ours.maps).numpy() - reference).max() <= 1e-3
    cam = fast_gradcam(resnet3d, x, classes)
    assert cam.method == "cam"
    assert np.abs(normalise(cam.maps).numpy() - reference).max() <= 1e-3


def test_cam_equals_gradcam_for_gap_linear_head(densenet2d):
    x = torch.rand(1, 3, 96, 96)
    cam = fast_gradcam(densenet2d, x, [1, 2, 4], allow_cam=True)
    grad = fast_gradcam(densenet2d, x, [1, 2, 4], allow_cam=False)
    assert cam.method == "cam" and grad.method == "gradcam"
    torch.testing.assert_close(cam.maps, grad.maps, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cam.logits, grad.logits)


def test_non_gap_head_falls_back_to_gradients_and_matches_pgc():
    """EfficientNetBN: swish between the target layer ``_bn1`` and the pooling."""
    torch.manual_seed(4)
    model = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3, num_classes=4).eval()
    assert find_target_layer(model)[0] == "_bn1"
    x = torch.rand(1, 3, 128, 128)
    ours = fast_gradcam(model, x, [0, 2])
    assert ours.method == "gradcam"
    reference = _pgc_maps(model, model._bn1, x, [0, 2])
    assert np.abs(normalise(resize(ours.maps, (128, 128))).numpy() - reference).max() <= 1e-3


class _SmallCNN(nn.Module):
    """A small CNN (8 feature channels) so that ScoreCAM's one forward per channel stays cheap."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("method", ["gradcam++", "hirescam", "layercam", "xgradcam", "eigencam", "scorecam"])
def test_pytorch_grad_cam_adapters_leave_no_hooks(method):
    torch.manual_seed(6)
    model = _SmallCNN().eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # MONAI Label runs inference under no_grad
        out = explain_classes(model, x, [0, 5], method)
    assert find_target_layer(model)[0] == "features.2"
    assert out.maps.shape == (2, 16, 16) and out.method == method
    assert bool(torch.isfinite(out.maps).all()) and bool((out.maps >= 0).all())
    assert _all_hooks(model) == 0


@pytest.mark.parametrize("method", ["gradcam++", "hirescam", "layercam", "xgradcam"])
def test_gradient_adapters_equal_the_librarys_own_hooks(densenet2d, method):
    """Gradients through the head only give the maps of pytorch-grad-cam's own procedure
    (its hooks, one forward and one backward to the input per class, its weighting)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from segx.explainers import _pgc_class

    torch.manual_seed(8)
    x = torch.rand(1, 3, 96, 96)
    classes = [1, 4, 6]
    layer = find_target_layer(densenet2d)[1]
    with _pgc_class(method)(model=densenet2d, target_layers=[layer]) as cam:
        reference = []
        for c in classes:
            image = x.clone().requires_grad_(True)
            output = cam.activations_and_grads(image)
            output[0, c].backward()
            activations, gradients = cam.activations_and_grads.activations[0].numpy(), cam.activations_and_grads.gradients[0].numpy()
            reference.append(np.maximum(cam.get_cam_image(image, layer, [ClassifierOutputTarget(c)], activations, gradients, False)[0], 0))
    ours = pytorch_grad_cam(densenet2d, x, classes, method)
    assert ours.method == method and ours.logits.shape == (7,)
    np.testing.assert_allclose(ours.maps.numpy(), np.stack(reference), rtol=1e-4, atol=1e-6 * float(np.abs(reference).max()))
    assert not np.allclose(reference[0], reference[1])
    assert _all_hooks(densenet2d) == 0


def test_adapter_gradcam_equals_fast_gradcam(densenet2d):
    x = torch.rand(1, 3, 96, 96)
    adapter = pytorch_grad_cam(densenet2d, x, [2, 3], "gradcam")
    fast = fast_gradcam(densenet2d, x, [2, 3], allow_cam=False)
    torch.testing.assert_close(adapter.maps, fast.maps, rtol=1e-3, atol=1e-6)


def test_no_hook_left_after_calls_and_errors(densenet2d):
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        fast_gradcam(densenet2d, x, [0, 1], allow_cam=False)
        fast_gradcam(densenet2d, x, [0, 1])
    with pytest.raises(ValueError, match="unknown class"):
        fast_gradcam(densenet2d, x, [9], allow_cam=False)
    assert _all_hooks(densenet2d) == 0


def test_layer_running_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x.expand(-1, 4, -1, -1)[:, :1]).mean(1, keepdim=True)).mean((2, 3)))

    model = Twice().eval()
    with pytest.raises(ValueError, match="more than once"):
        fast_gradcam(model, torch.rand(1, 1, 16, 16), [0], target_layer="conv")
    assert _all_hooks(model) == 0


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("allow_cam", [True, False])
def test_concurrent_calls_equal_sequential(densenet2d, method, allow_cam):
    images = [torch.rand(1, 3, 96, 96) for _ in range(4)]
    classes = [0, 4]

    def run(x):
        if method == "gradcam":
            return fast_gradcam(densenet2d, x, classes, allow_cam=allow_cam).maps
        return pytorch_grad_cam(densenet2d, x, classes, method).maps

    sequential = [run(x) for x in images]
    results: list = [None] * len(images)
    barrier = threading.Barrier(len(images))

    def worker(i):
        barrier.wait()
        results[i] = run(images[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, expected in zip(results, sequential):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert _all_hooks(densenet2d) == 0


class _Quadrant(nn.Module):
    """Class 0 scores the mean of the top-left quadrant, class 1 the bottom-right."""

    def forward(self, x):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        return torch.stack([x[:, :, :h, :w].mean((1, 2, 3)), x[:, :, h:, w:].mean((1, 2, 3))], dim=1)


def test_occlusion_finds_the_evidence_and_works_with_torchscript():
    model = torch.jit.script(_Quadrant())
    x = torch.zeros(1, 1, 32, 32)
    x[:, :, :16, :16] = 1.0
    x[:, :, 16:, 16:] = 1.0
    out = occlusion(model, x, [0, 1], grid=4)
    assert out.maps.shape == (2, 4, 4)
    # occluding a top-left cell (value 1 -> mean 0.5) lowers class 0 only there
    assert set(torch.nonzero(out.maps[0]).flatten().tolist()) <= {0, 1}
    assert torch.nonzero(out.maps[0]).shape[0] == 4 and torch.nonzero(out.maps[1]).shape[0] == 4
    assert set(map(tuple, torch.nonzero(out.maps[1]).tolist())) == {(2, 2), (2, 3), (3, 2), (3, 3)}


def test_integrated_gradients_is_exact_for_a_linear_model():
    torch.manual_seed(5)
    linear = nn.Linear(2 * 8 * 8, 3)
    model = torch.jit.script(nn.Sequential(nn.Flatten(), linear).eval())
    x = torch.rand(1, 2, 8, 8)
    out = integrated_gradients(model, x, [0, 2], steps=4)
    # for f(x) = W x + b, IG from a zero baseline is exactly W * x (per input element)
    expected = (linear.weight[[0, 2]].reshape(2, 2, 8, 8) * x[0]).sum(1).clamp_min(0)
    torch.testing.assert_close(out.maps, expected.detach(), rtol=1e-5, atol=1e-6)


def test_torchscript_refuses_cam_methods_with_a_clear_message():
    model = torch.jit.script(_Quadrant())
    with pytest.raises(ValueError, match="TorchScript"):
        explain_classes(model, torch.rand(1, 1, 8, 8), [0], "gradcam")


def test_bad_inputs(densenet2d):
    with pytest.raises(ValueError, match="one image"):
        fast_gradcam(densenet2d, torch.rand(2, 3, 32, 32), [0])
    with pytest.raises(ValueError, match="unknown explanation method"):
        explain_classes(densenet2d, torch.rand(1, 3, 32, 32), [0], "magic")
    with pytest.raises(ValueError, match="not found"):
        find_target_layer(densenet2d, "no.such.layer")
    with pytest.raises(ValueError, match="2D"):
        explain_classes(densenet2d, torch.rand(1, 1, 8, 8, 8), [0], "scorecam")


@pytest.mark.parametrize("allow_cam", [True, False])
def test_gradcam_batch_equals_one_image_at_a_time(densenet2d, allow_cam):
    torch.manual_seed(7)
    x = torch.rand(3, 3, 64, 48)
    logits, maps, method = gradcam_batch(densenet2d, x, [0, 3, 6], allow_cam=allow_cam)
    assert method == ("cam" if allow_cam else "gradcam") and maps.shape[:2] == (3, 3)
    for i in range(3):
        single = fast_gradcam(densenet2d, x[i : i + 1], [0, 3, 6], allow_cam=allow_cam)
        torch.testing.assert_close(logits[i], single.logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(maps[i], single.maps, rtol=1e-4, atol=1e-6)


def test_explainers_in_threads_on_one_model_give_the_maps_they_give_alone():
    """pytorch-grad-cam's hooks record every thread's forwards: without one lock per model,
    gradcam++ in one thread and fast Grad-CAM in another gave wrong maps (575 of 1455)."""
    import threading

    from monai.networks.nets import DenseNet121
    from segx.explainers import explain_classes

    torch.manual_seed(0)
    model = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3).eval()
    images = [torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    expected = {(m, i): explain_classes(model, x, [0, 1, 2], m).maps for m in ("gradcam++", "gradcam") for i, x in enumerate(images)}
    wrong, errors = [], []

    def work(method):
        try:
            for _ in range(6):
                for i, x in enumerate(images):
                    if not torch.allclose(explain_classes(model, x, [0, 1, 2], method).maps, expected[method, i], atol=1e-5):
                        wrong.append((method, i))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(m,)) for m in ("gradcam++", "gradcam", "gradcam++", "gradcam")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and not wrong, (errors, wrong[:5])


def test_tokens_are_laid_out_on_the_patch_grid_with_the_class_token_dropped():
    from segx.explainers import tokens_to_grid

    grid = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 4)  # (D, gh, gw) of item 0
    tokens = grid.reshape(2, 24).T[None]  # (1, 24, 2): row-major patches, as ViT's patch embedding flattens them
    with_class_token = torch.cat([torch.full((1, 1, 2), -1.0), tokens], dim=1)
    assert torch.equal(tokens_to_grid(tokens, (96, 64)), grid[None])  # 16-pixel patches
    assert torch.equal(tokens_to_grid(with_class_token, (96, 64)), grid[None])
    with pytest.raises(ValueError, match="no patch grid"):
        tokens_to_grid(torch.zeros(1, 11, 2), (96, 64))


@pytest.mark.parametrize("spatial_dims, size, patch", [(2, (64, 64), 16), (3, (32, 32, 32), 8)])
def test_vit_classifiers_get_non_empty_maps_from_every_kind_of_method(spatial_dims, size, patch):
    from monai.networks.nets import ViT
    from segx.config import logits_only
    from segx.explainers import explain_classes, find_target_layer

    torch.manual_seed(0)
    vit = ViT(in_channels=1, img_size=size, patch_size=patch, spatial_dims=spatial_dims, classification=True, num_classes=3,
              hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4).eval()  # fmt: skip
    vit = logits_only(vit, None, 3)
    assert find_target_layer(vit)[0] == "blocks.1.norm1"  # not the patch embedding's convolution
    x = torch.randn(1, 1, *size)
    for method in ("gradcam", "gradcam++", "integrated_gradients"):
        out = explain_classes(vit, x, [0, 1, 2], method)
        assert out.logits.shape == (3,) and out.maps.shape[0] == 3 and bool((out.maps.flatten(1).amax(1) > 0).all()), method


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_swin_encoder_classifiers_get_non_empty_maps_with_the_default_method(spatial_dims):
    """SwinUNETR's encoder + a head: the CAM target is its last stage (channels-first), not
    the patch embedding's convolution (the last Conv of the model)."""
    from segx.explainers import default_method, explain_classes, find_target_layer
    from segx.networks import SwinClassifier

    torch.manual_seed(0)
    swin = SwinClassifier(1, 2, spatial_dims=spatial_dims, feature_size=12, num_heads=(1, 2, 3, 6), window_size=4).eval()
    assert find_target_layer(swin)[0] == "swinViT.layers4.0"
    out = explain_classes(swin, torch.randn(1, 1, *[64] * spatial_dims), [0, 1], default_method(swin))
    assert out.method == "gradcam" and out.maps.shape == (2, *[2] * spatial_dims)
    assert bool((out.maps.flatten(1).amax(1) > 0).all())


def test_logits_are_taken_from_tuple_and_dict_outputs():
    from segx.config import logits_only

    class Pair(torch.nn.Module):
        def forward(self, x):
            return {"features": x.mean((2, 3)), "scores": x.mean((2, 3))[:, :2] * 3}

    x = torch.ones(4, 5, 8, 8)
    assert logits_only(Pair(), "scores", 2)(x).shape == (4, 2)
    assert logits_only(Pair(), None, 2)(x).shape == (4, 2)  # the first (B, 2) tensor
    with pytest.raises(ValueError, match="output_key"):
        logits_only(Pair(), None, 3)(x)
