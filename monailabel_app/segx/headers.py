"""What an image file holds, read from its header before any voxel is decoded.

A 250 KB gzip can hold a 640^3 volume: decoding it first and refusing it afterwards cost
26-29 s of CPU and 4-6 GB of memory. A truncated ``.nii.gz`` was read by MONAI's ITK
fallback with half its voxels zero. :func:`check_image_file` reads only headers (NIfTI,
NRRD, MetaImage, PNG/JPEG/TIFF, DICOM) and the gzip trailer, refuses more than
``max_voxels`` voxels, and refuses files whose voxel data is shorter than the header
says, in milliseconds.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np

#: Default voxel limit: 200 M voxels (a 512 x 512 x 760 CT; 0.8 GB as float32).
DEFAULT_MAX_VOXELS = 200_000_000

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
               "MET_LONG": 8, "MET_ULONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}  # fmt: skip


class _OverLimit(ValueError):
    """An image over a decoder's own size limit."""


def _text_header(path: Path, limit: int = 65536) -> tuple[dict, int]:
    """``key: value`` (NRRD) or ``Key = Value`` (MetaImage) lines up to the blank line (NRRD)
    or ``ElementDataFile`` (MetaImage), and the header's length in bytes."""
    with open(path, "rb") as stream:
        head = stream.read(limit)
    fields, offset = {}, 0
    for line in head.split(b"\n"):
        offset += len(line) + 1
        text = line.decode("latin-1").strip()
        if not text and fields:
            break
        separator = ":" if ":" in text and not re.match(r"^\w+\s*=", text) else "="
        if separator in text and not text.startswith("#"):
            key, value = text.split(separator, 1)
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
        if text.lower().startswith("elementdatafile"):
            break
    return fields, offset


def _gzip_payload_ok(path: Path, offset: int, expected: int) -> bool:
    """Whether the gzip stream from ``offset`` holds at least ``expected`` bytes: the
    trailer's size field first (exact, modulo 2^32), else by streaming without keeping
    the output (multi-member streams)."""
    with open(path, "rb") as stream:
        stream.seek(offset)
        if stream.read(2) != b"\x1f\x8b":
            return False
        stream.seek(-4, 2)
        if int.from_bytes(stream.read(4), "little") == expected % 2**32:
            return True
        stream.seek(offset)
        decompressor, total = zlib.decompressobj(16 + zlib.MAX_WBITS), 0
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
                    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    total += len(decompressor.decompress(rest, expected - total + 1))
        except zlib.error:
            return False
        return total >= expected


def _shape_and_data(path: Path) -> tuple[tuple[int, ...], int | None, str, int]:
    """``(shape with channels, bytes of voxel data or None, encoding, data offset)`` from
    the header; encoding is ``raw``, ``gzip`` (of the whole file from the offset) or
    ``other`` (not checked)."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        image = nib.load(str(path))  # the header only; the proxy knows where the voxels start
        if image.header.get_data_dtype().kind == "c":
            raise ValueError("complex voxels are not supported: save the magnitude (or the real part) as a real image")
        shape = tuple(int(s) for s in image.header.get_data_shape())
        data = int(np.prod(shape, dtype=np.int64)) * image.header.get_data_dtype().itemsize + int(image.dataobj.offset)
        return shape, data, "gzip" if name.endswith(".gz") else "raw", 0
    if name.endswith((".nrrd", ".nhdr")):
        fields, offset = _text_header(path)
        shape = tuple(int(s) for s in fields.get("sizes", "").split())
        size = _NRRD_TYPES.get(fields.get("type", "").lower())
        detached = "data file" in fields or "datafile" in fields
        encoding = fields.get("encoding", "raw").lower()
        encoding = "other" if detached or size is None else ("gzip" if encoding in ("gzip", "gz") else "raw" if encoding == "raw" else "other")
        return shape, int(np.prod(shape, dtype=np.int64)) * (size or 1), encoding, offset
    if name.endswith((".mha", ".mhd")):
        fields, offset = _text_header(path)
        shape = tuple(int(s) for s in fields.get("dimsize", "").split())
        channels = int(fields.get("elementnumberofchannels", "1"))
        size = _META_TYPES.get(fields.get("elementtype", "").upper())
        local = fields.get("elementdatafile", "").upper() == "LOCAL"
        compressed = fields.get("compresseddata", "false").lower() == "true"
        encoding = "raw" if local and not compressed and size else "other"
        return shape + ((channels,) if channels > 1 else ()), int(np.prod(shape, dtype=np.int64)) * channels * (size or 1), encoding, offset
    if name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")):
        from PIL import Image as PILImage

        try:
            with PILImage.open(path) as picture:  # reads the header only
                return (picture.height, picture.width, len(picture.getbands())), None, "other", 0
        except PILImage.DecompressionBombError as error:  # PIL's own limit (178 M pixels) is lower than ours
            raise _OverLimit(f"{path.name}: {error}") from None
    if name.endswith(".dcm"):
        import pydicom

        dataset = pydicom.dcmread(str(path), stop_before_pixels=True)
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        return (frames, int(dataset.Rows), int(dataset.Columns), int(getattr(dataset, "SamplesPerPixel", 1))), None, "other", 0
    return (), None, "other", 0


def check_image_file(path: str | Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> tuple[int, ...]:
    """Refuse an image file before decoding it: more than ``max_voxels`` voxels (channels
    included), or voxel data shorter than its header says (truncated). Folders and
    unknown types are left to the readers.

    Returns:
        the shape the header declares (``()`` when not known).

    Raises:
        ValueError: with a message for the user.
    """
    path = Path(path)
    if not path.is_file():
        return ()
    try:
        shape, data, encoding, offset = _shape_and_data(path)
    except _OverLimit as error:
        raise ValueError(f"{error}: over the limit of {max_voxels:,} voxels") from None
    except (OSError, ValueError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"cannot read the header of {path.name}: {error}") from error
    except Exception as error:  # readers raise many types (nibabel, PIL, pydicom): one clear message
        raise ValueError(f"cannot read the header of {path.name}: {type(error).__name__}") from error
    voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if voxels > max_voxels:
        raise ValueError(f"{path.name} declares {' x '.join(map(str, shape))} = {voxels:,} voxels, over the limit of {max_voxels:,}")
    if data is not None and encoding == "raw" and path.stat().st_size - offset < data:
        raise ValueError(f"{path.name} is truncated: {path.stat().st_size - offset:,} bytes of voxel data, its header says {data:,}")
    if data is not None and encoding == "gzip" and not _gzip_payload_ok(path, offset, data):
        raise ValueError(f"{path.name} is truncated or corrupt: its compressed data does not hold the {data:,} bytes its header says")
    return shape
