"""Lightweight CBAM-like attention: channel squeeze-excitation, then a 7x7 spatial gate."""

from __future__ import annotations

import torch
from torch import nn


class SpatialAttention(nn.Module):
    """CBAM (Woo et al., 2018) in its light form: a channel gate from avg+max pooled features
    through a bottleneck MLP, then a spatial gate from channel-pooled maps through a 7x7 conv.
    The output has the input's shape; ``out_channels == in_channels``."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.out_channels = channels
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        x = x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return x * torch.sigmoid(self.spatial(pooled))
