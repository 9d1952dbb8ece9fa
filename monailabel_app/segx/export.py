"""Writing maps and label maps as image files with the source image's geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def save_volume(path: str | Path, array: torch.Tensor | np.ndarray, affine: np.ndarray, dtype=np.float32) -> Path:
    """Write a map ``S`` (``(H, W)`` or ``(D, H, W)``, MONAI axis order) to NRRD / NIfTI /
    MHA with the voxel-to-RAS ``affine`` of its source image, so that it overlays the
    source exactly in 3D Slicer. Heatmaps stay float32; label maps pass ``dtype=np.uint8``.
    NRRD and MHA are gzip-compressed: a 512x512x300 SegX map (zero outside the region)
    shrinks from 315 MB to 15 MB and is written faster than raw (1.5 s vs 3.9 s here)."""
    from monai.data import ITKWriter

    data = np.asarray(array.detach().cpu() if torch.is_tensor(array) else array).astype(dtype)
    writer = ITKWriter(output_dtype=dtype)
    writer.set_data_array(data, channel_dim=None)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write(str(path), verbose=False, compression=path.suffix in (".nrrd", ".mha"))
    return path
