"""The one-call API on arrays and real image files (PNG, NIfTI, NRRD), and bad input."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.nets import DenseNet121
from conftest import BrightRegion
from PIL import Image as PILImage

from segx import LevelThresholds, ModelPair, Preprocessing, explain, segu
from segx.certainty import VARIANTS
from segx.engine import explain_many
from segx.formats.export import save_volume


def make_pair(spatial_dims=2, channels=3, classes=4, intensity="none", **options) -> ModelPair:
    torch.manual_seed(0)
    classifier = DenseNet121(spatial_dims=spatial_dims, in_channels=channels, out_channels=classes)
    size = (64,) * spatial_dims
    return ModelPair(
        classifier,
        BrightRegion(),
        [f"class{i}" for i in range(classes)],
        spatial_dims=spatial_dims,
        segment_names={1: "lesion"},
        classifier_input=Preprocessing(channels, size, intensity),
        segmenter_input=Preprocessing(channels, None, intensity),
        **options,
    )


@pytest.fixture(scope="module")
def pair2d():
    return make_pair()


@pytest.fixture(scope="module")
def pair3d():
    return make_pair(spatial_dims=3, channels=1, classes=3)


def square_image(shape=(3, 50, 40)):
    image = np.full(shape, 0.2, dtype=np.float32)
    image[:, 10:30, 5:25] = 0.9
    return image


def test_array_input_gives_maps_on_the_image_grid(pair2d):
    image = square_image()
    result = explain(pair2d, image, variants=["mass_inside", "topk_inside", "distance_decay", "mass_enrichment"])
    assert result.explanation.shape == (4, 50, 40)
    assert result.segx.shape == result.clinical_mask.shape == (4, 50, 40)
    assert result.segmentation.shape == (50, 40)
    assert math.isclose(float(result.probabilities.sum()), 1.0, rel_tol=1e-5)
    assert result.predicted == int(np.argmax(result.probabilities))
    expected_region = torch.zeros(50, 40)
    expected_region[10:30, 5:25] = 1
    assert torch.equal(result.clinical_mask[0], expected_region)
    assert bool((result.segx[:, expected_region == 0] == 0).all())
    inside = expected_region == 1
    assert torch.allclose(result.segx[:, inside], result.explanation_normalised[:, inside])
    assert float(result.explanation_normalised.max()) == pytest.approx(1.0)
    assert set(result.certainty) == {0, 1, 2, 3}
    for per_variant in result.certainty.values():
        assert all(0.0 <= c.value <= 1.0 and c.reason for c in per_variant.values())
    assert result.segu == result.certainty[result.predicted]["mass_inside"]
    assert {"classify_explain", "segment", "refine", "certainty", "total"} <= set(result.timings)
    assert result.method == "cam"


def test_margin_soft_mask_and_selected_classes(pair2d):
    image = square_image()
    binary = explain(pair2d, image, classes=["class1"], spacing=(0.5, 0.5))
    grown = explain(pair2d, image, classes=[1], spacing=(0.5, 0.5), margin_mm=2.0)
    assert binary.classes[0] == 1 and set(binary.classes) == {1, binary.predicted}
    assert binary.explanation.shape == (len(binary.classes), 50, 40)
    # 2 mm at 0.5 mm voxels = 4 voxels: the 20 x 20 square, four 20 x 4 bands and four
    # rounded corners of 8 voxels each ((i, j) in 1..4 with i^2 + j^2 <= 16)
    assert int(binary.clinical_mask[0].sum()) == 400
    assert int(grown.clinical_mask[0].sum()) == 400 + 4 * 20 * 4 + 4 * 8
    soft = explain(pair2d, image, classes=[1], soft_mask=True)
    assert 0.0 <= float(soft.clinical_mask.min()) and float(soft.clinical_mask.max()) <= 1.0
    assert soft.segu == soft.certainty_of(soft.predicted, "mass_inside")


def test_certainty_on_demand_needs_no_network(pair2d):
    result = explain(pair2d, square_image(), classes=[0, 1, 2, 3])
    assert set(result.certainty[0]) == {"mass_inside"}
    k = result.classes.index(2)
    region = result.clinical_mask[k] > 0
    expected = segu(result.explanation[k], region, "distance_decay", spacing=result.spacing)
    pair2d.classifier.forward = None  # any network call would now fail
    try:
        assert result.certainty_of(2, "distance_decay") == expected
        assert result.certainty_of(3, "topk_inside").variant == "topk_inside"
    finally:
        del pair2d.classifier.forward


def test_levels_come_from_calibrated_thresholds():
    pair = make_pair(levels=LevelThresholds("mass_inside", low=0.2, high=0.6, high_accuracy=0.9, low_accuracy=0.5, n_validation=10))
    result = explain(pair, square_image())
    expected = "high" if result.segu.value >= 0.6 else "medium" if result.segu.value >= 0.2 else "low"
    assert result.level == expected


def test_constant_image_gives_defined_certainty(pair2d):
    result = explain(pair2d, np.zeros((3, 32, 32), dtype=np.float32))
    assert result.segu.value == 0.0 and "no clinical region" in result.segu.reason
    for variant in ("mass_inside", "topk_inside", "distance_decay", "mass_enrichment"):
        assert all(not math.isnan(result.certainty_of(c, variant).value) for c in result.classes)


def test_multi_label_uses_sigmoid():
    pair = make_pair(multi_label=True)
    result = explain(pair, square_image())
    assert not math.isclose(float(result.probabilities.sum()), 1.0, rel_tol=1e-3)
    assert ((result.probabilities > 0) & (result.probabilities < 1)).all()


def test_png_file_input(tmp_path):
    rgb = (square_image().transpose(1, 2, 0) * 255).astype(np.uint8)
    path = tmp_path / "lesion.png"
    PILImage.fromarray(rgb).save(path)
    result = explain(make_pair(intensity="divide255"), path, classes=[0])
    # MONAI's PIL reader puts the image's width first: (W, H)
    assert result.explanation.shape == (1, 40, 50)
    assert int(result.clinical_mask.sum()) == 400
    assert result.spacing == (1.0, 1.0)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_3d_file_keeps_spacing_and_affine(tmp_path, pair3d, suffix):
    volume = np.full((20, 24, 16), 0.1, dtype=np.float32)
    volume[5:12, 6:14, 4:10] = 0.9
    path = tmp_path / f"ct{suffix}"
    if suffix == ".nii.gz":
        affine = np.diag([2.0, 1.5, 3.0, 1.0])
        affine[:3, 3] = [10.0, -5.0, 7.0]
        nib.save(nib.Nifti1Image(volume, affine), str(path))
    else:
        itk_image = sitk.GetImageFromArray(volume.transpose(2, 1, 0))
        itk_image.SetSpacing((2.0, 1.5, 3.0))
        sitk.WriteImage(itk_image, str(path))
    result = explain(pair3d, path, classes=[0, 2])
    assert result.explanation.shape == (2, 20, 24, 16)
    assert result.spacing == pytest.approx((2.0, 1.5, 3.0))
    assert int(result.clinical_mask[0].sum()) == 7 * 8 * 6
    assert np.allclose(np.abs(np.diag(result.affine))[:3], [2.0, 1.5, 3.0])


def write_nrrd(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def test_bad_inputs_raise_clear_errors(tmp_path, pair2d, pair3d):
    with pytest.raises(ValueError, match="2D image"):
        explain(pair2d, np.zeros((3, 4, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="3D image"):
        explain(pair3d, np.zeros((1, 8, 8), dtype=np.float32)[None, None])
    with pytest.raises(ValueError, match="channels"):
        explain(pair2d, np.zeros((2, 16, 16), dtype=np.float32))
    bad = square_image()
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        explain(pair2d, bad)
    with pytest.raises(ValueError, match="unknown class"):
        explain(pair2d, square_image(), classes=["melanoma"])
    with pytest.raises(ValueError, match="unknown class"):
        explain(pair2d, square_image(), classes=[7])
    with pytest.raises(ValueError, match="unknown explanation method"):
        explain(pair2d, square_image(), method="astrology")
    with pytest.raises(ValueError, match="exceeds"):
        explain(pair2d, square_image(), max_voxels=100)
    with pytest.raises(ValueError, match="autocast"):
        explain(pair2d, square_image(), autocast=True, device="cpu")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        explain(pair3d, empty)
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(b"NRRD0004\nthis is not an image\n" + bytes(range(256)))
    with pytest.raises(ValueError, match="cannot read"):
        explain(pair3d, corrupt)
    with_nan = np.ones((6, 6, 6), dtype=np.float32)
    with_nan[2, 2, 2] = np.nan
    write_nrrd(tmp_path / "nan.nrrd", with_nan)
    with pytest.raises(ValueError, match="NaN"):
        explain(pair3d, tmp_path / "nan.nrrd")
    with pytest.raises(ValueError, match="not found"):
        explain(pair3d, tmp_path / "missing.nii.gz")


def test_region_labels_must_name_known_classes():
    with pytest.raises(ValueError, match="unknown classes"):
        make_pair(region_labels={"not_a_class": [1]})


def test_dicom_series_folder_keeps_spacing(tmp_path, pair3d):
    volume = np.full((6, 24, 20), 100, dtype=np.int16)
    volume[2:5, 5:15, 4:12] = 900
    image = sitk.GetImageFromArray(volume)  # SimpleITK axis order: (x, y, z) = (20, 24, 6)
    image.SetSpacing((0.8, 0.7, 2.5))
    series = tmp_path / "series"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume.shape[0]):
        slice_image = image[:, :, z]
        slice_image.SetMetaData("0020|0032", f"0\\0\\{2.5 * z}")  # image position (patient)
        slice_image.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")  # image orientation
        slice_image.SetMetaData("0018|0050", "2.5")  # slice thickness
        slice_image.SetMetaData("0020|0013", str(z + 1))  # instance number
        slice_image.SetMetaData("0008|0060", "CT")
        slice_image.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1")  # study instance UID
        slice_image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.2")  # series instance UID
        slice_image.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.2.{z + 1}")  # SOP instance UID
        writer.SetFileName(str(series / f"slice{z:03d}.dcm"))
        writer.Execute(slice_image)
    pair = make_pair(spatial_dims=3, channels=1, classes=3, intensity=(0, 1000))
    result = explain(pair, series, classes=[0])
    assert result.explanation.shape[1:] == (20, 24, 6)
    assert result.spacing == pytest.approx((0.8, 0.7, 2.5), abs=1e-3)
    assert int(result.clinical_mask[0].sum()) == 3 * 10 * 8


def test_rgb_nrrd_is_read_with_its_spacing(tmp_path):
    """MONAI's NRRD reader rejects multi-component files; the SimpleITK fallback reads them."""
    rgb = (square_image().transpose(1, 2, 0) * 255).astype(np.uint8)  # (H, W, 3): SimpleITK size (W, H)
    itk_image = sitk.GetImageFromArray(rgb, isVector=True)
    itk_image.SetSpacing((0.5, 0.25))
    path = tmp_path / "photo.nrrd"
    sitk.WriteImage(itk_image, str(path))
    result = explain(make_pair(intensity="divide255"), path, classes=[0])
    assert result.spacing == pytest.approx((0.5, 0.25))
    assert result.explanation.shape[1:] == (rgb.shape[1], rgb.shape[0])
    assert int(result.clinical_mask[0].sum()) == 400
    written = sitk.ReadImage(str(save_volume(tmp_path / "segx.nrrd", result.map_of("segx", 0), result.affine)))
    assert written.GetSize() == itk_image.GetSize() and np.allclose(written.GetSpacing(), (0.5, 0.25))


def test_explain_many_equals_explain_one_by_one(pair2d):
    images = [square_image(), np.roll(square_image(), 7, axis=2), square_image((3, 30, 70))]  # the last has another size
    batch = explain_many(pair2d, images, variants=["mass_inside", "topk_inside"])
    for image, together in zip(images, batch):
        alone = explain(pair2d, image, variants=["mass_inside", "topk_inside"])
        assert together.predicted == alone.predicted and together.classes == alone.classes
        np.testing.assert_allclose(together.probabilities, alone.probabilities, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(together.segx, alone.segx, rtol=1e-4, atol=1e-5)
        assert together.certainty_of(together.predicted, "topk_inside").value == pytest.approx(alone.certainty_of(alone.predicted, "topk_inside").value, abs=1e-6)


def test_predicted_only_keeps_the_prediction_and_its_runner_up_with_every_variant():
    """``classes="predicted"`` (what ``segx evaluate`` asks for) refines only two maps, and
    every SegU variant of the prediction equals the all-classes result's."""
    pair = make_pair(classes=4)
    images = [square_image(), np.roll(square_image(), 9, axis=1)]
    for everything, few in zip(explain_many(pair, images), explain_many(pair, images, classes="predicted")):
        assert few.predicted == everything.predicted
        assert few.classes == [everything.predicted, everything.runner_up(everything.predicted)]
        k, j = few.classes.index(few.predicted), everything.classes.index(few.predicted)
        torch.testing.assert_close(few.segx[k], everything.segx[j])
        for variant in sorted(VARIANTS):
            assert few.certainty_of(few.predicted, variant).value == pytest.approx(everything.certainty_of(few.predicted, variant).value, abs=1e-9)


def test_region_margin_needs_and_gets_the_runner_up(pair2d):
    pair = make_pair(certainty_variant="region_margin")
    result = explain(pair, square_image(), classes=[0])
    runner_up = result.runner_up(result.predicted)
    assert result.predicted in result.classes and runner_up in result.classes, "both maps are explained for the headline SegU"
    assert runner_up != result.predicted and result.probabilities[runner_up] == np.sort(result.probabilities)[-2]
    assert result.segu.variant == "region_margin" and 0.0 < result.segu.value < 1.0
    plain = explain(pair2d, square_image(), classes=[result.predicted])  # same weights, default variant
    assert plain.classes == [result.predicted]
    with pytest.raises(ValueError, match="runner-up"):
        plain.certainty_of(result.predicted, "region_margin")
