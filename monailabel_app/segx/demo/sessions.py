"""``segx al-simulate``: annotation sessions replayed on a labelled data set, through the
live MONAI Label server and the official ``MONAILabelClient``, one per strategy and seed.

A replay (:func:`replay`) is what an annotator team does, with the ground truth as the
annotator's hand: a fresh server with the data set's training pool as its studies and a
model pair with freshly initialised weights; ``seed_labels`` images (drawn by the seed)
are labelled (``save_label`` with tag ``final`` and the image's class as ``image_label``),
then both networks are trained by the server's trainers (``train_start``, polled with
``train_status``). Each round asks the strategy for ``per_round`` images (``next_sample``;
for ``epistemic`` MONAI Label's scoring runs first, as its own app does after a
training), labels them and trains again. After every training the published weights
are measured on the held-out test split in this process: segmenter Dice, classifier
macro AUROC and balanced accuracy, and the AUROC with which SegU and MSP tell right from
wrong predictions (per image, so that :func:`analyse` can bootstrap over images and
seeds). A reference run labels the whole pool at once and trains once for as many
epochs as a session's rounds add up to (the full-data figure).

:func:`analyse` gives the learning curves (mean over seeds with 95 % bootstrap CIs, as a
PNG), the labels each strategy needs to reach 95 % of the full-data figure, and the
fraction of labels saved against ``random`` with a paired CI (seeds and test images
resampled together).

Room rule (tests/test_architecture.py): imports every room but the CLI; the one module
of the core that imports MONAI Label (``monailabel.client``, the official client the
replay is about), inside the function that talks to the server.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image as PILImage
from tqdm import tqdm

from ..config import load_model_pair
from ..evaluation.datasets import Layout, Study, find_studies
from ..evaluation.evaluate import study_records
from ..evaluation.metrics import certainty_auroc, one_vs_rest_auroc
from ..explainers import default_method
from ..training import RECIPES
from ..training.engine import balanced_accuracy
from . import running_server

#: Strategies replayed: MONAI Label's three and ours (the server's names).
STRATEGIES = ("random", "first", "epistemic", "segu_lowest_certainty")
#: Figures measured after every training (per image: see :func:`measure`).
FIGURES = ("dice", "auroc", "balanced_accuracy", "segu_auroc", "msp_auroc")
TARGET_FRACTION = 0.95


@dataclass(frozen=True)
class Setup:
    """A replay's scale. Images (and masks) are stored at ``size`` (width, height): the
    networks' input, so that a 2-core machine finishes; the networks are the recipe's
    with dropout 0.2 in the segmenter (every strategy gets it; ``epistemic`` samples it)."""

    recipe: str
    size: tuple[int, int]
    pool: int
    test: int
    seed_labels: int
    per_round: int
    rounds: int
    classifier_epochs: int
    segmenter_epochs: int
    mode: str = "L"  # PIL mode the images are stored in: L (grey) or RGB
    layout: Layout = Layout()
    networks: dict = field(default_factory=dict)  # args overriding the recipe's (smaller networks)


SETUPS = {
    "jsrt": Setup("jsrt", (64, 64), pool=120, test=40, seed_labels=8, per_round=8, rounds=4, classifier_epochs=4, segmenter_epochs=6,
                  layout=RECIPES["jsrt"].layout),
    "ham10000": Setup("ham10000", (64, 48), pool=240, test=120, seed_labels=8, per_round=8, rounds=4, classifier_epochs=4, segmenter_epochs=6,
                      mode="RGB", layout=RECIPES["ham10000"].layout,
                      networks={"classifier": {"init_features": 16, "growth_rate": 12, "block_config": [4, 6, 8]}}),
    "demo2d": Setup("demo2d", (64, 64), pool=24, test=12, seed_labels=4, per_round=4, rounds=1, classifier_epochs=1, segmenter_epochs=1, mode="RGB"),
}  # fmt: skip


def _pick(studies: list[Study], n: int, seed: int) -> list[Study]:
    chosen = list(studies)
    random.Random(seed).shuffle(chosen)
    return sorted(chosen[:n], key=lambda s: s.image_id)


def prepare(data: str | Path, setup: Setup, out: Path) -> dict:
    """Write the replay's data under ``out``: ``pool/`` (the server's studies: images only),
    ``truth/`` (the annotator's labels of the pool, 0/1 PNG), ``test/`` (a data set folder:
    ``images/``, ``masks/``, ``labels.csv``), all at ``setup.size``, and ``classes.json`` (image id -> class name of
    the pool). The pool is drawn from the train split, the test images from the test split
    (fixed draws: every seed and strategy sees the same)."""
    recipe = RECIPES[setup.recipe]
    classes = recipe.classes
    train, _ = find_studies(classes, data, setup.layout, "train")
    test, _ = find_studies(classes, data, setup.layout, "test")
    pool, held_out = _pick(train, setup.pool, 0), _pick(test, setup.test, 0)
    for folder in ("pool", "truth", "test/images", "test/masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)

    def write(study: Study, image_folder: Path, mask_folder: Path) -> None:
        image = PILImage.open(study.image).convert(setup.mode).resize(setup.size, PILImage.BILINEAR)
        image.save(image_folder / f"{study.image_id}.png")
        mask = np.asarray(PILImage.open(study.mask).convert("L").resize(setup.size, PILImage.NEAREST)) > 127
        PILImage.fromarray(mask.astype(np.uint8)).save(mask_folder / f"{study.image_id}.png")

    for study in tqdm(pool, desc="pool", leave=False):
        write(study, out / "pool", out / "truth")
    for study in tqdm(held_out, desc="test", leave=False):
        write(study, out / "test" / "images", out / "test" / "masks")
    with open(out / "test" / "labels.csv", "w") as stream:
        stream.write("image_id,label,split\n" + "".join(f"{s.image_id},{classes[s.label]},test\n" for s in held_out))
    (out / "classes.json").write_text(json.dumps({s.image_id: classes[s.label] for s in pool}))
    return {"pool": len(pool), "test": len(held_out), "pool_classes": np.bincount([s.label for s in pool], minlength=len(classes)).tolist()}


def write_model(setup: Setup, models: Path, seed: int) -> str:
    """``models/session.yaml`` (the recipe's networks at ``setup.size``, dropout in the
    segmenter, ``recipe`` named) with weights freshly initialised from ``seed``; returns
    the model name."""
    import monai.networks.nets as nets

    recipe = RECIPES[setup.recipe]
    size = list(setup.size)  # (width, height): MONAI's order for a PNG, the stored size (no resizing)
    sections = {}
    for part, spec, inputs in (("classifier", recipe.classifier, recipe.classifier_input), ("segmenter", recipe.segmenter, recipe.segmenter_input)):
        args = {**spec["args"], **setup.networks.get(part, {}), **({"dropout": 0.2} if part == "segmenter" else {})}
        torch.manual_seed(seed)
        (models / "weights").mkdir(parents=True, exist_ok=True)
        torch.save(getattr(nets, spec["network"])(**args).state_dict(), models / "weights" / f"session_{part}.pt")
        sections[part] = {"network": spec["network"], "args": args, "weights": f"weights/session_{part}.pt", "input": {**inputs, "spatial_size": size}}
    sections["segmenter"]["labels"] = recipe.segment_names
    config = {"spatial_dims": 2, "classes": recipe.classes, **sections, "region_labels": recipe.region_labels, "recipe": recipe.name}
    (models / "session.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return "session"


def _train(client, model: str, epochs: int, poll: float = 0.5) -> float:
    """Start a training on the server and wait for it (``train_status`` of its task); its seconds."""
    start = time.perf_counter()
    task = client.train_start(model, {"max_epochs": epochs})
    status = task
    while status.get("id") != task.get("id") or status.get("status") not in ("DONE", "ERROR", "STOPPED"):
        time.sleep(poll)
        status = client.train_status()
    if status["status"] != "DONE":
        raise RuntimeError(f"training {model} ended {status['status']}: {str(status.get('details', ''))[-500:]}")
    return time.perf_counter() - start


def measure(config_file: Path, studies: list[Study]) -> list[dict]:
    """Per test image, with the published weights: ``label`` (class index), ``p`` (class
    probabilities), ``correct``, ``dice`` (predicted clinical region vs mask), ``msp`` and
    ``segu`` (the model's default SegU variant of the predicted class)."""
    pair = load_model_pair(config_file)
    records = study_records(pair, studies, [default_method(pair.classifier)], mc_samples=0, progress=False)
    variant = f"segu_{pair.certainty_variant}"
    return [{"label": pair.class_names.index(r["label"]), "p": [r[f"p_{c}"] for c in pair.class_names], "correct": r["correct"],
             "dice": r["dice"], "msp": r["msp"], "segu": r[variant]} for r in records]  # fmt: skip


def replay(setup: Setup, prepared: Path, strategy: str | None, seed: int, out: Path) -> dict:
    """One session (see the module docstring); ``strategy`` None: the full-data reference
    (the whole pool labelled, one training). Returns ``{"strategy", "seed", "rounds": [{"labels",
    "images", "train_seconds", "sample_seconds"}], "chosen": [...]}``."""
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelUtils

    name = strategy or "full"
    run = out / f"{name}_seed{seed}"
    models, studies = run / "models", run / "studies"
    model = write_model(setup, models, seed)
    studies.mkdir(parents=True, exist_ok=True)
    for image in (prepared / "pool").glob("*.png"):
        (studies / image.name).write_bytes(image.read_bytes())
    classes = json.loads((prepared / "classes.json").read_text())
    held_out, _ = find_studies(RECIPES[setup.recipe].classes, prepared / "test", Layout(), "test")
    rounds, chosen = [], []
    with running_server(studies, model, run / "server.log", models_dir=models) as server:
        client = MONAILabelClient(server.url, tmpdir=str(run / "client"), client_id="annotator")

        def submit(image_id: str) -> None:
            client.save_label(image_id, str(prepared / "truth" / f"{image_id}.png"), tag="final", params={"image_label": classes[image_id]})
            chosen.append(image_id)

        trainings = 1 if strategy else setup.rounds + 1  # the reference gets the epochs a session's last round has had in all

        def train_and_measure(sample_seconds: list[float]) -> None:
            seconds = (_train(client, f"{model}_segmenter", setup.segmenter_epochs * trainings)
                       + _train(client, f"{model}_classifier", setup.classifier_epochs * trainings))  # fmt: skip
            rounds.append({"labels": len(chosen), "images": measure(models / f"{model}.yaml", held_out), "train_seconds": round(seconds, 2),
                           "sample_seconds": [round(t, 3) for t in sample_seconds]})  # fmt: skip

        first = sorted(classes) if strategy is None else sorted(random.Random(seed).sample(sorted(classes), setup.seed_labels))
        for image_id in first:
            submit(image_id)
        train_and_measure([])
        for _ in tqdm(range(setup.rounds if strategy else 0), desc=f"{name} seed {seed}", leave=False):
            if strategy == "epistemic":  # MONAI Label's app scores after each training; here, before asking
                status, body, _, _ = MONAILabelUtils.http_method("POST", server.url, "/scoring/epistemic?run_sync=true", {})
                if status != 200:
                    raise RuntimeError(f"epistemic scoring: {status} {body[:300]!r}")
            times = []
            for _ in range(setup.per_round):
                start = time.perf_counter()
                sample = client.next_sample(strategy, {"model": model})
                times.append(time.perf_counter() - start)
                submit(sample["id"])
            train_and_measure(times)
    return {"strategy": name, "seed": seed, "rounds": rounds, "chosen": chosen}


def figures(images: list[dict]) -> dict:
    """:data:`FIGURES` of per-image records (:func:`measure`); an AUROC is None where it is
    undefined (one class, or all right or all wrong)."""
    correct = np.array([r["correct"] for r in images], dtype=bool)
    labels = np.array([r["label"] for r in images])
    probabilities = np.array([r["p"] for r in images])
    both = 0 < correct.sum() < len(correct)
    return {
        "dice": float(np.mean([r["dice"] for r in images])),
        "auroc": one_vs_rest_auroc(probabilities, labels)[0],
        "balanced_accuracy": balanced_accuracy(torch.as_tensor(probabilities), torch.as_tensor(labels)),
        "segu_auroc": certainty_auroc([r["segu"] for r in images], correct) if both else None,
        "msp_auroc": certainty_auroc([r["msp"] for r in images], correct) if both else None,
    }


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def _labels_to_target(counts: list[int], curve: list[float], target: float) -> float:
    """The first label count whose figure reaches ``target`` (inf: none does)."""
    return next((float(n) for n, value in zip(counts, curve) if value >= target), float("inf"))


def analyse(runs: list[dict], targets: tuple[str, ...] = ("dice", "auroc"), n_resamples: int = 400, seed: int = 0) -> dict:
    """Learning curves, labels-to-target and savings against ``random`` (see the module
    docstring) from :func:`replay`'s results (the ``full`` runs are the reference).

    Each bootstrap draw resamples the seeds and the test images with replacement, the
    same draw for every strategy (paired); a curve is the mean over the drawn seeds of the
    figure on the drawn images. ``labels_to_target`` is the first label count whose curve
    reaches :data:`TARGET_FRACTION` of the full-data figure (inf: not within the replay);
    ``saving_vs_random`` is ``1 - labels / labels of random``, undefined in a draw where
    either does not reach it (the share of draws where both do is given).
    ``mean_after_seed_vs_random`` is, per figure, the mean of a strategy's curve over the
    rounds after the seed round minus random's (an area between the learning curves,
    which a replay too short to reach the target does not censor), with its paired CI."""
    by_strategy: dict[str, dict[int, dict]] = {}
    for run in runs:
        by_strategy.setdefault(run["strategy"], {})[run["seed"]] = run
    reference = by_strategy.pop("full")
    seeds = sorted(reference)
    strategies = [s for s in STRATEGIES if s in by_strategy] + sorted(set(by_strategy) - set(STRATEGIES))
    counts = {s: [r["labels"] for r in by_strategy[s][seeds[0]]["rounds"]] for s in strategies}
    n_images = len(reference[seeds[0]]["rounds"][0]["images"])

    def curves(seed_draw: list[int], image_draw: np.ndarray) -> tuple[dict, dict]:
        def figure_of(run_round: dict) -> dict:
            return figures([run_round["images"][i] for i in image_draw])

        full = [figure_of(reference[k]["rounds"][-1]) for k in seed_draw]
        ref = {f: _mean(r[f] for r in full) for f in FIGURES}
        out = {}
        for strategy in strategies:
            per_seed = [[figure_of(r) for r in by_strategy[strategy][k]["rounds"]] for k in seed_draw]
            out[strategy] = {f: [_mean(run[i][f] for run in per_seed) for i in range(len(counts[strategy]))] for f in FIGURES}
        return ref, out

    ref, point = curves(seeds, np.arange(n_images))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in tqdm(range(n_resamples), desc="bootstrap", leave=False):
        draws.append(curves(list(rng.choice(seeds, len(seeds))), rng.integers(0, n_images, n_images)))

    def ci(values) -> list[float] | None:
        finite = [v for v in values if np.isfinite(v)]
        return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))] if len(finite) >= 0.5 * len(values) else None

    result = {"seeds": seeds, "n_test": n_images, "counts": counts, "full": ref, "curves": {}, "labels_to_target": {}, "saving_vs_random": {},
              "mean_after_seed_vs_random": {}}
    for strategy in strategies:
        result["curves"][strategy] = {f: {"mean": point[strategy][f], "ci": [ci([d[1][strategy][f][i] for d in draws]) for i in range(len(counts[strategy]))]}
                                      for f in FIGURES}  # fmt: skip
    if "random" in strategies:  # the area under the curve after the seed round, paired against random: not censored like labels-to-target
        for figure in FIGURES:
            def gain(curves_of: dict, strategy: str) -> float:
                return _mean(curves_of[strategy][figure][1:]) - _mean(curves_of["random"][figure][1:])

            result["mean_after_seed_vs_random"][figure] = {
                s: {"difference": gain(point, s), "ci": ci([gain(d[1], s) for d in draws])} for s in strategies if s != "random"}
    for figure in targets:
        target = TARGET_FRACTION * ref[figure]
        per_draw = [{s: _labels_to_target(counts[s], d[1][s][figure], TARGET_FRACTION * d[0][figure]) for s in strategies} for d in draws]
        result["labels_to_target"][figure] = {
            s: {"labels": _labels_to_target(counts[s], point[s][figure], target), "ci": ci([d[s] for d in per_draw]),
                "reached_share": float(np.mean([np.isfinite(d[s]) for d in per_draw]))} for s in strategies}  # fmt: skip
        if "random" not in strategies:
            continue
        point_random = result["labels_to_target"][figure]["random"]["labels"]
        result["saving_vs_random"][figure] = {}
        for s in strategies:
            if s == "random":
                continue
            paired = [1 - d[s] / d["random"] if np.isfinite(d[s]) and np.isfinite(d["random"]) else float("nan") for d in per_draw]
            own = result["labels_to_target"][figure][s]["labels"]
            result["saving_vs_random"][figure][s] = {
                "saving": 1 - own / point_random if np.isfinite(own) and np.isfinite(point_random) else None,
                "ci": ci(paired), "defined_share": float(np.mean(np.isfinite(paired)))}  # fmt: skip
    return result


def plot(analysis: dict, path: Path, title: str) -> None:
    """Learning curves with their 95 % CI bands, one panel per figure; the full-data figure
    and the target (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"dice": "segmenter Dice", "auroc": "classifier macro AUROC", "balanced_accuracy": "classifier balanced accuracy",
             "segu_auroc": "SegU AUROC (right vs wrong)", "msp_auroc": "MSP AUROC (right vs wrong)"}  # fmt: skip
    fig, grid = plt.subplots(2, 3, figsize=(12.5, 7))
    axes = grid.ravel()
    for ax, figure in zip(axes, FIGURES):
        for strategy, curve in analysis["curves"].items():
            x = analysis["counts"][strategy]
            mean = curve[figure]["mean"]
            line = ax.plot(x, mean, marker="o", ms=3, label=strategy)[0]
            bands = [(n, c) for n, c in zip(x, curve[figure]["ci"]) if c is not None]
            if bands:
                ax.fill_between([n for n, _ in bands], [c[0] for _, c in bands], [c[1] for _, c in bands], color=line.get_color(), alpha=0.15)
        full = analysis["full"][figure]
        if np.isfinite(full):
            ax.axhline(full, color="black", lw=0.8, label="all labels")
            if figure in analysis["labels_to_target"]:
                ax.axhline(TARGET_FRACTION * full, color="black", lw=0.8, ls="--", label=f"{TARGET_FRACTION:.0%} of all labels")
        ax.set_title(names[figure], fontsize=9)
        ax.set_xlabel("labelled images")
    axes[-1].axis("off")
    axes[-1].legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=9, title="strategy (band: 95 % CI)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def simulate(data: str | Path, setup_name: str, out: str | Path, seeds: int = 3, strategies: tuple[str, ...] = STRATEGIES, n_resamples: int = 400) -> dict:
    """Prepare, replay every strategy and the full-data reference for each seed, analyse;
    writes ``out/runs.json`` (with the setup, the data counts and the seconds taken) and
    :func:`write_analysis`'s files. Returns the analysis."""
    setup = SETUPS[setup_name]
    out = Path(out)
    start = time.perf_counter()
    counts = prepare(data, setup, out / "data")
    record = {"setup_name": setup_name, "setup": asdict(setup), "data": counts, "runs": []}
    for seed in range(seeds):
        for strategy in (None, *strategies):
            record["runs"].append(replay(setup, out / "data", strategy, seed, out / "runs"))
            record["seconds"] = round(time.perf_counter() - start, 1)
            (out / "runs.json").write_text(json.dumps(record))
    return write_analysis(out, n_resamples)


def write_analysis(out: str | Path, n_resamples: int = 400) -> dict:
    """:func:`analyse` ``out/runs.json`` again (the replays are not rerun): writes
    ``out/analysis.json``, ``out/learning_curves.png`` and ``out/report.md``."""
    out = Path(out)
    record = json.loads((out / "runs.json").read_text())
    runs = record["runs"]
    analysis = analyse(runs, n_resamples=n_resamples)
    analysis.update(setup=record["setup"], data=record["data"], seconds=record["seconds"],
                    sample_seconds=[t for run in runs for r in run["rounds"] for t in r["sample_seconds"]],
                    train_seconds=[r["train_seconds"] for run in runs for r in run["rounds"]])  # fmt: skip
    (out / "analysis.json").write_text(json.dumps(analysis, indent=1))
    pool = len(next(run for run in runs if run["strategy"] == "full")["chosen"])
    plot(analysis, out / "learning_curves.png", f"{record['setup_name']}: {len(analysis['seeds'])} seeds, {pool} pool images, {analysis['n_test']} test images")
    (out / "report.md").write_text(report(analysis, record["setup_name"]))
    return analysis


def report(analysis: dict, name: str) -> str:
    """The labels-to-target and savings tables in Markdown."""
    def labels(entry):
        value = "not reached" if not np.isfinite(entry["labels"]) else f"{entry['labels']:.0f}"
        ci = f" [{entry['ci'][0]:.0f}, {entry['ci'][1]:.0f}]" if entry["ci"] else ""
        return f"{value}{ci} (reached in {entry['reached_share']:.0%} of draws)"

    lines = [f"# Replayed annotation sessions: {name}", "", f"Seeds {analysis['seeds']}, {analysis['n_test']} test images; "
             f"full-data figures: " + ", ".join(f"{k} {v:.3f}" for k, v in analysis["full"].items() if np.isfinite(v)), ""]  # fmt: skip
    for figure, table in analysis["labels_to_target"].items():
        lines += [f"## Labels to reach {TARGET_FRACTION:.0%} of the full-data {figure}", "", "| strategy | labels [95 % CI] | saving vs random [95 % CI] |", "|---|---|---|"]
        for strategy, entry in table.items():
            saving = analysis["saving_vs_random"].get(figure, {}).get(strategy)
            text = "-" if saving is None else (f"{saving['saving']:+.0%}" if saving["saving"] is not None else "undefined") + (
                f" [{saving['ci'][0]:+.0%}, {saving['ci'][1]:+.0%}]" if saving["ci"] else " [CI undefined]")
            lines.append(f"| {strategy} | {labels(entry)} | {text} |")
        lines.append("")
    gains = analysis.get("mean_after_seed_vs_random", {})
    if gains:
        lines += ["## Mean over the rounds after the seed, minus random's [paired 95 % CI]", "", "| strategy | " + " | ".join(FIGURES) + " |",
                  "|---|" + "---|" * len(FIGURES)]  # fmt: skip
        for strategy in next(iter(gains.values())):
            cells = [f"{gains[f][strategy]['difference']:+.3f}" + (f" [{gains[f][strategy]['ci'][0]:+.3f}, {gains[f][strategy]['ci'][1]:+.3f}]"
                     if gains[f][strategy]["ci"] else "") for f in FIGURES]  # fmt: skip
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Learning curves (mean over seeds [95 % CI])", "", "| strategy | labels | " + " | ".join(FIGURES) + " |", "|---|---|" + "---|" * len(FIGURES)]
    for strategy, curve in analysis["curves"].items():
        for i, n in enumerate(analysis["counts"][strategy]):
            cells = []
            for f in FIGURES:
                mean, ci = curve[f]["mean"][i], curve[f]["ci"][i]
                cells.append(f"{mean:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            lines.append(f"| {strategy} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
