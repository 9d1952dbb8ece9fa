"""``segx explain-batch``: SegX maps and a JSON summary for every study of a worklist,
written as each batch finishes, resumable, in-process or on Ray.

Inputs are image files (NIfTI, NRRD, MHA, PNG, JPEG, TIFF, DICOM) and folders: a folder that
holds DICOM files is one series (one study); any other folder contributes its image files
and its sub-folders that are DICOM series (one level down). Each study gets a folder
``OUT/<study id>/`` (the file or series folder name, characters other than letters, digits,
``.``, ``_``, ``-`` replaced by ``_``) with ``result.json`` (what ``segx explain`` prints)
and the requested layers of the predicted class as NRRD or NIfTI, or, for DICOM series with
``--format dicom``, a DICOM SEG, two Parametric Maps and an SR (:mod:`segx.formats.dicom`).

``OUT/results.jsonl`` (:class:`segx.evaluation.rows.RowFile`) gets one row per study as its batch
finishes: the summary and the files written, or ``error`` (an unreadable image, a bad
series, a model failure): the other studies go on, and running the same command again
retries the failed studies and skips the finished ones. ``OUT/worklist.csv`` lists every
study, lowest SegU certainty first (the ones a radiologist should look at first).
"""

from __future__ import annotations

import csv
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .rows import RowFile

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
#: ``--format`` -> suffix of the layer files (``dicom``: DICOM objects instead)
FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz", "dicom": ".dcm"}
#: studies per batch: 2D networks run on a batch at once; a 3D volume's maps take GBs, one at a time
BATCH_SIZE = {2: 16, 3: 1}


@dataclass(frozen=True)
class Item:
    """One study of a worklist: its id (the output folder's name) and its image file or
    DICOM series folder."""

    image_id: str
    path: str
    series: bool


def _is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _is_series(folder: Path) -> bool:
    return any(_is_dicom_file(p) for p in folder.iterdir() if p.is_file())


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _study_id(path: Path) -> str:
    name = path.name
    if path.is_file():
        suffix = next((s for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True) if name.lower().endswith(s)), "")
        name = name[: len(name) - len(suffix)]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "study"


def find_items(paths: list[str | Path]) -> list[Item]:
    """The studies named by ``paths`` (files and folders, see the module docstring), in
    the order given (a folder's entries sorted by name).

    Raises:
        ValueError: a path that does not exist, a file that is not an image, two studies
            with the same id, or no study at all.
    """
    items, origin = [], {}
    for given in map(Path, paths):
        path = given.resolve()
        if not path.exists():
            raise ValueError(f"input not found: {given}")
        if path.is_file():
            if not (_is_image(path) or _is_dicom_file(path)):
                raise ValueError(f"{given} is not an image file ({', '.join(IMAGE_SUFFIXES)}) or a DICOM file")
            found = [Item(_study_id(path), str(path), False)]
        elif _is_series(path):
            found = [Item(_study_id(path), str(path), True)]
        else:
            entries = sorted(path.iterdir())
            found = [Item(_study_id(p), str(p), False) for p in entries if _is_image(p)]
            found += [Item(_study_id(p), str(p), True) for p in entries if p.is_dir() and _is_series(p)]
        for item in found:
            if item.image_id in origin:
                raise ValueError(f"two studies would share the output folder {item.image_id!r}: {origin[item.image_id]} and {item.path}")
            origin[item.image_id] = item.path
        items += found
    if not items:
        raise ValueError(f"no image file or DICOM series found in {', '.join(map(str, paths))}")
    return items


def explain_items(pair, items: list[dict], out: str, method: str, layers: list[str], file_format: str, device: str = "cpu",
                  provenance=None) -> list[dict]:  # fmt: skip
    """Explain a batch of worklist items (dicts of :class:`Item`'s fields) and write each
    study's files under ``out``; one row per item: ``image_id``, the
    :func:`~segx.formats.export.result_summary`, ``files`` (relative to ``out``), or ``error``.
    The networks run once on the batch (:func:`segx.engine.explain_many`); when that fails,
    study by study, so that one bad study fails alone."""
    from ..formats.dicom import read_series
    from ..engine import explain_many
    from ..imageio import read_image

    rows, readable = {}, []
    for item in items:
        try:
            series = read_series(item["path"]) if item["series"] else None
            image = series.image() if series is not None else read_image(item["path"])
            readable.append((item, image, series))
        except Exception as error:  # one study's failure, of any kind, must not stop an archive: it is recorded
            rows[item["image_id"]] = _failure(item, error)
    try:
        results = explain_many(pair, [image for _, image, _ in readable], classes="predicted", method=method, device=device)
    except Exception:  # some study of the batch cannot be explained: study by study finds which
        results = None
    for number, (item, image, series) in enumerate(readable):
        try:
            result = results[number] if results else explain_many(pair, [image], classes="predicted", method=method, device=device)[0]
            rows[item["image_id"]] = _write_study(result, series, Path(out), item["image_id"], layers, file_format, provenance, pair.certainty_variant)
        except Exception as error:
            rows[item["image_id"]] = _failure(item, error)
    return [rows[item["image_id"]] for item in items]


def _failure(item: dict, error: Exception) -> dict:
    message = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
    return {"image_id": item["image_id"], "error": message}


def _write_study(result, series, out: Path, image_id: str, layers: list[str], file_format: str, provenance, variant: str) -> dict:
    """Write one study's files into ``out/image_id`` and return its row."""
    from ..formats.export import result_summary, write_dicom, write_layers

    folder = out / image_id
    if file_format == "dicom":
        if series is None:
            raise ValueError("--format dicom needs a DICOM series (the objects reference its instances); this study is an image file")
        files = write_dicom(result, series, provenance, variant, folder)
    else:
        files = write_layers(result, folder, layers, [result.predicted], FORMATS[file_format])
    summary = {"image_id": image_id, **result_summary(result), "files": [str(f.relative_to(out)) for f in files]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_worklist(path: Path, rows: list[dict]) -> None:
    """``worklist.csv``: every study, lowest SegU certainty first, failed studies last."""
    def certainty(row):
        return row["segu"]["value"] if "segu" in row else float("inf")

    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image_id", "predicted", "probability", "segu_certainty", "segu_variant", "level", "error"])
        for row in sorted(rows, key=certainty):
            if "error" in row:
                writer.writerow([row["image_id"], "", "", "", "", "", row["error"]])
                continue
            segu = row["segu"]
            probability = row["probabilities"][row["predicted"]]
            writer.writerow([row["image_id"], row["predicted"], probability, round(segu["value"], 6), segu["variant"], segu["level"] or "not calibrated", ""])


def main(model: str, inputs: list[str], out: str, method: str, layers: list[str], file_format: str, device: str = "cpu",
         ray_address: str | None = None) -> int:  # fmt: skip
    """``segx explain-batch``: prints progress, then ``BATCH {json}`` (counts, seconds,
    files); exit status 1 when a study failed (its error is in ``results.jsonl`` and
    ``worklist.csv``; running again retries it)."""
    from ..config import load_model_pair, model_config_file, weights_digest
    from ..formats.dicom import Provenance

    start = time.perf_counter()
    if file_format not in FORMATS:
        raise ValueError(f"unknown format {file_format!r}; choose one of {sorted(FORMATS)}")
    config_file = model_config_file(model).resolve()
    items = find_items(inputs)
    if file_format == "dicom" and not all(item.series for item in items):
        files = [item.path for item in items if not item.series]
        raise ValueError(f"--format dicom needs DICOM series folders; {len(files)} inputs are image files, e.g. {files[0]}")
    pair = load_model_pair(config_file)
    out_path = Path(out)
    identity = {"config": str(config_file), "weights_sha256": weights_digest(config_file), "method": method, "layers": sorted(layers),
                "format": file_format}  # fmt: skip
    rows = RowFile(out_path / "results.jsonl", identity)
    done = {row["image_id"] for row in rows.rows() if "error" not in row}
    todo = [item for item in items if item.image_id not in done]
    if len(todo) < len(items):
        print(f"resuming: {len(items) - len(todo)} of {len(items)} studies already in {rows.path}")
    options = dict(out=str(out_path.resolve()), method=method, layers=layers, file_format=file_format,
                   provenance=Provenance.of_config(config_file) if file_format == "dicom" else None)  # fmt: skip
    work, size = [vars(item) for item in todo], BATCH_SIZE[pair.spatial_dims]
    if ray_address:
        from .distributed import ray_rows

        batches = ray_rows(config_file, work, explain_items, options, ray_address, size)
    else:
        batches = (explain_items(pair, work[i : i + size], device=device, **options) for i in range(0, len(work), size))
    with tqdm(total=len(todo), desc="explaining", unit="study") as progress:
        for batch in batches:
            rows.append(batch)
            progress.update(len(batch))
    wanted = {item.image_id for item in items}
    final = [row for row in rows.rows() if row["image_id"] in wanted]
    write_worklist(out_path / "worklist.csv", final)
    failed = [row for row in final if "error" in row]
    summary = {"studies": len(items), "explained_now": len(todo) - len(failed),  # a failed study is always retried, so in todo
               "already_done": len(items) - len(todo), "failed": len(failed), "seconds": round(time.perf_counter() - start, 1),
               "results": str(rows.path), "worklist": str(out_path / "worklist.csv")}  # fmt: skip
    for row in failed[:10]:
        print(f"failed: {row['image_id']}: {row['error']}")
    print("BATCH " + json.dumps(summary))
    return 1 if failed else 0
