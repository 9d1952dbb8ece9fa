"""Networks for the bundle tests (importable by ``monai.bundle`` as ``bundle_networks.X``:
pytest puts ``tests/`` on ``sys.path``)."""

import torch
from torch import nn


class RampThreshold(nn.Module):
    """A segmenter whose output is a known function of the preprocessed intensity *and* the
    position: logits ``(B, 2, X, Y, Z)`` with foreground ``scale * min(x - 0.3, ramp)``,
    ``ramp`` rising from -1 to 1 along the first spatial axis of its input. So it marks
    soft-tissue voxels (above 30 % of the window) in the upper half of the first axis: fed an
    unoriented volume, it marks a different half, which no flip-invariant check would see."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1.0, 1.0, x.shape[2], device=x.device).view(1, 1, -1, *([1] * (x.dim() - 3)))
        foreground = self.scale * torch.minimum(x - 0.3, ramp.expand_as(x))
        return torch.cat([torch.zeros_like(foreground), foreground], dim=1)
