"""Labelled dataset folders, as ``segx train``, ``segx calibrate`` and ``segx evaluate`` read them.

A dataset folder holds ``images/<image_id>.*``, a mask folder (``masks/`` by default;
``<image_id>.*``, foreground > 0) and a labels CSV (``labels.csv`` by default, columns
``image_id`` and ``label``; other names by option; a ``file`` column, when present, names
the image file; a ``split`` column selects train / val / test). A label is a class name or
a class index (``0``, ``1``, ...). Labels the model does not know are counted and skipped.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Where a dataset folder keeps its labels and masks."""

    labels_csv: str = "labels.csv"
    image_column: str = "image_id"
    label_column: str = "label"
    mask_dir: str = "masks"


@dataclass
class Study:
    """One labelled image: its id, files and class index."""

    image_id: str
    image: Path
    mask: Path | None
    label: int


def _files_by_stem(folder: Path) -> dict[str, Path]:
    """``stem -> file`` for the files of ``folder``: the first by name of those named
    ``<stem>.*`` (every prefix before a ``.`` is a stem). One listing for all rows: a
    ``glob`` per row is quadratic in the folder's size (minutes for 10,000 studies)."""
    files: dict[str, Path] = {}
    for file in sorted(folder.iterdir()) if folder.is_dir() else []:
        for dot in (i for i, char in enumerate(file.name) if char == "."):
            files.setdefault(file.name[:dot], file)
    return files


def class_of(label: str, class_names: list[str]) -> int | None:
    """Index of a label given as a class name or as a class index; None when unknown."""
    if label in class_names:
        return class_names.index(label)
    if label.strip().isdigit() and int(label) < len(class_names):
        return int(label)
    return None


def find_studies(
    class_names: list[str],
    data: str | Path,
    layout: Layout = Layout(),
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[list[Study], dict[str, int]]:
    """Studies of ``data`` (in CSV order) and the count of rows skipped per unknown label;
    with ``limit``, a class-stratified random subset of that size (:func:`stratified_subset`).

    Raises:
        ValueError: missing CSV or column, a row without an image file, or no study left.
    """
    data = Path(data)
    csv_path = data / layout.labels_csv
    if not csv_path.is_file():
        present = sorted(p.name for p in data.glob("*.csv")) if data.is_dir() else []
        hint = f"; CSV files in {data}: {present} (name one with --labels-csv)" if present else ""
        raise ValueError(f"labels CSV not found: {csv_path}{hint}")
    with open(csv_path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    for column in (layout.image_column, layout.label_column):
        if rows and column not in rows[0]:
            raise ValueError(f"{csv_path} has no column {column!r}; columns: {list(rows[0])}")
    studies, unknown = [], {}
    images, masks = _files_by_stem(data / "images"), _files_by_stem(data / layout.mask_dir)
    for row in rows:
        if split is not None and row.get("split") != split:
            continue
        label = class_of(row[layout.label_column], class_names)
        if label is None:
            unknown[row[layout.label_column]] = unknown.get(row[layout.label_column], 0) + 1
            continue
        image_id = row[layout.image_column]
        image = data / "images" / row["file"] if row.get("file") else images.get(image_id)
        if image is None or not image.exists():
            raise ValueError(f"no image file for {image_id!r} in {data / 'images'}")
        studies.append(Study(image_id, image, masks.get(image_id), label))
    if not studies:
        raise ValueError(f"no study with a known label in {csv_path} (split {split!r}); unknown labels: {unknown}")
    return (stratified_subset(studies, limit, seed) if limit and limit < len(studies) else studies), unknown


def stratified_subset(studies: list[Study], limit: int, seed: int = 0) -> list[Study]:
    """``limit`` of the studies, drawn at random (``seed``) per class in proportion to the
    class's share (largest remainders; every class at least once when ``limit`` allows),
    in their original order. The first rows of a CSV are often one class only."""
    by_class: dict[int, list[Study]] = {}
    for study in studies:
        by_class.setdefault(study.label, []).append(study)
    shares = {c: limit * len(members) / len(studies) for c, members in by_class.items()}
    quotas = {c: int(share) for c, share in shares.items()}
    for c in sorted(shares, key=lambda c: quotas[c] - shares[c])[: limit - sum(quotas.values())]:
        quotas[c] += 1
    if limit >= len(by_class):
        for c in [c for c in quotas if quotas[c] == 0]:
            donor = max(quotas, key=quotas.get)  # has at least 2: the quotas add up to limit
            quotas[donor] -= 1
            quotas[c] = 1
    rng = random.Random(seed)
    chosen = {id(s) for c, members in by_class.items() for s in rng.sample(members, quotas[c])}
    return [s for s in studies if id(s) in chosen]
