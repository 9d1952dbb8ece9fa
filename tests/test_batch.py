"""``segx explain-batch``: a worklist of image files and DICOM series explained into one
folder per study, the same maps and figures as ``segx explain`` study by study, a bad study
failing alone, resumable, and a worklist ordered lowest certainty first."""

from __future__ import annotations

import csv
import json
import shutil

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_corpus import report_values

from segx.evaluation.batch import find_items
from segx.cli import main
from segx.config import load_model_pair, model_config_file
from segx.formats.dicom import write_series
from segx.engine import explain
from segx.demo.phantoms import generate
from segx.evaluation.rows import RowFile


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    data = tmp_path_factory.mktemp("worklist")
    generate(data, 2, 20, seed=3, split="test", progress=False)
    return data / "images"


def _batch_summary(printed: str) -> dict:
    return json.loads(next(line for line in printed.splitlines() if line.startswith("BATCH "))[6:])


def test_every_study_gets_the_maps_and_figures_of_segx_explain(images, tmp_path, capsys):
    assert main(["explain-batch", str(images), "--model", "demo2d", "--out", str(tmp_path / "out"), "--layers", "segx", "explanation"]) == 0
    summary = _batch_summary(capsys.readouterr().out)
    assert summary["studies"] == summary["explained_now"] == 20 and summary["failed"] == 0
    pair = load_model_pair(model_config_file("demo2d"))
    predicted = set()
    for image in sorted(images.iterdir()):
        alone = explain(pair, image, classes="predicted")
        predicted.add(alone.predicted)
        folder = tmp_path / "out" / image.stem
        written = json.loads((folder / "result.json").read_text())
        assert written["predicted"] == alone.predicted_label
        assert written["segu"]["value"] == pytest.approx(alone.segu.value, abs=1e-6)
        assert sorted(written["files"]) == sorted([f"{image.stem}/segx_{alone.predicted_label}.nrrd", f"{image.stem}/explanation_{alone.predicted_label}.nrrd"])
        heatmap = sitk.ReadImage(str(folder / f"segx_{alone.predicted_label}.nrrd"))
        np.testing.assert_allclose(sitk.GetArrayFromImage(heatmap).T, alone.map_of("segx", alone.predicted).numpy(), atol=1e-6)
        assert heatmap.GetSize() == alone.segx.shape[1:]
    assert predicted == {0, 1}, "both classes are predicted for some study: the map written is the prediction's"


def test_a_bad_study_fails_alone_is_listed_last_and_is_retried_on_the_next_run(images, tmp_path, capsys):
    worklist = tmp_path / "images"
    shutil.copytree(images, worklist)
    (worklist / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    assert main(["explain-batch", str(worklist), "--model", "demo2d", "--out", str(out)]) == 1
    summary = _batch_summary(capsys.readouterr().out)
    assert (summary["explained_now"], summary["failed"]) == (20, 1)
    with open(out / "worklist.csv", newline="") as stream:
        listed = list(csv.DictReader(stream))
    assert [row["image_id"] for row in listed][-1] == "broken" and "cannot read broken.png" in listed[-1]["error"]
    certainties = [float(row["segu_certainty"]) for row in listed[:-1]]
    assert len(certainties) == 20 and certainties == sorted(certainties), "lowest certainty first"

    shutil.copy(images / sorted(p.name for p in images.iterdir())[0], worklist / "broken.png")  # the file is mended
    assert main(["explain-batch", str(worklist), "--model", "demo2d", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resuming: 20 of 21 studies already in" in printed
    summary = _batch_summary(printed)
    assert (summary["explained_now"], summary["already_done"], summary["failed"]) == (1, 20, 0)
    rows = RowFile(out / "results.jsonl", json.loads((out / "results.jsonl").read_text().splitlines()[0])["run"]).rows()
    assert len(rows) == 21 and not any("error" in row for row in rows)
    assert (out / "broken" / "segx_melanoma.nrrd").exists() or (out / "broken" / "segx_nevus.nrrd").exists()


def test_another_run_into_the_same_folder_is_refused(images, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["explain-batch", str(images), "--model", "demo2d", "--out", out]) == 0
    assert main(["explain-batch", str(images), "--model", "demo2d", "--out", out, "--method", "layercam"]) == 2
    assert "differs in: method" in capsys.readouterr().err


def test_dicom_series_get_seg_parametric_maps_and_a_report(tmp_path, capsys):
    data = tmp_path / "volumes"
    generate(data, 3, 2, seed=5, split="test", progress=False)
    from segx.imageio import read_image

    for number, volume in enumerate(sorted((data / "images").iterdir())):
        image = read_image(volume)
        write_series(image.array[0].numpy(), image.affine, tmp_path / "worklist" / f"patient {number}", patient_id=f"P{number}")
    assert main(["explain-batch", str(tmp_path / "worklist"), "--model", "demo3d", "--out", str(tmp_path / "out"), "--format", "dicom"]) == 0
    assert _batch_summary(capsys.readouterr().out)["explained_now"] == 2
    for number in range(2):
        folder = tmp_path / "out" / f"patient_{number}"  # the space is replaced
        written = json.loads((folder / "result.json").read_text())
        assert sorted(written["files"]) == sorted(f"patient_{number}/{name}.dcm" for name in ("seg", "segx", "explanation", "sr"))
        seg = hd.seg.segread(str(folder / "seg.dcm"))
        assert seg.PatientID == f"P{number}"
        numbers, codes = report_values(hd.sr.srread(str(folder / "sr.dcm")))
        assert any(value == pytest.approx(written["segu"]["value"], abs=1e-6) for value in numbers.values())
        assert written["predicted"] in codes.values()
    # image files cannot carry DICOM results: refused before any work
    assert main(["explain-batch", str(data / "images"), "--model", "demo3d", "--out", str(tmp_path / "x"), "--format", "dicom"]) == 2
    assert "needs DICOM series folders" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_inputs_are_refused_by_name_when_they_cannot_be_studies(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "scan.png").write_bytes(b"x")
    (tmp_path / "b" / "scan.nrrd").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="share the output folder 'scan'"):
        find_items([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="not an image file"):
        find_items([tmp_path / "notes.txt"])
    with pytest.raises(ValueError, match="not found"):
        find_items([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image file or DICOM series"):
        find_items([tmp_path / "empty"])
    assert [item.image_id for item in find_items([tmp_path / "a" / ".." / "a"])] == ["scan"]
    write_series(np.zeros((4, 4, 3), np.float32), np.eye(4), tmp_path / "series")
    (tmp_path / "series" / "x").mkdir()
    (item,) = find_items([tmp_path / "series" / "x" / ".."])  # a folder's own name, never "..": it cannot escape --out
    assert (item.image_id, item.series) == ("series", True)
