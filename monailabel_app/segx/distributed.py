"""``segx evaluate --ray``: the per-study figures computed by Ray Data, on every node of a
Ray cluster (or a local one), each actor loading the model pair once.

The rows are those of :func:`segx.evaluate.study_record`, in-process or not: the same
code runs inside each actor on its share of the studies (batches of
:data:`segx.evaluate.BATCH_SIZE`). Batches come back as they finish and the caller writes
them to its row file, so a run that loses a node, or is interrupted, resumes without
redoing finished studies. A failed batch (its actor died with its node) is retried on
another actor.
"""

from __future__ import annotations

import json
from pathlib import Path

from .datasets import Study


class _Evaluator:
    """A Ray Data actor: the model pair loaded once, then one batch of studies per call."""

    def __init__(self, config_file: str, methods: list[str], mc_samples: int, evidence: bool, device: str):
        import torch

        from .certainty import Combination
        from .config import load_model_pair

        torch.set_num_threads(1)  # one core per actor: the actors are the parallelism
        self.pair = load_model_pair(config_file).to(device)
        combination = Combination.from_config(self.pair.config)
        self.options = dict(methods=methods, device=device, mc_samples=mc_samples, combination=combination, evidence=evidence)

    def __call__(self, batch: dict) -> dict:
        from .evaluate import study_records

        studies = [Study(i, Path(im), Path(m) if m else None, int(label)) for i, im, m, label in
                   zip(batch["image_id"], batch["image"], batch["mask"], batch["label"])]  # fmt: skip
        records = study_records(self.pair, studies, batch_size=len(studies), progress=False, **self.options)
        return {"row": [json.dumps(record) for record in records]}


def ray_study_records(config_file: str | Path, studies: list[Study], methods: list[str], mc_samples: int, evidence: bool,
                      address: str, batch_size: int):  # fmt: skip
    """Yield the per-study records of ``studies`` as lists, one per finished batch,
    computed on the Ray cluster at ``address`` (``auto``: the running cluster, or a new
    local one). One actor per CPU of the cluster (one per GPU, on the GPU, when it has GPUs).
    """
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError:
            if address != "auto":
                raise ValueError(f"no Ray cluster answers at {address}") from None
            ray.init(log_to_driver=False)  # none running: a local one
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    actors = gpus or max(1, int(resources.get("CPU", 1)))
    items = [{"image_id": s.image_id, "image": str(s.image), "mask": str(s.mask) if s.mask else "", "label": s.label} for s in studies]
    dataset = ray.data.from_items(items).map_batches(
        _Evaluator,
        fn_constructor_args=(str(config_file), methods, mc_samples, evidence, "cuda" if gpus else "cpu"),
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=0 if gpus else 1,
        num_gpus=1 if gpus else 0,
        max_restarts=-1,
        max_task_retries=-1,
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield [json.loads(row) for row in batch["row"]]
