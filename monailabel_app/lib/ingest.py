"""The one way bytes from a client become an image or a label on the server.

Every route of the table that takes a file (``POST /infer``, ``PUT /session/``,
``PUT /datastore/image``, ``PUT /datastore/label``) calls :func:`receive` and stores or
reads only what it returns. The gate (:mod:`lib.security`) has already bounded the raw
body while it streamed; here:

- the file type comes from a fixed list of suffixes (the client's file name is never used
  as a server path: files are renamed);
- archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``) are unpacked only by
  :func:`unpack_archive`: regular files only (no links, devices, absolute or ``..``
  names), at most :data:`MAX_MEMBERS` members and ``max_bytes`` in all, counted while
  inflating (a member's declared size is not trusted), written flat under new names;
- the result is checked by :func:`segx.headers.check_image_file` before anything decodes
  it: voxel limit over every page and frame, headers that name other files, truncated
  data, compressed DICOM frames by their codec headers.

Errors are :class:`Refused` with the HTTP status and a message that names the client's
file, never a server path.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from segx.headers import SUFFIXES as IMAGE_SUFFIXES  # the image types the header checks accept
from segx.headers import check_image_file

#: Archives of a DICOM series (or of one image file).
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
#: Members an archive may hold (a CT series has a few hundred to a few thousand slices).
MAX_MEMBERS = 5000
_CHUNK = 1 << 20


class Refused(ValueError):
    """A client file that is not taken; ``status`` is the HTTP answer (400 or 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def suffix_of(name: str, allowed: tuple[str, ...]) -> str | None:
    """The suffix of ``allowed`` that ``name`` ends with (any case), else None."""
    lowered = name.lower()
    return next((suffix for suffix in allowed if lowered.endswith(suffix)), None)


def _copy_bounded(source, target: Path, budget: int, what: str) -> int:
    """Copy a stream into ``target``; refuse (413) past ``budget`` bytes. Returns the bytes."""
    written = 0
    with open(target, "xb") as stream:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > budget:
                raise Refused(f"{what} holds more than {budget / 2**20:g} MiB", 413)
            stream.write(chunk)
    return written


def _member_name_ok(name: str) -> bool:
    if not name or "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return False
    return ".." not in PurePosixPath(name).parts


def unpack_archive(archive: Path, into: Path, max_bytes: int, archive_name: str) -> list[Path]:
    """Unpack a zip or tar archive into the empty folder ``into``, flat, as ``00000<suffix>``,
    ``00001<suffix>`` ... (each member keeps only its image suffix; directories are
    skipped). Refuses links, special files, absolute or ``..`` names, more than
    :data:`MAX_MEMBERS` files or more than ``max_bytes`` in all (counted while inflating)."""
    files, budget = [], max_bytes

    def take(name: str, source) -> None:
        nonlocal budget
        if not _member_name_ok(name):
            raise Refused(f"{archive_name}: member {name[:80]!r} has an absolute or '..' name")
        if len(files) >= MAX_MEMBERS:
            raise Refused(f"{archive_name} holds more than {MAX_MEMBERS} files")
        target = into / f"{len(files):05d}{suffix_of(name, IMAGE_SUFFIXES) or ''}"
        budget -= _copy_bounded(source, target, budget, archive_name)
        files.append(target)

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                members = [info for info in bundle.infolist() if not info.is_dir()]
                if len(members) > MAX_MEMBERS:  # the central directory says so: refuse before writing anything
                    raise Refused(f"{archive_name} holds more than {MAX_MEMBERS} files")
                if sum(info.file_size for info in members) > max_bytes:
                    raise Refused(f"{archive_name} holds more than {max_bytes / 2**20:g} MiB", 413)
                for info in members:
                    kind = stat.S_IFMT(info.external_attr >> 16)
                    if kind not in (0, stat.S_IFREG):
                        raise Refused(f"{archive_name}: member {info.filename[:80]!r} is a link or a special file")
                    with bundle.open(info) as source:
                        take(info.filename, source)
        else:
            with tarfile.open(archive, mode="r:*") as bundle:
                for member in bundle:  # lazily: a header bomb stops at MAX_MEMBERS
                    if member.isdir():
                        continue
                    if not member.isreg():
                        raise Refused(f"{archive_name}: member {member.name[:80]!r} is a link or a special file")
                    take(member.name, bundle.extractfile(member))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, NotImplementedError, RuntimeError) as error:
        raise Refused(f"{archive_name} is not a readable zip or tar archive ({type(error).__name__})") from None
    if not files:
        raise Refused(f"{archive_name} holds no file")
    return files


def receive(uploads: list, workdir: Path, max_bytes: int, max_voxels: int, archives: bool = True) -> Path:
    """Store what the client sent in the empty folder ``workdir`` and check it.

    Args:
        uploads: FastAPI ``UploadFile`` objects (``.filename``, ``.file``): one image file,
            one archive (when ``archives``), or several DICOM files.
        workdir: an empty folder of the server's (the caller removes it).
        max_bytes: the largest upload, and the most an archive may unpack to.
        max_voxels: the voxel limit of :func:`check_image_file`.

    Returns:
        the image file, or a folder of DICOM files.

    Raises:
        Refused: 400 (or 413 over a limit) with a message naming the client's file.
    """
    if not uploads:
        raise Refused("send an image file")
    names = [os.path.basename(upload.filename or "upload")[-80:] for upload in uploads]
    allowed = IMAGE_SUFFIXES + (ARCHIVE_SUFFIXES if archives and len(uploads) == 1 else ())
    for name in names:
        if suffix_of(name, allowed) is None:
            raise Refused(f"unsupported file type {name!r}; send one of {allowed}")
    budget = max_bytes
    saved = []
    for index, (upload, name) in enumerate(zip(uploads, names)):
        target = workdir / f"upload{index:05d}{suffix_of(name, allowed)}"
        budget -= _copy_bounded(upload.file, target, budget, "the upload")
        saved.append(target)
    if any(path.stat().st_size == 0 for path in saved):
        raise Refused(f"upload {names[0]!r} is empty")
    image = saved[0]
    if suffix_of(names[0], ARCHIVE_SUFFIXES):
        series = workdir / "series"
        series.mkdir()
        members = unpack_archive(saved[0], series, max_bytes, names[0])
        saved[0].unlink()
        image = members[0] if len(members) == 1 and members[0].suffix else series
    elif len(saved) > 1:
        series = workdir / "series"
        series.mkdir()
        for path in saved:
            path.rename(series / path.name)
        image = series
    try:
        check_image_file(image, max_voxels)
    except ValueError as error:
        message = str(error).replace(image.name, names[0] if image.is_file() and len(names) == 1 else "the series")
        raise Refused(message, 413 if "over the limit" in message else 400) from None
    return image


def remove(path: Path) -> None:
    """Remove a working folder or file (best effort)."""
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
