"""Classifier architectures that MONAI has as encoders only."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn


class SwinClassifier(nn.Module):
    """SwinUNETR's Swin transformer encoder with a classification head: the last stage's
    features ``(B, 16 * feature_size, *S / 32)``, averaged over space, then a linear layer
    to logits ``(B, num_classes)``.

    The encoder is the attribute ``swinViT`` with SwinUNETR's own arguments, so a
    SwinUNETR checkpoint's ``swinViT.*`` weights (self-supervised pre-training, or a
    trained segmenter) load into it with ``load_state_dict(..., strict=False)``. Its CAM
    target is the last stage (``swinViT.layers4.0``), whose output is channels-first.

    Args:
        spatial_dims: 2 or 3; inputs ``(B, in_channels, *S)`` with every side of ``S``
            divisible by 32.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 3,
        feature_size: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
    ):
        super().__init__()
        self.swinViT = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=(window_size,) * spatial_dims,
            patch_size=(2,) * spatial_dims,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            spatial_dims=spatial_dims,
        )
        self.norm = nn.LayerNorm(16 * feature_size)
        self.head = nn.Linear(16 * feature_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        swin = self.swinViT
        x = swin.pos_drop(swin.patch_embed(x))
        for stage in (swin.layers1, swin.layers2, swin.layers3, swin.layers4):
            x = stage[0](x.contiguous())  # (B, 2^k F, *S / 2^(k+1)), channels first
        return self.head(self.norm(x.flatten(2).mean(-1)))
