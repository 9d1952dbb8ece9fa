"""What an image file holds, read from its header before any voxel is decoded.

A 250 KB gzip can hold a 640^3 volume: decoding it first and refusing it afterwards cost
26-29 s of CPU and 4-6 GB of memory. A truncated ``.nii.gz`` was read by MONAI's ITK
fallback with half its voxels zero, and a detached NRRD header made ITK read whatever file
it named. :func:`check_image_file` runs on every image before any reader sees it and, from
headers only (never decoding pixel data, reading at most 64 KB of a header or a codec
frame at a time), guarantees that what it passes:

- is a single self-contained file of an accepted type (``.nii.gz .nii .nrrd .mha .png
  .jpg .jpeg .tif .tiff .bmp .dcm``, or DICOM by its ``DICM`` magic when the name has no
  suffix) whose content is that type (Pillow may open only the format the suffix names),
  or a folder of at most :data:`MAX_FOLDER_FILES` DICOM files, with no symbolic link and
  no special file anywhere;
- names no other file: NRRD ``data file``/``datafile`` (any case, any form), MetaImage
  ``ElementDataFile`` other than ``LOCAL``, ``.nhdr``/``.mhd``/``.hdr``/``.img`` and NIfTI
  pair or Analyze headers are refused, and so is a text header that does not parse as one;
- holds at most ``max_voxels`` voxels (channels included), counting every TIFF page,
  animated PNG frame, DICOM frame and every file of a folder, and for compressed DICOM
  the size each frame's own codec header (JPEG / JPEG-LS SOF, JPEG 2000 / HTJ2K SIZ)
  declares must be the Rows x Columns x SamplesPerPixel of the dataset;
- is not truncated: raw, gzip and zlib voxel data (NIfTI, NRRD, MetaImage) hold what the
  header says, PNG ends its chunk walk with IEND after IDAT, JPEG ends with EOI, TIFF
  strips/tiles and BMP pixel rows lie within the file, native DICOM Pixel Data is as long
  as its frames, encapsulated DICOM holds NumberOfFrames frames each ending with EOI/EOC.

DICOM transfer syntaxes whose decoded size cannot be bounded from headers (deflated
datasets, MPEG/HEVC video, syntaxes not listed here) are refused. Every refusal is a
``ValueError`` whose message names the file by its base name.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from pathlib import Path

#: Default voxel limit: 200 M voxels (a 512 x 512 x 760 CT; 0.8 GB as float32).
DEFAULT_MAX_VOXELS = 200_000_000
#: Most files a DICOM folder may hold.
MAX_FOLDER_FILES = 5000
#: File types accepted (the upload endpoint accepts the same).
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
_DETACHED = (".nhdr", ".mhd", ".hdr", ".img", ".hdr.gz", ".img.gz", ".raw", ".raw.gz")
_SINGLE_FILE = "send a single-file image (.nrrd with attached data, .mha, .nii.gz)"
_HEAD = 65536  # bytes of a text header, or of a codec frame's start, read at most
_MAX_PARTS = 100_000  # PNG chunks or DICOM fragments walked at most
_MAX_PAGES = 10_000  # TIFF pages read at most (Pillow reads 5-10 k IFDs a second)
_MAX_HEADER_READS = 150_000  # reads pydicom may make in one DICOM header (3 an element or item: < 1 s)
_MAX_FOLDER_READS = 3_000_000  # ... in all the files of a folder (a CT slice makes 100-600)

_NRRD_TYPES = {
    "signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1,
    "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16": 2, "int16_t": 2,
    "ushort": 2, "unsigned short": 2, "unsigned short int": 2, "uint16": 2, "uint16_t": 2,
    "int": 4, "signed int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4, "uint32_t": 4,
    "longlong": 8, "long long": 8, "long long int": 8, "signed long long": 8, "signed long long int": 8, "int64": 8,
    "int64_t": 8, "ulonglong": 8, "unsigned long long": 8, "unsigned long long int": 8, "uint64": 8, "uint64_t": 8,
    "float": 4, "double": 8,
}  # fmt: skip
_META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}  # fmt: skip
#: MetaImage fields read here; MetaIO matches names case-sensitively, so a case variant is refused.
_META_FIELDS = ("ObjectType", "NDims", "DimSize", "ElementType", "ElementNumberOfChannels", "CompressedData", "HeaderSize", "ElementDataFile")

_DICOM_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_DICOM_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
               "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}  # fmt: skip  (JPEG, lossless, JPEG-LS)
_DICOM_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
              "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}  # fmt: skip  (JPEG 2000, HTJ2K)
_DICOM_RLE = "1.2.840.10008.1.2.5"
_DICOM_DEFLATED = "1.2.840.10008.1.2.1.99"
_DICOM_VIDEO = {f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)}  # MPEG-2, MPEG-4, HEVC
#: JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15), DHP and JPEG-LS SOF55: all hold P, Y, X, Nf.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE, 0xF7}


class _Refused(ValueError):
    """A defect found here, with its message for the user."""


def _refuse(path: Path, message: str) -> None:
    raise _Refused(f"{path.name} {message}")


def _within_limit(path: Path, shape: tuple[int, ...], max_voxels: int) -> int:
    """The voxels of ``shape`` (exact integers: hostile sizes do not wrap around), refused
    when a size is not positive or the product is over ``max_voxels``."""
    if not shape or any(size <= 0 for size in shape):
        _refuse(path, f"declares an image of shape {shape}: every size must be positive")
    voxels = math.prod(shape)
    if voxels > max_voxels:
        _refuse(path, f"declares {' x '.join(map(str, shape))} = {voxels:,} voxels, over the limit of {max_voxels:,}")
    return voxels


def _stacked(parts: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape of ``parts`` (pages, frames, files) stacked: ``part`` alone, else
    ``(count, *largest sizes)``."""
    if len(parts) == 1:
        return parts[0]
    return (len(parts), *(max(sizes) for sizes in zip(*parts)))


def _compressed_holds(path: Path, offset: int, expected: int) -> bool:
    """Whether the gzip or zlib stream from ``offset`` holds at least ``expected`` bytes:
    the gzip trailer's size field first (exact, modulo 2^32), else by streaming without
    keeping the output (zlib, multi-member gzip). Stops after ``expected`` bytes."""
    with open(path, "rb") as stream:
        stream.seek(offset)
        magic = stream.read(2)
        if magic == b"\x1f\x8b":
            stream.seek(-4, 2)
            if int.from_bytes(stream.read(4), "little") == expected % 2**32:
                return True
        elif len(magic) < 2 or (magic[0] & 0x0F) != 8:  # not zlib either
            return False
        stream.seek(offset)
        decompressor, total = zlib.decompressobj(32 + zlib.MAX_WBITS), 0  # gzip or zlib header
        try:
            while total < expected:
                chunk = stream.read(1 << 20)
                if not chunk:
                    return False
                total += len(decompressor.decompress(chunk, expected - total + 1))
                while decompressor.unconsumed_tail and total < expected:
                    total += len(decompressor.decompress(decompressor.unconsumed_tail, expected - total + 1))
                if decompressor.eof and decompressor.unused_data:  # next gzip member
                    rest = decompressor.unused_data
                    decompressor = zlib.decompressobj(32 + zlib.MAX_WBITS)
                    total += len(decompressor.decompress(rest, expected - total + 1))
        except zlib.error:
            return False
        return total >= expected


def _voxel_data_present(path: Path, offset: int, expected: int, compressed: bool) -> None:
    """Refuse ``path`` when its voxel data from ``offset`` is shorter than ``expected``
    bytes (raw), or its gzip/zlib stream does not hold that many."""
    if compressed:
        if not _compressed_holds(path, offset, expected):
            _refuse(path, f"is truncated or corrupt: its compressed data does not hold the {expected:,} bytes its header says")
    elif path.stat().st_size - offset < expected:
        _refuse(path, f"is truncated: {max(path.stat().st_size - offset, 0):,} bytes of voxel data, its header says {expected:,}")


# ---------------------------------------------------------------------------------- NIfTI


def _check_nifti(path: Path, max_voxels: int) -> tuple[int, ...]:
    """NIfTI-1/2 single file (``n+1``/``n+2`` magic: a ``ni1``/``ni2`` pair header or an
    Analyze header would name a ``.img``), real voxels, voxel offset past the header, at
    most ``max_voxels``, raw or gzip data as long as the header says."""
    import nibabel as nib

    compressed = path.name.lower().endswith(".gz")
    with (gzip.open if compressed else open)(path, "rb") as stream:
        head = stream.read(548)
    if head[344:348] == b"n+1\x00":
        header_size = 352
    elif head[4:8] == b"n+2\x00":
        header_size = 544
    else:
        _refuse(path, f"is not a single-file NIfTI (a .hdr/.img pair or Analyze header names another file): {_SINGLE_FILE}")
    image = (nib.Nifti1Image if header_size == 352 else nib.Nifti2Image).from_filename(str(path))  # the header only
    dtype = image.header.get_data_dtype()
    if dtype.kind == "c":
        _refuse(path, "has complex voxels, which are not supported: save the magnitude (or the real part) as a real image")
    shape = tuple(int(s) for s in image.header.get_data_shape())
    voxels = _within_limit(path, shape, max_voxels)
    offset = int(image.dataobj.offset)
    if offset < header_size:
        _refuse(path, f"puts its voxels at byte {offset}, inside its {header_size}-byte header")
    _voxel_data_present(path, 0, offset + voxels * dtype.itemsize, compressed)
    return shape


# ----------------------------------------------------------------------------------- NRRD


def _nrrd_fields(path: Path) -> tuple[dict[str, str], int]:
    """The fields of an NRRD header (names lower-cased, as teem matches them) and the
    byte where the attached data starts (after the blank line). Refuses a first line other
    than ``NRRD000x``, a line that is neither a field, a ``key:=value`` nor a comment, a
    repeated field, a NUL byte, no blank line within 64 KB, and any line whose name is, ignoring case,
    spaces, ``_`` and ``-``, ``data file`` (teem reads ``data file``/``datafile`` in any
    case: the data would come from another file)."""
    with open(path, "rb") as stream:
        head = stream.read(_HEAD)
    lines = head.split(b"\n")
    if not re.fullmatch(rb"NRRD000\d", lines[0].rstrip(b"\r")):
        _refuse(path, "is not an NRRD file: its first line is not NRRD000x")
    fields, offset = {}, len(lines[0]) + 1
    for line in lines[1:-1]:  # the last piece has no newline: not a whole line
        offset += len(line) + 1
        text = line.rstrip(b"\r").decode("latin-1")
        if not text:
            return fields, offset
        if "\x00" in text:  # C readers end the line there: they would read another line than this one
            _refuse(path, "has a NUL byte in its header")
        if text.startswith("#"):
            continue
        if re.sub(r"[\s_\-]", "", text.split(":", 1)[0]).lower() == "datafile":
            _refuse(path, f"names another file for its voxel data ({text.split(':', 1)[0].strip()!r}): {_SINGLE_FILE}")
        key_value = text.find(":=")
        field = text.find(": ")
        if key_value >= 0 and (field < 0 or key_value < field):
            continue  # key:=value, free text
        if field < 0:
            _refuse(path, f"has a header line that is not an NRRD field: {text[:60]!r}")
        name, value = text[:field].strip().lower(), text[field + 2 :].strip()
        if name in fields:
            _refuse(path, f"repeats the NRRD field {name!r}")
        fields[name] = value
    _refuse(path, "has no end of header (a blank line) within its first 64 KB: an NRRD file must hold its data after the header")


def _check_nrrd(path: Path, max_voxels: int) -> tuple[int, ...]:
    """NRRD with attached data: a parsable header naming no other file, a known type,
    ``dimension`` sizes, raw or gzip encoding, data as long as the header says."""
    fields, offset = _nrrd_fields(path)
    missing = [name for name in ("type", "dimension", "sizes", "encoding") if name not in fields]
    if missing:
        _refuse(path, f"lacks the NRRD field(s) {', '.join(missing)}")
    size = _NRRD_TYPES.get(fields["type"].lower())
    if size is None:
        _refuse(path, f"has the NRRD type {fields['type']!r}, which is not supported")
    shape = tuple(int(s) for s in fields["sizes"].split())
    if int(fields["dimension"]) != len(shape):
        _refuse(path, f"says dimension {fields['dimension']} but lists {len(shape)} sizes")
    encoding = fields["encoding"].lower()
    if encoding not in ("raw", "gzip", "gz"):
        _refuse(path, f"has the NRRD encoding {encoding!r}: save it raw or gzip")
    voxels = _within_limit(path, shape, max_voxels)
    skip = max(int(fields.get("byte skip", fields.get("byteskip", "0"))), 0)  # teem skips it in the decoded stream
    _voxel_data_present(path, offset + skip * (encoding == "raw"), voxels * size + skip * (encoding != "raw"), encoding != "raw")
    return shape


# ------------------------------------------------------------------------------ MetaImage


def _meta_fields(path: Path) -> tuple[dict[str, str], int]:
    """The fields of a MetaImage header up to its ``ElementDataFile`` line (where MetaIO
    stops) and the byte after it. Refuses an ``ElementDataFile`` (in any case, the first
    or any before it) other than ``LOCAL``/``Local``/``local`` (MetaIO reads any other
    value, ``LIST`` included, as other files), a line without ``=``/``:`` or with a NUL, a case variant
    or repetition of a field read here, and no ``ElementDataFile`` within 64 KB."""
    with open(path, "rb") as stream:
        head = stream.read(_HEAD)
    fields, offset = {}, 0
    for line in head.split(b"\n")[:-1]:
        offset += len(line) + 1
        text = line.decode("latin-1").strip()
        if not text:
            continue
        if "\x00" in text:  # MetaIO compares names as C strings: "ElementDataFile\0x" is ElementDataFile
            _refuse(path, "has a NUL byte in its header")
        match = re.match(r"([^=:]*?)\s*[=:]\s*(.*)$", text)
        if match is None:
            _refuse(path, f"has a header line that is not a MetaImage field: {text[:60]!r}")
        name, value = match.groups()
        if name.lower() == "elementdatafile" and value not in ("LOCAL", "Local", "local"):
            _refuse(path, f"names another file for its voxel data ({name} is not LOCAL): {_SINGLE_FILE}")
        known = next((field for field in _META_FIELDS if field.lower() == name.lower()), None)
        if known and (name != known or name in fields):
            _refuse(path, f"has the MetaImage field {name!r} {'twice' if name in fields else f'spelt differently from {known!r}'}")
        fields[name] = value
        if name == "ElementDataFile":
            return fields, offset
    _refuse(path, "has no 'ElementDataFile = LOCAL' line within its first 64 KB: it is not a single-file MetaImage (.mha)")


def _check_metaimage(path: Path, max_voxels: int) -> tuple[int, ...]:
    """Single-file MetaImage (``.mha``): ``ObjectType = Image``, ``NDims`` sizes in
    ``DimSize``, a known ``ElementType``, local data, raw or zlib data as long as the
    header says (``HeaderSize`` skipped)."""
    fields, offset = _meta_fields(path)
    if fields.get("ObjectType", "").lower() != "image" or "DimSize" not in fields:
        _refuse(path, "is not a MetaImage image: its header needs 'ObjectType = Image' and 'DimSize'")
    shape = tuple(int(s) for s in fields["DimSize"].split())
    if int(fields.get("NDims", len(shape))) != len(shape):
        _refuse(path, f"says NDims = {fields['NDims']} but DimSize lists {len(shape)} sizes")
    size = _META_TYPES.get(fields.get("ElementType", ""))
    if size is None:
        _refuse(path, f"has the ElementType {fields.get('ElementType', '(none)')!r}, which is not supported")
    channels = int(fields.get("ElementNumberOfChannels", "1"))
    shape += (channels,) if channels != 1 else ()
    voxels = _within_limit(path, shape, max_voxels)
    offset += max(int(fields.get("HeaderSize", "0")), 0)
    _voxel_data_present(path, offset, voxels * size, fields.get("CompressedData", "false").lower() == "true")
    return shape


# ------------------------------------------------------------------------------- pictures

#: Pillow format(s) each picture suffix must hold (Pillow opens by content).
_PICTURE_FORMATS = {".png": ["PNG"], ".jpg": ["JPEG"], ".jpeg": ["JPEG"], ".tif": ["TIFF"], ".tiff": ["TIFF"], ".bmp": ["BMP"]}


def _png_complete(path: Path) -> None:
    """Walk the PNG chunks (hand-parsed: Pillow reads them only while decoding): IHDR
    first, at least one IDAT, every chunk within the file, ending with IEND."""
    size, seen = path.stat().st_size, set()
    with open(path, "rb") as stream:
        stream.seek(8)
        for _ in range(_MAX_PARTS):
            head = stream.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if not seen and kind != b"IHDR":
                _refuse(path, "is not a valid PNG: its first chunk is not IHDR")
            seen.add(kind)
            if kind == b"IEND":
                if b"IDAT" not in seen:
                    _refuse(path, "holds no image data (no IDAT chunk)")
                return
            if stream.tell() + length + 4 > size:
                break
            stream.seek(length + 4, 1)  # data and CRC
        else:
            _refuse(path, f"has more than {_MAX_PARTS:,} chunks")
    _refuse(path, "is truncated: its chunks do not end with IEND")


def _jpeg_complete(path: Path) -> None:
    """A JPEG file ends with its EOI marker (FF D9), trailing zero padding allowed."""
    with open(path, "rb") as stream:
        stream.seek(max(path.stat().st_size - _HEAD, 0))
        tail = stream.read().rstrip(b"\x00")
    if not tail.endswith(b"\xff\xd9"):
        _refuse(path, "is truncated: it does not end with the JPEG end-of-image marker")


def _bmp_complete(path: Path, picture) -> None:
    """The BMP file holds its pixel rows: offset + stride x rows (uncompressed, from
    Pillow's tile), or offset + the header's image size (RLE, hand-read at byte 34)."""
    tile = picture.tile[0]
    if tile[0] == "raw":
        need = tile[2] + tile[3][1] * picture.height
    else:
        with open(path, "rb") as stream:
            stream.seek(34)
            image_size = int.from_bytes(stream.read(4), "little")
        if not image_size:
            _refuse(path, "is a compressed BMP without the size of its pixel data")
        need = tile[2] + image_size
    if path.stat().st_size < need:
        _refuse(path, f"is truncated: {path.stat().st_size:,} bytes, its header says {need:,}")


def _tiff_page_complete(path: Path, picture, page: int) -> None:
    """Every strip (tags 273/279) or tile (324/325) of the current TIFF page lies within
    the file, and there are as many as the page needs."""
    tags, size = picture.tag_v2, path.stat().st_size
    planes = picture.tag_v2.get(277, 1) if tags.get(284, 1) == 2 else 1
    if 324 in tags:
        offsets, counts = tags.get(324), tags.get(325)
        tile_width, tile_length = tags.get(322, 0), tags.get(323, 0)
        needed = -(-picture.width // max(tile_width, 1)) * -(-picture.height // max(tile_length, 1)) * planes
    else:
        offsets, counts = tags.get(273), tags.get(279)
        needed = -(-picture.height // max(min(tags.get(278, picture.height), picture.height), 1)) * planes
    offsets, counts = [values if isinstance(values, tuple) else (values,) for values in (offsets or (), counts or ())]
    if len(offsets) != len(counts) or len(offsets) < needed:
        _refuse(path, f"is truncated or corrupt: page {page + 1} lists {len(offsets)} strips/tiles, it needs {needed}")
    if any(offset + count > size for offset, count in zip(offsets, counts)):
        _refuse(path, f"is truncated: page {page + 1} has pixel data past the end of the file")


def _tiff_pages(path: Path, picture, max_voxels: int) -> tuple[int, ...]:
    """Every page of a TIFF (at most :data:`_MAX_PAGES`) complete, all of them together
    within ``max_voxels``; their stacked shape."""
    pages, total = [], 0
    for page in range(_MAX_PAGES + 1):
        if page:
            try:
                picture.seek(page)
            except EOFError:
                return _stacked(pages)
        if page == _MAX_PAGES:
            break
        pages.append((picture.height, picture.width, len(picture.getbands())))
        total += _within_limit(path, pages[-1], max_voxels)
        if total > max_voxels:
            _refuse(path, f"holds {len(pages)}+ pages of {total:,} voxels, over the limit of {max_voxels:,}")
        _tiff_page_complete(path, picture, page)
    _refuse(path, f"has more than {_MAX_PAGES:,} pages")


def _check_picture(path: Path, max_voxels: int) -> tuple[int, ...]:
    """PNG, JPEG, TIFF or BMP (Pillow reads the header; the content must be the format
    the suffix names): every frame (APNG, MPO) or page (TIFF) counted against
    ``max_voxels``, and the file complete (see the ``_*_complete`` checks)."""
    from PIL import Image as PILImage

    formats = _PICTURE_FORMATS[next(s for s in _PICTURE_FORMATS if path.name.lower().endswith(s))]
    try:
        with PILImage.open(path, formats=formats) as picture:
            if picture.format == "TIFF":
                return _tiff_pages(path, picture, max_voxels)
            frames = int(getattr(picture, "n_frames", 1))
            shape = (frames,) * (frames != 1) + (picture.height, picture.width, len(picture.getbands()))
            _within_limit(path, shape, max_voxels)
            if picture.format == "PNG":
                _png_complete(path)
            elif picture.format in ("JPEG", "MPO"):
                _jpeg_complete(path)
            else:
                _bmp_complete(path, picture)
            return shape
    except PILImage.DecompressionBombError as error:  # Pillow's own limit (2 x 89 M pixels)
        _refuse(path, f"is over the limit of pixels Pillow decodes: {error}")
    except PILImage.UnidentifiedImageError:
        _refuse(path, f"is not a {formats[0]} file, as its name says")


# ---------------------------------------------------------------------------------- DICOM


def _is_dicom(path: Path) -> bool:
    """Whether ``path`` starts with the 128-byte DICOM preamble and ``DICM``."""
    with open(path, "rb") as stream:
        return stream.read(132)[128:] == b"DICM"


def _codec_size(frame: bytes, syntax: str) -> tuple[int, int, int] | None:
    """``(rows, columns, components)`` from the start of a compressed frame: the first
    JPEG / JPEG-LS SOF segment, or the JPEG 2000 / HTJ2K SIZ segment that must follow SOC
    (``Ysiz - YOsiz, Xsiz - XOsiz, Csiz``). Hand-parsed: the decoders' Python bindings
    decode the whole frame to tell its size. ``None`` when not found in ``frame``."""
    if syntax in _DICOM_J2K:
        if frame[:4] != b"\xff\x4f\xff\x51" or len(frame) < 42:
            return None
        x, y, x0, y0 = struct.unpack(">4I", frame[8:24])
        return y - y0, x - x0, struct.unpack(">H", frame[40:42])[0]
    if frame[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(frame) and frame[at] == 0xFF:
        marker = frame[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker in _JPEG_SOF:
            return (*struct.unpack(">HH", frame[at + 5 : at + 9]), frame[at + 9]) if at + 10 <= len(frame) else None
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            at += 2
        elif marker in (0xD8, 0xD9, 0xDA):  # image start/end or scan before any frame header
            return None
        else:
            at += 2 + struct.unpack(">H", frame[at + 2 : at + 4])[0]
    return None


def _fragments(path: Path, stream, start: int) -> tuple[list[int], list[tuple[int, int, int]]]:
    """The Basic Offset Table (read with pydicom's ``get_frame_offsets``) and each fragment
    ``(offset from the first fragment's item, data position, length)`` of encapsulated
    Pixel Data starting at ``start``, walking item headers only (pydicom's fragment
    generator reads every fragment whole). Refuses items past the end of the file and a
    missing sequence delimiter (truncated)."""
    from pydicom.encaps import get_frame_offsets
    from pydicom.filebase import DicomFileLike

    size = path.stat().st_size
    stream.seek(start)
    fp = DicomFileLike(stream)
    fp.is_little_endian = True
    has_table, offsets = get_frame_offsets(fp)
    first, fragments = stream.tell(), []
    for _ in range(_MAX_PARTS):
        head = stream.read(8)
        if len(head) < 8:
            _refuse(path, "is truncated: its compressed Pixel Data ends before its sequence delimiter")
        group, element, length = struct.unpack("<HHI", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            return (offsets if has_table else []), fragments
        if (group, element) != (0xFFFE, 0xE000) or stream.tell() + length > size:
            _refuse(path, "is truncated or corrupt: a compressed Pixel Data fragment runs past the end of the file")
        fragments.append((stream.tell() - 8 - first, stream.tell(), length))
        stream.seek(length, 1)
    _refuse(path, f"has more than {_MAX_PARTS:,} Pixel Data fragments")


def _dicom_frames(path: Path, stream, start: int, frames: int) -> list[list[tuple[int, int, int]]]:
    """The fragments of each frame: by the Basic Offset Table when there is one, else one
    fragment per frame when the counts match, else a new frame at each fragment that
    starts a codestream (SOI / SOC), as decoders split them. Refuses fewer frames than
    ``frames`` (truncated) and a table that does not point at fragments."""
    table, fragments = _fragments(path, stream, start)
    if table:
        index = {fragment[0]: i for i, fragment in enumerate(fragments)}
        if len(table) != frames or any(offset not in index for offset in table):
            _refuse(path, f"has a Basic Offset Table of {len(table)} frames that does not match its {frames} frames and fragments")
        firsts = [index[offset] for offset in table]
    elif frames == 1 or len(fragments) == frames:
        firsts = list(range(min(frames, len(fragments))))
    else:
        starts = []
        for i, (_, position, _) in enumerate(fragments):
            stream.seek(position)
            if stream.read(2) in (b"\xff\xd8", b"\xff\x4f"):
                starts.append(i)
        firsts = starts
    if len(firsts) < frames:
        _refuse(path, f"is truncated: its compressed Pixel Data holds {len(firsts)} frame(s), NumberOfFrames says {frames}")
    if firsts != sorted(set(firsts)):
        _refuse(path, "has a Basic Offset Table whose frames are not in order")
    return [fragments[a:b] for a, b in zip(firsts, firsts[1:] + [len(fragments)])]


def _frame_bytes(stream, parts: list[tuple[int, int, int]], limit: int = _HEAD) -> bytes:
    """The first ``limit`` bytes of a frame, across its fragments."""
    data = bytearray()
    for _, position, length in parts:
        stream.seek(position)
        data += stream.read(min(length, limit - len(data)))
        if len(data) >= limit:
            break
    return bytes(data)


def _check_encapsulated(path: Path, stream, start: int, syntax: str, frames: int, expected: tuple[int, int, int], bits: int) -> None:
    """Every frame of encapsulated Pixel Data: RLE with a header of one segment per sample
    byte (``samples x bits / 8``; the decoded size is then Rows x Columns); JPEG family
    and JPEG 2000 with a codec header declaring ``expected`` ``(rows, columns, samples)``
    and ending with EOI/EOC (FF D9, zero padding allowed)."""
    for number, parts in enumerate(_dicom_frames(path, stream, start, frames), 1):
        head = _frame_bytes(stream, parts)
        if syntax == _DICOM_RLE:
            segments = struct.unpack("<I", head[:4])[0] if len(head) >= 64 else 0
            if segments != expected[2] * (bits // 8) or not 1 <= segments <= 15:
                _refuse(path, f"has an RLE frame {number} of {segments} segments, its header says {expected[2] * (bits // 8)}")
            continue
        size = _codec_size(head, syntax)
        if size is None:
            _refuse(path, f"has a compressed frame {number} whose size cannot be read from its codec header")
        if size != expected:
            _refuse(path, f"has a compressed frame {number} of {size[0]} x {size[1]} x {size[2]}, its header says {expected[0]} x {expected[1]} x {expected[2]}")
        _, position, length = parts[-1]
        stream.seek(position + max(length - 16, 0))
        if not stream.read(min(length, 16)).rstrip(b"\x00").endswith(b"\xff\xd9"):
            _refuse(path, f"is truncated: compressed frame {number} does not end with its end-of-image marker")


class _CountedFile:
    """``stream`` whose reads draw on ``budget`` (a one-item list, shared by a folder's
    files): pydicom parses every sequence item before the Pixel Data, and a file of
    millions of empty items (8 bytes each) costs it minutes and gigabytes."""

    def __init__(self, stream, path: Path, budget: list[int]):
        self.stream, self.path, self.budget, self.name = stream, path, budget, stream.name

    def read(self, size: int = -1) -> bytes:
        self.budget[0] -= 1
        if self.budget[0] < 0:
            _refuse(self.path, "has too many data elements before its Pixel Data to be checked (a sequence of millions of items?)")
        return self.stream.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()


def _dicom_syntax(path: Path, stream) -> str:
    """The transfer syntax from the file meta (group 0002 alone: pydicom inflates a
    deflated dataset whole as soon as it reads past it), refusing DICOMDIR (it names other
    files), deflated (its size is unknown without inflating), video and unknown syntaxes."""
    from pydicom.filereader import _read_file_meta_info, read_preamble  # the meta alone, on our stream

    read_preamble(stream, False)
    meta = _read_file_meta_info(stream)
    stream.seek(0)
    if meta.get("MediaStorageSOPClassUID") == "1.2.840.10008.1.3.10":
        _refuse(path, "is a DICOMDIR, which names other files: send the image files only")
    syntax = str(meta.get("TransferSyntaxUID", ""))
    if syntax == _DICOM_DEFLATED:
        _refuse(path, "is a deflated DICOM file, whose size cannot be known without inflating it: send it uncompressed or JPEG / JPEG 2000 / RLE compressed")
    if syntax in _DICOM_VIDEO:
        _refuse(path, "holds video (MPEG / HEVC), which is not supported")
    if syntax not in _DICOM_NATIVE | _DICOM_JPEG | _DICOM_J2K | {_DICOM_RLE}:
        _refuse(path, f"has the transfer syntax {syntax or '(none)'!r}, whose decoded size cannot be checked: send it uncompressed or JPEG / JPEG 2000 / RLE compressed")
    return syntax


def _check_dicom(path: Path, max_voxels: int, budget: list[int] | None = None) -> tuple[int, ...]:
    """One DICOM file: DICM magic, a transfer syntax whose decoded size is bounded by the
    headers (see :func:`_dicom_syntax`), the attributes read by pydicom up to the Pixel
    Data (``read_partial`` as ``dcmread(stop_before_pixels=True)`` does, large values
    deferred, at most :data:`_MAX_HEADER_READS` reads), ``NumberOfFrames x Rows x
    Columns x SamplesPerPixel`` within ``max_voxels``, and the Pixel Data complete (native:
    its length in the file covers every frame; encapsulated: :func:`_check_encapsulated`)."""
    from pydicom.filereader import read_partial

    if not _is_dicom(path):
        _refuse(path, "is not a DICOM file (no DICM after the 128-byte preamble)")
    with open(path, "rb") as stream:
        counted, pixels = _CountedFile(stream, path, budget or [_MAX_HEADER_READS]), {}
        syntax = _dicom_syntax(path, counted)

        def at_pixel_data(tag, vr, length) -> bool:
            if tag in (0x7FE00008, 0x7FE00009, 0x7FE00010):
                pixels.update(tag=int(tag), length=length, start=stream.tell())
                return True
            return False

        dataset = read_partial(counted, stop_when=at_pixel_data, defer_size=_HEAD)
        if pixels.get("tag") != 0x7FE00010:
            _refuse(path, "has no (integer) Pixel Data")
        missing = [name for name in ("Rows", "Columns", "BitsAllocated") if dataset.get(name) is None]
        if missing:
            _refuse(path, f"lacks {', '.join(missing)}")
        bits = int(dataset.BitsAllocated)
        if bits not in (1, 8, 16, 32, 64):
            _refuse(path, f"has BitsAllocated {bits}, which is not supported")
        frames = int(dataset.get("NumberOfFrames") or 1)
        samples = int(dataset.get("SamplesPerPixel") or 1)
        shape = (frames, int(dataset.Rows), int(dataset.Columns), samples)
        voxels = _within_limit(path, shape, max_voxels)
        if syntax in _DICOM_NATIVE:
            if dataset.get("PhotometricInterpretation") == "YBR_FULL_422":
                voxels = voxels // samples * 2  # two samples a pixel: Y Y Cb Cr for two pixels
            need = (voxels * bits + 7) // 8
            held = min(pixels["length"], path.stat().st_size - pixels["start"])
            if pixels["length"] == 0xFFFFFFFF or held < need:
                _refuse(path, f"is truncated: {max(held, 0):,} bytes of Pixel Data, its {frames} frame(s) need {need:,}")
        else:
            if pixels["length"] != 0xFFFFFFFF:
                _refuse(path, "has native Pixel Data although its transfer syntax is compressed")
            _check_encapsulated(path, stream, pixels["start"], syntax, frames, shape[1:], bits)
    return shape


def _check_folder(folder: Path, max_voxels: int) -> tuple[int, ...]:
    """A folder of DICOM files (a MONAI Label session): at most :data:`MAX_FOLDER_FILES`
    regular files (sub-folders walked, symbolic links and special files refused), each a
    DICOM file passing :func:`_check_dicom`, all together within ``max_voxels``."""
    files, pending, folders = [], [folder], 0
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                inside = Path(entry.path).relative_to(folder)
                if entry.is_symlink():
                    _refuse(folder, f"holds a symbolic link ({inside}): send the files themselves")
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                    folders += 1
                elif entry.is_file(follow_symlinks=False):
                    files.append(Path(entry.path))
                else:
                    _refuse(folder, f"holds {inside}, which is not a regular file")
                if max(len(files), folders) > MAX_FOLDER_FILES:
                    _refuse(folder, f"holds more than {MAX_FOLDER_FILES:,} files (or folders)")
    if not files:
        _refuse(folder, "is an empty folder")
    shapes, total, budget = [], 0, [_MAX_FOLDER_READS]
    for file in sorted(files):
        if not _is_dicom(file):
            _refuse(folder, f"holds {file.relative_to(folder)}, which is not a DICOM file: a folder may hold DICOM files only")
        try:
            shapes.append(_check_dicom(file, max_voxels, budget))
        except _Refused as error:
            raise _Refused(f"in the folder {folder.name}: {error}") from None
        total += math.prod(shapes[-1])
        if total > max_voxels:
            _refuse(folder, f"holds {total:,}+ voxels in its first {len(shapes)} files, over the limit of {max_voxels:,}")
    return (sum(shape[0] for shape in shapes), *(max(sizes) for sizes in list(zip(*shapes))[1:]))


# ------------------------------------------------------------------------------- dispatch

_CHECKS = {".nii.gz": _check_nifti, ".nii": _check_nifti, ".nrrd": _check_nrrd, ".mha": _check_metaimage, ".dcm": _check_dicom,
           **{suffix: _check_picture for suffix in _PICTURE_FORMATS}}  # fmt: skip


def _check(path: Path, max_voxels: int) -> tuple[int, ...]:
    """Symbolic links, special files and detached-header suffixes refused; a folder, or a
    file checked by its suffix (no suffix, or a UID-like numeric one: DICOM by its magic)."""
    if path.is_symlink():
        _refuse(path, "is a symbolic link: send the file itself")
    if path.is_dir():
        return _check_folder(path, max_voxels)
    if not path.exists():
        _refuse(path, "does not exist")
    if not path.is_file():
        _refuse(path, "is not a regular file")
    name = path.name.lower()
    if name.endswith(_DETACHED):
        _refuse(path, f"names another file for its voxel data (a detached header): {_SINGLE_FILE}")
    suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        if ("." in name and not name.rsplit(".", 1)[1].isdigit()) or not _is_dicom(path):  # UID-named DICOM files end in digits
            _refuse(path, f"has an unsupported file type; send one of {', '.join(SUFFIXES)}, a DICOM file or a folder of DICOM files")
        suffix = ".dcm"
    return _CHECKS[suffix](path, max_voxels)


def _public(text: str, path: Path) -> str:
    """``text`` without the folders of ``path`` (readers' messages name files in full)."""
    for full in sorted({str(path), str(path.absolute()), str(path.resolve())}, key=len, reverse=True):
        text = text.replace(full, path.name)
    return text.replace(str(path.absolute().parent) + os.sep, "")


def check_image_file(path: str | Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[int, ...]:
    """Refuse an image file or DICOM folder before any reader decodes it: another file
    named, an unsupported or mislabelled type, more than ``max_voxels`` voxels (channels,
    pages, frames and a folder's files included), or truncated voxel data (see the module
    docstring for each format). Reads headers only, in milliseconds.

    Returns:
        the shape the headers declare: NIfTI/NRRD/MetaImage sizes (channels last when
        more than one), ``(height, width, bands)`` for a picture (``(pages or frames, ...)``
        when more than one), ``(frames, rows, columns, samples)`` for DICOM, and for a
        folder ``(slices, rows, columns, samples)`` (largest sizes when they differ).

    Raises:
        ValueError: with a message for the user naming the file by its base name.
    """
    path = Path(path)
    try:
        return _check(path, max_voxels)
    except _Refused:
        raise
    except OSError as error:
        raise ValueError(f"cannot read {path.name}: {error.strerror or _public(str(error), path) or type(error).__name__}") from error
    except Exception as error:  # readers raise many types (nibabel, PIL, pydicom, struct, int()): one clear message
        raise ValueError(f"cannot read the header of {path.name}: {_public(str(error), path) or type(error).__name__}") from error


def spatial_dims(path: str | Path) -> int:
    """2 or 3: the spatial axes the image file or DICOM folder at ``path`` declares, from
    its headers (:func:`check_image_file`): a picture 2; DICOM 2 for a single frame or
    slice; NIfTI, NRRD, MetaImage 3 when its first three sizes all exceed 1.

    Raises:
        ValueError: the file is refused (see :func:`check_image_file`).
    """
    path = Path(path)
    shape = check_image_file(path)
    if any(path.name.lower().endswith(suffix) for suffix in _PICTURE_FORMATS):
        return 2
    if path.is_dir() or not any(path.name.lower().endswith(suffix) for suffix in SUFFIXES) or path.name.lower().endswith(".dcm"):
        return 2 if shape[0] == 1 else 3  # (frames or slices, rows, columns, samples)
    return 3 if len(shape) >= 3 and all(size > 1 for size in shape[:3]) else 2
