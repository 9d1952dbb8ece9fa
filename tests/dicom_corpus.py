"""DICOM helpers of the tests: the real volumes of ../shared/data, geometry comparison with
SimpleITK's GDCM series reader, reading objects back as a viewer does (bytes, SR content
items), and a corpus of bad series, each a copy of a good series
(new study, series and instance UIDs) with one defect a PACS really holds."""

from __future__ import annotations

import copy
import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Real volumes of ../shared/data written as DICOM series of this modality.
SHARED_VOLUMES = {"ct3d/example_ct.nii.gz": "CT", "mr3d/brain1_image.nrrd": "MR"}


def gdcm_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_same_geometry(image: sitk.Image, reference: sitk.Image) -> None:
    """The same voxels in the same places of the world. Both are first reoriented to LPS
    axes (``DICOMOrient``): a DICOM series is read with its slices along row x column, so a
    left-handed source (e.g. an NRRD with a flipped y axis) comes back with its slice axis
    reversed, which is the same volume."""
    image, reference = sitk.DICOMOrient(image, "LPS"), sitk.DICOMOrient(reference, "LPS")
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)


def reread(dataset) -> pydicom.Dataset:
    """``dataset`` written to bytes and read back, as a viewer would get it."""
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def report_items(item) -> list:
    """Every content item of an SR tree, depth first."""
    items = []
    for child in getattr(item, "ContentSequence", []):
        items += [child, *report_items(child)]
    return items


def report_values(report) -> tuple[dict, dict]:
    """An SR's numeric and coded items by concept meaning: ``({meaning: number},
    {meaning: coded value's meaning})``."""
    items = report_items(report)
    numbers = {i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"}
    codes = {i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0].CodeMeaning for i in items if i.ValueType == "CODE"}
    return numbers, codes


#: defect -> words the refusal must contain.
BAD_SERIES = {
    "missing_slices": "missing slices",
    "mixed_orientations": "orientations",
    "inconsistent_spacing": "inconsistent slice spacing",
    "no_pixel_data": "no pixel data",
    "two_frame_localiser": "2 frames",
}


def _renamed(datasets: list) -> None:
    """New study, series and instance UIDs for a copied series (in place)."""
    study, series = generate_uid(), generate_uid()
    for ds in datasets:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()


def write_bad_series(good: Path, out: Path) -> dict[str, Path]:
    """One folder per :data:`BAD_SERIES` defect under ``out``, made from the good series
    folder ``good`` (at least 8 slices)."""
    folders = {}
    for defect in BAD_SERIES:
        datasets = [pydicom.dcmread(str(f)) for f in sorted(good.iterdir())]
        _renamed(datasets)
        normal = np.cross(*np.reshape([float(v) for v in datasets[0].ImageOrientationPatient], (2, 3)))
        if defect == "missing_slices":
            del datasets[4:6]
        elif defect == "mixed_orientations":
            datasets[3].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        elif defect == "inconsistent_spacing":
            for ds in datasets[5:]:  # every later slice 0.4 slice-gaps further on
                gap = float(datasets[0].SliceThickness)
                ds.ImagePositionPatient = [f"{v:.6g}" for v in np.array([float(v) for v in ds.ImagePositionPatient]) + 0.4 * gap * normal]
        elif defect == "no_pixel_data":
            del datasets[2].PixelData
        elif defect == "two_frame_localiser":
            scout = copy.deepcopy(datasets[0])
            scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
            scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            scout.NumberOfFrames = 2
            scout.PixelData = scout.PixelData * 2
            scout.InstanceNumber = len(datasets) + 1
            datasets.append(scout)
        folder = out / defect
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for number, ds in enumerate(datasets):
            ds.save_as(str(folder / f"{number:04d}.dcm"))
        folders[defect] = folder
    return folders

