"""``segx evaluate --ray`` on a local two-node Ray cluster (``ray.cluster_utils.Cluster``,
Ray's own multi-node test cluster: a head and a second node, each a separate raylet with
1 CPU, on loopback): the same rows and metrics as the in-process run, also when the second
node is killed in the middle (its batches are retried on the head; no study lost or
counted twice)."""

from __future__ import annotations

import json

import pytest
from conftest import eval_summary

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e .[dev] installs it)")

from segx.cli import main  # noqa: E402
from segx.demo.phantoms import generate  # noqa: E402
from segx.evaluation.rows import RowFile  # noqa: E402

ARGS = ["--model", "demo2d", "--methods", "gradcam", "--mc-samples", "0", "--no-evidence"]
METRIC_TOLERANCE = 1e-6


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= METRIC_TOLERANCE or a != a and b != b
    return a == b


@pytest.fixture
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster, second
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_run_over_two_nodes_losing_one_matches_the_in_process_run(tmp_path, capsys, monkeypatch, two_nodes):
    cluster, second = two_nodes
    data = tmp_path / "data"
    generate(data, 2, 200, seed=9, split="test", progress=False)
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "local"), *ARGS]) == 0
    local = eval_summary(capsys.readouterr().out)

    appended = []
    real_append = RowFile.append

    def append_then_kill(self, rows):
        real_append(self, rows)
        appended.append(len(rows))
        if len(appended) == 2:  # two batches in: kill the second node
            cluster.remove_node(second)

    monkeypatch.setattr(RowFile, "append", append_then_kill)
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "ray"), "--ray", cluster.address, *ARGS]) == 0
    distributed = eval_summary(capsys.readouterr().out)
    assert len(ray.nodes()) == 2 and sum(node["Alive"] for node in ray.nodes()) == 1  # it did lose a node
    lines = (tmp_path / "ray" / "rows.jsonl").read_text().splitlines()[1:]
    ids = [json.loads(line)["image_id"] for line in lines]
    assert len(ids) == 200 == len(set(ids)), "a study was lost or counted twice"
    assert _close(distributed, local), (distributed, local)
    local_rows = {json.loads(line)["image_id"]: json.loads(line) for line in (tmp_path / "local" / "rows.jsonl").read_text().splitlines()[1:]}
    assert all(_close(json.loads(line), local_rows[json.loads(line)["image_id"]]) for line in lines)


def test_an_interrupted_ray_run_resumes_without_redoing_finished_studies(tmp_path, capsys, monkeypatch, two_nodes):
    cluster, _ = two_nodes
    data = tmp_path / "data"
    generate(data, 2, 64, seed=9, split="test", progress=False)
    real_append = RowFile.append

    def append_then_stop(self, rows):
        real_append(self, rows)
        raise KeyboardInterrupt  # Ctrl-C after the first batch is on disk

    monkeypatch.setattr(RowFile, "append", append_then_stop)
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "ray"), "--ray", cluster.address, *ARGS]) == 130
    monkeypatch.setattr(RowFile, "append", real_append)
    done = len((tmp_path / "ray" / "rows.jsonl").read_text().splitlines()) - 1
    assert 0 < done < 64
    capsys.readouterr()
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "ray"), "--ray", cluster.address, *ARGS]) == 0
    assert f"resuming: {done} of 64 studies already in" in capsys.readouterr().out
    ids = [json.loads(line)["image_id"] for line in (tmp_path / "ray" / "rows.jsonl").read_text().splitlines()[1:]]
    assert len(ids) == 64 == len(set(ids))


def test_explain_batch_on_two_nodes_writes_what_the_in_process_run_writes(tmp_path, capsys, two_nodes):
    import numpy as np
    import SimpleITK as sitk

    cluster, _ = two_nodes
    generate(tmp_path / "data", 2, 40, seed=4, split="test", progress=False)
    images = str(tmp_path / "data" / "images")
    assert main(["explain-batch", images, "--model", "demo2d", "--out", str(tmp_path / "local")]) == 0
    assert main(["explain-batch", images, "--model", "demo2d", "--out", str(tmp_path / "ray"), "--ray", cluster.address]) == 0
    capsys.readouterr()

    def rows(out):
        lines = (tmp_path / out / "results.jsonl").read_text().splitlines()[1:]
        return {row["image_id"]: row for row in map(json.loads, lines)}

    local, distributed = rows("local"), rows("ray")
    assert len(distributed) == 40 and distributed.keys() == local.keys()
    for image_id, row in distributed.items():
        assert (row["predicted"], row["files"]) == (local[image_id]["predicted"], local[image_id]["files"])
        assert _close(row["segu"], local[image_id]["segu"]) and _close(row["probabilities"], local[image_id]["probabilities"])
        for file in row["files"]:
            a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / out / file))) for out in ("local", "ray"))
            np.testing.assert_allclose(a, b, atol=1e-6)
