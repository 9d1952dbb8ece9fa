"""Bad input against a live server: a corpus made here (decompression bombs, truncated
files, an image too small, complex voxels, odd or unknown params, an unknown file type), each answered 4xx with a
message within 2 s and little memory, no temporary file left behind, the server still
serving."""

import gzip
import json
import struct
import time
import zlib

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
import torch
from conftest import write_studies
from segx.demo import running_server
from PIL import Image as PILImage


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 20000) -> bytes:
    """A PNG whose header says ``side`` x ``side`` grey pixels, with 16 rows of zeros: the
    header alone is what must be refused (a real 20000^2 PNG of zeros is ~400 KB)."""
    rows = zlib.compress(b"\x00" * (side + 1) * 16, 9)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def nifti_bytes(array: np.ndarray, affine=np.eye(4)) -> bytes:
    image = nib.Nifti1Image(array, affine)
    return gzip.compress(image.to_bytes(), compresslevel=1)


def nifti_bomb(side: int = 640) -> bytes:
    """A gzip NIfTI of ``side``^3 zero bytes (about 0.3 MB for 640^3 = 262 M voxels)."""
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = compressor.compress(header.binaryblock + b"\x00" * 4)
    zeros = b"\x00" * (1 << 22)
    for _ in range(side**3 // len(zeros)):
        body += compressor.compress(zeros)
    return body + compressor.compress(b"\x00" * (side**3 % len(zeros))) + compressor.flush()


def png_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory, toy_models):
    """(url, the server's temporary folder, its process) with TMPDIR of its own."""
    root = tmp_path_factory.mktemp("bad_input")
    studies = write_studies(root / "studies")
    temporary = root / "tmp"
    temporary.mkdir()
    with running_server(studies, "toy2d,toy3d", root / "server.log", models_dir=toy_models, env={"TMPDIR": str(temporary)}) as running:
        yield running.url, temporary, psutil.Process(running.process.pid)


def corpus():
    ct = (np.random.default_rng(0).random((20, 24, 16)) * 100).astype(np.float32)
    whole = nifti_bytes(ct)
    skin = (np.random.default_rng(1).random((40, 50, 3)) * 255).astype(np.uint8)
    return [
        ("toy3d_segx", "bomb.nii.gz", nifti_bomb(), {}, "over the limit"),
        ("toy2d_segx", "bomb.png", png_bomb(), {}, "over the limit"),
        ("toy3d_segx", "cut.nii.gz", whole[: len(whole) // 2], {}, "truncated"),
        ("toy3d_segx", "cut.nii", nib.Nifti1Image(ct, np.eye(4)).to_bytes()[:-500], {}, "truncated"),
        ("toy2d_segx", "tiny.png", png_bytes(np.zeros((1, 1, 3), np.uint8)), {}, "too small"),
        ("toy2d_segx", "skin.png", png_bytes(skin), {"margin_mm": float("1e300")}, "margin_mm"),
        ("toy2d_segx", "skin.png", png_bytes(skin), [1, 2], "JSON object"),
        ("toy2d_segx", "skin.exe", png_bytes(skin), {}, "file type"),
        ("toy3d_segx", "complex.nii.gz", nifti_bytes(ct.astype(np.complex64)), {}, "complex voxels"),
        ("toy3d_segx", "ct.nii.gz", whole, {"class": "zebra"}, "unknown class"),
        ("toy3d_segx", "ct.nii.gz", whole, {"method": "magic"}, "unknown explanation method"),
    ]


def test_every_bad_input_is_a_quick_4xx_that_leaves_nothing_behind(server):
    url, temporary, process = server
    cases = corpus()
    requests.get(f"{url}/info/", timeout=30)
    left_before = set(temporary.rglob("*"))  # e.g. MONAI Label's logging configuration, written at start
    before = process.memory_info().rss + sum(child.memory_info().rss for child in process.children(recursive=True))
    for model, name, content, params, message in cases:
        start = time.perf_counter()
        response = requests.post(f"{url}/infer/{model}", params={"output": "json"}, files={"file": (name, content)},
                                 data={"params": json.dumps(params)}, timeout=60)  # fmt: skip
        seconds = time.perf_counter() - start
        assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
        assert message in response.json()["detail"], f"{name}: {response.json()['detail']}"
        assert seconds < 2.0, f"{name} took {seconds:.1f} s"
    after = process.memory_info().rss + sum(child.memory_info().rss for child in process.children(recursive=True))
    assert after - before < 200 * 2**20, f"RSS grew by {(after - before) / 2**20:.0f} MB"
    time.sleep(0.5)  # background clean-up after the last response
    assert set(temporary.rglob("*")) == left_before
    assert requests.get(f"{url}/info/", timeout=30).status_code == 200


def test_a_16_bit_picture_reads_as_its_8_bit_twin(tmp_path):
    """16-bit PNGs are not taken as 8-bit ones 257 times brighter: they are scaled down."""
    from segx.imageio import read_image

    pixels = np.random.default_rng(2).integers(0, 256, (30, 40), dtype=np.uint16)
    PILImage.fromarray(pixels.astype(np.uint8)).save(tmp_path / "eight.png")
    PILImage.fromarray((pixels * 257).astype(np.uint16)).save(tmp_path / "sixteen.png")
    eight, sixteen = read_image(tmp_path / "eight.png"), read_image(tmp_path / "sixteen.png")
    assert torch.allclose(eight.array, sixteen.array, atol=1e-3)
