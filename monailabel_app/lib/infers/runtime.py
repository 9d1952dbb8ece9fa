"""One loaded model pair on its device, with a bounded cache of SegX results."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from segx import SegXResult, explain
from segx.config import file_digest, load_model_pair, weight_files, weights_digest

from ..security import public

logger = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """A model whose files changed on disk and cannot be loaded (HTTP 503)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was requested but no CUDA GPU is available")
    return device


def _result_bytes(result: SegXResult) -> int:
    tensors = (result.explanation, result.clinical_mask, result.segmentation)  # the normalised and SegX maps are computed when read
    return sum(t.element_size() * t.numel() for t in tensors)


#: The one thread that runs all torch work of the server process (see ModelRuntime).
_TORCH_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segx-torch")
_TORCH_THREAD_ID = _TORCH_THREAD.submit(threading.get_ident).result()


def run_in_torch_thread(function, *args, **kwargs):
    """Call ``function`` in the process's torch thread (directly when already there) and
    return its result; exceptions propagate to the caller."""
    if threading.get_ident() == _TORCH_THREAD_ID:
        return function(*args, **kwargs)
    return _TORCH_THREAD.submit(function, *args, **kwargs).result()


def _files_stamp(files: list[Path]) -> tuple:
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else (str(f), None, None) for f in files)


class ModelRuntime:
    """A model configuration's :class:`segx.ModelPair` on a device, shared by its infer
    tasks, scoring and strategy.

    ``explain`` results are cached by (image content, method, margin) and evicted least
    recently used first once their tensors exceed ``cache_bytes``: asking for another
    layer or class of the same image does not run the networks again. When a weight file
    changes on disk (a trainer published new weights), the pair is reloaded and the cache
    emptied before the next call. ``weights_digest`` identifies the weights in use.

    All torch work (loading, reloading, explaining, writing results) runs in one thread
    shared by every model of the process. torch's OpenMP pool is per calling thread: with
    work spread over the main thread, request threads or one thread per model, several
    pools shared the same cores, OpenMP stopped spinning and the 2D explain ran ~2x slower
    than in-process (measured with ``benchmarks/server_overhead.py``).
    """

    def __init__(self, name: str, config_file: Path, device: torch.device, cache_bytes: int = 1 << 30):
        self.name = name
        self.config_file = Path(config_file)
        self.device = device
        self.cache_bytes = cache_bytes
        self._cache: "OrderedDict[tuple, SegXResult]" = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0
        self.problem = None
        run_in_torch_thread(self._load)

    def _load(self) -> None:
        pair = load_model_pair(self.config_file)
        self.config = pair.config
        self.pair = pair.to(self.device)
        self._watched = [self.config_file, *weight_files(self.config_file)]
        self._stamp = _files_stamp(self._watched)
        self.weights_digest = weights_digest(self.config_file)
        self._cache.clear()

    def _refresh(self) -> None:
        """Reload the pair if its configuration or weight files changed since it was
        loaded (a few ``stat`` calls; the configuration is parsed only to reload). Torch
        thread only: reloading never waits on a lock that a waiting caller holds.

        Raises:
            ModelUnavailable: the changed files cannot be loaded; tried again once they
                change again.
        """
        stamp = _files_stamp(self._watched)
        if stamp != self._stamp:
            logger.info(f"{self.name}: its files changed on disk, reloading")
            self._stamp = stamp
            try:
                self._load()
                self.problem = None
            except Exception as error:  # any loader error: the model waits for good files
                self.problem = public(f"{self.name} is unavailable: its configuration or weights changed on disk and cannot be "
                                      f"loaded ({type(error).__name__}: {error}); it is loaded again when its files change")  # fmt: skip
                logger.error(self.problem)
        if self.problem:
            raise ModelUnavailable(self.problem)

    def explain(self, image_path: str, method: str, margin_mm: float) -> SegXResult:
        """Full SegX result for all classes of the image file, cached. Runs in the torch
        thread (directly when called from it), so that the weight check, a reload and the
        networks are never interleaved with another caller's."""
        return run_in_torch_thread(self._explain, image_path, method, margin_mm)

    def _explain(self, image_path: str, method: str, margin_mm: float) -> SegXResult:
        self._refresh()
        key = (file_digest(image_path), method, float(margin_mm))
        with self._lock:  # the cache only: never held while waiting for other work
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
