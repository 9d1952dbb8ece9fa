"""Volume files with numpy and the standard library only: the client uploads the current
volume and reads the server's heatmaps without Slicer's I/O (and is tested without it).

Arrays follow Slicer's ``arrayFromVolume`` convention: ``(K, J, I)`` for scalar volumes,
``(K, J, I, C)`` for vector volumes (e.g. an RGB photograph loaded as a single slice).
Geometry is the 4x4 IJK-to-RAS matrix; NRRD files are written in LPS like Slicer does.
"""

import gzip
import re
import struct
import zlib
from typing import Tuple

import numpy as np

_TYPES = {
    np.dtype("int8"): "int8",
    np.dtype("uint8"): "uint8",
    np.dtype("int16"): "int16",
    np.dtype("uint16"): "uint16",
    np.dtype("int32"): "int32",
    np.dtype("uint32"): "uint32",
    np.dtype("int64"): "int64",
    np.dtype("uint64"): "uint64",
    np.dtype("float32"): "float",
    np.dtype("float64"): "double",
}
_TYPE_ALIASES = {
    "int8": ("signed char", "int8", "int8_t"),
    "uint8": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "int16": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "uint16": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "int32": ("int", "signed int", "int32", "int32_t"),
    "uint32": ("uint", "unsigned int", "uint32", "uint32_t"),
    "int64": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
    "uint64": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "float32": ("float",),
    "float64": ("double",),
}
_DTYPE_OF_NAME = {alias: np.dtype(name) for name, aliases in _TYPE_ALIASES.items() for alias in aliases}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_SPACES_TO_RAS = {
    "left-posterior-superior": _LPS_TO_RAS,
    "lps": _LPS_TO_RAS,
    "right-anterior-superior": np.eye(3),
    "ras": np.eye(3),
    "left-posterior": _LPS_TO_RAS,
    "right-anterior": np.eye(3),
}


class NrrdError(ValueError):
    """The bytes are not a NRRD volume this reader understands."""


def encode_nrrd(array: np.ndarray, ijk_to_ras: np.ndarray, compress: bool = False) -> bytes:
    """NRRD file content for a volume.

    Args:
        array: ``(K, J, I)`` scalars or ``(K, J, I, C)`` vectors, any integer or float dtype.
        ijk_to_ras: 4x4 voxel-index to RAS matrix.
        compress: gzip the data (smaller, slower); raw otherwise.
    """
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise ValueError(f"expected a (K, J, I) or (K, J, I, C) array, got shape {array.shape}")
    if array.dtype not in _TYPES:
        raise ValueError(f"cannot write voxels of type {array.dtype} to NRRD")
    matrix = np.asarray(ijk_to_ras, dtype=float)
    directions = _LPS_TO_RAS @ matrix[:3, :3]  # RAS -> LPS
    origin = _LPS_TO_RAS @ matrix[:3, 3]
    vectors = " ".join("(" + ",".join(repr(float(v)) for v in directions[:, axis]) + ")" for axis in range(3))
    sizes = list(reversed(array.shape[:3]))
    kinds = ["domain"] * 3
    if array.ndim == 4:
        sizes = [array.shape[3]] + sizes
        kinds = ["vector"] + kinds
        vectors = "none " + vectors
    header = [
        "NRRD0004",
        f"type: {_TYPES[array.dtype]}",
        f"dimension: {len(sizes)}",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(s) for s in sizes),
        "space directions: " + vectors,
        "kinds: " + " ".join(kinds),
        "endian: little",
        f"encoding: {'gzip' if compress else 'raw'}",
        "space origin: (" + ",".join(repr(float(v)) for v in origin) + ")",
    ]
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    if compress:
        data = gzip.compress(data, compresslevel=1)
    return ("\n".join(header) + "\n\n").encode("ascii") + data


def encode_png(array: np.ndarray) -> bytes:
    """PNG file content for a single-slice uint8 image ``(1, J, I)``, ``(1, J, I, 3)`` or
    ``(1, J, I, 4)``; row ``j`` of the file is ``J = j``, as image readers index it."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.shape[0] != 1 or array.ndim not in (3, 4):
        raise ValueError(f"PNG needs a uint8 single-slice array, got {array.dtype} {array.shape}")
    pixels = array[0] if array.ndim == 4 else array[0, :, :, None]
    channels = pixels.shape[-1]
    colour_type = {1: 0, 3: 2, 4: 6}.get(channels)
    if colour_type is None:
        raise ValueError(f"PNG needs 1, 3 or 4 channels, got {channels}")
    height, width = pixels.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels.reshape(height, width * channels)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b"")


def encode_volume(array: np.ndarray, ijk_to_ras: np.ndarray) -> Tuple[str, bytes]:
    """The upload for a volume: ``("volume.png", ...)`` for a single-slice uint8 colour
    image (the server's image reader cannot read multi-component NRRD), else
    ``("volume.nrrd", ...)`` with gzip data (fast level 1). The server answers in the uploaded grid either way.

    Returns:
        ``(file name, file content)``.
    """
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1 and array.dtype == np.uint8 and array.shape[3] in (3, 4):
        return "volume.png", encode_png(array)
    if array.ndim == 4:
        raise ValueError(f"cannot upload a multi-component volume of shape {array.shape}; "
                         "only single-slice uint8 RGB/RGBA images (photographs) are supported")
    return "volume.nrrd", encode_nrrd(array, ijk_to_ras, compress=True)


def _vector(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.strip().strip("()").split(",")])


def decode_nrrd(content: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """Read an attached-header NRRD (raw or gzip data, 2D or 3D, scalar or vector).

    Returns:
        ``(array, ijk_to_ras)``: ``(K, J, I)`` (``K = 1`` for a 2D image) or
        ``(K, J, I, C)``, and the 4x4 IJK-to-RAS matrix.

    Raises:
        NrrdError: not NRRD, detached data, or an unsupported type or encoding.
    """
    if not content.startswith(b"NRRD000"):
        raise NrrdError("not a NRRD file (missing the NRRD000x magic)")
    end = content.find(b"\n\n")
    if end < 0:
        raise NrrdError("NRRD header is not terminated by an empty line")
    fields = {}
    for line in content[:end].decode("ascii", errors="replace").splitlines()[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    if "data file" in fields or "datafile" in fields:
        raise NrrdError("detached NRRD data files are not supported")
    dtype = _DTYPE_OF_NAME.get(fields.get("type", "").lower())
    if dtype is None:
        raise NrrdError(f"unsupported NRRD type {fields.get('type')!r}")
    dtype = dtype.newbyteorder("<" if fields.get("endian", "little") == "little" else ">")
    sizes = [int(s) for s in fields["sizes"].split()]
    kinds = fields.get("kinds", " ".join(["domain"] * len(sizes))).split()
    encoding = fields.get("encoding", "raw").lower()
    data = content[end + 2 :]
    if encoding in ("gzip", "gz"):
        data = gzip.decompress(data)
    elif encoding != "raw":
        raise NrrdError(f"unsupported NRRD encoding {encoding!r}")
    count = int(np.prod(sizes))
    if len(data) < count * dtype.itemsize:
        raise NrrdError(f"NRRD data is truncated: {len(data)} bytes for {count} voxels of {dtype}")
    array = np.frombuffer(data, dtype=dtype, count=count).reshape(sizes[::-1]).astype(dtype.newbyteorder("="))

    vector_axis = next((axis for axis, kind in enumerate(kinds) if kind.lower() not in ("domain", "space")), None)
    if vector_axis is not None:
        array = np.moveaxis(array, len(sizes) - 1 - vector_axis, -1)
    spatial = len(sizes) - (vector_axis is not None)
    if spatial == 2:
        array = array[None]
    elif spatial != 3:
        raise NrrdError(f"expected a 2D or 3D image, got {spatial} spatial axes")
    return array, _geometry(fields, spatial)


def _geometry(fields: dict, spatial: int) -> np.ndarray:
    """IJK-to-RAS from ``space directions`` / ``space origin`` (or ``spacings``)."""
    to_ras = _SPACES_TO_RAS.get(fields.get("space", "").lower(), _LPS_TO_RAS)  # no space: ITK's LPS
    columns = np.eye(3)
    origin = np.zeros(3)
    if "space directions" in fields:
        vectors = [_vector(v) for v in re.findall(r"\([^)]*\)", fields["space directions"])]
        for axis, vector in enumerate(vectors[:spatial]):
            columns[: len(vector), axis] = vector
            columns[len(vector) :, axis] = 0.0
    elif "spacings" in fields:
        spacings = [float(s) for s in fields["spacings"].split() if s.lower() != "nan"]
        for axis, spacing in enumerate(spacings[:spatial]):
            columns[:, axis] *= spacing
    if "space origin" in fields:
        vector = _vector(fields["space origin"])
        origin[: len(vector)] = vector
    if spatial == 2:  # the slice axis: unit normal of the image plane
        normal = np.cross(columns[:, 0], columns[:, 1])
        columns[:, 2] = normal / np.linalg.norm(normal) if np.linalg.norm(normal) > 0 else (0, 0, 1)
    matrix = np.eye(4)
    matrix[:3, :3] = to_ras @ columns
    matrix[:3, 3] = to_ras @ origin
    return matrix
