"""Replayed annotation sessions (``segx al-simulate``, segx/demo/sessions.py): the analysis
on hand-made curves, and a replay through the live server with the official client."""

from __future__ import annotations

import math

import pytest
import torch

from segx.demo import sessions
from segx.demo.phantoms import generate


def images(dice: float, n: int = 4) -> list[dict]:
    """n test images with this Dice; two classes, half predicted right."""
    return [{"label": i % 2, "p": [0.7, 0.3] if i < n // 2 else [0.4, 0.6], "correct": int((i % 2) == (0 if i < n // 2 else 1)),
             "dice": dice, "msp": 0.7 if i < n // 2 else 0.6, "segu": 0.5} for i in range(n)]  # fmt: skip


def run(strategy: str, seed: int, curve: list[float], counts=(4, 8, 12)) -> dict:
    return {"strategy": strategy, "seed": seed, "rounds": [{"labels": n, "images": images(d)} for n, d in zip(counts, curve)]}


def test_labels_to_target_and_saving_against_random_by_hand():
    """Full data: Dice 0.9, target 0.855. random reaches it at 12 labels, segu at 8
    (saving 1 - 8/12), first never (not reached, no saving). Every seed and image alike:
    the bootstrap CIs collapse onto the point."""
    runs = []
    for seed in (0, 1):
        runs += [run("full", seed, [0.9], counts=(40,)), run("random", seed, [0.5, 0.8, 0.86]), run("segu_lowest_certainty", seed, [0.5, 0.86, 0.87]),
                 run("first", seed, [0.5, 0.6, 0.7])]  # fmt: skip
    analysis = sessions.analyse(runs, targets=("dice",), n_resamples=30)
    table = analysis["labels_to_target"]["dice"]
    assert analysis["full"]["dice"] == pytest.approx(0.9)
    assert table["random"]["labels"] == 12 and table["segu_lowest_certainty"]["labels"] == 8
    assert math.isinf(table["first"]["labels"]) and table["first"]["reached_share"] == 0 and table["first"]["ci"] is None
    saving = analysis["saving_vs_random"]["dice"]
    assert saving["segu_lowest_certainty"]["saving"] == pytest.approx(1 / 3)
    assert saving["segu_lowest_certainty"]["ci"] == pytest.approx([1 / 3, 1 / 3])
    assert saving["first"]["saving"] is None and saving["first"]["defined_share"] == 0
    assert analysis["curves"]["random"]["dice"]["mean"] == pytest.approx([0.5, 0.8, 0.86])
    assert list(analysis["curves"]) == ["random", "first", "segu_lowest_certainty"]  # STRATEGIES' order


def test_the_bootstrap_resamples_seeds_together_across_strategies():
    """Seed 0 is good for both strategies, seed 1 bad for both: a draw of seeds moves both
    curves together, so the paired saving stays 0 while each one's labels vary."""
    runs = [run("full", 0, [0.9], (40,)), run("full", 1, [0.9], (40,)),
            run("random", 0, [0.9, 0.9, 0.9]), run("random", 1, [0.5, 0.5, 0.9]),
            run("segu_lowest_certainty", 0, [0.9, 0.9, 0.9]), run("segu_lowest_certainty", 1, [0.5, 0.5, 0.9])]  # fmt: skip
    analysis = sessions.analyse(runs, targets=("dice",), n_resamples=200)
    labels = analysis["labels_to_target"]["dice"]["random"]
    assert labels["ci"][0] < labels["ci"][1], "seed draws change the labels needed"
    assert analysis["saving_vs_random"]["dice"]["segu_lowest_certainty"]["ci"] == [0.0, 0.0]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data = tmp_path_factory.mktemp("phantoms")
    generate(data, 2, 24, 3, "train")
    generate(data, 2, 12, 4, "test")
    out = tmp_path_factory.mktemp("replay")
    counts = sessions.prepare(data, sessions.SETUPS["demo2d"], out / "data")
    return out, counts


@pytest.mark.parametrize("strategy", ["epistemic", "segu_lowest_certainty"])
def test_a_replayed_session_labels_what_the_strategy_gives_and_trains_both_networks(prepared, strategy):
    """Through `monailabel start_server` and MONAILabelClient: 4 seed labels, one round of
    4 asked from the strategy, two trainings of each network from the saved labels (the
    classifier from the `image_label` the annotator sent); each round measured on the 12
    test phantoms."""
    out, counts = prepared
    setup = sessions.SETUPS["demo2d"]
    assert counts["pool"] == 24 and counts["test"] == 12
    result = sessions.replay(setup, out / "data", strategy, 0, out / "runs")
    chosen = result["chosen"]
    pool = {p.stem for p in (out / "data" / "pool").glob("*.png")}
    assert len(chosen) == len(set(chosen)) == setup.seed_labels + setup.per_round and set(chosen) <= pool
    assert [r["labels"] for r in result["rounds"]] == [4, 8]
    assert all(len(r["images"]) == 12 for r in result["rounds"]) and len(result["rounds"][1]["sample_seconds"]) == 4
    weights = out / "runs" / f"{strategy}_seed0" / "models" / "weights"
    for part in ("classifier", "segmenter"):
        first = torch.load(weights / f"session_{part}.pt.previous", weights_only=True)
        last = torch.load(weights / f"session_{part}.pt", weights_only=True)
        assert any(not torch.equal(first[k], last[k]) for k in first), f"the {part} was not trained"
    figures = sessions.figures(result["rounds"][-1]["images"])
    assert 0 <= figures["dice"] <= 1


def test_reanalysing_a_run_writes_the_curves_and_the_tables(tmp_path, capsys):
    """`segx al-simulate --out OUT --reanalyse`: the analysis of OUT/runs.json again (no server)."""
    import dataclasses
    import json

    from segx.cli import main

    runs = []
    for seed in (0, 1):
        runs += [run("full", seed, [0.9], counts=(40,)), run("random", seed, [0.5, 0.8, 0.86]), run("epistemic", seed, [0.5, 0.82, 0.9])]
    for r in runs:
        for round_ in r["rounds"]:
            round_.update(sample_seconds=[], train_seconds=1.0)
        r["chosen"] = ["x"] * r["rounds"][-1]["labels"]
    record = {"setup_name": "demo2d", "setup": dataclasses.asdict(sessions.SETUPS["demo2d"]), "data": {"pool": 40, "test": 4}, "seconds": 1.0, "runs": runs}
    (tmp_path / "runs.json").write_text(json.dumps(record))  # as simulate() writes it
    assert main(["al-simulate", "--out", str(tmp_path), "--reanalyse", "--resamples", "20"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1][len("AL "):])
    assert printed["labels_to_target"]["dice"]["epistemic"]["labels"] == 12 and printed["labels_to_target"]["dice"]["random"]["labels"] == 12
    report = (tmp_path / "report.md").read_text()
    assert "| epistemic | +0.030 [+0.030, +0.030]" in report  # mean of (0.82, 0.9) minus mean of (0.8, 0.86)
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000
    assert main(["al-simulate", "--out", str(tmp_path / "nothing")]) == 2  # neither --data/--setup nor --reanalyse
