"""``segx evaluate`` writes each batch's rows to ``rows.jsonl`` as it finishes: a run that
was interrupted resumes, runs only the studies not done, and reports what an uninterrupted
run reports; rows of another run are never mixed in."""

from __future__ import annotations

import json

import pytest
from conftest import eval_summary

import segx.evaluation.evaluate as evaluate_module
from segx.cli import main
from segx.demo.phantoms import generate
from segx.evaluation.rows import RowFile

ARGS = ["--model", "demo2d", "--methods", "gradcam", "--mc-samples", "0", "--no-evidence"]


def test_an_interrupted_evaluation_resumes_and_reports_what_a_whole_run_does(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    generate(data, 2, 40, seed=3, split="test", progress=False)  # 3 batches of at most 16
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "whole"), *ARGS]) == 0
    whole = eval_summary(capsys.readouterr().out)

    real_record, calls, interrupt_at = evaluate_module.study_record, [], [20]  # the 20th study: in the second batch

    def record(*args, **kwargs):
        calls.append(args[1].image_id)
        if len(calls) in interrupt_at:
            raise KeyboardInterrupt
        return real_record(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "study_record", record)
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "resumed"), *ARGS]) == 130
    assert len(RowFile(tmp_path / "resumed" / "rows.jsonl", _identity(tmp_path / "resumed")).done()) == 16
    capsys.readouterr()
    calls.clear(), interrupt_at.clear()
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "resumed"), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "resuming: 16 of 40 studies already in" in printed
    assert len(calls) == 24 and len(set(calls)) == 24  # only the studies not done, each once
    assert eval_summary(printed) == whole
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "rows.jsonl").read_text().splitlines()[1:]]
    assert len(rows) == 40 and len({r["image_id"] for r in rows}) == 40  # none lost, none twice


def _identity(out) -> dict:
    with open(out / "rows.jsonl") as stream:
        return json.loads(stream.readline())["run"]


def test_a_row_cut_short_by_a_crash_is_dropped_and_appends_go_on(tmp_path):
    rows = RowFile(tmp_path / "rows.jsonl", {"run": 1})
    rows.append([{"image_id": "a", "x": 1.0}, {"image_id": "b", "x": 2.0}])
    with open(rows.path, "a") as stream:
        stream.write('{"image_id": "c", "x"')  # the process died here
    assert RowFile(rows.path, {"run": 1}).done() == {"a", "b"}
    again = RowFile(rows.path, {"run": 1})
    again.append([{"image_id": "c", "x": 3.0}])
    assert [r["x"] for r in again.rows()] == [1.0, 2.0, 3.0]


def test_rows_of_another_run_are_refused(tmp_path, capsys):
    RowFile(tmp_path / "rows.jsonl", {"methods": ["gradcam"], "weights_sha256": {"c.pt": "aa"}})
    with pytest.raises(ValueError, match="another run .*weights_sha256"):
        RowFile(tmp_path / "rows.jsonl", {"methods": ["gradcam"], "weights_sha256": {"c.pt": "bb"}})
    data = tmp_path / "data"
    generate(data, 2, 4, seed=3, split="test", progress=False)
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "out"), *ARGS]) == 0
    assert main(["evaluate", "--data", str(data), "--out", str(tmp_path / "out"), *ARGS[:-1]]) == 2  # now with evidence
    assert "holds rows of another run (differs in: evidence)" in capsys.readouterr().err
