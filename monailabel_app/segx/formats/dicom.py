"""DICOM in and out: image series <-> volumes, and SegX results as DICOM objects.

- :func:`write_series` writes a volume as a CT or MR image series (one single-frame
  instance per slice, the volume's geometry in ImagePositionPatient /
  ImageOrientationPatient / PixelSpacing, values through RescaleSlope/Intercept).
- :func:`read_series` reads a series back into a volume after checking that it *is* one
  volume (one orientation, equally spaced slices, pixel data, single frames); a series that
  is not is refused with a :class:`BadSeries` naming the problem.
- :func:`result_objects` turns a :class:`~segx.engine.SegXResult` into a DICOM SEG (the
  clinical region), Parametric Maps (SegX and raw maps, float32, a series each) and a
  Comprehensive SR (TID 1500 measurement report: the region's outline on the key slice,
  prediction, probabilities, SegU certainty, level, reason), all written with highdicom,
  referencing the source series and identifying the model, laid out as OHIF 3.10-3.13 and
  Slicer's QuantitativeReporting read them (see :func:`result_objects`).

Axis order: volumes are ``(X, Y, Z)`` = MONAI's voxel index order ``(i, j, k)`` with a
voxel-to-RAS affine; a DICOM frame is ``(rows, columns)`` = ``volume[:, :, k].T`` (the
column index runs along ``i``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: RAS <-> LPS (DICOM's patient frame): x and y change sign (its own inverse).
_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Private coding scheme of SegX's own concepts (DICOM reserves "99" prefixes for them).
SCHEME = "99SEGX"
MANUFACTURER = "SegX-Slicer"
#: SeriesDescription start of the objects SegX stores (region, maps, report); not of the
#: image series it writes, nor of annotators' labels.
OUTPUT_PREFIX = "SegX "

#: Display colours of SEG segments, CIE L*a*b* (red, green, blue, yellow, magenta, cyan;
#: then again): viewers such as OHIF warn about segments without one.
SEGMENT_COLOURS_LAB = ((54, 81, 70), (88, -79, 81), (32, 79, -108), (97, -22, 94), (60, 98, -61), (91, -48, -14))

#: SOP classes of the image series that :func:`write_series` writes.
_IMAGE_STORAGE = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


class BadSeries(ValueError):
    """A DICOM series that is not one volume (missing slices, mixed orientations, ...)."""


def _ds(value: float) -> str:
    """A decimal string (DICOM DS, at most 16 characters)."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.8e}"


def write_series(
    volume: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    modality: str = "CT",
    patient_id: str = "SEGX-DEMO",
    patient_name: str = "SegX^Demo",
    study_uid: str | None = None,
    series_description: str = "",
) -> list[Path]:
    """Write ``volume`` ``(X, Y, Z)`` with its voxel-to-RAS ``affine`` as a ``modality``
    (``CT`` or ``MR``) series, one file per slice ``k`` (``slice_KKKK.dcm``).

    Values are stored as int16 with RescaleSlope/Intercept: integers in the int16 range
    exactly (slope 1), anything else linearly over the full int16 range.

    Returns:
        the files written, in slice order.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if modality not in _IMAGE_STORAGE:
        raise ValueError(f"modality must be one of {sorted(_IMAGE_STORAGE)}, got {modality!r}")
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"a series holds a 3D volume (X, Y, Z), got shape {volume.shape}")
    low, high = float(volume.min()), float(volume.max())
    if np.array_equal(volume, np.round(volume)) and low >= -32768 and high <= 32767:
        slope, intercept = 1.0, 0.0
    else:
        slope = (high - low) / 65535 if high > low else 1.0
        intercept = low + 32768 * slope
    stored = np.clip(np.round((volume - intercept) / slope), -32768, 32767).astype(np.int16)

    lps = _RAS_LPS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    orientation = np.concatenate([lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]])
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    now = datetime.datetime.now()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _IMAGE_STORAGE[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = modality, 1, k + 1, 1
        ds.SeriesDescription = series_description
        ds.Manufacturer, ds.PositionReferenceIndicator = MANUFACTURER, ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        if modality == "CT":
            ds.KVP = ""
        else:  # MR Image module: type 1 and 2 attributes
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "3D"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "", "", ""
        ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (between rows, between columns)
        ds.SliceThickness = _ds(spacing[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        if modality == "CT":
            ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        file = folder / f"slice_{k:04d}.dcm"
        pydicom.dcmwrite(str(file), ds, write_like_original=False)
        files.append(file)
    return files


@dataclass
class Series:
    """A DICOM image series read as one volume.

    Attributes:
        datasets: the instances in slice order (increasing position along the normal).
        volume: float32 ``(X, Y, Z)`` (modality LUT applied: CT in HU), a view of the
            ``(Z, rows, columns)`` frames (not C-contiguous).
        affine: 4x4 voxel-to-RAS.
    """

    datasets: list
    volume: np.ndarray
    affine: np.ndarray

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    def image(self):
        """The volume as a one-channel :class:`~segx.imageio.Image` ``(1, X, Y, Z)``."""
        import torch

        from ..imageio import Image

        return Image(torch.from_numpy(self.volume)[None], tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0)), self.affine)


def _name(ds) -> str:
    return f"instance {getattr(ds, 'InstanceNumber', '?')}"


def read_series(folder: str | Path) -> Series:
    """Read the DICOM files of one series in ``folder`` as one volume.

    Raises:
        BadSeries: naming the problem: not DICOM, no pixel data, multi-frame instances
            (localisers, enhanced objects), several series, mixed orientations or pixel
            grids, duplicate or missing slices, unequal slice spacing.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    datasets = []
    for number, file in enumerate(files, 1):
        try:
            datasets.append(pydicom.dcmread(str(file)))
        except (InvalidDicomError, OSError, ValueError) as error:
            raise BadSeries(f"file {number} of the series is not readable DICOM ({type(error).__name__})") from None
    return series_from_datasets(datasets)


def series_from_datasets(datasets: list) -> Series:
    """The volume of one series' instances (pydicom datasets with pixel data, any order);
    the checks of :func:`read_series`."""
    from pydicom.pixel_data_handlers.util import apply_modality_lut

    if not datasets:
        raise BadSeries("the series has no instances")
    for ds in datasets:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames > 1:
            raise BadSeries(f"{_name(ds)} holds {frames} frames (a localiser or an enhanced multi-frame object): "
                            "a volume needs a series of single-frame slices")  # fmt: skip
        if "PixelData" not in ds:
            raise BadSeries(f"{_name(ds)} has no pixel data")
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns") if k not in ds]
        if missing:
            raise BadSeries(f"{_name(ds)} lacks {', '.join(missing)}: its place in the volume is unknown")
        if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
            raise BadSeries(f"{_name(ds)} is a colour image: only greyscale series are read")
    if len({str(ds.SeriesInstanceUID) for ds in datasets}) > 1:
        raise BadSeries("the folder holds several series")
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        count = len(np.unique(np.round(orientations, 4), axis=0))
        raise BadSeries(f"the slices have {count} different orientations (ImageOrientationPatient): a localiser or "
                        "another series is mixed in")  # fmt: skip
    grids = {(int(ds.Rows), int(ds.Columns), *(round(float(v), 4) for v in ds.PixelSpacing)) for ds in datasets}
    if len(grids) > 1:
        raise BadSeries(f"the slices have {len(grids)} different sizes or pixel spacings")
    row, column = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, column)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    datasets, positions = [datasets[i] for i in order], positions[order]
    along = positions @ normal
    gaps = np.diff(along)
    if len(gaps) and gaps.min() < 1e-3:
        raise BadSeries("two slices share one position (duplicate instances)")
    if len(gaps):
        typical = float(np.median(gaps))
        tolerance = max(0.01, 0.01 * typical)
        if gaps.max() > 1.5 * typical:
            where = int(np.argmax(gaps))
            raise BadSeries(f"missing slices: {gaps[where]:.3g} mm between slices {where + 1} and {where + 2} where the others "
                            f"are {typical:.3g} mm apart (about {round(gaps[where] / typical) - 1} missing)")  # fmt: skip
        if np.abs(gaps - typical).max() > tolerance:
            raise BadSeries(f"inconsistent slice spacing: gaps from {gaps.min():.4g} to {gaps.max():.4g} mm")
        step = (positions[-1] - positions[0]) / len(gaps)
    else:
        step = normal * float(getattr(datasets[0], "SliceThickness", 1.0) or 1.0)
    row_spacing, column_spacing = (float(v) for v in datasets[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * column_spacing, column * row_spacing, step, positions[0]
    frames = np.empty((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), dtype=np.float32)
    try:
        for k, ds in enumerate(datasets):
            if "ModalityLUTSequence" in ds:
                frames[k] = apply_modality_lut(ds.pixel_array, ds)
            else:  # the linear rescale in float32 (apply_modality_lut works in float64: 4x the memory traffic)
                frames[k] = ds.pixel_array
                frames[k] *= float(ds.get("RescaleSlope", 1) or 1)
                frames[k] += float(ds.get("RescaleIntercept", 0) or 0)
    except Exception as error:  # pixel data handlers raise many types (codec missing, short data)
        raise BadSeries(f"the pixel data cannot be decoded ({type(error).__name__}: {error})") from None
    return Series(datasets, frames.transpose(2, 1, 0), _RAS_LPS @ lps)


@dataclass
class Provenance:
    """Who made a result: written into every object so an auditor can tell the model."""

    model: str
    weights_digest: str
    version: str

    @property
    def software_versions(self) -> list[str]:
        return [f"segx {self.version}", f"weights sha256 {self.weights_digest[:48]}"]

    @property
    def algorithm_version(self) -> str:
        return f"segx {self.version} weights {self.weights_digest[:16]}"

    @classmethod
    def of_config(cls, config_file: str | Path) -> "Provenance":
        """The provenance of results of a model configuration file (its name, the digest of
        its weights, this version of segx)."""
        from .. import __version__
        from ..config import weights_digest

        return cls(Path(config_file).stem, weights_digest(config_file), __version__)


def is_segx_output(dataset) -> bool:
    """Whether a dataset (e.g. a QIDO-RS series) is one of the objects :func:`result_objects`
    writes, by their Manufacturer and SeriesDescription."""
    return dataset.get("Manufacturer") == MANUFACTURER and str(dataset.get("SeriesDescription", "")).startswith(OUTPUT_PREFIX)


def _frames(volume) -> np.ndarray:
    """``(X, Y, Z)`` tensor -> ``(Z, rows, columns)`` frames of the source slices (torch's
    threaded permute copy: 0.6 s for a 512 x 512 x 300 map, numpy's strided copy 1.7 s)."""
    import torch

    return torch.as_tensor(volume).detach().cpu().permute(2, 1, 0).contiguous().numpy()


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value[:16], SCHEME, meaning[:64])


def _segmentation(series: Series, frames: np.ndarray, segments: list[tuple[str, str]], algorithm, series_number: int,
                  description: str, common: dict):  # fmt: skip
    """A binary DICOM SEG on the source ``series``: ``frames`` ``(Z, rows, columns)`` holds
    segment numbers (0 none, i for ``segments[i - 1]`` = (label, type meaning)); automatic
    with ``algorithm`` (an AlgorithmIdentificationSequence), manual when it is None."""
    import highdicom as hd
    from highdicom.color import CIELabColor
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    kind = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if algorithm else hd.seg.SegmentAlgorithmTypeValues.MANUAL
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=_code(f"SEGMENT{number}", meaning),
            algorithm_type=kind,
            algorithm_identification=algorithm,
        )
        for number, (label, meaning) in enumerate(segments, 1)
    ]
    for number, segment in enumerate(descriptions):
        segment.RecommendedDisplayCIELabValue = list(CIELabColor(*SEGMENT_COLOURS_LAB[number % len(SEGMENT_COLOURS_LAB)]).value)
    return hd.seg.Segmentation(
        source_images=series.datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        omit_empty_frames=bool(frames.any()),
        series_description=description[:64],
        **common,
    )


def label_segmentation(series: Series, labels, names: dict[int, str]):
    """An annotator's label map ``(X, Y, Z)`` on the series volume's grid as a manual DICOM
    SEG in the source study: one segment per label value present, named by ``names``
    (value -> name; ``label N`` otherwise). Its description, ``Annotator label``, keeps it
    visible to MONAI Label as the image's label (SegX's own outputs are hidden)."""
    labels = np.asarray(labels)
    if labels.shape != series.volume.shape:
        raise ValueError(f"the label map's grid {labels.shape} is not the series volume's {series.volume.shape}")
    frames = _frames(labels.astype(np.int64))
    values = [int(v) for v in np.unique(frames) if v > 0]
    numbered = np.zeros(frames.shape, dtype=np.uint8)
    for number, value in enumerate(values, 1):
        numbered[frames == value] = number
    segments = [(names.get(v, f"label {v}"), names.get(v, f"label {v}")) for v in values]
    from .. import __version__

    # Enhanced General Equipment needs values (type 1): the software that wrote it
    common = dict(manufacturer=MANUFACTURER, manufacturer_model_name="annotation", software_versions=f"segx {__version__}", device_serial_number="annotation")
    return _segmentation(series, numbered, segments, None, 9201, "Annotator label", common)


def _outline(region: np.ndarray) -> np.ndarray | None:
    """The closed outline ``(N, 2)`` of the largest connected piece of a binary frame
    ``(rows, columns)``, as DICOM SCOORD image coordinates (column, row; (0, 0) the top left
    corner of the top left pixel, so pixel centres sit at +0.5), simplified to half a
    pixel; None for an empty frame."""
    from skimage.measure import approximate_polygon, find_contours

    if not region.any():
        return None
    padded = np.pad(region.astype(np.float32), 1)  # a region touching the border still closes
    contour = max(find_contours(padded, 0.5), key=len) - 1  # (row, column) of the unpadded frame
    contour = approximate_polygon(contour, tolerance=0.5)
    return (contour[:, ::-1] + 0.5).astype(np.float32)


def key_slice(region: np.ndarray, weights: np.ndarray) -> int:
    """The slice a reader is shown first: of ``(Z, rows, columns)`` frames, the one holding
    most of ``weights`` (the SegX map) inside ``region``; the one with most region when the
    map is empty there; the middle one when the region is empty."""
    inside = np.array([w[r > 0].sum(dtype=np.float64) for w, r in zip(weights, region)])  # slice by slice: no volume-sized product
    if inside.max() > 0:
        return int(inside.argmax())
    area = region.reshape(len(region), -1).sum(1)
    return int(area.argmax()) if area.max() > 0 else len(region) // 2


def result_objects(result, class_index: int, series: Series, provenance: Provenance, variant: str, level: str | None):
    """The DICOM objects of one SegX result on a source ``series`` (the result's grid must
    be the series volume's), all in the source study, each in a series of its own (viewers
    such as OHIF open only the first instance of a Parametric Map series):

    - ``seg`` (Segmentation, series 9101): the clinical region;
    - ``segx`` (Parametric Map, series 9102): the SegX map, the one a reader opens first;
    - ``sr`` (Comprehensive SR, series 9103): a TID 1500 measurement report whose one
      measurement group references the SEG's segment (TID 1411, what Slicer's
      QuantitativeReporting reads) and holds the region's outline on the key slice
      (:func:`key_slice`) as a 2D SCOORD that each NUM is inferred from (OHIF draws a
      group only with a SCOORD, and then shows its Comments and NUMs beside the outline,
      five lines at most; 3.10 shows the NUMs only): Comments "Predicted class", "SegU
      certainty level" and "Reason", then NUMs SegU certainty, the predicted class's
      probability and the others'; the same facts as coded evaluations for machines;
    - ``explanation`` (Parametric Map, series 9104): the raw, unrefined map, named so.

    Maps hold float32 relevance 0-1 with a window of 0-1. Axis order: see the module.

    Yields:
        ``(name, dataset)`` as each is built (so that a caller can send one while the next
        is built); ``dict(result_objects(...))`` collects them.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    shape = tuple(result.segmentation.shape)
    if shape != series.volume.shape:
        raise ValueError(f"the result's grid {shape} is not the series volume's {series.volume.shape}")
    k = result.classes.index(class_index)
    label = result.class_names[class_index]
    region_names = [result.segment_names.get(v, str(v)) for v in sorted(set(result.segment_names)) if v > 0]
    now = datetime.datetime.now()
    common = dict(
        manufacturer=MANUFACTURER,
        manufacturer_model_name=provenance.model[:64],
        software_versions=provenance.software_versions,
        device_serial_number=provenance.weights_digest[:16],
    )
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"SegX {provenance.model}"[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=provenance.algorithm_version,
    )
    region = _frames(result.clinical_mask[k] >= 0.5).astype(np.uint8)
    segments = [(f"clinical region of {label}", f"SegX clinical region ({', '.join(region_names)})")]
    seg = _segmentation(series, region, segments, algorithm, 9101, f"{OUTPUT_PREFIX}region ({provenance.model})", common)
    yield "seg", _dated(seg, now)
    segx_frames = _frames(result.segx[k].float())
    yield "segx", _dated(_parametric_map(series, segx_frames, 9102, "segx", f"SegX map of {label}", result.method,
                                         f"{OUTPUT_PREFIX}map of {label} ({provenance.model}, {result.method})", common), now)  # fmt: skip
    yield "sr", _dated(_report(result, series, seg, provenance, variant, level, key_slice(region, segx_frames), region), now)
    raw = _frames(result.explanation_normalised[k].float())
    yield "explanation", _dated(_parametric_map(series, raw, 9104, "explanation", f"raw explanation map of {label}, not refined", result.method,
                                                f"{OUTPUT_PREFIX}raw {result.method} of {label}, not refined ({provenance.model})", common), now)  # fmt: skip


def _parametric_map(series: Series, frames: np.ndarray, number: int, layer: str, meaning: str, method: str, description: str, common: dict):
    """A float32 Parametric Map of relevance 0-1 (window 0-1), ``frames`` ``(Z, rows,
    columns)`` on the source ``series``, alone in a new series ``number``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    mapping = hd.pm.RealWorldValueMapping(
        lut_label=layer.upper()[:16],
        lut_explanation=f"{meaning} ({method}), 0-1"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    parametric_map = hd.pm.ParametricMap(
        source_images=series.datasets,
        pixel_array=frames,
        series_instance_uid=generate_uid(),
        series_number=number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        window_center=0.5,
        window_width=1.0,
        content_label=layer.upper()[:16],
        content_description=f"{meaning} by {method}"[:64],
        series_description=description[:64],
        **common,
    )
    parametric_map.Laterality = ""  # General Series, type 2C: the source's body part may be paired
    return parametric_map


def _dated(dataset, when: datetime.datetime):
    """``dataset`` with SeriesDate/SeriesTime (type 3; without them PACS lists show "?")."""
    dataset.SeriesDate, dataset.SeriesTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    return dataset


def _report(result, series: Series, seg, provenance: Provenance, variant: str, level: str | None, key: int, region: np.ndarray):
    """The Comprehensive SR of :func:`result_objects` (its docstring says what it holds
    and why); ``key`` is the index of the key slice in ``series.datasets``, ``region`` the
    clinical region's ``(Z, rows, columns)`` frames."""
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    certainty = result.certainty_of(result.predicted, variant)
    level_text = level or "not calibrated"
    sr_algorithm = hd.sr.AlgorithmIdentification(
        name=f"SegX {provenance.model}"[:64],
        version=provenance.algorithm_version,
        parameters=[f"method={result.method}", f"variant={variant}"],
    )
    order = [result.predicted] + [c for c in np.argsort(-np.asarray(result.probabilities)) if c != result.predicted]
    # no algorithm per measurement (the group names it): each NUM gets exactly one child, the outline, below
    measurements = [hd.sr.Measurement(name=_code("SEGU", "SegU certainty"), value=float(certainty.value), unit=CodedConcept("{score}", "UCUM", "score"))]
    measurements += [
        hd.sr.Measurement(name=_code(f"P{c}", f"Probability of {result.class_names[c]}"), value=100 * float(result.probabilities[c]), unit=codes.UCUM.Percent)
        for c in order
    ]
    evaluations = [
        hd.sr.QualitativeEvaluation(_code("PREDICTED", "Predicted class"), _code(f"CLASS{result.predicted}", result.predicted_label)),
        hd.sr.QualitativeEvaluation(_code("LEVEL", "SegU certainty level"), _code(level or "NOTCALIBRATED", level_text)),
    ]
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="SegX clinical region"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(series.series_uid),
        ),
        finding_type=_code("SEGX", f"SegX explanation of {result.predicted_label}"),
        algorithm_id=sr_algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    content = group[0].ContentSequence
    for text in (f"Predicted class: {result.predicted_label}", f"SegU certainty level: {level_text}", f"Reason: {certainty.reason or 'none'}"):
        content.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=text[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    outline = _outline(region[key])
    source = series.datasets[key]
    for number in (item for item in content if item.ValueType == "NUM"):
        # OHIF 3.10 reads a NUM's ContentSequence as one SCOORD (and fails on a NUM without
        # one); 3.13 draws the first SCOORD it finds: every NUM carries the same outline
        scoord = hd.sr.ScoordContentItem(
            name=codes.DCM.ImageRegion,
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE if outline is not None else hd.sr.GraphicTypeValues.POINT,
            graphic_data=outline if outline is not None else np.array([[source.Columns / 2, source.Rows / 2]], dtype=np.float32),
            pixel_origin_interpretation=hd.sr.PixelOriginInterpretationValues.VOLUME,
            relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
        )
        scoord.ContentSequence = [hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID)]  # exactly one child: OHIF needs it so
        number.ContentSequence = [scoord]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=f"SegX {provenance.model}"[:64], manufacturer_name=MANUFACTURER, model_name=provenance.model[:64]
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=[group],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[*series.datasets, seg],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=9103,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"{OUTPUT_PREFIX}report ({provenance.model})"[:64],
    )
