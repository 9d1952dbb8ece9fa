"""SegXSlicerLib without a server and without Slicer: multipart parsing, volume files,
readouts, display maths, background jobs, and the client's errors when the server is
down or silent."""

import io
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "SegXSlicer"))

from SegXSlicerLib import display, volumeio  # noqa: E402
from SegXSlicerLib.client import SegXClient, ServerError, parse_multipart  # noqa: E402
from SegXSlicerLib.results import LEVEL_COLOURS, parse_segx_reply, segx_models  # noqa: E402
from SegXSlicerLib.worker import JobRunner  # noqa: E402

#: IJK-to-RAS with rotated axes, anisotropic spacing and an offset origin.
IJK_TO_RAS = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -5], [0, 0, 3, 7], [0, 0, 0, 1]])

REPLY = {
    "label_names": ["nevus", "melanoma", "other"],
    "probabilities": {"nevus": 0.2, "melanoma": 0.7, "other": 0.1},
    "predicted": "melanoma",
    "class": "nevus",
    "layer": "segx",
    "method": "gradcam",
    "segu": {"certainty": 0.4242, "level": "low", "variant": "mass_inside", "reason": "42% of the explanation's mass lies in the clinical region"},
    "certainty_per_class": {"melanoma": 0.4242, "nevus": 0.9},
    "latencies": {"total": 0.5},
}


def wait_for(runner: JobRunner, seconds: float = 10.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        finished = runner.poll()
        if finished:
            return finished
        time.sleep(0.01)
    raise AssertionError("no job finished in time")


# --- multipart and volume files -----------------------------------------------------


def test_multipart_reply_is_parsed_without_cgi_and_binary_parts_survive():
    boundary = "b0undary42"
    binary = b"NRRD0004\r\n\r\n--b0undary\r\n\x00\xff\r\n"  # CRLFs and a near-boundary inside the data
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\nContent-Type: application/json\r\n\r\n"
        '{"a": 1}\r\n'
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.nrrd\"\r\n\r\n"
    ).encode() + binary + f"\r\n--{boundary}--\r\n".encode()
    parts = parse_multipart(body, f"multipart/form-data; boundary={boundary}")
    assert parts == {"params": b'{"a": 1}', "image": binary}
    with pytest.raises(ServerError, match="boundary"):
        parse_multipart(body, "multipart/form-data")


@pytest.mark.parametrize("shape", [(4, 5, 6), (1, 5, 6), (3, 4, 5, 3)])
@pytest.mark.parametrize("compress", [False, True])
def test_nrrd_round_trip_keeps_voxels_and_geometry(shape, compress):
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    decoded, matrix = volumeio.decode_nrrd(volumeio.encode_nrrd(array, IJK_TO_RAS, compress=compress))
    assert decoded.dtype == np.float32 and np.array_equal(decoded, array)
    assert np.allclose(matrix, IJK_TO_RAS)


def test_nrrd_written_by_itk_reads_with_its_ras_geometry(tmp_path):
    """ITK (what the server writes with) stores LPS: the reader turns it into RAS."""
    array = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(array)  # numpy (K, J, I) like Slicer
    image.SetSpacing((0.5, 0.7, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))  # LPS
    sitk.WriteImage(image, str(tmp_path / "x.nrrd"), useCompression=True)
    decoded, matrix = volumeio.decode_nrrd((tmp_path / "x.nrrd").read_bytes())
    assert np.array_equal(decoded, array)
    assert np.allclose(matrix, [[-0.5, 0, 0, -1], [0, -0.7, 0, -2], [0, 0, 2, 3], [0, 0, 0, 1]])


def test_a_colour_photograph_is_uploaded_as_png_and_other_volumes_as_nrrd():
    rgb = np.random.default_rng(1).integers(0, 255, (1, 7, 9, 3), dtype=np.uint8)
    name, content = volumeio.encode_volume(rgb, np.eye(4))
    assert name == "volume.png"
    assert np.array_equal(np.asarray(PILImage.open(io.BytesIO(content))), rgb[0])
    name, content = volumeio.encode_volume(rgb[..., 0], IJK_TO_RAS)
    assert name == "volume.nrrd" and np.array_equal(volumeio.decode_nrrd(content)[0], rgb[..., 0])
    with pytest.raises(ValueError, match="multi-component"):
        volumeio.encode_volume(np.zeros((2, 3, 4, 3), np.uint8), np.eye(4))
    with pytest.raises(volumeio.NrrdError, match="not a NRRD"):
        volumeio.decode_nrrd(b"\x89PNG...")


# --- readouts -----------------------------------------------------------------------


def test_readout_prediction_probability_rows_and_certainty():
    readout = parse_segx_reply(REPLY)
    assert readout.predicted == "melanoma" and readout.explained == "nevus"
    assert readout.prediction_text() == "melanoma (p = 0.70)"
    rows = readout.probability_rows()
    assert [(r.label, r.probability, r.certainty, r.predicted) for r in rows] == [
        ("melanoma", 0.7, 0.4242, True),
        ("nevus", 0.2, 0.9, False),
        ("other", 0.1, None, False),
    ]
    assert readout.certainty_text() == "0.42 (low)"
    assert readout.level_colour() == LEVEL_COLOURS["low"]
    assert readout.reason.startswith("42%")


def test_readout_without_calibrated_levels_and_malformed_replies():
    uncalibrated = parse_segx_reply(dict(REPLY, segu=dict(REPLY["segu"], level=None)))
    assert uncalibrated.certainty_text() == "0.42 (not calibrated)"
    assert uncalibrated.level_colour() == LEVEL_COLOURS[None]
    assert {"high", "medium", "low"} <= set(LEVEL_COLOURS)
    with pytest.raises(ServerError, match="malformed"):
        parse_segx_reply({"predicted": "x"})


def test_segx_models_from_info():
    info = {
        "models": {
            "a_segx": {"type": "others", "labels": ["no", "yes"], "dimension": 3},
            "a_segmentation": {"type": "segmentation", "labels": {"liver": 1, "kidney": 2}},
            "a_classification": {"type": "classification", "labels": ["no", "yes"]},
            "b_classification": {"type": "classification", "labels": ["x"]},
        },
        "trainers": {"a_segmenter": {}},
    }
    [model] = segx_models(info)
    assert (model.name, model.classes, model.dimension, model.trainer) == ("a", ["no", "yes"], 3, "a_segmenter")
    assert model.segment_names == {1: "liver", 2: "kidney"}


# --- display maths ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(display.COLOUR_MAPS))
def test_colour_tables_are_opaque_and_follow_their_control_points(name):
    """Slice views AND the table's alpha with the threshold mask (true value 255,
    ``Libs/MRML/Core/vtkMRMLScalarVolumeDisplayNode.cxx``): a fractional alpha would show
    as opaque, so the tables carry none; the colours hit the map's control points."""
    table = display.colour_table(name)
    assert table.shape == (display.TABLE_SIZE, 4)
    assert np.all(table[:, 3] == 1.0)
    for position, rgb in display.COLOUR_MAPS[name]:
        assert np.allclose(table[round(position * (display.TABLE_SIZE - 1)), :3], rgb, atol=0.02)
    assert table.min() >= 0 and table.max() <= 1
    with pytest.raises(ValueError, match="unknown colour map"):
        display.colour_table("nope")


def test_percentile_window_threshold_and_nan():
    heatmap = np.zeros((10, 10, 10), np.float32)
    heatmap[:2] = np.linspace(0.01, 0.5, 200).reshape(2, 10, 10)
    heatmap[0, 0, 0] = 100.0  # one outlier must not wash the map out
    heatmap[9, 9, 9] = np.nan
    low, high = display.percentile_window(heatmap)
    assert low == 0.0 and 0.45 < high < 1.0
    assert display.threshold_value((0.0, 0.5), 0.2) == pytest.approx(0.1)
    assert display.percentile_window(np.zeros((3, 3))) == (0.0, 1.0)
    assert not np.isnan(display.clean_heatmap(heatmap)).any()


def test_rendering_points_are_transparent_below_the_threshold():
    colour, opacity = display.rendering_points(display.colour_table("Hot"), (0.0, 1.0), 0.3)
    assert colour[0][0] == 0.0 and len(colour[0]) == 4
    assert all(alpha == 0.0 for value, alpha in opacity if value <= 0.3)
    assert max(alpha for _, alpha in opacity) > 0.5
    assert [value for value, _ in opacity] == sorted(value for value, _ in opacity)


# --- background jobs ----------------------------------------------------------------


def test_jobs_run_in_threads_report_progress_and_poll_never_blocks():
    runner = JobRunner()
    release = threading.Event()

    def slow(context):
        context.report(0.5, "half way")
        release.wait(10)
        return threading.current_thread().name

    job = runner.submit("slow", slow)
    time.sleep(0.05)
    started = time.perf_counter()
    assert runner.poll() == [] and time.perf_counter() - started < 0.05
    assert job.context.progress == (0.5, "half way") and runner.running == [job]
    release.set()
    [finished] = wait_for(runner)
    assert finished is job and job.result == "SegX slow" and job.error is None and runner.running == []


def test_job_errors_reach_the_main_thread_and_cancel_discards():
    runner = JobRunner()

    def fails(context):
        raise ServerError("boom", 400, "boom")

    runner.submit("fails", fails)
    [failed] = wait_for(runner)
    assert isinstance(failed.error, ServerError) and str(failed.error) == "boom"

    release = threading.Event()

    def cancellable(context):
        release.wait(10)
        context.report(0.9, "after the request")
        return "ignored"

    job = runner.submit("cancellable", cancellable)
    job.cancel()
    release.set()
    [finished] = wait_for(runner)
    assert finished.cancelled and finished.result is None


# --- client errors without a server -------------------------------------------------


def test_server_down_gives_a_clear_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(ServerError, match=rf"cannot reach the server at http://127.0.0.1:{port}: is it running\?") as error:
        SegXClient(f"http://127.0.0.1:{port}").info()
    assert error.value.status is None


def test_a_silent_server_times_out_with_a_clear_error():
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.time()
        with pytest.raises(ServerError, match=r"did not answer GET /info/ within 0.5 s"):
            SegXClient(url, timeout=0.5).info()
        assert time.time() - started < 5


def test_not_a_server_address():
    with pytest.raises(ServerError, match="not a server address"):
        SegXClient("127.0.0.1 port 8000")


# --- reply geometry and connections -------------------------------------------------


def swapped_reply(array: np.ndarray, ijk_to_ras: np.ndarray) -> bytes:
    """A server reply whose I and J axes are swapped (data transposed, direction columns
    exchanged): the same voxels in space, another voxel grid."""
    swap = np.eye(4)[[1, 0, 2, 3]]
    return volumeio.encode_nrrd(np.ascontiguousarray(array.transpose(0, 2, 1)), ijk_to_ras @ swap)


@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 8, 11)], ids=["square slices", "non-square slices"])
def test_a_reply_on_another_grid_or_geometry_is_refused(shape):
    from SegXSlicerLib import jobs

    heatmap = np.random.default_rng(3).random(shape).astype(np.float32)
    sent = jobs.Upload("volume.nrrd", b"", shape, IJK_TO_RAS)
    assert np.array_equal(jobs._on_grid(volumeio.encode_nrrd(heatmap, IJK_TO_RAS, compress=True), sent, "SegX map"), heatmap)
    expected = "axis was swapped" if shape[1] == shape[2] else "has shape"
    with pytest.raises(ServerError, match=expected):
        jobs._on_grid(swapped_reply(heatmap, IJK_TO_RAS), sent, "SegX map")
    flipped = IJK_TO_RAS @ np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ServerError, match="axis was swapped or flipped"):
        jobs._on_grid(volumeio.encode_nrrd(heatmap, flipped), sent, "SegX map")
    png = jobs.Upload("volume.png", b"", shape, None)  # a photograph has no geometry to compare
    assert jobs._on_grid(volumeio.encode_nrrd(heatmap, flipped), png, "SegX map").shape == shape


def test_each_thread_has_its_own_connection():
    """A cancelled job's thread may still wait on its request: the next job must not share
    its HTTP session (requests.Session is not thread-safe)."""
    client = SegXClient("http://127.0.0.1:9")
    sessions = []
    worker = threading.Thread(target=lambda: sessions.append(client.http))
    worker.start()
    worker.join()
    assert client.http is client.http and sessions[0] is not client.http
