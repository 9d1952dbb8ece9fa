"""MRML helpers: put SegX results into a scene. Every function takes its scene (or nodes)
explicitly and uses only MRML and VTK, so it runs in Slicer and on a bare
``vtkMRMLScene`` of the ``slicer-core`` wheel. Main thread only."""

from typing import Dict, Optional, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .display import clean_heatmap
from .jobs import VolumeData
from .results import Readout

#: Attribute of every volume the module makes (heatmaps): never offered as an input.
OUTPUT_ATTRIBUTE = "SegX.output"

#: Segment colours, by order of the label value.
SEGMENT_COLOURS = [(0.9, 0.6, 0.2), (0.4, 0.7, 0.9), (0.6, 0.9, 0.4), (0.9, 0.4, 0.7), (0.8, 0.8, 0.3)]


def ijk_to_ras(volume: "slicer.vtkMRMLVolumeNode") -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a volume node."""
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_data(volume: "slicer.vtkMRMLVolumeNode") -> VolumeData:
    """A copy of a volume's voxels ``(K, J, I)`` / ``(K, J, I, C)`` and its geometry, safe to
    hand to a worker thread.

    Raises:
        ValueError: the node has no voxels.
    """
    image = volume.GetImageData() if volume is not None else None
    if image is None or image.GetPointData().GetScalars() is None:
        raise ValueError("the selected volume has no voxels")
    scalars = image.GetPointData().GetScalars()
    columns, rows, slices = image.GetDimensions()
    shape = (slices, rows, columns) + ((scalars.GetNumberOfComponents(),) if scalars.GetNumberOfComponents() > 1 else ())
    return VolumeData(numpy_support.vtk_to_numpy(scalars).reshape(shape).copy(), ijk_to_ras(volume))


def set_voxels(volume: "slicer.vtkMRMLVolumeNode", array: np.ndarray, matrix: np.ndarray) -> None:
    """Replace a volume node's voxels (``(K, J, I)`` or ``(K, J, I, C)``, copied) and its IJK-to-RAS."""
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    flat = np.ascontiguousarray(array).reshape(int(np.prod(array.shape[:3])), -1)  # one row per voxel
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat if flat.shape[1] > 1 else flat[:, 0], deep=True))
    volume.SetAndObserveImageData(image)
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, float(matrix[r, c]))
    volume.SetIJKToRASMatrix(vtk_matrix)


def singleton_node(scene: "slicer.vtkMRMLScene", class_name: str, tag: str):
    """The scene's node of ``class_name`` with singleton tag ``tag``, created (as Slicer's
    ``ScriptedLoadableModuleLogic.createParameterNode`` does) when missing. Singleton
    nodes stay in the scene when it is closed; their content is reset."""
    node = scene.GetSingletonNode(tag, class_name)
    if node is None:
        node = scene.CreateNodeByClass(class_name)
        node.UnRegister(None)  # owned by the Python variable, then by the scene
        node.SetSingletonTag(tag)
        node.SetName(scene.GenerateUniqueName(tag))
        node = scene.AddNode(node)
    return node


def _reuse(scene: "slicer.vtkMRMLScene", node, class_name: str, name: str):
    """``node`` if it is still in the scene, else a new node of ``class_name`` added to it."""
    if node is None or not scene.IsNodePresent(node):
        node = scene.AddNewNodeByClass(class_name)
    node.SetName(name)
    return node


def heatmap_volume(
    scene: "slicer.vtkMRMLScene",
    source: "slicer.vtkMRMLVolumeNode",
    heatmap: np.ndarray,
    name: str,
    node: Optional["slicer.vtkMRMLScalarVolumeNode"] = None,
) -> "slicer.vtkMRMLScalarVolumeNode":
    """A float32 scalar volume of ``heatmap`` ``(K, J, I)`` on the grid of ``source``:
    same IJK-to-RAS and parent transform; NaN/Inf set to 0 (NaN is not transparent).

    Raises:
        ValueError: the heatmap's shape is not the source's voxel grid.
    """
    grid = source.GetImageData().GetDimensions()[::-1]
    if tuple(heatmap.shape) != tuple(grid):
        raise ValueError(f"heatmap of shape {tuple(heatmap.shape)} does not match the volume's grid {tuple(grid)}")
    node = _reuse(scene, node, "vtkMRMLScalarVolumeNode", name)
    set_voxels(node, clean_heatmap(heatmap), ijk_to_ras(source))
    node.SetAndObserveTransformNodeID(source.GetTransformNodeID())
    node.SetAttribute(OUTPUT_ATTRIBUTE, "heatmap")
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def colour_table_node(
    scene: "slicer.vtkMRMLScene", rgba: np.ndarray, name: str, node: Optional["slicer.vtkMRMLColorTableNode"] = None
) -> "slicer.vtkMRMLColorTableNode":
    """A user colour table node with the ``(N, 4)`` RGBA entries (alpha included)."""
    node = _reuse(scene, node, "vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(len(rgba))
    for index, (r, g, b, a) in enumerate(np.asarray(rgba, dtype=float)):
        node.SetColor(index, r, g, b, a)
    node.Modified()
    return node


def style_heatmap(
    volume: "slicer.vtkMRMLScalarVolumeNode",
    colours: "slicer.vtkMRMLColorTableNode",
    window: Tuple[float, float],
    threshold: float,
) -> None:
    """Colour table, fixed window ``(low, high)`` and a lower threshold: voxels below
    ``threshold`` are transparent in the slice views."""
    display_node = volume.GetDisplayNode()
    state = display_node.StartModify()  # one Modified event for all changes
    display_node.SetAndObserveColorNodeID(colours.GetID())
    display_node.SetAutoWindowLevel(False)
    display_node.SetWindowLevelMinMax(window[0], window[1])
    display_node.SetAutoThreshold(False)
    display_node.SetApplyThreshold(True)
    display_node.SetLowerThreshold(threshold)
    display_node.SetUpperThreshold(max(window[1], float(volume.GetImageData().GetScalarRange()[1])) + 1.0)
    display_node.SetInterpolate(True)
    display_node.EndModify(state)


def show_in_slice_views(
    scene: "slicer.vtkMRMLScene",
    background: Optional["slicer.vtkMRMLVolumeNode"],
    foreground: "slicer.vtkMRMLVolumeNode",
    opacity: float,
) -> None:
    """Every slice view: ``background`` (when given) under ``foreground`` at ``opacity``."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID())
        composite.SetForegroundOpacity(opacity)


def set_foreground_opacity(scene: "slicer.vtkMRMLScene", opacity: float) -> None:
    """Foreground opacity of every slice view."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composites.GetItemAsObject(index).SetForegroundOpacity(opacity)


def colour_legend(volume: "slicer.vtkMRMLVolumeNode", title: str):
    """Show the colour legend of ``volume``'s display (created once, then reused)."""
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(volume)
    if legend is not None:
        legend.SetTitleText(title)
        legend.SetVisibility(True)
    return legend


def region_segmentation(
    scene: "slicer.vtkMRMLScene",
    source: "slicer.vtkMRMLVolumeNode",
    labels: np.ndarray,
    names: Dict[int, str],
    name: str,
    node: Optional["slicer.vtkMRMLSegmentationNode"] = None,
) -> "slicer.vtkMRMLSegmentationNode":
    """A segmentation node with one named segment per label value of ``names`` (empty
    when the label is absent, ready to be painted), from a label map ``(K, J, I)`` on
    ``source``'s grid, under ``source``'s parent transform. Its previous segments are
    replaced. Slice views show its outline only, so the heatmap stays visible inside."""
    node = _reuse(scene, node, "vtkMRMLSegmentationNode", name)
    node.GetSegmentation().RemoveAllSegments()
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetOpacity2DFill(0.0)
    node.GetDisplayNode().SetOpacity2DOutline(1.0)
    node.SetAndObserveTransformNodeID(source.GetTransformNodeID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(source)
    labelmap = scene.AddNode(slicer.vtkMRMLLabelMapVolumeNode())
    colours = scene.AddNode(slicer.vtkMRMLColorTableNode())
    try:
        colours.SetTypeToUser()
        values = sorted(set(names) | set(int(v) for v in np.unique(labels) if v))
        colours.SetNumberOfColors(max(values, default=0) + 1)
        colours.SetColor(0, "background", 0, 0, 0, 0)
        for order, value in enumerate(values):
            colours.SetColor(value, names.get(value, f"label {value}"), *SEGMENT_COLOURS[order % len(SEGMENT_COLOURS)], 1.0)
        set_voxels(labelmap, np.asarray(labels, dtype=np.uint8), ijk_to_ras(source))
        # in the segmentation's frame: the import would otherwise map it through the inverse transform
        labelmap.SetAndObserveTransformNodeID(source.GetTransformNodeID())
        labelmap_display = scene.AddNode(slicer.vtkMRMLLabelMapVolumeDisplayNode())
        labelmap_display.SetAndObserveColorNodeID(colours.GetID())  # segment names come from here
        labelmap.SetAndObserveDisplayNodeID(labelmap_display.GetID())
        if labels.any() and not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node):
            raise RuntimeError("could not import the clinical region into a segmentation")
        segmentation = node.GetSegmentation()
        present = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        for order, value in enumerate(values):
            label = names.get(value, f"label {value}")
            if label not in present:
                segmentation.AddEmptySegment(label, label, SEGMENT_COLOURS[order % len(SEGMENT_COLOURS)])
    finally:
        remove_node(scene, labelmap)
        scene.RemoveNode(colours)
    return node


def segmentation_labels(
    scene: "slicer.vtkMRMLScene",
    segmentation: "slicer.vtkMRMLSegmentationNode",
    source: "slicer.vtkMRMLVolumeNode",
    names: Dict[int, str],
) -> np.ndarray:
    """The segments as a uint8 label map ``(K, J, I)`` on ``source``'s grid; a segment
    named like a server label gets its value, others the next free values."""
    values = {label: value for value, label in names.items()}
    labels = np.zeros(source.GetImageData().GetDimensions()[::-1], dtype=np.uint8)
    segmentation_data = segmentation.GetSegmentation()
    for index in range(segmentation_data.GetNumberOfSegments()):
        label = segmentation_data.GetNthSegment(index).GetName()
        value = values.setdefault(label, max(list(values.values()) + [0]) + 1)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentation_data.GetNthSegmentID(index))
        exported = scene.AddNode(slicer.vtkMRMLLabelMapVolumeNode())
        try:
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, exported, source):
                raise RuntimeError(f"could not export segment {label!r}")
            if exported.GetImageData() is not None:  # an empty segment exports no voxels
                labels[volume_data(exported).array > 0] = value
        finally:
            remove_node(scene, exported)
    return labels


def remove_node(scene: "slicer.vtkMRMLScene", node) -> None:
    """Remove a node and its display nodes from the scene."""
    for index in reversed(range(node.GetNumberOfDisplayNodes())):
        display_node = node.GetNthDisplayNode(index)
        if display_node is not None:
            scene.RemoveNode(display_node)
    scene.RemoveNode(node)


def probability_table(
    scene: "slicer.vtkMRMLScene", readout: Readout, name: str, node: Optional["slicer.vtkMRMLTableNode"] = None
) -> "slicer.vtkMRMLTableNode":
    """A table node: class, probability, SegU certainty (NaN when not computed), most
    probable first, with the values the server returned."""
    node = _reuse(scene, node, "vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    columns = (vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkDoubleArray())
    for array, title in zip(columns, ("class", "probability", "SegU certainty")):
        array.SetName(title)
        table.AddColumn(array)
    rows = readout.probability_rows()
    table.SetNumberOfRows(len(rows))
    for index, row in enumerate(rows):
        table.SetValue(index, 0, vtk.vtkVariant(row.label))
        table.SetValue(index, 1, vtk.vtkVariant(row.probability))
        table.SetValue(index, 2, vtk.vtkVariant(float("nan") if row.certainty is None else row.certainty))
    node.SetAndObserveTable(table)
    return node


def render_in_3d(
    volume_rendering_logic,
    volume: "slicer.vtkMRMLScalarVolumeNode",
    colour_points,
    opacity_points,
    visible: bool,
):
    """Show (or hide) ``volume`` with volume rendering, transfer functions from
    :func:`display.rendering_points`. Returns the volume rendering display node
    (``None`` when hiding a volume that was never rendered)."""
    display = volume_rendering_logic.GetFirstVolumeRenderingDisplayNode(volume)
    if display is None:
        if not visible:
            return None
        display = volume_rendering_logic.CreateDefaultVolumeRenderingNodes(volume)
    if visible:
        properties = display.GetVolumePropertyNode().GetVolumeProperty()
        colour = properties.GetRGBTransferFunction()
        colour.RemoveAllPoints()
        for value, r, g, b in colour_points:
            colour.AddRGBPoint(value, r, g, b)
        opacity = properties.GetScalarOpacity()
        opacity.RemoveAllPoints()
        for value, alpha in opacity_points:
            opacity.AddPoint(value, alpha)
    display.SetVisibility(visible)
    return display
