"""What the radiologist sees: the module's layers rendered by Slicer's own slice pipeline
(``vtkMRMLSliceLogic`` of ``slicer-core``, see ``SegXSlicer/Tools/slice_view.py``), with
assertions on the pixels: the heatmap is visible above its threshold and transparent
below (the background shows unchanged), the clinical region's outline sits on the
region, and all of it follows the volume's parent transform."""

import sys
from pathlib import Path

import numpy as np
import pytest

import slicer

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "SegXSlicer"), str(ROOT / "SegXSlicer" / "Tools")]

from slice_view import new_scene, outline_region, pixel_to_ijk, render, slice_logic  # noqa: E402
from SegXSlicerLib import display, mrml  # noqa: E402
from SegXSlicerLib.jobs import Explanation  # noqa: E402
from SegXSlicerLib.logic import SegXLogic  # noqa: E402
from SegXSlicerLib.results import parse_segx_reply  # noqa: E402
from test_slicer_lib import REPLY  # noqa: E402

SHAPE = (12, 40, 60)  # (K, J, I): non-square slices
#: I runs anterior, J runs left (a 90 degree in-plane rotation), anisotropic voxels.
IJK_TO_RAS = np.array([[0, -1.5, 0, 10], [1.5, 0, 0, -5], [0, 0, 2.5, 7], [0, 0, 0, 1]])
REGION = (slice(None), slice(10, 30), slice(5, 55))  # the clinical region (a box)


def scene_with_a_run(transform_shift=None):
    """A scene, its Red view, a CT-like source and a Run shown by the module's logic:
    SegX = a ramp along I (0 at i = 0, 1 at the last i) inside the region, 0 outside."""
    scene = new_scene()
    view = slice_logic(scene, "Red", (240, 200))
    k, j, i = np.indices(SHAPE)
    source = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    mrml.set_voxels(source, (100 + 2 * i + j).astype(np.int16), IJK_TO_RAS)
    source.CreateDefaultDisplayNodes()
    source.GetDisplayNode().SetAutoWindowLevel(False)
    source.GetDisplayNode().SetWindowLevelMinMax(0, 400)
    if transform_shift is not None:
        transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = np.eye(4)
        matrix[:3, 3] = transform_shift
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
        source.SetAndObserveTransformNodeID(transform.GetID())
    ramp = (i / (SHAPE[2] - 1)).astype(np.float32)
    region = np.zeros(SHAPE, np.uint8)
    region[REGION] = 1
    result = Explanation("toy", parse_segx_reply(REPLY), {"segx": ramp * region, "explanation": ramp}, region, {1: "lesion"})
    logic = SegXLogic(scene)
    logic.show(source, result)
    logic.update(threshold=0.5, opacity=0.6)
    return scene, view, source, logic


def background_only(view):
    composite = view.GetSliceCompositeNode()
    foreground, label = composite.GetForegroundVolumeID(), composite.GetLabelVolumeID()
    composite.SetForegroundVolumeID(None)
    composite.SetLabelVolumeID(None)
    pixels = render(view, fit=False)
    composite.SetForegroundVolumeID(foreground)
    composite.SetLabelVolumeID(label)
    return pixels


@pytest.mark.parametrize("shift", [None, (20.0, -12.0, 0.0)], ids=["no transform", "under a parent transform"])
def test_the_slice_view_shows_the_heatmap_above_its_threshold_only(shift):
    scene, view, source, logic = scene_with_a_run(shift)
    shown = render(view)
    plain = background_only(view)
    ijk = pixel_to_ijk(view, source)
    i, j = ijk[..., 0], ijk[..., 1]
    inside_volume = (i > 1) & (i < SHAPE[2] - 2) & (j > 1) & (j < SHAPE[1] - 2)
    inside_region = (j > 11) & (j < 28) & (i > 6) & (i < 53)
    outside_region = inside_volume & ((j < 8) | (j > 32) | (i < 3) | (i > 57))
    window = logic.window("segx")
    threshold = display.threshold_value(window, 0.5)
    heat = i / (SHAPE[2] - 1)
    hot = inside_region & (heat > threshold + 0.05)
    cold = inside_region & (heat < threshold - 0.05)
    assert hot.sum() > 500 and cold.sum() > 500 and outside_region.sum() > 500  # the view shows all three
    grey = np.clip((100 + 2 * i + j) / 400 * 255, 0, 255)  # the CT through its window (0, 400), Grey table
    assert np.abs(plain[inside_volume][:, :3] - grey[inside_volume][:, None]).max() <= 3 and np.all(plain[inside_volume][:, 3] == 255)
    assert np.array_equal(shown[outside_region], plain[outside_region])  # no heat: the CT unchanged
    assert np.array_equal(shown[cold], plain[cold])  # below the threshold: transparent
    table = display.colour_table("Hot")
    position = np.clip((heat[hot] - window[0]) / (window[1] - window[0]), 0, 1)
    colour = 255 * np.stack([np.interp(position, np.linspace(0, 1, len(table)), table[:, c]) for c in range(3)], axis=-1)
    expected = 0.4 * plain[hot][:, :3] + 0.6 * colour  # foreground opacity 0.6 over the CT
    assert np.abs(shown[hot][:, :3] - expected).max() <= 6


@pytest.mark.parametrize("shift", [None, (20.0, -12.0, 0.0)], ids=["no transform", "under a parent transform"])
def test_the_region_outline_sits_on_the_region(shift):
    scene, view, source, logic = scene_with_a_run(shift)
    plain = render(view)
    outline_region(scene, view, logic.region, source)
    outlined = render(view, fit=False)
    drawn = np.any(outlined != plain, axis=-1)
    ijk = pixel_to_ijk(view, source)
    i, j = ijk[..., 0], ijk[..., 1]
    distance_to_edge = np.minimum.reduce([np.abs(j - 9.5), np.abs(j - 29.5), np.abs(i - 4.5), np.abs(i - 54.5)])
    within_box = (j > 8.5) & (j < 30.5) & (i > 3.5) & (i < 55.5)
    assert drawn.sum() > 100
    assert np.all(within_box[drawn] & (distance_to_edge[drawn] < 1.6))  # the outline is on the region's edge
    on_edge = (j > 9.5) & (j < 29.5) & (i > 4.5) & (i < 54.5) & (distance_to_edge < 0.25)  # just inside the edge
    assert drawn[on_edge].mean() > 0.9  # and all around it
    colour = np.round(255 * np.array(logic.region.GetSegmentation().GetNthSegment(0).GetColor()))
    assert np.abs(outlined[drawn][:, :3] - colour).max() <= 1  # in the segment's colour
