"""A CT series through a real PACS: fetch + explain + store vs the same explain from a local NIfTI.

The CT is a 512 x 512 x 300 CT series (the demo3d phantom resampled, 0.25 x 0.25 x 0.5 mm,
int16 with rescale), stored in a local Orthanc with its DICOMweb plugin (started here, on
loopback). The model pair is the shipped ``demo3d``.

- pacs: what the server does for a ``NAME_segx`` request on a PACS series, in-process with
  the server's own classes: ``SegXDicomWebDatastore.get_image_uri`` (WADO-RS fetch of the
  300 instances, the series checks, the volume written as NIfTI into an empty cache),
  ``explain``, ``segx.formats.dicom.result_objects`` (SEG, 2 float32 Parametric Maps, SR), each
  sent by ``SegXDicomWebDatastore.store`` (STOW-RS, in its upload thread) while the next is
  built (``build_objects``; ``store_rest`` is the wait for the uploads after the last);
- local: ``explain`` of the same volume from a local NIfTI, writing the equivalent layers
  (SegX map, raw map, label map) as gzip NRRD.

Rounds are interleaved; the ratio is of medians of wall time.

    .venv/bin/python benchmarks/pacs_roundtrip.py [--quick] [--threads 2]

Last line: ``RESULT {json}`` with ``ratio`` (goal <= 1.5) and the pacs stages' medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import add_timing_arguments, checked_repeats, cpu_name

APP = Path(__file__).resolve().parent.parent / "monailabel_app"
sys.path.insert(0, str(APP))

SHAPE = (512, 512, 300)
SPACING = (0.25, 0.25, 0.5)


def ct_volume(seed: int) -> np.ndarray:
    """The demo3d phantom resampled to :data:`SHAPE` (linear), ``(X, Y, Z)`` in HU."""
    from scipy.ndimage import zoom

    from segx.demo.phantoms import phantom_3d

    phantom = phantom_3d(np.random.default_rng(seed), 1, True)
    factors = [t / s for t, s in zip(SHAPE, phantom.image.shape)]
    return np.round(zoom(phantom.image, factors, order=1)).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, "torch threads", "2 rounds instead of 7")
    args = parser.parse_args()
    repeats = checked_repeats(parser, args)

    import torch
    from lib.dicomweb import SegXDicomWebClient, SegXDicomWebDatastore
    from segx import explain, load_model_pair
    from segx.formats.dicom import Provenance, result_objects, write_series
    from segx.formats.export import save_volume
    from segx.formats.pacs import local_orthanc

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="pacs_roundtrip_"))
    affine = np.diag([*SPACING, 1.0])
    volume = ct_volume(args.seed)
    files = write_series(volume, affine, work / "series", series_description="benchmark CT")
    save_volume(work / "local.nii.gz", volume, affine)
    config = APP / "model_configs" / "demo3d.yaml"
    pair = load_model_pair(config)
    provenance = Provenance.of_config(config)
    stages = {"fetch_check_convert": [], "explain": [], "build_objects": [], "store_rest": [], "pacs": [], "local": []}
    try:
        with local_orthanc(work / "orthanc") as pacs:
            pacs.upload(files)
            (series,) = pacs.series()
            series_uid = series["0020000E"]["Value"][0]
            for round_number in range(repeats):
                print(f"round {round_number + 1}/{repeats}", file=sys.stderr, flush=True)
                start = time.perf_counter()
                result = explain(pair, work / "local.nii.gz")
                k = result.classes.index(result.predicted)
                save_volume(work / "out" / "segx.nrrd", result.segx[k], result.affine)
                save_volume(work / "out" / "explanation.nrrd", result.explanation_normalised[k], result.affine)
                save_volume(work / "out" / "segmentation.nrrd", result.segmentation, result.affine, dtype=np.uint8)
                stages["local"].append(time.perf_counter() - start)
                del result

                cache = work / f"cache{round_number}"
                datastore = SegXDicomWebDatastore(SegXDicomWebClient(pacs.dicomweb), {"Modality": "CT"}, cache_path=str(cache))
                marks = [time.perf_counter()]
                path = datastore.get_image_uri(series_uid)
                marks.append(time.perf_counter())
                result = explain(pair, path)
                marks.append(time.perf_counter())
                objects = result_objects(result, result.predicted, datastore.series(series_uid), provenance, pair.certainty_variant, result.level)
                uploads = [datastore.store(dataset) for _, dataset in objects]  # as the server does: send one, build the next
                marks.append(time.perf_counter())
                for upload in uploads:
                    upload.result()
                marks.append(time.perf_counter())
                for name, begin, end in zip(("fetch_check_convert", "explain", "build_objects", "store_rest"), marks, marks[1:]):
                    stages[name].append(end - begin)
                stages["pacs"].append(marks[-1] - marks[0])
                datastore._observer.stop()  # MONAI Label's datastore watches its cache folder
                datastore._observer.join()
                del result, objects, datastore
                shutil.rmtree(cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: round(statistics.median(times), 2) for name, times in stages.items()}
    print(f"{'stage':<22} median s   (rounds: {repeats}, {args.threads} torch threads, {cpu_name()})")
    for name, value in medians.items():
        print(f"{name:<22} {value:8.2f}")
    result = {
        "ratio": round(medians["pacs"] / medians["local"], 3),
        "pacs_s": medians["pacs"],
        "local_s": medians["local"],
        "stages_s": {k: v for k, v in medians.items() if k not in ("pacs", "local")},
        "shape": list(SHAPE),
        "rounds": repeats,
        "threads": args.threads,
        "cpu": cpu_name(),
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
