"""DICOM in and out without a PACS: series written by ``segx.formats.dicom.write_series`` read by
SimpleITK's GDCM reader (the reader MONAI Label converts DICOMweb series with) with the
source geometry, the bad-series corpus refused with the defect named, and the SEG /
Parametric Map / SR of a SegX result read back by highdicom onto the source voxels."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import AFFINE_3D, APP_DIR
from dicom_corpus import (BAD_SERIES, SHARED, SHARED_VOLUMES, assert_same_geometry, gdcm_series, report_items, report_values, reread,
                          write_bad_series)

from segx import explain, load_model_pair
from segx.formats.dicom import BadSeries, Provenance, label_segmentation, read_series, result_objects, write_series
from segx.formats.export import save_volume
from segx.demo.phantoms import phantom_3d



@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_a_written_series_has_the_volumes_geometry_and_values_for_gdcm(tmp_path, modality):
    rng = np.random.default_rng(0)
    volume = rng.normal(40, 300, (20, 24, 16)).astype(np.float32)  # not integers: stored through rescale slope
    save_volume(tmp_path / "source.nrrd", volume, AFFINE_3D)
    write_series(volume, AFFINE_3D, tmp_path / "series", modality=modality)
    image, source = gdcm_series(tmp_path / "series"), sitk.ReadImage(str(tmp_path / "source.nrrd"))
    assert_same_geometry(image, source)
    slope = float(pydicom.dcmread(str(next((tmp_path / "series").iterdir()))).RescaleSlope)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(source), atol=slope)  # AFFINE_3D is right-handed
    series = read_series(tmp_path / "series")
    np.testing.assert_allclose(series.affine, AFFINE_3D, atol=1e-4)
    np.testing.assert_allclose(series.volume, volume, atol=slope)


def test_integer_volumes_are_stored_exactly(tmp_path):
    volume = np.arange(-1000, -1000 + 8 * 6 * 5).reshape(8, 6, 5).astype(np.float32)
    write_series(volume, np.eye(4), tmp_path)
    assert float(pydicom.dcmread(str(tmp_path / "slice_0000.dcm")).RescaleSlope) == 1.0
    np.testing.assert_array_equal(read_series(tmp_path).volume, volume)


@pytest.mark.parametrize("name, modality", SHARED_VOLUMES.items())
def test_the_real_ct_and_mr_survive_dicom(tmp_path, name, modality):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"../shared/data/{name} is not here (CI has it)")
    from monai.transforms import LoadImage

    loaded = LoadImage(image_only=True)(str(path))
    write_series(np.asarray(loaded), np.asarray(loaded.affine), tmp_path / "series", modality=modality)
    image, source = gdcm_series(tmp_path / "series"), sitk.ReadImage(str(path))
    assert_same_geometry(image, source)
    oriented = [sitk.GetArrayFromImage(sitk.DICOMOrient(i, "LPS")) for i in (image, source)]
    np.testing.assert_array_equal(*oriented)  # integers: exact


@pytest.fixture(scope="module")
def good_series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good") / "series"
    write_series(np.random.default_rng(1).normal(0, 100, (12, 10, 9)).round(), AFFINE_3D, folder)
    return folder


@pytest.mark.parametrize("defect", sorted(BAD_SERIES))
def test_a_series_that_is_not_one_volume_is_refused_with_its_defect(good_series, tmp_path, defect):
    folder = write_bad_series(good_series, tmp_path)[defect]
    with pytest.raises(BadSeries, match=BAD_SERIES[defect]):
        read_series(folder)


def test_slices_are_ordered_by_position_not_by_file_name(good_series, tmp_path):
    for number, file in enumerate(sorted(good_series.iterdir())):
        shutil.copy(file, tmp_path / f"{(7 * number) % 9}_{number}.dcm")  # shuffled names
    np.testing.assert_array_equal(read_series(tmp_path).volume, read_series(good_series).volume)


@pytest.fixture(scope="module")
def result_on_series(tmp_path_factory):
    """(series, SegX result of the demo3d pair on it, its DICOM objects)."""
    root = tmp_path_factory.mktemp("objects")
    phantom = phantom_3d(np.random.default_rng(3), 1, True)
    write_series(phantom.image, AFFINE_3D, root / "series")
    series = read_series(root / "series")
    save_volume(root / "volume.nii.gz", series.volume, series.affine)
    pair = load_model_pair(APP_DIR / "model_configs" / "demo3d.yaml")
    result = explain(pair, root / "volume.nii.gz")
    provenance = Provenance("demo3d", "0123456789abcdef", "9.9.9")
    return series, result, dict(result_objects(result, result.predicted, series, provenance, "topk_inside", "medium"))


def test_seg_and_parametric_maps_read_back_onto_the_source_voxels(result_on_series):
    import highdicom as hd

    series, result, written = result_on_series
    objects = {name: reread(dataset) for name, dataset in written.items()}
    sources = [str(ds.SOPInstanceUID) for ds in series.datasets]
    seg = hd.seg.Segmentation.from_dataset(objects["seg"])
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=sources, segment_numbers=[1])[..., 0]
    k = result.classes.index(result.predicted)
    expected_region = result.clinical_mask[k].numpy() >= 0.5
    assert expected_region.sum() > 100
    np.testing.assert_array_equal(frames.transpose(2, 1, 0).astype(bool), expected_region)
    for layer, expected in (("segx", result.segx[k]), ("explanation", result.explanation_normalised[k])):
        pm = objects[layer]
        positions = [[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in pm.PerFrameFunctionalGroupsSequence]
        source_positions = [[float(v) for v in ds.ImagePositionPatient] for ds in series.datasets]
        np.testing.assert_allclose(positions, source_positions, atol=1e-4)
        pixels = np.frombuffer(pm.FloatPixelData, dtype=np.float32).reshape(len(positions), pm.Rows, pm.Columns)
        np.testing.assert_allclose(pixels.transpose(2, 1, 0), expected.numpy(), atol=1e-6)
        assert pm.StudyInstanceUID == series.study_uid and pm.FrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID
        assert "weights sha256 0123456789abcdef" in pm.SoftwareVersions


def test_the_report_carries_prediction_certainty_level_and_model(result_on_series):
    series, result, objects = result_on_series
    sr = objects["sr"]
    items = report_items(sr)
    numbers, codes = report_values(sr)
    assert numbers["SegU certainty"] == pytest.approx(result.certainty_of(result.predicted, "topk_inside").value, abs=1e-6)
    for name, probability in zip(result.class_names, result.probabilities):
        assert numbers[f"Probability of {name}"] == pytest.approx(100 * float(probability), abs=1e-4)  # in %
    assert codes["Predicted class"] == result.predicted_label
    assert codes["SegU certainty level"] == "medium"
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert any("segx 9.9.9 weights 0123456789abcdef" in t for t in texts)  # algorithm version
    references = [i for i in items if i.ValueType == "IMAGE" and i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == objects["seg"].SOPInstanceUID]
    assert references, "the report references the SEG"
    assert sr.StudyInstanceUID == series.study_uid


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_finds_no_error_in_the_objects(result_on_series, tmp_path):
    series, result, objects = result_on_series
    annotation = label_segmentation(series, result.segmentation.numpy(), {1: "liver", 2: "kidney"})
    assert [segment.SegmentLabel for segment in annotation.SegmentSequence] == ["liver", "kidney"]
    for name, dataset in {**objects, "annotation": annotation}.items():
        dataset.save_as(str(tmp_path / f"{name}.dcm"))
        checked = subprocess.run(["dciodvfy", str(tmp_path / f"{name}.dcm")], capture_output=True, text=True)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{name}: {errors}"


def test_the_command_line_turns_a_volume_into_a_series_and_a_series_into_dicom_results(tmp_path):
    import highdicom as hd

    from segx.cli import main

    phantom = phantom_3d(np.random.default_rng(4), 0, False)
    save_volume(tmp_path / "volume.nii.gz", phantom.image, AFFINE_3D)
    assert main(["to-dicom", str(tmp_path / "volume.nii.gz"), str(tmp_path / "series"), "--modality", "MR"]) == 0
    assert_same_geometry(gdcm_series(tmp_path / "series"), sitk.ReadImage(str(tmp_path / "volume.nii.gz")))
    assert main(["explain", str(tmp_path / "series"), "--model", "demo3d", "--dicom-out", str(tmp_path / "dicom")]) == 0
    seg = hd.seg.segread(str(tmp_path / "dicom" / "seg.dcm"))
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == pydicom.dcmread(str(tmp_path / "series" / "slice_0000.dcm")).StudyInstanceUID
    assert {p.name for p in (tmp_path / "dicom").iterdir()} == {"seg.dcm", "segx.dcm", "explanation.dcm", "sr.dcm"}
    assert main(["explain", str(tmp_path / "volume.nii.gz"), "--model", "demo3d", "--dicom-out", str(tmp_path / "x")]) == 2  # not a series


def ohif_lines(sr) -> list[list[str]]:
    """The text OHIF 3.13.2 draws beside each measurement group of an SR, read as its
    source does (``extensions/cornerstone-dicom-sr/src/getSopClassHandlerModule.ts``:
    ``_processNonGeometricallyDefinedMeasurement`` and ``_getLabelFromMeasuredValueSequence``;
    ``tools/DICOMSRDisplayTool.ts``: ``_getTextBoxLinesFromLabels``, five lines at most):
    Comment (DCM 121106) texts first, then every NUM as ``meaning: value.toFixed(2) unit``,
    where a NUM whose children hold no SCOORD is dropped; a group without any SCOORD
    fails (OHIF's viewport stays blank), so it fails here too. OHIF 3.10 (MONAI Label
    0.8.5's build, same function) reads each NUM's ContentSequence as a single SCOORD and
    fails on a NUM without one: every NUM must have exactly one child, a SCOORD."""
    (measurements,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    groups = []
    for group in measurements.ContentSequence:
        content = group.ContentSequence
        lines = [f"{i.TextValue}: " for i in content if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"]
        scoords = []
        for item in (i for i in content if i.ValueType == "NUM"):
            children = getattr(item, "ContentSequence", None)
            assert children is not None and len(children) == 1 and children[0].ValueType == "SCOORD", "OHIF 3.10 fails on this NUM"
            if children is not None:
                found = [c for c in children if c.ValueType in ("SCOORD", "SCOORD3D")]
                if not found:
                    continue
                scoords.append(found[0])
            value = float(item.MeasuredValueSequence[0].NumericValue)
            lines.append(f"{item.ConceptNameCodeSequence[0].CodeMeaning}: {value:.2f} {item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue}")
        assert scoords, "a measurement group without a SCOORD leaves OHIF's SR viewport blank"
        assert all(len(s.ContentSequence) == 1 for s in scoords), "OHIF finds the image only when the SCOORD has exactly one child"
        groups.append(lines[:5])
    return groups


def test_each_map_is_a_series_of_its_own_the_segx_map_first(result_on_series):
    _, _, objects = result_on_series
    assert len({str(ds.SeriesInstanceUID) for ds in objects.values()}) == 4
    assert objects["segx"].SeriesNumber < objects["explanation"].SeriesNumber
    assert "not refined" in objects["explanation"].SeriesDescription and "raw" in objects["explanation"].SeriesDescription
    assert all(ds.SeriesDate and ds.SeriesTime for ds in objects.values())  # PACS lists show a date, not "?"


def test_the_report_is_what_ohif_draws_an_outline_on_the_key_slice_with_the_readouts(result_on_series):
    series, result, objects = result_on_series
    sr = objects["sr"]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR: OHIF 3.10 draws 2D SCOORDs only in it, older QuantitativeReporting reads it
    (lines,) = ohif_lines(sr)
    certainty = result.certainty_of(result.predicted, "topk_inside")
    assert lines[:3] == [f"Predicted class: {result.predicted_label}: ", "SegU certainty level: medium: ", f"Reason: {certainty.reason}: "]
    assert lines[3] == f"SegU certainty: {certainty.value:.2f} {{score}}"
    assert lines[4] == f"Probability of {result.predicted_label}: {100 * float(result.probabilities[result.predicted]):.2f} %"
    # the outline: on the slice holding most of the SegX map, around the clinical region there
    scoord = next(c for i in report_items(sr) if i.ValueType == "NUM" for c in i.ContentSequence if c.ValueType == "SCOORD")
    k = result.classes.index(result.predicted)
    segx = result.segx[k].numpy()  # (X, Y, Z)
    key = int(segx.sum((0, 1)).argmax())
    assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == series.datasets[key].SOPInstanceUID
    points = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)  # (column, row), pixel centres at +0.5
    assert scoord.GraphicType == "POLYLINE" and np.allclose(points[0], points[-1])  # closed
    region = result.clinical_mask[k].numpy()[:, :, key] >= 0.5  # (X = column, Y = row)
    columns, rows = np.nonzero(region)
    assert abs(points[:, 0].min() - columns.min()) <= 1 and abs(points[:, 0].max() - (columns.max() + 1)) <= 1
    assert abs(points[:, 1].min() - rows.min()) <= 1 and abs(points[:, 1].max() - (rows.max() + 1)) <= 1


def test_segments_have_display_colours_and_the_seg_its_description(result_on_series):
    seg = result_on_series[2]["seg"]
    assert seg.SeriesDescription.startswith("SegX region")
    assert all(len(segment.RecommendedDisplayCIELabValue) == 3 for segment in seg.SegmentSequence)
