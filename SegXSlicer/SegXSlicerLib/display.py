"""Heatmap display maths: colour tables, the percentile window and the threshold below
which the heatmap is transparent. numpy only.

Transparency in slice views comes from the threshold alone: Slicer's
``vtkMRMLScalarVolumeDisplayNode`` (``Libs/MRML/Core/vtkMRMLScalarVolumeDisplayNode.cxx``)
combines the colour table's alpha with the threshold mask through a ``vtkImageLogic`` AND
whose true value is 255, so any non-zero table alpha becomes fully opaque. The tables are
therefore opaque, and weak evidence is hidden by the threshold and toned down by the
foreground opacity (and by colour maps that start dark).
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np

#: Colour maps as control points ``(position in [0, 1], (r, g, b))``, linearly interpolated.
COLOUR_MAPS: Dict[str, Sequence[Tuple[float, Tuple[float, float, float]]]] = {
    "Hot": [(0.0, (0.0, 0.0, 0.0)), (0.4, (1.0, 0.0, 0.0)), (0.8, (1.0, 1.0, 0.0)), (1.0, (1.0, 1.0, 1.0))],
    "Inferno": [(0.0, (0.0, 0.0, 0.02)), (0.35, (0.47, 0.11, 0.43)), (0.65, (0.87, 0.32, 0.23)), (1.0, (0.99, 1.0, 0.64))],
    "Jet": [(0.0, (0.0, 0.0, 0.5)), (0.15, (0.0, 0.0, 1.0)), (0.4, (0.0, 1.0, 1.0)), (0.6, (1.0, 1.0, 0.0)), (0.85, (1.0, 0.0, 0.0)), (1.0, (0.5, 0.0, 0.0))],
    "Viridis": [(0.0, (0.27, 0.0, 0.33)), (0.33, (0.19, 0.41, 0.56)), (0.66, (0.21, 0.72, 0.47)), (1.0, (0.99, 0.91, 0.14))],
}

#: Entries of the colour tables.
TABLE_SIZE = 256


def colour_table(name: str, size: int = TABLE_SIZE) -> np.ndarray:
    """RGBA table ``(size, 4)`` in [0, 1] of colour map ``name``, opaque (alpha 1: slice
    views cannot blend per entry, see the module docstring).

    Raises:
        ValueError: unknown colour map.
    """
    if name not in COLOUR_MAPS:
        raise ValueError(f"unknown colour map {name!r}; choose one of {sorted(COLOUR_MAPS)}")
    positions = np.linspace(0.0, 1.0, size)
    stops = np.array([p for p, _ in COLOUR_MAPS[name]])
    colours = np.array([c for _, c in COLOUR_MAPS[name]])
    table = np.ones((size, 4))
    for channel in range(3):
        table[:, channel] = np.interp(positions, stops, colours[:, channel])
    return table


def percentile_window(heatmap: np.ndarray, high: float = 99.0) -> Tuple[float, float]:
    """Display window ``(low, high)`` of a heatmap: from its minimum to the ``high``
    percentile of its positive values, so a few hot voxels do not wash out the rest.
    Non-finite voxels are ignored; an all-zero map gives ``(0, 1)``."""
    values = np.asarray(heatmap, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low = float(min(values.min(), 0.0))
    positive = values[values > 0]
    top = float(np.percentile(positive, high)) if positive.size else 0.0
    if top <= low:
        top = low + 1.0
    return low, top


def threshold_value(window: Tuple[float, float], fraction: float) -> float:
    """Heatmap value below which the layer is transparent: ``fraction`` (in [0, 1]) of the
    way up the window."""
    low, high = window
    return low + float(np.clip(fraction, 0.0, 1.0)) * (high - low)


def clean_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """float32 copy with NaN/Inf set to 0 (NaN is not transparent in slice views)."""
    return np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def rendering_points(table: np.ndarray, window: Tuple[float, float], threshold: float) -> Tuple[List[Tuple[float, float, float, float]], List[Tuple[float, float]]]:
    """Transfer functions for 3D volume rendering of a heatmap (volume rendering, unlike
    slice views, blends by scalar opacity).

    Returns:
        ``(colour, opacity)``: colour points ``(value, r, g, b)`` spreading ``table`` over
        the window, and scalar-opacity points ``(value, opacity)``: 0 up to
        ``threshold``, then rising linearly to 0.8 at the top of the window.
    """
    low, high = window
    values = np.linspace(low, high, len(table))
    step = max(len(table) // 32, 1)
    colour = [(float(v), *map(float, table[i, :3])) for i, v in list(enumerate(values))[::step]]
    top = float(high) + 1e-6 * max(abs(high), 1.0)
    opacity = [(float(min(low, threshold)), 0.0), (float(threshold), 0.0), (top, 0.8)]
    return colour, opacity
