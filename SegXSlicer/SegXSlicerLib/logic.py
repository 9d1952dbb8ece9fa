"""The module's scene logic: shows an :class:`~.jobs.Explanation` in a scene and keeps its
nodes in step with the display controls. No Qt; main thread only.

All state lives in the scene, in the module's parameter node: a ``vtkMRMLScriptedModuleNode``
with singleton tag and ``ModuleName`` attribute ``SegXSlicer``, the node that Slicer's
``ScriptedLoadableModuleLogic.getParameterNode()`` returns
(``Base/Python/slicer/ScriptedLoadableModule.py``). So the display settings, the result
nodes and the readouts are saved with the scene, a reloaded module (a new logic) finds
the nodes of the last Run instead of duplicating them, and closing the scene (which
resets singleton nodes) leaves nothing behind.
"""

import dataclasses
import json
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from . import display, mrml
from .jobs import Explanation
from .results import Readout

MODULE_NAME = "SegXSlicer"

#: The two heatmap layers: SegX (explanation x clinical region) and the raw explanation.
LAYERS = {"segx": "SegX", "explanation": "raw explanation"}

#: Node references of the parameter node.
SOURCE, REGION, TABLE, COLOURS = "source", "region", "table", "colours"

#: Attribute of a heatmap node: its display window ``"low high"``.
WINDOW_ATTRIBUTE = "SegX.window"


@dataclass
class DisplaySettings:
    """What the display controls say (saved as parameters of the parameter node).

    Attributes:
        layer: ``"segx"`` or ``"explanation"``.
        colour_map: a name of :data:`display.COLOUR_MAPS`.
        opacity: foreground opacity in [0, 1].
        threshold: fraction of the window below which the heatmap is transparent.
        render_3d: also show the heatmap with volume rendering.
        visible: the heatmap is shown (the keyboard shortcut toggles it).
    """

    layer: str = "segx"
    colour_map: str = "Hot"
    opacity: float = 0.7
    threshold: float = 0.1
    render_3d: bool = False
    visible: bool = True


def _parse(text: str, default):
    if isinstance(default, bool):
        return text == "true"
    return type(default)(text)


def _heatmap_role(layer: str) -> str:
    return f"heatmap_{layer}"


class SegXLogic:
    """Result nodes of the last Run, restyled when the settings change.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in Slicer).
        volume_rendering_logic: ``slicer.modules.volumerendering.logic()`` in Slicer;
            ``None`` disables 3D rendering.
    """

    def __init__(self, scene, volume_rendering_logic=None):
        self.scene = scene
        self.volume_rendering_logic = volume_rendering_logic

    # --- state in the parameter node -------------------------------------------------

    @property
    def parameter_node(self):
        """The module's singleton parameter node, created as Slicer's
        ``ScriptedLoadableModuleLogic.createParameterNode`` does; its ``ModuleName``
        attribute is restored after a scene close (which resets it)."""
        node = mrml.singleton_node(self.scene, "vtkMRMLScriptedModuleNode", MODULE_NAME)
        if node.GetAttribute("ModuleName") != MODULE_NAME:
            node.SetAttribute("ModuleName", MODULE_NAME)
        return node

    @property
    def settings(self) -> DisplaySettings:
        """The display settings (defaults where the parameter node has none)."""
        node = self.parameter_node
        values = {}
        for setting in dataclasses.fields(DisplaySettings):
            default = getattr(DisplaySettings, setting.name)
            text = node.GetParameter(setting.name)
            values[setting.name] = _parse(text, default) if text else default
        return DisplaySettings(**values)

    def _save_settings(self, settings: DisplaySettings) -> None:
        node = self.parameter_node
        state = node.StartModify()
        for name, value in dataclasses.asdict(settings).items():
            node.SetParameter(name, ("true" if value else "false") if isinstance(value, bool) else str(value))
        node.EndModify(state)

    def _node(self, role: str):
        return self.parameter_node.GetNodeReference(role)

    def _set_node(self, role: str, node) -> None:
        self.parameter_node.SetNodeReferenceID(role, node.GetID() if node is not None else None)

    @property
    def source(self):
        """The volume the last Run explained (``None`` before a Run or after a close)."""
        return self._node(SOURCE)

    @property
    def region(self):
        """The clinical region segmentation of the last Run."""
        return self._node(REGION)

    @property
    def table(self):
        """The probability table of the last Run."""
        return self._node(TABLE)

    def heatmap(self, layer: str):
        """The heatmap volume of ``layer`` (``None`` until fetched)."""
        return self._node(_heatmap_role(layer))

    @property
    def current_heatmap(self):
        """The heatmap volume node of the selected layer (``None`` before a Run)."""
        return self.heatmap(self.settings.layer)

    @property
    def readout(self) -> Optional[Readout]:
        """The readouts of the last Run (``None`` before a Run or after a close)."""
        text = self.parameter_node.GetParameter("readout")
        return Readout(**json.loads(text)) if text and self.source is not None else None

    @property
    def segment_names(self) -> Dict[int, str]:
        text = self.parameter_node.GetParameter("segment_names")
        return {int(value): name for value, name in json.loads(text).items()} if text else {}

    # --- showing results ---------------------------------------------------------------

    def show(self, source, explanation: Explanation) -> None:
        """Put a Run's results on ``source``: the heatmap volumes it brought, the colour
        table, the clinical region segmentation and the probability table; the selected
        layer (if fetched) becomes the foreground of every slice view, with a colour
        legend. A layer of the previous Run that this one did not bring is removed."""
        node = self.parameter_node
        state = node.StartModify()
        self._set_node(SOURCE, source)
        node.SetParameter("readout", json.dumps(dataclasses.asdict(explanation.readout)))
        node.SetParameter("segment_names", json.dumps({str(v): n for v, n in explanation.segment_names.items()}))
        node.SetParameter("model", explanation.model)
        for layer in LAYERS:
            if layer in explanation.heatmaps:
                self._put_heatmap(layer, explanation.heatmaps[layer])
            elif self.heatmap(layer) is not None:
                mrml.remove_node(self.scene, self.heatmap(layer))
                self._set_node(_heatmap_role(layer), None)
        region = mrml.region_segmentation(
            self.scene, source, explanation.region, explanation.segment_names, f"clinical region {source.GetName()}", self.region
        )
        self._set_node(REGION, region)
        self._set_node(TABLE, mrml.probability_table(self.scene, explanation.readout, f"SegX probabilities {source.GetName()}", self.table))
        node.EndModify(state)
        self.restyle(show_layer=True)

    def add_layer(self, layer: str, heatmap: np.ndarray) -> None:
        """Add a layer fetched after the Run (``(K, J, I)`` on the source's grid)."""
        if self.source is None:
            raise ValueError("the volume of this Run is no longer in the scene")
        self._put_heatmap(layer, heatmap)
        self.restyle(show_layer=True)

    def _put_heatmap(self, layer: str, heatmap: np.ndarray) -> None:
        source = self.source
        name = f"{LAYERS[layer]} {source.GetName()} {self.readout.explained}"
        volume = mrml.heatmap_volume(self.scene, source, heatmap, name, self.heatmap(layer))
        volume.SetAttribute(WINDOW_ATTRIBUTE, " ".join(map(repr, display.percentile_window(heatmap))))
        self._set_node(_heatmap_role(layer), volume)

    def window(self, layer: str):
        """The display window ``(low, high)`` of a layer's heatmap."""
        low, high = self.heatmap(layer).GetAttribute(WINDOW_ATTRIBUTE).split()
        return float(low), float(high)

    def restyle(self, show_layer: bool = False) -> None:
        """Apply :attr:`settings` to the result nodes (``show_layer``: also put the
        selected layer in the slice views)."""
        if self.source is None:
            return
        settings = self.settings
        table = display.colour_table(settings.colour_map)
        colours = mrml.colour_table_node(self.scene, table, f"SegX {settings.colour_map}", self._node(COLOURS))
        self._set_node(COLOURS, colours)
        for layer in LAYERS:
            volume = self.heatmap(layer)
            if volume is not None:
                mrml.style_heatmap(volume, colours, self.window(layer), display.threshold_value(self.window(layer), settings.threshold))
        opacity = settings.opacity if settings.visible else 0.0
        current = self.current_heatmap
        if show_layer and current is not None:
            mrml.show_in_slice_views(self.scene, self.source, current, opacity)
            mrml.colour_legend(current, f"{LAYERS[settings.layer]}: {self.readout.explained}")
        else:
            mrml.set_foreground_opacity(self.scene, opacity)
        self._render(table, settings)

    def _render(self, table: np.ndarray, settings: DisplaySettings) -> None:
        if self.volume_rendering_logic is None:
            return
        for layer in LAYERS:
            volume = self.heatmap(layer)
            if volume is None:
                continue
            visible = settings.render_3d and settings.visible and layer == settings.layer
            window = self.window(layer)
            colour, opacity = display.rendering_points(table, window, display.threshold_value(window, settings.threshold))
            mrml.render_in_3d(self.volume_rendering_logic, volume, colour, opacity, visible)

    def update(self, **changes) -> None:
        """Change settings (e.g. ``layer="explanation"``, ``opacity=0.5``) and restyle.

        Raises:
            AttributeError: an unknown setting.
        """
        settings = self.settings
        layer_changed = changes.get("layer", settings.layer) != settings.layer
        for key, value in changes.items():
            if not hasattr(settings, key):
                raise AttributeError(f"no display setting {key!r}")
            setattr(settings, key, value)
        self._save_settings(settings)
        self.restyle(show_layer=layer_changed)

    def toggle_visibility(self) -> bool:
        """Hide the heatmap if shown, show it if hidden; returns whether it is shown."""
        visible = not self.settings.visible
        self.update(visible=visible)
        return visible

    def edited_labels(self) -> np.ndarray:
        """The clinical region segmentation, as edited by the user, as a label map
        ``(K, J, I)`` with the server's label values."""
        if self.region is None or self.source is None:
            raise ValueError("no clinical region to submit: Run SegX on a datastore image first")
        return mrml.segmentation_labels(self.scene, self.region, self.source, self.segment_names)
