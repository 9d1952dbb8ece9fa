"""What a 3D Slicer slice view shows, rendered without Qt by Slicer's own slice pipeline.

``vtkMRMLSliceLogic`` (from the ``slicer-core`` wheel) is what a Red/Yellow/Green view runs:
it reslices the background, foreground and label volumes of its composite node through
their display nodes (window, colour table, threshold, parent transforms) and blends them
with the foreground opacity. Only the final drawing on screen is missing. A segmentation
is drawn in Slicer by its displayable manager (which needs a render window); here its
outline comes from the same segmentation exported to a label map and shown in the label
layer with ``SetUseLabelOutline`` (Slicer's label outline mode), which is the same region.

Not part of the Slicer module: used by the tests and to make the README picture.
"""

from typing import Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support


def new_scene():
    """A scene as Slicer's application sets it up: the default colour tables (their
    ``vtkSlicerColorLogic`` is kept on the scene: deleting it removes them again, and a
    volume without its colour table renders as garbage), the node classes that the
    Segmentations module registers, and the Red, Green and Yellow slice views' composite
    nodes."""
    scene = slicer.vtkMRMLScene()
    scene.color_logic = slicer.vtkSlicerColorLogic()
    scene.color_logic.SetMRMLScene(scene)
    scene.RegisterNodeClass(slicer.vtkMRMLSegmentEditorNode())
    for name in ("Red", "Green", "Yellow"):
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        composite.SetSingletonTag(name)
        scene.AddNode(composite)
    return scene


def slice_logic(scene, name: str = "Red", size: Tuple[int, int] = (256, 256)):
    """A slice view's logic on ``scene`` (its slice and composite nodes added), ``size``
    ``(width, height)`` pixels."""
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    logic.AddSliceNode(name).SetDimensions(size[0], size[1], 1)
    return logic


def outline_region(scene, logic, segmentation, reference) -> "slicer.vtkMRMLLabelMapVolumeNode":
    """Show ``segmentation`` as an outline in the label layer of ``logic``'s view: exported
    on ``reference``'s grid, under the segmentation's parent transform, in the segments'
    colours."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{segmentation.GetName()} outline")
    if not slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(segmentation, labelmap, reference):
        raise RuntimeError("could not export the segmentation")
    labelmap.SetAndObserveTransformNodeID(segmentation.GetTransformNodeID())
    segments = segmentation.GetSegmentation()
    colours = scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{segmentation.GetName()} colours")
    colours.SetTypeToUser()
    colours.SetNumberOfColors(segments.GetNumberOfSegments() + 1)
    colours.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for index in range(segments.GetNumberOfSegments()):  # exported label values: 1, 2, ... in segment order
        segment = segments.GetNthSegment(index)
        colours.SetColor(index + 1, segment.GetName(), *segment.GetColor(), 1.0)
    labelmap.CreateDefaultDisplayNodes()
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
    logic.GetSliceCompositeNode().SetLabelVolumeID(labelmap.GetID())
    logic.GetSliceCompositeNode().SetLabelOpacity(1.0)
    logic.GetSliceNode().SetUseLabelOutline(True)
    return labelmap


def render(logic, fit: bool = True) -> np.ndarray:
    """The blended slice as RGBA ``(height, width, 4)`` uint8, row 0 at the bottom (VTK's
    y axis); ``fit`` centres and zooms the view on the background, as Slicer's
    "reset field of view" does."""
    if fit:
        logic.FitSliceToBackground()
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return pixels.reshape(height, width, -1).copy()


def pixel_to_ijk(logic, volume, world: bool = True) -> np.ndarray:
    """For every pixel of ``logic``'s view, the (fractional) voxel index ``(i, j, k)`` of
    ``volume`` shown there: array ``(height, width, 3)``. ``world``: follow the volume's
    parent transform (linear transforms only)."""
    slice_node = logic.GetSliceNode()
    width, height, _ = slice_node.GetDimensions()
    xy_to_ras = np.array([[slice_node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)
    ras_to_ijk = np.array([[ras_to_ijk.GetElement(r, c) for c in range(4)] for r in range(4)])
    if world and volume.GetParentTransformNode() is not None:
        to_world = vtk.vtkMatrix4x4()
        volume.GetParentTransformNode().GetMatrixTransformToWorld(to_world)
        ras_to_ijk = ras_to_ijk @ np.linalg.inv(np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)]))
    y, x = np.mgrid[0:height, 0:width]
    xy = np.stack([x, y, np.zeros_like(x), np.ones_like(x)], axis=-1).astype(float)
    return (xy @ (ras_to_ijk @ xy_to_ras).T)[..., :3]
