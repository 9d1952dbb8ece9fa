"""Render ``docs/images/slicer_layers.png``: what Slicer's slice views show after a Run,
rendered by Slicer's own slice pipeline (``vtkMRMLSliceLogic`` of ``slicer-core``, see
``slice_view.py``), not drawn by us.

Not part of the Slicer module (it needs matplotlib, nibabel and a running server):

    make serve    # or any SegX server with the demo models
    .venv/bin/python SegXSlicer/Tools/render_slice_views.py --url http://127.0.0.1:8000 \\
        --study2d demo_output/studies/images/test2d_7_0001.png \\
        --study3d demo_output/studies/images/test3d_7_0001.nii.gz --out docs/images/slicer_layers.png \
        --view-out SegXSlicer/Screenshots/slice_view.png

For each study it builds a ``slicer-core`` scene with a Red slice view, runs the module's
Run job against the server (and fetches the raw layer as the panel does when it is
selected), shows the result with the module's ``SegXLogic``, outlines the clinical region,
and renders the view three times: the image alone, the raw explanation layer and the SegX
layer with the region outline, at the slice with the most SegX evidence. ``--view-out``
also writes the last of those for the 3D study as it is, pixel for pixel (the Extensions
Index's screenshot: Slicer's view, no figure around it).
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]
from slice_view import new_scene, outline_region, render, slice_logic  # noqa: E402
from SegXSlicerLib import display, jobs, mrml  # noqa: E402
from SegXSlicerLib.client import SegXClient  # noqa: E402
from SegXSlicerLib.logic import SegXLogic  # noqa: E402
from SegXSlicerLib.worker import JobContext  # noqa: E402


def load_study(path: Path) -> jobs.VolumeData:
    """A study as Slicer holds it: ``(K, J, I)`` (or ``(1, J, I, 3)`` for a photo) + IJK-to-RAS
    (a PNG as Slicer loads it: LPS identity, i.e. RAS diag(-1, -1, 1))."""
    if path.suffix == ".png":
        return jobs.VolumeData(np.asarray(Image.open(path).convert("RGB"))[None], np.diag([-1.0, -1.0, 1.0, 1.0]))
    image = nib.load(path)
    return jobs.VolumeData(np.ascontiguousarray(np.asarray(image.dataobj, np.float32).transpose(2, 1, 0)), image.affine)


def run_and_render(client: SegXClient, model: str, study: Path, size=(320, 320)):
    """The three renderings ``(image, raw layer, SegX layer + outline)`` (RGBA, row 0 at
    the top), the logic and the readout."""
    scene = new_scene()
    view = slice_logic(scene, "Red", size)
    data = load_study(study)
    source = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode" if data.array.ndim == 4 else "vtkMRMLScalarVolumeNode", study.name)
    mrml.set_voxels(source, data.array, data.ijk_to_ras)
    source.CreateDefaultDisplayNodes()
    if data.array.ndim == 3:  # Slicer's CT-Abdomen window (W 350, L 40) for CT, else the 1-99th percentile
        low, high = (-135.0, 215.0) if data.array.min() < -500 else np.percentile(data.array, (1, 99))
        source.GetDisplayNode().SetAutoWindowLevel(False)
        source.GetDisplayNode().SetWindowLevelMinMax(float(low), float(high))
    result = jobs.explain(JobContext(), client, model, data)
    result.heatmaps["explanation"] = jobs.fetch_layer(JobContext(), client, result, "explanation")
    logic = SegXLogic(scene)
    logic.show(source, result)
    k = int(np.argmax(result.heatmaps["segx"].reshape(len(data.array), -1).sum(1)))  # the slice with most SegX evidence
    centre = data.ijk_to_ras @ np.array([(data.array.shape[2] - 1) / 2, (data.array.shape[1] - 1) / 2, k, 1.0])
    view.FitSliceToBackground()
    view.SetSliceOffset(float(centre[2]))
    composite = view.GetSliceCompositeNode()
    composite.SetForegroundVolumeID(None)
    pictures = [render(view, fit=False)]
    for layer in ("explanation", "segx"):
        logic.update(layer=layer)
        if layer == "segx":
            outline_region(scene, view, logic.region, source)
        pictures.append(render(view, fit=False))
    return [p[::-1] for p in pictures], logic, result.readout


def figure(client: SegXClient, studies, out: Path, view_out: Path | None = None) -> None:
    fig, axes = plt.subplots(len(studies), 4, figsize=(13, 3.7 * len(studies)), gridspec_kw={"width_ratios": [1, 1, 1, 0.06]})
    for row, (model, study) in zip(np.atleast_2d(axes), studies):
        pictures, logic, readout = run_and_render(client, model, study)
        if view_out is not None and study is studies[-1][1]:
            view_out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(pictures[2][..., :3])).save(view_out)
            print(f"wrote {view_out}")
        titles = [f"{study.name} ({model})\npredicted {readout.prediction_text()}, SegU {readout.certainty_text()}",
                  "raw explanation layer", "SegX layer + clinical region outline"]  # fmt: skip
        for axis, title, picture in zip(row[:3], titles, pictures):
            axis.imshow(picture[..., :3], interpolation="nearest")
            axis.set_title(title, fontsize=9)
            axis.axis("off")
        settings = logic.settings
        low, high = logic.window("segx")
        table = display.colour_table(settings.colour_map)
        row[3].imshow(table[::-1, None, :3], aspect="auto", extent=(0, 1, low, high))
        row[3].axhspan(low, display.threshold_value((low, high), settings.threshold), color="white", alpha=0.85)
        row[3].set_xticks([])
        row[3].yaxis.tick_right()
        row[3].set_title("SegX\n(white:\nhidden)", fontsize=8)
    fig.suptitle("Rendered by Slicer's slice pipeline (vtkMRMLSliceLogic from slicer-core) after the module's Run; "
                 f"foreground opacity {logic.settings.opacity:g}, threshold {logic.settings.threshold:g} of the window", fontsize=9)  # fmt: skip
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--study2d", type=Path, required=True)
    parser.add_argument("--study3d", type=Path, required=True)
    parser.add_argument("--model2d", default="demo2d")
    parser.add_argument("--model3d", default="demo3d")
    parser.add_argument("--out", type=Path, default=Path("docs/images/slicer_layers.png"))
    parser.add_argument("--view-out", type=Path, help="also write the 3D study's SegX view with the outline, as rendered")
    args = parser.parse_args()
    figure(SegXClient(args.url), [(args.model2d, args.study2d), (args.model3d, args.study3d)], args.out, args.view_out)


if __name__ == "__main__":
    main()
