"""Phantom studies with a built-in shortcut: the situation SegX and SegU exist for.

2D (dermoscopy-like, RGB PNG 128 x 128): skin with one lesion. ``nevus`` lesions are
uniformly brown with a smooth border; ``melanoma`` lesions are darker, with violet-grey
blotches and an irregular border, each by a random strength in [0.1, 1]: faint melanomas
look like nevi (on purpose: the marker below is then the easier cue). Ground truth: the lesion mask.

3D (CT-like NIfTI 64 x 64 x 48, spacing 1.5 x 1.5 x 2.5 mm, Hounsfield-like units): a body
with a liver (label 1) and two kidneys (label 2); one lesion inside the liver: a ``cyst``
(hypodense, uniform) or a ``tumour`` (hyperdense, heterogeneous), each by a random
strength in [0.3, 1] (faint lesions differ little from the liver). Ground truth: the organ
label map; the clinical region of both classes is the liver.

The spurious cue: a marker outside the clinical region (a ruler on the skin in 2D, a skin
bead in 3D). In the ``train`` split it appears in 95 % (3D: 80 %) of the second class
(melanoma / tumour) and 5 % (3D: 20 %) of the first; in the ``val`` and ``test`` splits (the deployment
distribution) it appears in 50 % of each class, so a classifier that learnt the shortcut
is wrong where the marker misleads.

Everything is deterministic per seed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES_2D = ("nevus", "melanoma")
CLASSES_3D = ("cyst", "tumour")
SPACING_3D = (1.5, 1.5, 2.5)
SHAPE_2D = (128, 128)
SHAPE_3D = (64, 64, 48)
#: P(marker | class) per dimension and split: (first class, second class).
MARKER_RATE = {
    2: {"train": (0.05, 0.95), "val": (0.5, 0.5), "test": (0.5, 0.5)},
    3: {"train": (0.2, 0.8), "val": (0.5, 0.5), "test": (0.5, 0.5)},
}


@dataclass
class Phantom:
    """One study: ``image`` (2D: ``(H, W, 3)`` uint8; 3D: ``(X, Y, Z)`` float32 HU), the
    ground-truth ``mask`` (2D: lesion 0/1; 3D: labels 1 liver, 2 kidney), its ``label``
    (class index), whether the spurious ``marker`` is present, and the lesion centre
    (voxel indices of ``image``)."""

    image: np.ndarray
    mask: np.ndarray
    label: int
    marker: bool
    lesion_centre: tuple


def _grid(shape):
    return np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")


def _smooth_noise(rng: np.random.Generator, shape, scale: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: coarse random grid upsampled bilinearly."""
    from scipy.ndimage import zoom

    coarse = rng.uniform(-1, 1, [max(2, n // scale) for n in shape])
    return zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1)[tuple(slice(0, n) for n in shape)]


def phantom_2d(rng: np.random.Generator, label: int, marker: bool) -> Phantom:
    """A dermoscopy-like RGB image with one lesion (see module docstring)."""
    h, w = SHAPE_2D
    yy, xx = _grid(SHAPE_2D)
    skin = np.array([222.0, 176.0, 156.0]) + 8 * _smooth_noise(rng, SHAPE_2D, 16)[..., None]
    image = skin + rng.normal(0, 4, (h, w, 3))
    cy, cx = rng.uniform(40, 88, 2)
    ry, rx = rng.uniform(14, 26, 2)
    angle = np.arctan2(yy - cy, xx - cx)
    radius = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    strength = rng.uniform(0.1, 1.0) if label == 1 else 0.0  # how visible the malignancy is
    if label == 1:  # irregular border
        harmonics = sum(strength * rng.uniform(0.03, 0.08) * np.cos(k * angle + rng.uniform(0, 6.3)) for k in (3, 5, 7))
        radius = radius * (1 + harmonics)
    lesion = radius <= 1.0
    nevus_colour = np.array([150.0, 100.0, 72.0]) + rng.normal(0, 6, 3)
    colour = nevus_colour + strength * (np.array([118.0, 76.0, 60.0]) - nevus_colour)
    image[lesion] = colour + rng.normal(0, 5, (int(lesion.sum()), 3))
    for _ in range(int(round(3 * strength))):  # violet-grey blotches inside the lesion
        by, bx = cy + rng.uniform(-0.6, 0.6) * ry, cx + rng.uniform(-0.6, 0.6) * rx
        blotch = (((yy - by) ** 2 + (xx - bx) ** 2) <= rng.uniform(4, 10)) & lesion
        image[blotch] = np.array([110.0, 96.0, 110.0]) + rng.normal(0, 4, (int(blotch.sum()), 3))
    if marker:  # a ruler along one border, away from the lesion
        side = rng.integers(4)
        ruler = np.zeros(SHAPE_2D, dtype=bool)
        start = int(rng.integers(10, 50))
        span = slice(start, start + 60)
        band = slice(3, 10) if side < 2 else slice(h - 10, h - 3)
        if side % 2 == 0:
            ruler[band, span] = True
        else:
            ruler[span, band] = True
        ruler &= ~lesion
        image[ruler] = np.array([40.0, 40.0, 46.0])
    return Phantom(np.clip(image, 0, 255).astype(np.uint8), lesion.astype(np.uint8), label, marker, (int(cy), int(cx)))


def phantom_3d(rng: np.random.Generator, label: int, marker: bool) -> Phantom:
    """A CT-like volume with body, liver, kidneys and a liver lesion (see module docstring)."""
    xx, yy, zz = _grid(SHAPE_3D)
    sx, sy, sz = SPACING_3D
    X, Y, Z = xx * sx, yy * sy, zz * sz  # millimetres
    centre = np.array([SHAPE_3D[0] * sx, SHAPE_3D[1] * sy, SHAPE_3D[2] * sz]) / 2 + rng.uniform(-3, 3, 3)

    def ellipsoid(c, r):
        return ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1.0

    volume = np.full(SHAPE_3D, -1000.0, dtype=np.float32)
    body_radii = np.array([44.0, 34.0, 70.0]) * rng.uniform(0.95, 1.05, 3)
    body = ellipsoid(centre, body_radii)
    volume[body] = 40.0
    liver_centre = centre + np.array([-14.0, -4.0, 6.0]) + rng.uniform(-3, 3, 3)
    liver = ellipsoid(liver_centre, np.array([20.0, 16.0, 24.0]) * rng.uniform(0.9, 1.1, 3)) & body
    volume[liver] = 65.0
    kidneys = np.zeros(SHAPE_3D, dtype=bool)
    for side in (-1, 1):
        kidneys |= ellipsoid(centre + np.array([side * 22.0, 14.0, -10.0]), np.array([7.0, 8.0, 14.0]))
    kidneys &= body & ~liver
    volume[kidneys] = 150.0
    lesion_radius = rng.uniform(9.0, 13.0)
    lesion_centre = liver_centre + rng.uniform(-6, 6, 3)
    lesion = ellipsoid(lesion_centre, np.full(3, lesion_radius)) & liver
    strength = rng.uniform(0.3, 1.0)  # how visible the lesion is
    if label == 0:
        volume[lesion] = 65.0 - 55.0 * strength
    else:
        volume[lesion] = 65.0 + strength * (70.0 + 20.0 * _smooth_noise(rng, SHAPE_3D, 4)[lesion])
    if marker:  # a skin bead on the body surface, opposite the liver
        surface = centre + np.array([body_radii[0] * 0.97, rng.uniform(-15, 15), rng.uniform(-20, 20)])
        volume[ellipsoid(surface, np.full(3, 4.0))] = 900.0
    volume += rng.normal(0, 12, SHAPE_3D).astype(np.float32)
    mask = np.zeros(SHAPE_3D, dtype=np.uint8)
    mask[liver] = 1
    mask[kidneys] = 2
    centre_voxel = tuple(int(round(c / sp)) for c, sp in zip(lesion_centre, SPACING_3D))
    return Phantom(volume.astype(np.float32), mask, label, marker, centre_voxel)


def generate(out: str | Path, dim: int, count: int, seed: int, split: str = "test", progress: bool = True) -> Path:
    """Write ``count`` studies of one split to ``out``: ``images/<id>``, ``masks/<id>``
    (same file name) and ``labels.csv`` (``image_id,label,split,marker,file,lesion``, the
    lesion centre as voxel indices; appended to when it exists). Classes alternate, so both are equally represented.

    Returns:
        the ``out`` folder.
    """
    from PIL import Image as PILImage
    from tqdm import tqdm

    if dim not in (2, 3):
        raise ValueError(f"--dim must be 2 or 3, got {dim}")
    if split not in MARKER_RATE[dim]:
        raise ValueError(f"split must be one of {sorted(MARKER_RATE[dim])}, got {split!r}")
    if count < 1:
        raise ValueError("count must be at least 1")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, dim, list(MARKER_RATE[dim]).index(split)])
    classes = CLASSES_2D if dim == 2 else CLASSES_3D
    rows = []
    for i in tqdm(range(count), desc=f"{dim}D {split} phantoms", disable=not progress):
        label = i % 2
        marker = bool(rng.random() < MARKER_RATE[dim][split][label])
        image_id = f"{split}{dim}d_{seed}_{i:04d}"
        if dim == 2:
            phantom = phantom_2d(rng, label, marker)
            name = f"{image_id}.png"
            PILImage.fromarray(phantom.image).save(out / "images" / name)
            PILImage.fromarray(phantom.mask * 255).save(out / "masks" / name)
        else:
            import nibabel as nib

            phantom = phantom_3d(rng, label, marker)
            name = f"{image_id}.nii.gz"
            affine = np.diag([*SPACING_3D, 1.0])
            nib.save(nib.Nifti1Image(phantom.image, affine), str(out / "images" / name))
            nib.save(nib.Nifti1Image(phantom.mask, affine), str(out / "masks" / name))
        centre = " ".join(map(str, phantom.lesion_centre))
        rows.append({"image_id": image_id, "label": classes[label], "split": split, "marker": int(marker), "file": name, "lesion": centre})
    labels = out / "labels.csv"
    new_file = not labels.exists()
    with open(labels, "a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["image_id", "label", "split", "marker", "file", "lesion"])
        if new_file:
            writer.writeheader()
        writer.writerows(rows)
    return out
