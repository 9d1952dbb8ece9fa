"""SegXSlicerLib's MRML helpers and scene logic on real MRML objects from the
``slicer-core`` wheel (a ``vtkMRMLScene`` without Qt). What only the Slicer GUI does
(rendering the views, the module panel) cannot run here: the in-Slicer self-test
(``SegXSlicer.py``) covers it for anyone with Slicer."""

import sys
from pathlib import Path

import numpy as np
import pytest

import slicer  # noqa: E402  (the slicer-core wheel, a dev dependency: a missing install must fail)
sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "SegXSlicer"), str(Path(__file__).resolve().parent.parent / "SegXSlicer" / "Tools")]

from slice_view import new_scene  # noqa: E402  (a scene as Slicer sets it up)
from SegXSlicerLib import display, mrml  # noqa: E402
from SegXSlicerLib.jobs import Explanation  # noqa: E402
from SegXSlicerLib.logic import SegXLogic  # noqa: E402
from SegXSlicerLib.results import parse_segx_reply  # noqa: E402
from test_slicer_lib import IJK_TO_RAS, REPLY  # noqa: E402

SHAPE = (6, 8, 10)  # (K, J, I)


def composites(scene):
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def source_volume(scene, shape=SHAPE):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    mrml.set_voxels(volume, np.random.default_rng(0).integers(-100, 100, shape).astype(np.int16), IJK_TO_RAS)
    volume.CreateDefaultDisplayNodes()
    return volume


def explanation(shape=SHAPE) -> Explanation:
    k, j, i = np.indices(shape)
    raw = np.exp(-((k - 3.0) ** 2 + (j - 4.0) ** 2 + (i - 2.0) ** 2) / 8).astype(np.float32)
    region = np.zeros(shape, np.uint8)
    region[1:5, 2:7, 1:6] = 1  # "lesion"; label 2 ("margin") absent
    raw[0, 0, 0] = np.nan  # must not end up in the heatmap
    return Explanation(
        model="toy",
        readout=parse_segx_reply(REPLY),
        heatmaps={"segx": np.nan_to_num(raw) * (region > 0), "explanation": raw},
        region=region,
        segment_names={1: "lesion", 2: "margin"},
    )


def voxels(volume):
    return mrml.volume_data(volume).array


@pytest.fixture
def shown():
    scene = new_scene()
    rendering = slicer.vtkSlicerVolumeRenderingLogic()
    rendering.SetMRMLScene(scene)
    logic = SegXLogic(scene, rendering)
    source = source_volume(scene)
    result = explanation()
    logic.show(source, result)
    return scene, logic, source, result


def test_heatmap_volume_is_float32_on_the_source_geometry(shown):
    scene, logic, source, result = shown
    heatmap = logic.current_heatmap
    assert heatmap.IsA("vtkMRMLScalarVolumeNode") and not heatmap.IsA("vtkMRMLLabelMapVolumeNode")
    assert heatmap.GetImageData().GetScalarTypeAsString() == "float"
    assert np.allclose(mrml.ijk_to_ras(heatmap), IJK_TO_RAS)
    assert heatmap.GetImageData().GetDimensions() == source.GetImageData().GetDimensions()
    assert np.array_equal(voxels(heatmap), result.heatmaps["segx"])
    raw = voxels(logic.heatmap("explanation"))
    assert raw[0, 0, 0] == 0.0 and np.isfinite(raw).all()  # NaN is not transparent: set to 0


def test_heatmap_follows_the_source_transform_and_refuses_another_grid():
    scene = new_scene()
    source = source_volume(scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    source.SetAndObserveTransformNodeID(transform.GetID())
    heatmap = mrml.heatmap_volume(scene, source, np.zeros(SHAPE, np.float32), "h")
    assert heatmap.GetTransformNodeID() == transform.GetID()
    with pytest.raises(ValueError, match="does not match the volume's grid"):
        mrml.heatmap_volume(scene, source, np.zeros((1, 8, 10), np.float32), "h")


def test_colour_table_window_and_threshold_on_the_display_node(shown):
    scene, logic, source, result = shown
    display_node = logic.current_heatmap.GetDisplayNode()
    colours = display_node.GetColorNode()
    assert colours.IsA("vtkMRMLColorTableNode") and colours.GetNumberOfColors() == display.TABLE_SIZE
    alphas = [colours.GetLookupTable().GetTableValue(i)[3] for i in range(colours.GetNumberOfColors())]
    assert alphas == [1.0] * display.TABLE_SIZE  # transparency comes from the threshold alone
    low, high = display.percentile_window(result.heatmaps["segx"])
    assert not display_node.GetAutoWindowLevel()
    assert display_node.GetWindowLevelMin() == pytest.approx(low) and display_node.GetWindowLevelMax() == pytest.approx(high)
    assert display_node.GetApplyThreshold()
    assert display_node.GetLowerThreshold() == pytest.approx(low + 0.1 * (high - low))
    assert display_node.GetUpperThreshold() > high


def test_heatmap_is_the_foreground_of_every_slice_view(shown):
    scene, logic, source, result = shown
    for composite in composites(scene):
        assert composite.GetForegroundVolumeID() == logic.current_heatmap.GetID()
        assert composite.GetBackgroundVolumeID() == source.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.7)


def test_controls_toggle_layer_opacity_threshold_colour_map_and_3d(shown):
    scene, logic, source, result = shown
    segx_node = logic.current_heatmap
    logic.update(layer="explanation")
    raw_node = logic.current_heatmap
    assert raw_node is not segx_node and raw_node.GetName().startswith("raw explanation")
    assert all(c.GetForegroundVolumeID() == raw_node.GetID() for c in composites(scene))
    logic.update(opacity=0.25, threshold=0.5, colour_map="Jet")
    assert all(c.GetForegroundOpacity() == pytest.approx(0.25) for c in composites(scene))
    low, high = display.percentile_window(result.heatmaps["explanation"])
    assert raw_node.GetDisplayNode().GetLowerThreshold() == pytest.approx(low + 0.5 * (high - low))
    colours = raw_node.GetDisplayNode().GetColorNode()
    assert np.allclose(colours.GetLookupTable().GetTableValue(255), display.colour_table("Jet")[255], atol=1 / 255)

    logic.update(render_3d=True)
    rendering = logic.volume_rendering_logic.GetFirstVolumeRenderingDisplayNode(raw_node)
    assert rendering is not None and rendering.GetVisibility()
    opacity = rendering.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    threshold = raw_node.GetDisplayNode().GetLowerThreshold()
    assert opacity.GetValue(threshold) == 0.0 and opacity.GetValue(high) > 0.5
    logic.update(render_3d=False)
    assert not rendering.GetVisibility()
    with pytest.raises(AttributeError, match="no display setting"):
        logic.update(brightness=2)


def test_colour_legend_is_shown(shown):
    scene, logic, source, result = shown
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(logic.current_heatmap)
    assert legend is not None and legend.GetVisibility()
    assert legend.GetTitleText() == "SegX: nevus"


def test_clinical_region_is_a_segmentation_with_named_segments(shown):
    scene, logic, source, result = shown
    segmentation = logic.region.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["lesion", "margin"]  # "margin" is absent from the map: an empty segment to paint
    assert logic.region.IsA("vtkMRMLSegmentationNode")
    assert np.array_equal(logic.edited_labels(), result.region)
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0  # temporary nodes removed


def test_edited_segments_come_back_with_the_server_label_values(shown):
    """Paint into the empty "margin" segment the way Segment Editor effects write a
    segment (``SetBinaryLabelmapToSegment``), and add a segment of the user's own."""
    scene, logic, source, result = shown
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic
    segmentation = logic.region.GetSegmentation()
    painted = np.zeros(SHAPE, np.uint8)
    painted[5, 0:2, 8:10] = 1
    brush = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    mrml.set_voxels(brush, painted, IJK_TO_RAS)
    stroke = segmentations.CreateOrientedImageDataFromVolumeNode(brush)
    assert segmentations.SetBinaryLabelmapToSegment(stroke, logic.region, segmentation.GetSegmentIdBySegmentName("margin"))
    segmentation.AddEmptySegment("note", "note")
    painted[:] = 0
    painted[0, 7, 0] = 1
    mrml.set_voxels(brush, painted, IJK_TO_RAS)
    stroke = segmentations.CreateOrientedImageDataFromVolumeNode(brush)
    assert segmentations.SetBinaryLabelmapToSegment(stroke, logic.region, "note")
    expected = result.region.copy()
    expected[5, 0:2, 8:10] = 2  # the server's value of "margin"
    expected[0, 7, 0] = 3  # a segment the server does not know: the next free value
    assert np.array_equal(logic.edited_labels(), expected)


def test_probability_table_holds_the_server_values(shown):
    scene, logic, source, result = shown
    table = logic.table.GetTable()
    columns = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    assert columns == ["class", "probability", "SegU certainty"]
    rows = [
        (table.GetValue(r, 0).ToString(), table.GetValue(r, 1).ToDouble(), table.GetValue(r, 2).ToDouble())
        for r in range(table.GetNumberOfRows())
    ]
    assert rows[:2] == [("melanoma", 0.7, 0.4242), ("nevus", 0.2, 0.9)]
    assert rows[2][:2] == ("other", 0.1) and np.isnan(rows[2][2])


def test_a_second_run_reuses_the_nodes(shown):
    scene, logic, source, result = shown
    before = scene.GetNumberOfNodes()
    logic.show(source, explanation())
    assert scene.GetNumberOfNodes() == before


def test_a_run_without_the_raw_layer_removes_the_previous_runs_raw_map(shown):
    """The raw explanation is fetched only when shown: a stale one must not stay."""
    scene, logic, source, result = shown
    old_raw = logic.heatmap("explanation")
    newer = explanation()
    del newer.heatmaps["explanation"]
    logic.show(source, newer)
    assert logic.heatmap("explanation") is None and not scene.IsNodePresent(old_raw)
    logic.update(layer="explanation")  # selecting a layer not fetched yet shows nothing stale
    assert logic.current_heatmap is None
    logic.add_layer("explanation", result.heatmaps["explanation"])
    assert all(c.GetForegroundVolumeID() == logic.current_heatmap.GetID() for c in composites(scene))


def test_state_lives_in_the_parameter_node_so_a_new_logic_finds_it(shown):
    """A reloaded module (a new logic on the same scene) reuses the nodes; the settings
    and readouts are in the scene's parameter node, as Slicer's getParameterNode makes it."""
    scene, logic, source, result = shown
    logic.update(opacity=0.3, colour_map="Viridis", layer="explanation")
    parameters = scene.GetSingletonNode("SegXSlicer", "vtkMRMLScriptedModuleNode")
    assert parameters.GetAttribute("ModuleName") == "SegXSlicer" and parameters.GetParameter("opacity") == "0.3"
    again = SegXLogic(scene)
    assert again.source is source and again.current_heatmap is logic.heatmap("explanation")
    assert again.settings.colour_map == "Viridis" and again.readout == result.readout
    before = scene.GetNumberOfNodes()
    again.show(source, explanation())
    assert scene.GetNumberOfNodes() == before


def test_closing_the_scene_resets_the_state(shown):
    scene, logic, source, result = shown
    scene.Clear(0)  # File > Close Scene
    assert logic.source is None and logic.current_heatmap is None and logic.readout is None and logic.region is None
    logic.update(opacity=0.2)  # the controls still work on an empty scene
    assert logic.settings.opacity == 0.2


def test_results_are_marked_so_they_are_never_offered_as_input(shown):
    scene, logic, source, result = shown
    assert logic.heatmap("segx").GetAttribute(mrml.OUTPUT_ATTRIBUTE) and logic.heatmap("explanation").GetAttribute(mrml.OUTPUT_ATTRIBUTE)
    assert source.GetAttribute(mrml.OUTPUT_ATTRIBUTE) is None


def test_the_region_follows_the_source_transform_and_shows_as_an_outline():
    scene = new_scene()
    source = source_volume(scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    source.SetAndObserveTransformNodeID(transform.GetID())
    result = explanation()
    logic = SegXLogic(scene)
    logic.show(source, result)
    assert logic.region.GetTransformNodeID() == transform.GetID() == logic.current_heatmap.GetTransformNodeID()
    region_display = logic.region.GetDisplayNode()
    assert region_display.GetOpacity2DFill() == 0.0 and region_display.GetOpacity2DOutline() == 1.0
    assert np.array_equal(logic.edited_labels(), result.region)  # same relative geometry under the transform


def test_volume_data_of_a_vector_volume():
    scene = new_scene()
    volume = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    rgb = np.random.default_rng(2).integers(0, 255, (1, 5, 7, 3), dtype=np.uint8)
    mrml.set_voxels(volume, rgb, np.eye(4))
    data = mrml.volume_data(volume)
    assert np.array_equal(data.array, rgb) and np.allclose(data.ijk_to_ras, np.eye(4))
    with pytest.raises(ValueError, match="no voxels"):
        mrml.volume_data(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))


def test_the_state_is_saved_with_the_scene(shown):
    """Settings, readouts and node references are in the scene file (MRML XML)."""
    scene, logic, source, result = shown
    logic.update(opacity=0.35, layer="explanation")
    scene.SetSaveToXMLString(1)
    scene.Commit()
    loaded = new_scene()
    loaded.SetLoadFromXMLString(1)
    loaded.SetSceneXMLString(scene.GetSceneXMLString())
    loaded.Import()
    restored = SegXLogic(loaded)
    assert restored.settings.opacity == 0.35 and restored.settings.layer == "explanation"
    assert restored.readout == result.readout and restored.segment_names == {1: "lesion", 2: "margin"}
    assert restored.source.GetName() == "ct" and restored.current_heatmap.GetName() == logic.heatmap("explanation").GetName()
    assert restored.region.GetName() == logic.region.GetName() and restored.table.GetName() == logic.table.GetName()
