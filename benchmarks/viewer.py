"""OHIF on the product's DICOM results for a 512 x 512 x 300 CT: seconds from "study opened"
to the SegX overlay and to the SegU readout, beside the seconds to the CT alone.

The CT is ``pacs_roundtrip.ct_volume`` (the demo3d phantom resampled, 0.25 x 0.25 x 0.5 mm),
written as a CT series; ``segx explain --model demo3d --dicom-out`` makes its results (SEG,
SegX and raw Parametric Maps, SR); both go into a local Orthanc with DICOMweb (loopback);
``segx.formats.viewer`` serves the OHIF build; Debian's Chromium (Playwright, headless,
software WebGL) opens the study in a fresh browser context each time (no cache):

- ``ct``: from opening the study URL to the CT drawn in the viewport (its window/level
  overlay shown);
- ``segx_map``: from opening the study URL, double-clicking the SegX map series, to the
  last byte of the map instance *and* of every CT slice (OHIF shows a Parametric Map fused
  over the CT volume), and two animation frames after (the overlay drawn: an upper bound,
  since the volume is drawn while it streams);
- ``report``: from opening the study URL, double-clicking the SR series, to the SegU
  certainty readout in the page.

Views are interleaved over the rounds; ratios are of medians. Bytes are the response
bodies the browser received for the CT series and for each result object, in each view
(the overlay needs the whole CT volume, the CT view only the slices on screen).

    .venv/bin/python benchmarks/viewer.py [--quick] [--build ohif|monailabel]

Last line: ``RESULT {json}`` with ``ct_s``, ``segx_map_s``, ``report_s`` (medians),
``segx_map_ratio``, ``report_ratio``, ``bytes_ct``, ``bytes_segx_map``, ``bytes_report``,
``bytes_ct_for_segx_map``, ``bytes_ct_for_report`` (the last round's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import add_timing_arguments, checked_repeats, cpu_name
from pacs_roundtrip import SPACING, ct_volume

APP = Path(__file__).resolve().parent.parent / "monailabel_app"
sys.path.insert(0, str(APP))

TIMEOUT_MS = 600_000


def _view(browser, server, study: str, view: str, uids: dict, slices: int) -> tuple[float, int, int]:
    """Seconds from opening the study to ``view`` shown, the response bytes of the CT
    series and those of the view's own object (``uids``: ``ct`` -> the CT's
    SeriesInstanceUID, ``segx_map`` -> the map's SOPInstanceUID, ``report`` -> the SR's
    SeriesInstanceUID: OHIF reads an SR from its series' metadata); ``slices``: the CT's
    instance count."""
    from playwright.sync_api import Error

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
    page = context.new_page()
    received: list[tuple[str, int]] = []

    def count(request) -> None:
        try:
            received.append((request.url, request.sizes()["responseBodySize"]))
        except Error:  # finished while the context closes: after the measured point, not counted
            pass

    page.on("requestfinished", count)
    wait = lambda condition, arg=None: page.wait_for_function(condition, arg=arg, timeout=TIMEOUT_MS)  # noqa: E731
    start = time.perf_counter()
    page.goto(server.study_url(study))
    if view == "ct":
        wait("() => (document.querySelector(\"[data-cy='viewport-overlay-bottom-left']\")?.textContent || '').includes('W:')")
    else:
        wait("t => document.body.textContent.includes(t)", "SegX report")
        page.get_by_text("SegX map of" if view == "segx_map" else "SegX report").first.dblclick()
        if view == "segx_map":  # the map's instance itself (not only its series' metadata) and every CT slice under it
            ct_frames = lambda: {url.split("/instances/")[1].split("/")[0] for url, _ in received if uids["ct"] in url and "/frames/" in url}  # noqa: E731
            while not any(uids["segx_map"] in url for url, _ in received) or len(ct_frames()) < slices:
                page.wait_for_timeout(50)
            page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        else:
            wait("t => document.body.textContent.includes(t)", "SegU certainty:")
    seconds = time.perf_counter() - start
    context.close()
    ct = sum(size for url, size in received if uids["ct"] in url)
    return seconds, ct, (ct if view == "ct" else sum(size for url, size in received if uids[view] in url))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_arguments(parser, "unused (the browser's threads are its own)", "1 round instead of 7")
    parser.add_argument("--build", choices=["ohif", "monailabel"], default="ohif")
    args = parser.parse_args()
    repeats = checked_repeats(parser, args) if not args.quick else 1
    import pydicom
    from playwright.sync_api import sync_playwright

    from segx.formats.dicom import write_series
    from segx.formats.pacs import local_orthanc
    from segx.formats.viewer import ViewerServer

    work = Path(tempfile.mkdtemp(prefix="segx_viewer_"))
    try:
        affine = np.diag([*(-s for s in SPACING[:2]), SPACING[2], 1.0])
        files = write_series(ct_volume(args.seed), affine, work / "ct", series_description="CT 512 x 512 x 300")
        made = subprocess.run([str(Path(sys.executable).parent / "segx"), "explain", str(work / "ct"), "--model", "demo3d",
                               "--dicom-out", str(work / "results")], capture_output=True, text=True, check=True)  # fmt: skip
        results = {Path(f).stem: pydicom.dcmread(f, stop_before_pixels=True) for f in json.loads(made.stdout)["dicom_files"]}
        uids = {"ct": str(pydicom.dcmread(str(files[0]), stop_before_pixels=True).SeriesInstanceUID),
                "segx_map": str(results["segx"].SOPInstanceUID), "report": str(results["sr"].SeriesInstanceUID)}  # fmt: skip
        study = str(results["sr"].StudyInstanceUID)
        with local_orthanc(work / "orthanc") as pacs:
            pacs.upload(files)
            pacs.upload(json.loads(made.stdout)["dicom_files"])
            server = ViewerServer(pacs.dicomweb, args.build).start()
            seconds: dict[str, list[float]] = {view: [] for view in uids}
            sizes: dict[str, int] = {}  # view -> bytes of its own object; ct_in_VIEW -> CT bytes fetched in that view
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
                for round_number in range(repeats):
                    for view in uids:
                        took, sizes[f"ct_in_{view}"], sizes[view] = _view(browser, server, study, view, uids, len(files))
                        seconds[view].append(took)
                        print(f"round {round_number + 1}/{repeats} {view}: {took:.2f} s, its object {sizes[view] / 2**20:.1f} MiB, "
                              f"CT {sizes[f'ct_in_{view}'] / 2**20:.1f} MiB", flush=True)  # fmt: skip
                browser.close()
            server.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {view: statistics.median(values) for view, values in seconds.items()}
    result = {"ct_s": medians["ct"], "segx_map_s": medians["segx_map"], "report_s": medians["report"],
              "segx_map_ratio": medians["segx_map"] / medians["ct"], "report_ratio": medians["report"] / medians["ct"],
              "bytes_ct": sizes["ct"], "bytes_segx_map": sizes["segx_map"], "bytes_report": sizes["report"],
              "bytes_ct_for_segx_map": sizes["ct_in_segx_map"], "bytes_ct_for_report": sizes["ct_in_report"],
              "build": args.build, "rounds": repeats, "cpu": cpu_name()}  # fmt: skip
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
