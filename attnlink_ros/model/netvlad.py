"""NetVLAD (Arandjelovic et al., 2016), vectorised over clusters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NetVLAD(nn.Module):
    """Soft-assigns L2-normalised local features to K clusters and sums their residuals.

    Input (B, D, N); output (B, K * D), intra-normalised per cluster then L2-normalised.
    """

    def __init__(self, dim: int, clusters: int = 16) -> None:
        super().__init__()
        self.assign = nn.Conv1d(dim, clusters, 1)
        self.centroids = nn.Parameter(torch.randn(clusters, dim) * 0.1)
        self.out_channels = clusters * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, N)
        x = F.normalize(x, dim=1)
        a = torch.softmax(self.assign(x), dim=1)  # (B, K, N)
        v = a @ x.transpose(1, 2) - a.sum(dim=2, keepdim=True) * self.centroids.unsqueeze(0)  # (B, K, D)
        v = F.normalize(v, dim=2)
        return F.normalize(v.flatten(1), dim=1)


class VLADHead(nn.Module):
    """1x1 reduction -> NetVLAD -> linear projection to one token."""

    def __init__(self, in_channels: int, local_dim: int, clusters: int, token_dim: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, local_dim, 1, bias=False), nn.BatchNorm2d(local_dim), nn.ReLU(inplace=True))
        self.vlad = NetVLAD(local_dim, clusters)
        self.proj = nn.Linear(self.vlad.out_channels, token_dim)
        self.out_channels = token_dim

    def forward(self, feat: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, token_dim)
        return self.proj(self.vlad(self.reduce(feat).flatten(2)))
