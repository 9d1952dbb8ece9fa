"""A label map is checked against its image before it is stored: a real image file of the
same grid (within :data:`SPACING_TOLERANCE` / :data:`ORIGIN_TOLERANCE`), one channel,
integer values among the segmenters' labels. Training reads these files later; a label
that does not fit its image would be resized, or fail every later training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Relative tolerance on spacing and absolute tolerance on direction cosines.
SPACING_TOLERANCE = 1e-3
#: Origin tolerance, as a fraction of the smallest voxel spacing.
ORIGIN_TOLERANCE = 0.05


def _information(path: Path) -> tuple:
    """``(SimpleITK's header, size)`` of an image file, or of a DICOM folder's first slice
    with the number of slices as the size's last axis (no voxels read)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path)) if path.is_dir() else (str(path),)
    reader.SetFileName(files[0] if files else str(path))
    reader.ReadImageInformation()
    size = tuple(reader.GetSize())
    if path.is_dir() and len(size) == 3 and size[2] == 1:
        size = size[:2] + (len(files),)
    return reader, size


def check_label(label: Path, image: Path, allowed: set[int], name: str) -> None:
    """Raise ``ValueError`` naming the defect when the label file ``label`` (already
    through :func:`lib.ingest.receive`) does not fit the image file ``image``.

    Args:
        allowed: label values the segmenters know (0, background, always allowed).
        name: the client's name of the label file, for messages.
    """
    import SimpleITK as sitk

    try:
        (header, size), (reference, expected) = _information(label), _information(image)
    except RuntimeError:
        raise ValueError(f"{name} is not an image file SimpleITK can read") from None
    if header.GetNumberOfComponents() != 1:
        raise ValueError(f"{name} has {header.GetNumberOfComponents()} channels: a label map has one")
    size, expected = _squeezed(size), _squeezed(expected)
    if size != expected:
        raise ValueError(f"{name} is {' x '.join(map(str, size))} voxels, its image {' x '.join(map(str, expected))}: a label must be on the image's grid")
    spacing, reference_spacing = np.array(header.GetSpacing()[: len(size)]), np.array(reference.GetSpacing()[: len(size)])
    if not np.allclose(spacing, reference_spacing, rtol=SPACING_TOLERANCE, atol=0):
        raise ValueError(f"{name} has spacing {tuple(np.round(spacing, 4))}, its image {tuple(np.round(reference_spacing, 4))}")
    origin_gap = np.abs(np.array(header.GetOrigin()[: len(size)]) - np.array(reference.GetOrigin()[: len(size)])).max()
    directions_gap = np.abs(np.array(header.GetDirection()) - np.array(reference.GetDirection())).max() if len(header.GetDirection()) == len(reference.GetDirection()) else 1
    if origin_gap > ORIGIN_TOLERANCE * reference_spacing.min() or directions_gap > SPACING_TOLERANCE:
        raise ValueError(f"{name} is not placed where its image is (origin off by {origin_gap:.3g} mm or other axis directions)")
    decoded = sitk.ReadImage(str(label))
    values = sitk.GetArrayViewFromImage(decoded)  # a view: ``decoded`` must outlive it
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise ValueError(f"{name} holds values that are not whole numbers: a label map holds label values")
    present = set(np.unique(values).astype(np.int64).tolist())
    unknown = sorted(present - allowed - {0})
    if unknown:
        raise ValueError(f"{name} holds label values {unknown[:10]} the segmenters do not know (known: {sorted(allowed | {0})})")


def _squeezed(size: tuple[int, ...]) -> tuple[int, ...]:
    """A size without trailing single slices (a 2D image read as ``(W, H, 1)``)."""
    while len(size) > 2 and size[-1] == 1:
        size = size[:-1]
    return size
