"""Render ``docs/images/slicer_layers.png``: the layers SegXSlicerLib puts in an MRML
scene, drawn from that scene with numpy and matplotlib.

Not part of the Slicer module (it needs matplotlib, nibabel and a running server):

    make serve    # or any SegX server with the demo models
    .venv/bin/python SegXSlicer/Tools/render_layers_figure.py --url http://127.0.0.1:8000 \\
        --study2d demo_output/studies/images/test2d_7_0001.png \\
        --study3d demo_output/studies/images/test3d_7_0001.nii.gz --out docs/images/slicer_layers.png

For each study it builds a ``slicer-core`` scene (no Qt), runs the module's Run job against
the server and ``SegXLogic.show``, then reads back from the MRML nodes: the background
voxels, each heatmap volume's voxels, its colour table entries (RGBA), window, lower
threshold, the slice views' foreground opacity, and the clinical region exported from the
segmentation node; it composites them the way a slice view does (colour table lookup over
the window, transparent below the threshold, alpha x opacity over the background).
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import slicer  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from SegXSlicerLib import jobs, mrml  # noqa: E402
from SegXSlicerLib.client import SegXClient  # noqa: E402
from SegXSlicerLib.logic import SegXLogic  # noqa: E402
from SegXSlicerLib.worker import JobContext  # noqa: E402


def load_study(path: Path) -> jobs.VolumeData:
    """A study as Slicer holds it: ``(K, J, I)`` (or ``(1, J, I, 3)`` for a photo) + IJK-to-RAS."""
    if path.suffix == ".png":
        return jobs.VolumeData(np.asarray(Image.open(path).convert("RGB"))[None], np.diag([-1.0, -1.0, 1.0, 1.0]))
    image = nib.load(path)
    return jobs.VolumeData(np.ascontiguousarray(np.asarray(image.dataobj, np.float32).transpose(2, 1, 0)), image.affine)


def scene_for(client: SegXClient, model: str, study: Path):
    """A slicer-core scene with one slice view, the study and the module's result nodes."""
    scene = slicer.vtkMRMLScene()
    composite = scene.AddNode(slicer.vtkMRMLSliceCompositeNode())
    composite.SetLayoutName("Red")
    source = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode" if study.suffix == ".png" else "vtkMRMLScalarVolumeNode", study.name)
    data = load_study(study)
    mrml.set_voxels(source, data.array, data.ijk_to_ras)
    logic = SegXLogic(scene)
    logic.show(source, jobs.explain(JobContext(), client, model, data))
    return scene, logic, composite


def layer_over(background: np.ndarray, values: np.ndarray, display, opacity: float) -> np.ndarray:
    """Composite one heatmap slice ``values`` ``(J, I)`` over an RGB slice ``(J, I, 3)`` like a
    slice view: the display node's colour table (RGBA) over its window, transparent below
    its lower threshold, alpha times the foreground ``opacity``."""
    table = colour_entries(display)
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    index = np.clip(np.round((values - low) / (high - low) * (len(table) - 1)), 0, len(table) - 1).astype(int)
    rgba = table[index]
    alpha = rgba[..., 3] * (values >= display.GetLowerThreshold()) * opacity
    return background * (1 - alpha[..., None]) + rgba[..., :3] * alpha[..., None]


def colour_entries(display) -> np.ndarray:
    """RGBA entries ``(N, 4)`` of a display node's colour table node."""
    lookup = display.GetColorNode().GetLookupTable()
    return np.array([lookup.GetTableValue(i) for i in range(lookup.GetNumberOfTableValues())])


def axial_view(ijk_to_ras: np.ndarray):
    """Flips that show a ``(J, I)`` slice of an axis-aligned volume as Slicer's axial view
    does: patient right on the left of the screen, anterior up."""
    if not np.allclose(ijk_to_ras[:3, :3], np.diag(np.diag(ijk_to_ras[:3, :3]))):
        raise ValueError("the figure handles axis-aligned volumes only")
    flip_columns = ijk_to_ras[0, 0] > 0  # I towards patient left -> left to right on screen
    flip_rows = ijk_to_ras[1, 1] > 0  # J towards anterior -> up on screen
    return lambda a: a[:: -1 if flip_rows else 1, :: -1 if flip_columns else 1]


def render(client: SegXClient, studies, out: Path) -> None:
    figure, axes = plt.subplots(len(studies), 4, figsize=(13, 3.6 * len(studies)), gridspec_kw={"width_ratios": [1, 1, 1, 0.06]})
    for row, (model, study) in zip(np.atleast_2d(axes), studies):
        scene, logic, composite = scene_for(client, model, study)
        source = scene.GetNodeByID(composite.GetBackgroundVolumeID())
        voxels = mrml.volume_data(source).array
        slices = {layer: mrml.volume_data(node).array for layer, node in logic.heatmaps.items()}
        k = int(np.argmax(slices["segx"].reshape(len(voxels), -1).sum(1)))  # the slice with most SegX evidence
        if voxels.ndim == 4:  # colour photograph: rows top-down, as Slicer shows a loaded PNG
            background = voxels[k] / 255.0
            orient = lambda a: a  # noqa: E731
        else:  # Slicer's CT-Abdomen window (W 350, L 40) for CT, else the 1-99th percentile
            low, high = (-135.0, 215.0) if voxels.min() < -500 else np.percentile(voxels, (1, 99))
            background = np.repeat(np.clip((voxels[k] - low) / (high - low), 0, 1)[..., None], 3, axis=2)
            orient = axial_view(mrml.ijk_to_ras(source))
        opacity = composite.GetForegroundOpacity()
        readout = logic.explanation.readout
        panels = [(f"{study.name} ({model})\npredicted {readout.prediction_text()}, SegU {readout.certainty_text()}", background)]
        for layer, title in (("explanation", "raw explanation layer"), ("segx", "SegX layer, segmentation outline")):
            display = logic.heatmaps[layer].GetDisplayNode()
            panels.append((title, layer_over(background, slices[layer][k], display, opacity)))
        for axis, (title, picture) in zip(row[:3], panels):
            axis.imshow(orient(picture), interpolation="nearest")
            axis.set_title(title, fontsize=9)
            axis.axis("off")
        region = logic.edited_labels()[k]  # exported from the segmentation node
        row[2].contour(orient((region > 0).astype(float)), levels=[0.5], colors="cyan", linewidths=0.8)
        display = logic.heatmaps["segx"].GetDisplayNode()
        table = colour_entries(display)
        legend = 0.5 * (1 - table[:, None, 3:]) + table[:, None, :3] * table[:, None, 3:]  # over grey, alpha included
        row[3].imshow(legend[::-1], aspect="auto", extent=(0, 1, display.GetWindowLevelMin(), display.GetWindowLevelMax()))
        row[3].set_xticks([])
        row[3].yaxis.tick_right()
        row[3].set_title("SegX", fontsize=9)
    figure.suptitle("MRML layers built by SegXSlicerLib in a slicer-core scene, drawn with numpy/matplotlib (not a Slicer screenshot)", fontsize=10)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--study2d", type=Path, required=True)
    parser.add_argument("--study3d", type=Path, required=True)
    parser.add_argument("--model2d", default="demo2d")
    parser.add_argument("--model3d", default="demo3d")
    parser.add_argument("--out", type=Path, default=Path("docs/images/slicer_layers.png"))
    args = parser.parse_args()
    render(SegXClient(args.url), [(args.model2d, args.study2d), (args.model3d, args.study3d)], args.out)


if __name__ == "__main__":
    main()
