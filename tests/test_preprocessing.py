"""The directly computed ``input:`` pipeline (a fixed intensity range and a resize) against
MONAI's own transforms and ``Invertd``, which it replaces for speed; and the whole-tensor
checks of :mod:`segx.tensors`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Resized, ScaleIntensityRanged

from segx import Preprocessing
from segx.tensors import all_finite, any_true


def monai_reference(image: torch.Tensor, intensity, spatial_size):
    """MONAI's dictionary transforms as a model's training code would write them, and a
    function undoing them with ``Invertd``: the counterpart of the direct path."""
    steps = []
    if intensity == "divide255":
        steps.append(ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0, b_max=1))
    elif intensity != "none":
        steps.append(ScaleIntensityRanged("image", a_min=intensity[0], a_max=intensity[1], b_min=0, b_max=1, clip=True))
    if spatial_size:
        steps.append(Resized("image", spatial_size=spatial_size, mode="bilinear" if len(spatial_size) == 2 else "trilinear"))
    transforms = Compose(steps)
    prepared = transforms({"image": MetaTensor(image.float(), affine=torch.eye(4, dtype=torch.float64))})["image"]

    def invert(maps: torch.Tensor, nearest: bool) -> torch.Tensor:
        if not prepared.applied_operations:
            return maps
        inverted = Invertd("maps", transform=transforms, orig_keys="image", nearest_interp=nearest)({"maps": MetaTensor(maps), "image": prepared})
        return inverted["maps"].as_tensor()

    return prepared.as_tensor(), invert


@pytest.mark.parametrize(
    "shape, intensity, spatial_size",
    [
        ((3, 61, 47), "divide255", (32, 24)),  # a colour picture, as the HAM10000 configuration
        ((1, 20, 18, 13), (-100.0, 250.0), (16, 16, 8)),  # a CT window, clipped, trilinear
        ((1, 30, 40), "none", None),  # nothing spatial: maps come back as they are
        ((1, 16, 12), (0.0, 1.0), (16, 12)),  # the size the network wants already
    ],
)
def test_direct_pipeline_equals_monai_transforms_and_invertd(shape, intensity, spatial_size):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(shape, generator=generator) * 600 - 200
    if intensity == "divide255":
        image = (torch.rand(shape, generator=generator) * 255).round()
    pipeline = Preprocessing(channels=shape[0], intensity=intensity, spatial_size=spatial_size)
    prepared = pipeline.prepare(image, np.eye(4))
    assert prepared.record is None  # the direct path ran
    expected, invert = monai_reference(image, intensity, spatial_size)
    torch.testing.assert_close(prepared.input, expected, rtol=0, atol=1e-6)
    assert prepared.input.dtype == torch.float32

    maps = torch.rand((2, *prepared.input.shape[1:]), generator=generator)
    restored = pipeline.restore(maps, prepared)
    assert restored.shape == (2, *shape[1:])
    torch.testing.assert_close(restored, invert(maps, nearest=False), rtol=0, atol=1e-6)
    labels = torch.randint(0, 3, (1, *prepared.input.shape[1:]), generator=generator).float()
    torch.testing.assert_close(pipeline.restore(labels, prepared, nearest=True), invert(labels, nearest=True), rtol=0, atol=0)


def test_pipelines_with_resampling_or_image_statistics_still_use_monai():
    """Spacing, orientation, padding and per-image intensity statistics keep MONAI's
    transforms (and their record for Invertd)."""
    image = torch.rand(1, 20, 16, 12)
    for options in ({"spacing": [2.0, 2.0, 2.0]}, {"orientation": "RAS"}, {"intensity": "minmax"}, {"intensity": "zscore"},
                    {"spatial_size": [16, 16, 16], "resize": "pad_crop"}):  # fmt: skip
        pipeline = Preprocessing(**options)
        prepared = pipeline.prepare(image, np.eye(4))
        assert prepared.record is not None, options
        assert pipeline.restore(prepared.input[:1], prepared).shape == image.shape, options


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_one_bad_voxel_anywhere(bad):
    x = torch.zeros(50, 40, 3)
    assert all_finite(x)
    x[49, 0, 2] = bad
    assert not all_finite(x)
    assert not all_finite(x.double())


def test_all_finite_and_any_true_on_other_dtypes():
    assert all_finite(torch.zeros(0)) and all_finite(torch.ones(3, dtype=torch.uint8)) and all_finite(torch.ones(3, dtype=torch.bool))
    mask = torch.zeros(30, 20, dtype=torch.bool)
    assert not any_true(mask)
    mask[29, 19] = True
    assert any_true(mask) and any_true(mask.float()) and not any_true(torch.zeros(4))
