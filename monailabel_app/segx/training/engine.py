"""The one training loop of SegX-Slicer: ``segx train`` (the recipes that made the shipped
models), ``segx shortcut``'s fine-tuning and the server's trainers (``lib/trainers``) all
call :func:`fit`. It runs on MONAI's engines (``SupervisedTrainer`` with a
``SupervisedEvaluator`` called by ``ValidationHandler`` after every epoch, the learning
rate stepped by ``LrScheduleHandler``), as MONAI Label's ``BasicTrainTask`` does; the
recipe of a training is a :class:`Schedule` (loss weighting, flips, learning rate and its
annealing, batch size, selection score), kept in :data:`segx.training.RECIPES` and named
in the model card.

Room rule (tests/test_architecture.py): imports the method (``segx``'s root modules) and
:mod:`segx.evaluation` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from ignite.engine import Events
from ignite.metrics import Metric
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, ValidationHandler
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandFlipd
from tqdm import tqdm

from ..evaluation.metrics import dice, one_vs_rest_auroc


@dataclass(frozen=True)
class Schedule:
    """How a network is trained (the epochs are the caller's).

    ``class_weight_power`` p weights a classifier's cross-entropy of class c by
    ``(N / (C n_c))^p`` over the training labels (1: inverse frequency, 0.5: its square
    root, 0: none). ``augment`` flips every training sample along each spatial axis with
    probability 0.5 (a segmenter's label map with it). ``cosine`` anneals the learning rate
    to 0 over the training's iterations. ``selection`` is the validation score that picks a
    classifier's epoch: ``auroc`` (macro one-vs-rest AUROC) or ``balanced_accuracy`` (the
    argmax's; an epoch that ranks well but puts every study in one class, as a small 3D
    network can, is not kept). A segmenter's epoch is picked by its mean foreground Dice.
    """

    batch_size: int = 16
    learning_rate: float = 2e-3
    class_weight_power: float = 1.0
    augment: bool = False
    cosine: bool = False
    seed: int = 0
    selection: str = "auroc"

    def describe(self) -> str:
        """One line for a model card."""
        return (f"AdamW lr {self.learning_rate:g}{' cosine' if self.cosine else ''}, batch {self.batch_size}"
                f"{', random flips' if self.augment else ''}, seed {self.seed}")  # fmt: skip


def macro_auroc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Macro one-vs-rest AUROC of ``logits (N, C)`` over the classes present in ``labels
    (N,)``; accuracy when no class can be scored. (MONAI's ``ROCAUCMetric`` returns NaN as
    soon as one class is absent, as it is from a small validation split.)"""
    macro, _ = one_vs_rest_auroc(logits.softmax(1).numpy(), labels.numpy())
    return macro if macro is not None else float((logits.argmax(1) == labels).float().mean())


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels (N,)`` of the recall of ``logits (N, C)``'s argmax."""
    predicted = logits.argmax(1)
    return float(np.mean([(predicted[labels == c] == c).float().mean() for c in labels.unique()]))


def mean_foreground_dice(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean over images of the Dice of the foreground (any label > 0) of ``logits (N, L,
    *S)``'s argmax against ``masks (N, 1, *S)``, the figure ``segx evaluate`` reports."""
    predicted = logits.argmax(1)
    return float(np.mean([dice(p > 0, m[0] > 0) for p, m in zip(predicted, masks)]))


#: Validation scores (higher is better): name in the logs, function of (outputs, targets).
SELECTION = {
    "auroc": ("macro AUROC", macro_auroc),
    "balanced_accuracy": ("balanced accuracy", balanced_accuracy),
    "dice": ("mean foreground Dice", mean_foreground_dice),
}


class _EpochScore(Metric):
    """An ignite metric computing ``score(all outputs, all targets)`` over an evaluator run
    (the scores above are not means over batches: AUROC ranks the whole split)."""

    def __init__(self, score: Callable[[torch.Tensor, torch.Tensor], float]):
        self.score = score
        super().__init__(output_transform=lambda output: (output["pred"], output["label"]))

    def reset(self):
        self.outputs, self.targets = [], []

    def update(self, output):
        self.outputs.append(output[0].detach().float().cpu())
        self.targets.append(output[1].detach().cpu())

    def compute(self) -> float:
        return self.score(torch.cat(self.outputs), torch.cat(self.targets))


def class_weights(labels: Sequence[int], n_classes: int, power: float) -> torch.Tensor:
    """``(C,)`` cross-entropy weights ``(N / (C n_c))^power`` of the labels' frequencies (a
    class absent from them counts as 1)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=n_classes).float()
    return (counts.sum() / (n_classes * counts.clamp_min(1))) ** power


def fit(
    network: torch.nn.Module,
    train: Sequence[dict],
    val: Sequence[dict],
    kind: str,
    schedule: Schedule,
    epochs: int,
    n_classes: int = 0,
    desc: str = "training",
    on_best: Callable[[torch.nn.Module, int], None] | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """Train ``network`` in place on ``train`` and keep the weights of its best epoch on ``val``.

    Args:
        train, val: samples ``{"image": (C, *S) float, "label": ...}``, already at the
            network's input (what :class:`segx.preprocessing.Preprocessing` makes): for a
            ``classifier`` the label is the class index (a 0-d long tensor), for a
            ``segmenter`` a label map ``(1, *S)`` long. An empty ``val`` scores on ``train``.
        kind: ``"classifier"`` (cross-entropy weighted over ``n_classes`` classes as the
            schedule says, selected by its ``selection``) or ``"segmenter"`` (Dice +
            cross-entropy, selected by mean foreground Dice).
        on_best: called with the network and the (1-based) epoch each time an epoch beats
            the earlier ones (the server publishes the weights there).

    Returns:
        ``{"losses": [...], "val_scores": [...], "best_epoch": i, "selection": name}``
        (``i`` 0-based: the epoch whose weights the network holds afterwards; ties keep
        the earlier epoch).
    """
    if kind == "classifier":
        weights = class_weights([int(sample["label"]) for sample in train], n_classes, schedule.class_weight_power)
        loss_function: Callable = torch.nn.CrossEntropyLoss(weight=weights.to(device))
        selection, score = SELECTION[schedule.selection]
        flipped = ["image"]
    elif kind == "segmenter":
        loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
        selection, score = SELECTION["dice"]
        flipped = ["image", "label"]
    else:
        raise ValueError(f"kind must be 'classifier' or 'segmenter', not {kind!r}")
    spatial_dims = train[0]["image"].dim() - 1
    flips = Compose([RandFlipd(flipped, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)] if schedule.augment else [])
    flips.set_random_state(schedule.seed)
    loader = DataLoader(Dataset(list(train), flips), batch_size=schedule.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(schedule.seed))  # fmt: skip
    val_loader = DataLoader(Dataset(list(val or train)), batch_size=max(schedule.batch_size, 32))
    optimiser = torch.optim.AdamW(network.parameters(), lr=schedule.learning_rate)
    network.to(device)

    evaluator = SupervisedEvaluator(device, val_loader, network, key_val_metric={"score": _EpochScore(score)}, decollate=False)
    handlers: list = [ValidationHandler(1, evaluator)]
    if schedule.cosine:
        handlers.append(LrScheduleHandler(torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs * len(loader)), print_lr=False, epoch_level=False))
    trainer = SupervisedTrainer(device, epochs, loader, network, optimiser, loss_function, train_handlers=handlers, decollate=False)

    log: dict = {"losses": [], "val_scores": [], "best_epoch": None, "selection": selection}
    best: dict = {}
    progress = tqdm(total=epochs, desc=desc)
    totals = {"loss": 0.0, "n": 0}

    @trainer.on(Events.ITERATION_COMPLETED)
    def add_loss(engine):
        n = len(engine.state.batch["image"])
        totals["loss"] += float(engine.state.output["loss"].detach()) * n
        totals["n"] += n

    @evaluator.on(Events.EPOCH_COMPLETED)
    def keep_best(engine):  # after MONAI's own best-metric update (registered when the evaluator was built)
        log["losses"].append(totals["loss"] / max(totals["n"], 1))
        totals.update(loss=0.0, n=0)
        log["val_scores"].append(float(engine.state.metrics["score"]))
        if engine.state.best_metric_epoch == engine.state.epoch:
            log["best_epoch"] = engine.state.epoch - 1
            best["state"] = {k: v.detach().clone() for k, v in network.state_dict().items()}
            if on_best:
                on_best(network, engine.state.epoch)
        progress.update(1)
        progress.set_postfix(loss=f"{log['losses'][-1]:.4f}", val=f"{log['val_scores'][-1]:.3f}")

    trainer.run()
    progress.close()
    network.load_state_dict(best["state"])
    network.eval()
    return log
