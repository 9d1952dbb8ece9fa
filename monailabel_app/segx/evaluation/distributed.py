"""``--ray``: per-study work (``segx evaluate``'s figures, ``segx explain-batch``'s maps)
computed by Ray Data, on every node of a Ray cluster (or a local one), each actor loading
the model pair once.

The rows are those of the in-process run: the same job function runs inside each actor on
its share of the studies, in batches. Batches come back as they finish and the caller
writes them to its row file, so a run that loses a node, or is interrupted, resumes without
redoing finished studies. A failed batch (its actor died with its node) is retried on
another actor. Files a job writes (``explain-batch``'s maps) go to its output folder, which
must be the same path on every node (a shared file system).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


class _Worker:
    """A Ray Data actor: the model pair loaded once, then ``job(pair, items, device=...,
    **options)`` on one batch of items per call."""

    def __init__(self, config_file: str, job: Callable, options: dict, device: str):
        import torch

        from ..config import load_model_pair

        torch.set_num_threads(1)  # one core per actor: the actors are the parallelism
        self.pair = load_model_pair(config_file).to(device)
        self.job, self.options = job, {**options, "device": device}

    def __call__(self, batch: dict) -> dict:
        items = [{key: getattr(value, "item", lambda v=value: v)() for key, value in zip(batch, values)}  # numpy -> Python values
                 for values in zip(*batch.values())]  # fmt: skip
        return {"row": [json.dumps(row) for row in self.job(self.pair, items, **self.options)]}


def ray_rows(config_file: str | Path, items: list[dict], job: Callable, options: dict, address: str, batch_size: int):
    """Yield ``job``'s rows for ``items`` (dicts of plain values, one per study) as lists,
    one per finished batch, computed on the Ray cluster at ``address`` (``auto``: the
    running cluster, or a new local one). One actor per CPU of the cluster (one per GPU, on
    the GPU, when it has GPUs). ``job`` must be importable (a module-level function)."""
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
    dataset = ray.data.from_items(items).map_batches(
        _Worker,
        fn_constructor_args=(str(config_file), job, options, "cuda" if gpus else "cpu"),
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=0 if gpus else 1,
        num_gpus=1 if gpus else 0,
        max_restarts=-1,
        max_task_retries=-1,
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield [json.loads(row) for row in batch["row"]]
