"""ONNX Runtime for a network's plain forward pass on CPU (``runtime: onnxruntime`` in a
configuration's network section).

Hand-written glue because faster: on this project's 2-core CPU ONNX Runtime runs the
HAM10000 DenseNet's batched forward about twice as fast as torch and the UNet segmenter
about 1.8x (docs/BENCHMARKS.md), which is most of what ``segx evaluate`` spends per study.
Only forwards without gradients run here: the segmenter's output, and the classifier's
logits with its CAM target layer's activation (Grad-CAM's exact-CAM path for a global-
average-pool + linear head). Everything that needs gradients, dropout or hooks (the other
explainers, MC dropout, TTA, training) and every device other than the CPU runs the torch
module itself. The network is exported on its first forward per input shape (batch size
free), with the legacy TorchScript-based exporter (MONAI networks trace cleanly; the dynamo
exporter needs onnxscript): the export holds the weights of that moment, so a network whose
weights change afterwards must be loaded again (``load_model_pair`` builds new modules; a
``copy.deepcopy`` of an enabled module runs torch).
"""

from __future__ import annotations

import io
import threading
import warnings
import weakref

import torch
from torch import nn

RUNTIMES = ("torch", "onnxruntime")

_enabled: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_guard = threading.Lock()


def enable(network: nn.Module) -> nn.Module:
    """Run ``network``'s plain CPU forwards through ONNX Runtime from now on; returns it."""
    with _guard:
        _enabled.setdefault(network, {})
    return network


def disable(network: nn.Module) -> nn.Module:
    """Run ``network``'s forwards in torch again (benchmarks compare both); returns it."""
    with _guard:
        _enabled.pop(network, None)
    return network


def enabled(network: nn.Module) -> bool:
    return network in _enabled


class _WithActivation(nn.Module):
    """``network`` returning ``(logits, the output of layer)``; ``layer`` None: logits only."""

    def __init__(self, network: nn.Module, layer: nn.Module | None):
        super().__init__()
        self.network, self.layer = network, layer

    def forward(self, x: torch.Tensor):
        if self.layer is None:
            return self.network(x)
        captured = []
        handle = self.layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            logits = self.network(x)
        finally:
            handle.remove()
        return logits, captured[0]


def _session(network: nn.Module, layer_name: str | None, layer: nn.Module | None, example: torch.Tensor):
    """The ONNX Runtime session of ``network`` (with ``layer``'s output) for inputs shaped
    like ``example`` apart from the batch size, exported on first use."""
    import onnxruntime

    key = (layer_name, tuple(example.shape[1:]))
    sessions = _enabled[network]
    if key not in sessions:
        buffer = io.BytesIO()
        outputs = ["logits"] if layer is None else ["logits", "activation"]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes; outputs are checked in tests
            torch.onnx.export(_WithActivation(network, layer).eval(), (example[:1].cpu(),), buffer, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=outputs, dynamic_axes={name: {0: "batch"} for name in ["x", *outputs]})  # fmt: skip
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the process's torch setting (1 per Ray actor)
        options.inter_op_num_threads = 1
        # no busy-waiting after a run: ONNX Runtime's spinning threads took the cores from the
        # torch work that follows (measured: a torch forward right after a run 40 % slower)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[key] = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return sessions[key]


def usable(network: nn.Module, device: torch.device | str) -> bool:
    """True when ``network`` is enabled and its input lives on ``device``, the CPU."""
    return enabled(network) and torch.device(device).type == "cpu"


def forward(network: nn.Module, x: torch.Tensor, layer_name: str | None = None, layer: nn.Module | None = None):
    """``network(x)`` by ONNX Runtime, float32 tensors on the CPU; with ``layer``, also that
    layer's output: ``(outputs, activation)``. ``x``: ``(B, C, *s)``."""
    with _guard:
        session = _session(network, layer_name, layer, x)
    results = session.run(None, {"x": x.detach().float().contiguous().numpy()})
    tensors = [torch.from_numpy(result) for result in results]
    return tensors[0] if layer is None else (tensors[0], tensors[1])


def runner(network: nn.Module, device: torch.device):
    """What runs ``network``'s plain forward on ``device``: a callable using ONNX Runtime
    when the network is enabled and the device is the CPU, else the module itself."""
    if usable(network, device):
        return lambda x: forward(network, x)
    return network
