"""The module's scene logic: shows an :class:`~.jobs.Explanation` in a scene and keeps its
nodes in step with the display controls. No Qt; main thread only."""

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from . import display, mrml
from .jobs import Explanation

#: The two heatmap layers: SegX (explanation x clinical region) and the raw explanation.
LAYERS = {"segx": "SegX", "explanation": "raw explanation"}


@dataclass
class DisplaySettings:
    """What the display controls say.

    Attributes:
        layer: ``"segx"`` or ``"explanation"``.
        colour_map: a name of :data:`display.COLOUR_MAPS`.
        opacity: foreground opacity in [0, 1].
        threshold: fraction of the window below which the heatmap is transparent.
        render_3d: also show the heatmap with volume rendering.
    """

    layer: str = "segx"
    colour_map: str = "Hot"
    opacity: float = 0.7
    threshold: float = 0.1
    render_3d: bool = False


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
        self.settings = DisplaySettings()
        self.source = None
        self.explanation: Optional[Explanation] = None
        self.heatmaps: Dict[str, object] = {}
        self.windows: Dict[str, tuple] = {}
        self.colours = None
        self.region = None
        self.table = None

    def show(self, source, explanation: Explanation) -> None:
        """Put a Run's results on ``source``: both heatmap volumes, the colour table, the
        clinical region segmentation and the probability table; the selected layer
        becomes the foreground of every slice view, with a colour legend."""
        self.source, self.explanation = source, explanation
        readout = explanation.readout
        label = f"{source.GetName()} {readout.explained}"
        for layer, title in LAYERS.items():
            self.heatmaps[layer] = mrml.heatmap_volume(
                self.scene, source, explanation.heatmaps[layer], f"{title} {label}", self.heatmaps.get(layer)
            )
            self.windows[layer] = display.percentile_window(explanation.heatmaps[layer])
        self.region = mrml.region_segmentation(
            self.scene, source, explanation.region, explanation.segment_names, f"clinical region {source.GetName()}", self.region
        )
        self.table = mrml.probability_table(self.scene, readout, f"SegX probabilities {source.GetName()}", self.table)
        self.restyle(show_layer=True)

    def restyle(self, show_layer: bool = False) -> None:
        """Apply :attr:`settings` to the result nodes (``show_layer``: also put the
        selected layer in the slice views)."""
        if self.explanation is None:
            return
        table = display.colour_table(self.settings.colour_map)
        self.colours = mrml.colour_table_node(self.scene, table, f"SegX {self.settings.colour_map}", self.colours)
        for layer, volume in self.heatmaps.items():
            threshold = display.threshold_value(self.windows[layer], self.settings.threshold)
            mrml.style_heatmap(volume, self.colours, self.windows[layer], threshold)
        current = self.current_heatmap
        if show_layer:
            mrml.show_in_slice_views(self.scene, self.source, current, self.settings.opacity)
            mrml.colour_legend(current, f"{LAYERS[self.settings.layer]}: {self.explanation.readout.explained}")
        else:
            mrml.set_foreground_opacity(self.scene, self.settings.opacity)
        self._render(table)

    def _render(self, table: np.ndarray) -> None:
        if self.volume_rendering_logic is None:
            return
        for layer, volume in self.heatmaps.items():
            visible = self.settings.render_3d and layer == self.settings.layer
            window = self.windows[layer]
            colour, opacity = display.rendering_points(table, window, display.threshold_value(window, self.settings.threshold))
            mrml.render_in_3d(self.volume_rendering_logic, volume, colour, opacity, visible)

    def update(self, **changes) -> None:
        """Change settings (e.g. ``layer="explanation"``, ``opacity=0.5``) and restyle."""
        layer_changed = changes.get("layer", self.settings.layer) != self.settings.layer
        for key, value in changes.items():
            if not hasattr(self.settings, key):
                raise AttributeError(f"no display setting {key!r}")
            setattr(self.settings, key, value)
        self.restyle(show_layer=layer_changed)

    @property
    def current_heatmap(self):
        """The heatmap volume node of the selected layer (``None`` before a Run)."""
        return self.heatmaps.get(self.settings.layer)

    def edited_labels(self) -> np.ndarray:
        """The clinical region segmentation, as edited by the user, as a label map
        ``(K, J, I)`` with the server's label values."""
        if self.region is None or not self.scene.IsNodePresent(self.region):
            raise ValueError("no clinical region to submit: Run SegX on a datastore image first")
        return mrml.segmentation_labels(self.scene, self.region, self.source, self.explanation.segment_names)
