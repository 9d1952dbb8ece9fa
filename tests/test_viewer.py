"""OHIF in a real browser on the product's own results: a local Orthanc with DICOMweb holds
a phantom CT series and what ``segx explain --dicom-out`` made of it (run here, nothing
patched); ``segx.formats.viewer`` serves the pinned OHIF build from the npm registry on
loopback with its same-origin DICOMweb proxy; Debian's Chromium, driven by Playwright
(``executable_path``: no browser download), opens the study. Assertions are on the page's
text and on the requests it makes, not on pixels. Set ``SEGX_SCREENSHOTS=folder`` to keep
a screenshot of each view (the README's come from there)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from conftest import AFFINE_3D
from dicom_corpus import report_items

from segx.demo.phantoms import phantom_3d
from segx.formats.dicom import write_series
from segx.formats.pacs import local_orthanc, orthanc_problem

CHROMIUM = shutil.which("chromium")
try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
except ImportError:  # the dev extra installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(orthanc_problem() is not None, reason=f"{orthanc_problem()} (.ci/run installs it)"),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -e .[dev])"),
]
#: How long OHIF may take to show a view (2-core CI machine, WebGL in software).
VIEW_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A local PACS holding a phantom CT series and the product's results on it."""
    from segx.formats.viewer import ViewerServer

    root = tmp_path_factory.mktemp("viewer")
    phantom = phantom_3d(np.random.default_rng(5), 1, True)
    write_series(phantom.image, AFFINE_3D, root / "ct", series_description="phantom CT")
    segx = Path(sys.executable).parent / "segx"
    made = subprocess.run([str(segx), "explain", str(root / "ct"), "--model", "demo3d", "--dicom-out", str(root / "results")],
                          capture_output=True, text=True, check=True)  # fmt: skip
    summary = json.loads(made.stdout)
    objects = {Path(f).stem: pydicom.dcmread(f) for f in summary["dicom_files"]}
    with local_orthanc(root / "orthanc") as pacs:
        pacs.upload(sorted((root / "ct").iterdir()))
        pacs.upload(summary["dicom_files"])
        yield SimpleNamespace(pacs=pacs, summary=summary, objects=objects, study=str(objects["seg"].StudyInstanceUID))


@pytest.fixture(scope="module", params=["ohif", "monailabel"])
def viewer(request, stored):
    """Each OHIF build ``segx viewer`` serves (the pinned release; MONAI Label's own) on
    that PACS, and a headless Chromium."""
    from segx.formats.viewer import ViewerServer

    server = ViewerServer(stored.pacs.dicomweb, request.param).start()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield SimpleNamespace(**vars(stored), build=request.param, server=server, browser=browser)
        finally:
            browser.close()
            server.shutdown()


def _open(viewer, text: str, series: str | None = None, name: str = "view"):
    """Open the study, double-click the series whose description is ``series`` into the
    viewport (as a reader does), and wait until the page's text holds ``text``; returns
    ``(page text, URLs requested)``."""
    page = viewer.browser.new_page(viewport={"width": 1400, "height": 900})
    # a returning reader: OHIF's first-visit tour (ui-next Onboarding, localStorage "shownTours") was seen
    page.add_init_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        page.goto(viewer.server.study_url(viewer.study))
        page.wait_for_function("t => document.body.textContent.includes(t)", arg="SegX report", timeout=VIEW_TIMEOUT_MS)
        if series:
            page.get_by_text(series).first.dblclick()
        page.wait_for_function("t => document.body.textContent.includes(t)", arg=text, timeout=VIEW_TIMEOUT_MS)
        if name == "segmentation":  # the Segmentation panel: opened by the SEG's loading in some builds, by its button in others
            label = viewer.objects["seg"].SegmentSequence[0].SegmentLabel
            for waited in (5_000, VIEW_TIMEOUT_MS // 3, VIEW_TIMEOUT_MS // 3, VIEW_TIMEOUT_MS // 3):
                try:
                    page.wait_for_function("t => document.body.textContent.includes(t)", arg=label, timeout=waited)
                    break
                except PlaywrightTimeout:
                    page.click("[data-cy='panelSegmentation-btn']")
            else:
                raise AssertionError(f"the segment label {label!r} never appeared")
        page.wait_for_timeout(2000)  # let the viewport finish drawing before reading and screenshots
        if os.environ.get("SEGX_SCREENSHOTS"):
            if page.locator("[data-cy='confirm-and-hide-button']").count():  # OHIF's investigational-use banner
                page.click("[data-cy='confirm-and-hide-button']")
                page.wait_for_timeout(500)
            page.screenshot(path=str(Path(os.environ["SEGX_SCREENSHOTS"]) / f"{viewer.build}_{name}.png"))
        return page.evaluate("document.body.textContent"), requested
    finally:
        page.close()


def test_the_study_lists_the_region_both_maps_and_the_report(viewer):
    text, requested = _open(viewer, "SegX report", name="study")
    for name in ("seg", "segx", "explanation", "sr"):
        assert viewer.objects[name].SeriesDescription[:24] in text, name
    # the PACS is reached through the viewer's own origin only (MONAI Label's build also asks the web for fonts)
    assert not any(url.startswith(viewer.pacs.url) for url in requested)
    assert any(url.startswith(f"{viewer.server.url}/dicom-web/") for url in requested)


def test_opening_the_seg_shows_its_segment_label(viewer):
    text, _ = _open(viewer, "SegX report", series=viewer.objects["seg"].SeriesDescription, name="segmentation")
    assert viewer.objects["seg"].SegmentSequence[0].SegmentLabel in text


def test_opening_the_segx_map_series_fetches_the_segx_map_not_the_raw_one(viewer):
    segx, raw = viewer.objects["segx"], viewer.objects["explanation"]
    _, requested = _open(viewer, "SegX map", series=segx.SeriesDescription[:24], name="segx_map")
    assert any(str(segx.SOPInstanceUID) in url for url in requested)
    assert not any(str(raw.SOPInstanceUID) in url for url in requested)


def test_opening_the_report_shows_certainty_level_and_prediction_beside_the_outline(viewer):
    summary, sr = viewer.summary, viewer.objects["sr"]
    text, requested = _open(viewer, "SegU certainty:", series=sr.SeriesDescription, name="report")
    assert f"SegU certainty: {summary['segu']['value']:.2f}" in text
    assert f"Probability of {summary['predicted']}: {100 * summary['probabilities'][summary['predicted']]:.2f} %" in text
    if viewer.build == "ohif":  # 3.10 draws no Comment items (README: what MONAI Label's build lacks)
        assert f"Predicted class: {summary['predicted']}" in text
        assert f"SegU certainty level: {summary['segu']['level'] or 'not calibrated'}" in text
    # the outline's image (the key slice) was fetched to draw it on
    outline = next(item for item in report_items(sr) if item.ValueType == "SCOORD")
    key = outline.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert any(key in url for url in requested)
