"""``segx.headers.check_image_file`` against a corpus made here, one class of hostile file
at a time: headers that name other files, pages and frames, compressed DICOM, truncated
data, folders and unknown types. Every hostile file is refused in < 2 s with a message
naming its defect (and no absolute path); every valid file passes and decodes with the
server's reader (``segx.imageio.read_image``, MONAI's LoadImage with a SimpleITK
fallback) to the shape the check returned. For detached headers the test first shows that
SimpleITK really reads the canary file they name."""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage
from PIL import features
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from segx.headers import DEFAULT_MAX_VOXELS, MAX_FOLDER_FILES, check_image_file
from segx.imageio import read_image

CANARY = bytes(range(64))  # an 8 x 8 uint8 image no upload should ever reach


def refused(path: Path, words: str, max_voxels: int = DEFAULT_MAX_VOXELS) -> str:
    """``path`` refused in < 2 s with a ValueError naming ``words``, by base name only."""
    start = time.perf_counter()
    with pytest.raises(ValueError) as caught:
        check_image_file(path, max_voxels)
    seconds = time.perf_counter() - start
    message = str(caught.value)
    assert seconds < 2.0, f"{path.name}: {seconds:.2f} s"
    assert words in message, f"{path.name}: {message}"
    assert str(path.parent) not in message, message
    return message


def passes(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[int, ...]:
    """``path`` passes and the server's reader decodes it to the shape the check returned
    (the same sizes, singleton axes and axis order aside)."""
    shape = check_image_file(path, max_voxels)
    decoded = tuple(read_image(path).array.shape)
    assert math.prod(shape) == math.prod(decoded), (path.name, shape, decoded)
    assert sorted(s for s in shape if s > 1) == sorted(s for s in decoded if s > 1), (path.name, shape, decoded)
    return shape


def sitk_reads_canary(path: Path) -> bool:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).tobytes() == CANARY


@pytest.fixture
def upload(tmp_path) -> Path:
    """An upload folder, with canary files next to it (``../secret.raw``, ``../secret0.raw``)."""
    (tmp_path / "secret.raw").write_bytes(CANARY)
    (tmp_path / "secret0.raw").write_bytes(CANARY)
    folder = tmp_path / "upload"
    folder.mkdir()
    return folder


def sitk_write(array: np.ndarray, path: Path, compress: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), compress)
    return path


def text_header(path: Path) -> str:
    """The text header of a SimpleITK-written NRRD (up to the blank line) or MetaImage (up
    to ``ElementDataFile = LOCAL``)."""
    data = path.read_bytes()
    end = data.index(b"\n\n") + 1 if path.suffix == ".nrrd" else data.index(b"ElementDataFile")
    return data[:end].decode("latin-1")


# ------------------------------------------------------------- 1. headers naming other files

NRRD_DETACHED = {
    "absolute": "data file: {secret}\n\n",
    "relative": "data file: ../secret.raw\n\n",
    "no space": "datafile: ../secret.raw\n\n",
    "upper case": "DATA FILE: ../secret.raw\n\n",
    "camel case": "DataFile: ../secret.raw\n\n",
    "crlf": "data file: ../secret.raw\r\n\r\n",
    "list": "data file: LIST 2\n../secret.raw\n",
    "format": "data file: ../secret%d.raw 0 0 1 2\n\n",
}


@pytest.mark.parametrize("variant", NRRD_DETACHED)
def test_a_detached_nrrd_header_is_refused_though_simpleitk_reads_the_file_it_names(upload, variant):
    header = text_header(sitk_write(np.zeros((8, 8), np.uint8), upload / "model.nrrd"))
    hostile = upload / "hostile.nrrd"
    hostile.write_bytes((header + NRRD_DETACHED[variant].format(secret=upload.parent / "secret.raw")).encode())
    assert sitk_reads_canary(hostile)  # the danger is real: with no gate, the canary is read
    refused(hostile, "names another file")
    hostile.rename(upload / "hostile.nhdr")
    refused(upload / "hostile.nhdr", "names another file")


MHA_DETACHED = {
    "absolute": ("ElementDataFile = {secret}\n", "names another file"),
    "relative": ("ElementDataFile = ../secret.raw\n", "names another file"),
    "colon": ("ElementDataFile: ../secret.raw\n", "names another file"),
    "spaces": ("   ElementDataFile   =   ../secret.raw\n", "names another file"),
    "nul": ("ElementDataFile\0hidden = ../secret.raw\n", "NUL byte"),  # MetaIO compares names as C strings
}


@pytest.mark.parametrize("variant", MHA_DETACHED)
def test_a_metaimage_naming_another_file_is_refused_though_simpleitk_reads_it(upload, variant):
    header = text_header(sitk_write(np.zeros((8, 8), np.uint8), upload / "model.mha"))
    hostile = upload / "hostile.mha"
    tail, words = MHA_DETACHED[variant]
    hostile.write_bytes((header + tail.format(secret=upload.parent / "secret.raw")).encode())
    assert sitk_reads_canary(hostile)
    refused(hostile, words)
    hostile.rename(upload / "hostile.mhd")
    refused(upload / "hostile.mhd", "names another file")


@pytest.mark.parametrize("tail", ["ElementDataFile = LIST 2D\n../secret.raw\n", "ElementDataFile = ../secret%d.raw 0 0 1\n",
                                  "elementdatafile = ../secret.raw\nElementDataFile = LOCAL\n" + "\0" * 64])  # fmt: skip
def test_metaimage_list_format_and_case_variants_are_refused(upload, tail):
    header = text_header(sitk_write(np.zeros((8, 8), np.uint8), upload / "model.mha"))
    (upload / "hostile.mha").write_bytes((header + tail).encode())
    refused(upload / "hostile.mha", "names another file")


def test_nifti_pairs_and_analyze_headers_are_refused(upload):
    array = np.arange(64, dtype=np.uint8).reshape(4, 4, 4)
    nib.save(nib.Nifti1Pair(array, np.eye(4)), str(upload / "pair.img"))
    nib.save(nib.AnalyzeImage(array, np.eye(4)), str(upload / "analyze.img"))
    assert sitk.ReadImage(str(upload / "pair.hdr")).GetNumberOfPixels() == 64  # SimpleITK reads the .img it names
    for name in ("pair.hdr", "pair.img", "analyze.hdr"):
        refused(upload / name, "names another file")
    for name in ("pair.hdr", "analyze.hdr"):  # the same headers under a single-file name
        (upload / name.replace(".hdr", ".nii")).write_bytes((upload / name).read_bytes() + (upload / name.replace(".hdr", ".img")).read_bytes())
        refused(upload / name.replace(".hdr", ".nii"), "not a single-file NIfTI")


def test_text_headers_that_do_not_parse_are_refused(upload):
    nrrd = sitk_write(np.zeros((8, 8), np.uint8), upload / "model.nrrd").read_bytes()
    mha = sitk_write(np.zeros((8, 8), np.uint8), upload / "model.mha").read_bytes()
    cases = {
        "no_magic.nrrd": (nrrd.replace(b"NRRD0004", b"NRRDX", 1), "first line is not NRRD000x"),
        "png_inside.nrrd": (PNG_BYTES, "first line is not NRRD000x"),
        "no_blank_line.nrrd": (nrrd.split(b"\n\n")[0] + b"\n", "no end of header"),
        "stray_line.nrrd": (nrrd.replace(b"\nsizes:", b"\nthis is not a field\nsizes:", 1), "not an NRRD field"),
        "twice.nrrd": (nrrd.replace(b"\nsizes: 8 8", b"\nsizes: 8 8\nSIZES: 1 1", 1), "repeats"),
        "ascii.nrrd": (nrrd.replace(b"encoding: raw", b"encoding: ascii", 1), "encoding"),
        "no_objecttype.mha": (mha.replace(b"ObjectType = Image\n", b"", 1), "ObjectType"),
        "no_dimsize.mha": (b"\n".join(line for line in mha.split(b"\n") if not line.startswith(b"DimSize")), "DimSize"),
        "no_datafile.mha": (mha.split(b"ElementDataFile")[0], "ElementDataFile = LOCAL"),
        "case_variant.mha": (mha.replace(b"DimSize = 8 8", b"dimsize = 1 1\nDimSize = 8 8", 1), "spelt differently"),
        "nrrd_inside.mha": (nrrd, "not a MetaImage field"),
    }
    for name, (content, words) in cases.items():
        (upload / name).write_bytes(content)
        refused(upload / name, words)


def test_single_file_images_written_by_simpleitk_pass_and_decode(upload):
    volume = (np.random.default_rng(0).random((6, 7, 8)) * 1000).astype(np.int16)
    for name, compress in [("raw.nrrd", False), ("gzip.nrrd", True), ("raw.mha", False), ("zlib.mha", True), ("ct.nii.gz", True), ("ct.nii", False)]:
        assert passes(sitk_write(volume, upload / name, compress)) == (8, 7, 6)


# ------------------------------------------------------------------ 2. every page and frame


def picture_bytes(frames: list[np.ndarray], fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    images = [PILImage.fromarray(frame) for frame in frames]
    images[0].save(buffer, format=fmt, save_all=len(images) > 1, append_images=images[1:], **options)
    return buffer.getvalue()


RNG = np.random.default_rng(3)
PAGE = (RNG.random((30, 40)) * 255).astype(np.uint8)
PNG_BYTES = picture_bytes([PAGE], "PNG")


def test_every_tiff_page_counts(tmp_path):
    path = tmp_path / "pages.tif"
    path.write_bytes(picture_bytes([PAGE, PAGE[::-1], PAGE[:, ::-1]], "TIFF"))
    assert passes(path) == (3, 30, 40, 1)
    assert check_image_file(path, 3 * 30 * 40) == (3, 30, 40, 1)
    refused(path, "pages", max_voxels=3 * 30 * 40 - 1)  # the first page alone is within the limit


def test_every_animated_png_frame_counts(tmp_path):
    path = tmp_path / "animated.png"
    path.write_bytes(picture_bytes([PAGE, PAGE[::-1], PAGE[:, ::-1]], "PNG"))
    assert check_image_file(path) == (3, 30, 40, 1)
    refused(path, "over the limit", max_voxels=2 * 30 * 40)
    data = path.read_bytes()  # an acTL chunk claiming 2^31 - 1 frames: refused from the count, nothing allocated
    at = data.index(b"acTL")
    body = struct.pack(">II", 2**31 - 1, 0)
    (tmp_path / "endless.png").write_bytes(data[: at + 4] + body + struct.pack(">I", zlib.crc32(b"acTL" + body)) + data[at + 16 :])
    refused(tmp_path / "endless.png", "2147483647 x 30 x 40 x 1")


def test_pictures_pass_and_decode(tmp_path):
    rgb = (RNG.random((30, 40, 3)) * 255).astype(np.uint8)
    for name, fmt in [("grey.png", "PNG"), ("photo.jpg", "JPEG"), ("photo.jpeg", "JPEG"), ("grey.tif", "TIFF"), ("scan.bmp", "BMP")]:
        (tmp_path / name).write_bytes(picture_bytes([PAGE], fmt))
        assert passes(tmp_path / name) == (30, 40, 1)
    (tmp_path / "rgb.png").write_bytes(picture_bytes([rgb], "PNG"))
    assert passes(tmp_path / "rgb.png") == (30, 40, 3)
    (tmp_path / "padded.jpg").write_bytes(picture_bytes([rgb], "JPEG") + b"\0" * 100)  # zero padding after EOI
    assert passes(tmp_path / "padded.jpg") == (30, 40, 3)


def dicom(path: Path, pixel_data: bytes, rows: int, columns: int, frames: int = 1, syntax: str = ExplicitVRLittleEndian,
          bits: int = 8, samples: int = 1, sop_class: str = "1.2.840.10008.5.1.4.1.1.7", **attributes) -> Path:  # fmt: skip
    """A minimal secondary-capture DICOM file (written by pydicom) with these pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.PatientID = generate_uid(), generate_uid(), "OT", "X"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.PixelData = pixel_data
    ds.is_little_endian, ds.is_implicit_VR = True, syntax == "1.2.840.10008.1.2"
    if syntax not in ("1.2.840.10008.1.2", ExplicitVRLittleEndian, "1.2.840.10008.1.2.1.99"):
        ds["PixelData"].is_undefined_length = True
        ds["PixelData"].VR = "OB"
    known = pydicom.uid.UID(syntax).is_private or syntax in pydicom.uid.UID_dictionary
    if not known:  # pydicom 2.4 does not know HTJ2K: write with a stand-in of the same length
        assert len(syntax) == len(STAND_IN)
        ds.file_meta.TransferSyntaxUID = STAND_IN
    ds.save_as(str(path), write_like_original=False)
    if not known:
        path.write_bytes(path.read_bytes().replace(STAND_IN.encode(), syntax.encode(), 1))
    return path


STAND_IN = "1.2.840.10008.1.2.4.100"  # MPEG2, a compressed syntax pydicom 2.4 knows


FRAMES = (RNG.random((3, 16, 20)) * 255).astype(np.uint8)


def test_every_dicom_frame_counts(tmp_path):
    path = dicom(tmp_path / "frames.dcm", FRAMES.tobytes(), 16, 20, frames=3)
    assert passes(path) == (3, 16, 20, 1)
    refused(path, "over the limit", max_voxels=3 * 16 * 20 - 1)


# ------------------------------------------------------------------------- 3. compressed DICOM


def jpeg(frame: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(frame).save(buffer, format=fmt, **options)
    return buffer.getvalue()


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def test_jpeg_dicom_frames_are_checked_against_rows_and_columns(tmp_path):
    small, large = jpeg(FRAMES[0]), jpeg(np.kron(FRAMES[0], np.ones((10, 10), np.uint8)))
    assert passes(dicom(tmp_path / "jpeg.dcm", encapsulate([small]), 16, 20, syntax=JPEG_BASELINE)) == (1, 16, 20, 1)
    refused(dicom(tmp_path / "bigger.dcm", encapsulate([large]), 16, 20, syntax=JPEG_BASELINE), "frame 1 of 160 x 200 x 1")
    three = [jpeg(frame) for frame in FRAMES]
    assert passes(dicom(tmp_path / "three.dcm", encapsulate(three), 16, 20, 3, JPEG_BASELINE)) == (3, 16, 20, 1)
    assert check_image_file(dicom(tmp_path / "no_bot.dcm", encapsulate(three, has_bot=False), 16, 20, 3, JPEG_BASELINE)) == (3, 16, 20, 1)
    two_fragments = encapsulate(three, fragments_per_frame=2, has_bot=False)  # frames found by their SOI markers
    assert check_image_file(dicom(tmp_path / "split.dcm", two_fragments, 16, 20, 3, JPEG_BASELINE)) == (3, 16, 20, 1)
    refused(dicom(tmp_path / "third_large.dcm", encapsulate([small, small, large]), 16, 20, 3, JPEG_BASELINE), "frame 3 of 160 x 200")
    refused(dicom(tmp_path / "two_of_three.dcm", encapsulate(three[:2], has_bot=False), 16, 20, 3, JPEG_BASELINE), "truncated")
    refused(dicom(tmp_path / "bot_of_two.dcm", encapsulate(three[:2]), 16, 20, 3, JPEG_BASELINE), "Basic Offset Table of 2 frames")
    cut = small[: len(small) - 40] + b"\0" * (len(small) % 2)
    refused(dicom(tmp_path / "cut_frame.dcm", encapsulate([cut]), 16, 20, syntax=JPEG_BASELINE), "end-of-image marker")
    refused(dicom(tmp_path / "rgb_says.dcm", encapsulate([small]), 16, 20, syntax=JPEG_BASELINE, samples=3), "16 x 20 x 1, its header says 16 x 20 x 3")
    refused(dicom(tmp_path / "not_jpeg.dcm", encapsulate([b"\0" * 64]), 16, 20, syntax=JPEG_BASELINE), "cannot be read from its codec header")


def test_a_jpeg_ls_frame_header_is_read(tmp_path):
    """Pillow has no JPEG-LS encoder: a hand-made SOF55 header declaring 12000 x 12000."""
    sof55 = b"\xff\xf7" + struct.pack(">HBHHB", 11, 8, 12000, 12000, 1) + b"\x01\x11\x00"
    frame = b"\xff\xd8" + sof55 + b"\xff\xd9"
    refused(dicom(tmp_path / "ls.dcm", encapsulate([frame]), 16, 20, syntax="1.2.840.10008.1.2.4.80"), "frame 1 of 12000 x 12000 x 1")


@pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow without OpenJPEG")
def test_jpeg_2000_dicom_frames_are_checked_against_rows_and_columns(tmp_path):
    small = jpeg(FRAMES[0], "JPEG2000", no_jp2=True)
    large = jpeg(np.kron(FRAMES[0], np.ones((10, 10), np.uint8)), "JPEG2000", no_jp2=True)
    assert passes(dicom(tmp_path / "j2k.dcm", encapsulate([small]), 16, 20, syntax="1.2.840.10008.1.2.4.90")) == (1, 16, 20, 1)
    refused(dicom(tmp_path / "j2k_bigger.dcm", encapsulate([large]), 16, 20, syntax="1.2.840.10008.1.2.4.90"), "frame 1 of 160 x 200 x 1")
    refused(dicom(tmp_path / "htj2k_bigger.dcm", encapsulate([large]), 16, 20, syntax="1.2.840.10008.1.2.4.201"), "frame 1 of 160 x 200 x 1")
    jp2 = jpeg(FRAMES[0], "JPEG2000")  # the JP2 file format, not a codestream
    refused(dicom(tmp_path / "jp2.dcm", encapsulate([jp2]), 16, 20, syntax="1.2.840.10008.1.2.4.90"), "codec header")


def test_rle_dicom_passes_and_a_wrong_segment_count_is_refused(tmp_path):
    path = dicom(tmp_path / "rle.dcm", FRAMES.tobytes(), 16, 20, frames=3)
    dataset = pydicom.dcmread(path)
    dataset.compress(pydicom.uid.RLELossless)
    dataset.save_as(str(path))
    assert passes(path) == (3, 16, 20, 1)
    fragments = list(pydicom.encaps.generate_pixel_data_frame(dataset.PixelData, 3))
    fragments[1] = struct.pack("<I", 3) + fragments[1][4:]
    refused(dicom(tmp_path / "rle_bad.dcm", encapsulate(fragments), 16, 20, 3, pydicom.uid.RLELossless), "frame 2 of 3 segments")


def test_deflated_video_and_unknown_transfer_syntaxes_are_refused_without_decoding(tmp_path):
    deflated = dicom(tmp_path / "deflated.dcm", FRAMES.tobytes(), 16, 20, frames=3, syntax="1.2.840.10008.1.2.1.99")
    assert pydicom.dcmread(deflated).pixel_array.shape == (3, 16, 20)  # a real deflated file
    refused(deflated, "deflated")
    garbage = tmp_path / "deflated_garbage.dcm"  # refused from the file meta alone: never inflated
    garbage.write_bytes(deflated.read_bytes()[: -200] + os.urandom(200))
    refused(garbage, "deflated")
    for syntax, words in [("1.2.840.10008.1.2.4.102", "video"), ("1.2.840.10008.1.2.4.100", "video"), ("1.2.3.4.5", "transfer syntax")]:
        refused(dicom(tmp_path / f"{syntax}.dcm", encapsulate([b"\0" * 64]), 16, 20, syntax=syntax), words)


def test_a_740_byte_dicom_claiming_12000_squared_is_refused_without_allocating(tmp_path):
    path = dicom(tmp_path / "claims.dcm", b"\0" * 16, 12000, 12000, bits=16)
    assert path.stat().st_size < 1000
    tracemalloc.start()
    try:
        refused(path, "truncated")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, f"{peak / 2**20:.1f} MB"
    refused(path, "over the limit", max_voxels=12000 * 12000 - 1)


def test_a_sequence_of_many_empty_items_is_refused_quickly(tmp_path):
    """pydicom parses every item before the Pixel Data: 200 k empty items (1.6 MB) would
    cost it seconds and hundreds of MB (8 MB: 2 minutes, 480 MB)."""
    data = dicom(tmp_path / "plain.dcm", FRAMES[0].tobytes(), 16, 20).read_bytes()
    at = data.index(struct.pack("<HH", 0x7FE0, 0x0010) + b"OB")
    items = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * 200_000
    sequence = struct.pack("<HH2sHI", 0x0009, 0x1001, b"SQ", 0, 0xFFFFFFFF) + items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    (tmp_path / "items.dcm").write_bytes(data[:at] + sequence + data[at:])
    refused(tmp_path / "items.dcm", "too many data elements")
    (tmp_path / "few_items.dcm").write_bytes(data[:at] + sequence[:12] + items[:8000] + sequence[-8:] + data[at:])
    assert check_image_file(tmp_path / "few_items.dcm") == (1, 16, 20, 1)


def test_native_dicom_pixel_data_must_hold_every_frame(tmp_path):
    whole = dicom(tmp_path / "whole.dcm", FRAMES.tobytes(), 16, 20, frames=3)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-100])
    refused(cut, "truncated")
    refused(dicom(tmp_path / "short.dcm", FRAMES.tobytes()[:-320], 16, 20, frames=3), "truncated")
    assert check_image_file(dicom(tmp_path / "longer.dcm", FRAMES.tobytes() + b"\0" * 64, 16, 20, frames=3)) == (3, 16, 20, 1)
    implicit = dicom(tmp_path / "implicit.dcm", FRAMES.tobytes(), 16, 20, frames=3, syntax="1.2.840.10008.1.2")
    assert passes(implicit) == (3, 16, 20, 1)
    sixteen = dicom(tmp_path / "sixteen.dcm", FRAMES[0].astype(np.uint16).tobytes(), 16, 20, bits=16)
    assert passes(sixteen) == (1, 16, 20, 1)
    refused(dicom(tmp_path / "half.dcm", FRAMES[0].tobytes(), 16, 20, bits=16), "truncated")


# ------------------------------------------------------------------ 4. truncated pixel data


def test_truncated_pictures_are_refused(tmp_path):
    png = PNG_BYTES
    cases = {
        "cut.png": (png[:-12], "truncated"),  # IEND cut off
        "no_idat.png": (png[:33] + png[-12:], "no IDAT"),
        "cut.jpg": (picture_bytes([PAGE], "JPEG")[:-50], "truncated"),
        "cut.tif": (picture_bytes([PAGE, PAGE], "TIFF")[:1500], "truncated"),
        "cut.bmp": (picture_bytes([PAGE], "BMP")[:-100], "truncated"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        refused(tmp_path / name, words)


def test_truncated_volumes_are_refused(tmp_path):
    volume = (np.random.default_rng(1).random((6, 7, 8)) * 1000).astype(np.int16)
    for name, compress in [("raw.nrrd", False), ("gzip.nrrd", True), ("raw.mha", False), ("zlib.mha", True), ("ct.nii.gz", True), ("ct.nii", False)]:
        data = sitk_write(volume, tmp_path / name, compress).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) - 60])
        refused(tmp_path / f"cut_{name}", "truncated")


# ---------------------------------------------------------------------------------- 5. folders


def series(folder: Path, slices: int = 6) -> Path:
    from segx.formats.dicom import write_series

    write_series(np.random.default_rng(2).random((20, 24, slices)) * 100, np.eye(4), folder)
    return folder


def test_a_dicom_folder_passes_and_counts_every_file(tmp_path):
    folder = series(tmp_path / "ct")
    assert passes(folder) == (6, 24, 20, 1)
    refused(folder, "over the limit", max_voxels=6 * 24 * 20 - 1)
    nested = tmp_path / "nested"
    (nested / "a").mkdir(parents=True)
    for file in folder.iterdir():
        file.rename(nested / "a" / file.name)
    assert check_image_file(nested) == (6, 24, 20, 1)


def test_hostile_folders_are_refused(tmp_path):
    linked = series(tmp_path / "linked")
    (linked / "link.dcm").symlink_to(next(linked.iterdir()))
    refused(linked, "symbolic link")
    outside = series(tmp_path / "outside")
    (outside / "up").symlink_to(tmp_path, target_is_directory=True)
    refused(outside, "symbolic link")
    mixed = series(tmp_path / "mixed")
    (mixed / "notes.png").write_bytes(PNG_BYTES)
    refused(mixed, "not a DICOM file")
    special = series(tmp_path / "special")
    os.mkfifo(special / "pipe")
    refused(special, "not a regular file")
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    for k in range(MAX_FOLDER_FILES + 1):
        (crowded / f"{k}.dcm").touch()
    refused(crowded, f"more than {MAX_FOLDER_FILES:,} files")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "empty folder")
    bad = series(tmp_path / "bad")
    first = sorted(bad.iterdir())[0]
    first.write_bytes(first.read_bytes()[:-10])
    assert "in the folder bad: slice_0000.dcm is truncated" in refused(bad, "truncated")
    cd = series(tmp_path / "cd")
    dicom(cd / "DICOMDIR", b"", 0, 0, sop_class="1.2.840.10008.1.3.10")
    refused(cd, "DICOMDIR")
    (tmp_path / "link_to_ct").symlink_to(series(tmp_path / "ct"), target_is_directory=True)
    refused(tmp_path / "link_to_ct", "symbolic link")
    (tmp_path / "link.png").symlink_to(tmp_path / "mixed" / "notes.png")
    refused(tmp_path / "link.png", "symbolic link")


# ------------------------------------------------------------------------- 6. unknown suffixes


def test_unknown_suffixes_and_mislabelled_content_are_refused(tmp_path):
    dcm = dicom(tmp_path / "one.dcm", FRAMES[0].tobytes(), 16, 20)
    cases = {
        "photo.exe": (PNG_BYTES, "unsupported file type"),
        "anim.gif": (picture_bytes([PAGE, PAGE], "GIF"), "unsupported file type"),
        "noext": (PNG_BYTES, "unsupported file type"),
        "volume.npy": (b"\x93NUMPY", "unsupported file type"),
        "dicom.png": (dcm.read_bytes(), "not a PNG file"),
        "tiff.jpg": (picture_bytes([PAGE], "TIFF"), "not a JPEG file"),
        "png.dcm": (PNG_BYTES, "not a DICOM file"),
        "dicom.nii": (dcm.read_bytes(), "not a single-file NIfTI"),
        "dicom.nii.gz": (gzip.compress(dcm.read_bytes()), "not a single-file NIfTI"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        refused(tmp_path / name, words)
    (tmp_path / "IM0001").write_bytes(dcm.read_bytes())  # DICOM without a suffix
    assert passes(tmp_path / "IM0001") == (1, 16, 20, 1)
    (tmp_path / "1.2.826.0.1.3680043.8").write_bytes(dcm.read_bytes())  # named by its UID
    assert check_image_file(tmp_path / "1.2.826.0.1.3680043.8") == (1, 16, 20, 1)
    refused(tmp_path / "missing.nii.gz", "does not exist")


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    """The zlib stream of a 20000 x 20000 PNG (Pillow's limit) and a 1000^3 NRRD."""
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 20001)) + chunk(b"IEND", b""))
    refused(tmp_path / "bomb.png", "over the limit")
    (tmp_path / "bomb.nrrd").write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1000 1000 1000\nencoding: gzip\n\n" + gzip.compress(b"\0" * 1000))
    refused(tmp_path / "bomb.nrrd", "over the limit")
    (tmp_path / "wrap.nrrd").write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4294967296 4294967296 1\nencoding: raw\n\n")
    refused(tmp_path / "wrap.nrrd", "over the limit")  # 2^64 voxels: no integer wrap-around
