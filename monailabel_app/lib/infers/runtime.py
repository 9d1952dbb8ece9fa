"""One loaded model pair on its device, with a bounded cache of SegX results."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from segx import ModelPair, SegXResult, explain

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was requested but no CUDA GPU is available")
    return device


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (cache key: the same image content gives the same key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _result_bytes(result: SegXResult) -> int:
    tensors = (result.explanation, result.explanation_normalised, result.segx, result.clinical_mask, result.segmentation)
    return sum(t.element_size() * t.numel() for t in tensors)


class ModelRuntime:
    """A :class:`segx.ModelPair` on a device, shared by a model's infer tasks.

    ``explain`` results are cached by (image content, method, margin) and evicted least
    recently used first once their tensors exceed ``cache_bytes``: asking for another
    layer or class of the same image does not run the networks again.
    """

    def __init__(self, name: str, pair: ModelPair, config: dict, device: torch.device, cache_bytes: int = 1 << 30):
        self.name = name
        self.pair = pair.to(device)
        self.config = config
        self.device = device
        self.cache_bytes = cache_bytes
        self._cache: "OrderedDict[tuple, SegXResult]" = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0

    def explain(self, image_path: str, method: str, margin_mm: float) -> SegXResult:
        """Full SegX result for all classes of the image file, cached."""
        key = (file_digest(image_path), method, float(margin_mm))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        result = explain(self.pair, image_path, method=method, margin_mm=margin_mm, device=self.device)
        with self._lock:
            self.misses += 1
            self._cache[key] = result
            while len(self._cache) > 1 and sum(map(_result_bytes, self._cache.values())) > self.cache_bytes:
                self._cache.popitem(last=False)
        return result
