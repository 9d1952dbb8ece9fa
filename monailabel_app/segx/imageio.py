"""Reading images into channel-first tensors with their geometry (MONAI readers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .tensors import all_finite


@dataclass
class Image:
    """A channel-first image and its geometry.

    Attributes:
        array: float32 tensor ``(C, *S)``, ``S = (H, W)`` or ``(D, H, W)`` (MONAI's axis order
            for files, i.e. the file's voxel index order).
        spacing: voxel size in mm per spatial axis.
        affine: 4x4 voxel-to-world (RAS) matrix, identity-with-spacing when unknown.
    """

    array: torch.Tensor
    spacing: tuple[float, ...]
    affine: np.ndarray

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])


def _default_affine(spacing: tuple[float, ...]) -> np.ndarray:
    affine = np.eye(4)
    for axis, size in enumerate(spacing):
        affine[axis, axis] = size
    return affine


def read_image(path: str | Path) -> Image:
    """Read NIfTI, NRRD, MHA, PNG, JPEG or DICOM (file or series folder) with MONAI's
    ``LoadImage``, channel first, keeping spacing and the affine. 16-bit greyscale PNG and
    TIFF pictures are scaled to the 8-bit range (divided by 257), which the 2D models
    (photographs, radiographs saved as pictures) read."""
    from monai.transforms import LoadImage

    path = Path(path)
    if not path.exists():
        raise ValueError(f"image file not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"image file is empty: {path}")
    try:
        loaded = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)(str(path))
    except Exception as error:  # readers raise many types; the user needs one clear message
        if path.is_file():
            try:  # e.g. multi-component (RGB) NRRD, which MONAI's NRRD reader rejects
                return _read_with_simpleitk(path)
            except RuntimeError:
                pass
        raise ValueError(f"cannot read {path.name} as an image: {error}") from error
    array = torch.as_tensor(np.asarray(loaded), dtype=torch.float32)
    if _is_16_bit_picture(path):
        array = array / 257.0  # 16-bit PNG/TIFF -> the 8-bit range the photograph models read (65535 -> 255)
    affine = np.asarray(loaded.affine, dtype=float)
    spatial = array.dim() - 1
    spacing = tuple(float(np.linalg.norm(affine[:3, axis])) for axis in range(min(spatial, 3)))
    return Image(array, spacing, affine)


def _is_16_bit_picture(path: Path) -> bool:
    """Whether ``path`` is a 16-bit greyscale picture (PNG/TIFF mode ``I;16`` or ``I``)."""
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        return False
    from PIL import Image as PILImage

    with PILImage.open(path) as picture:
        return picture.mode.startswith("I")


def _read_with_simpleitk(path: Path) -> Image:
    """SimpleITK fallback: channel-first array in ITK index order (MONAI's order) and the
    voxel-to-RAS affine from ITK's LPS spacing, origin and direction."""
    import SimpleITK as sitk

    itk_image = sitk.ReadImage(str(path))
    dims = itk_image.GetDimension()
    voxels = sitk.GetArrayFromImage(itk_image).astype(np.float32)  # (z, y, x[, c]) or (y, x[, c])
    voxels = np.moveaxis(voxels, -1, 0) if itk_image.GetNumberOfComponentsPerPixel() > 1 else voxels[None]
    voxels = voxels.transpose(0, *range(dims, 0, -1))  # spatial axes to (x, y[, z])
    direction = np.eye(3)
    direction[:dims, :dims] = np.asarray(itk_image.GetDirection()).reshape(dims, dims)
    spacing, origin = np.ones(3), np.zeros(3)
    spacing[:dims], origin[:dims] = itk_image.GetSpacing(), itk_image.GetOrigin()
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ origin
    return Image(torch.from_numpy(np.ascontiguousarray(voxels)), tuple(float(v) for v in itk_image.GetSpacing()), affine)


def as_image(
    image: "str | Path | np.ndarray | torch.Tensor | Image",
    spatial_dims: int,
    spacing: tuple[float, ...] | None = None,
) -> Image:
    """Turn a path, array or tensor into an :class:`Image` with ``spatial_dims`` spatial axes.

    Arrays and tensors are ``(C, *S)`` or, for one channel, ``S``. Files keep their own
    geometry; a trailing singleton axis (a 2D image stored as ``H x W x 1``) is dropped.

    Raises:
        ValueError: wrong number of dimensions, empty image, or NaN/Inf voxels.
    """
    if isinstance(image, Image):
        result = image
    elif isinstance(image, (str, Path)):
        result = read_image(image)
    else:
        array = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image).float()
        if array.dim() == spatial_dims:
            array = array[None]
        spacing = tuple(spacing or (1.0,) * spatial_dims)
        result = Image(array, spacing, _default_affine(spacing))
    array = result.array
    while array.dim() > spatial_dims + 1 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dim() != spatial_dims + 1:
        raise ValueError(
            f"expected a {spatial_dims}D image (channels + {spatial_dims} spatial axes), "
            f"got an array of shape {tuple(result.array.shape)}"
        )
    if array.numel() == 0:
        raise ValueError("the image is empty")
    if min(array.shape[1:]) < 2:
        raise ValueError(f"the image is too small: {tuple(array.shape[1:])} voxels; at least 2 along each axis")
    if not all_finite(array):
        raise ValueError("the image contains NaN or Inf voxels")
    if len(result.spacing) < spatial_dims:
        raise ValueError(f"spacing {result.spacing} does not match a {spatial_dims}D image")
    return Image(array, tuple(result.spacing[:spatial_dims]), result.affine)
