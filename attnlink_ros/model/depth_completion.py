"""ADCN: sparse LiDAR depth (+ validity mask) -> dense depth, an encoder-decoder with skips."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(i: int, o: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class DepthCompletion(nn.Module):
    """Three-level U-Net. Input: sparse depth in metres (B, 1, H, W), 0 = no return. Output:
    dense depth in metres (B, 1, H, W), positive. Trained by predicting LiDAR pixels hidden from
    its input (see ``attnlink_ros.train.losses.completion_loss``)."""

    def __init__(self, widths=(16, 32, 64), max_depth: float = 80.0) -> None:
        super().__init__()
        a, b, c = widths
        self.max_depth = max_depth
        self.enc1 = nn.Sequential(_conv(2, a), _conv(a, a))
        self.enc2 = nn.Sequential(_conv(a, b, 2), _conv(b, b))
        self.enc3 = nn.Sequential(_conv(b, c, 2), _conv(c, c))
        self.dec2 = _conv(c + b, b)
        self.dec1 = _conv(b + a, a)
        self.head = nn.Conv2d(a, 1, 3, 1, 1)
        self.out_channels = 1

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) metres
        mask = (sparse > 0).to(sparse.dtype)
        x = torch.cat([sparse / self.max_depth, mask], dim=1)  # (B, 2, H, W)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1))
        return F.softplus(self.head(d1)) * self.max_depth  # (B, 1, H, W) metres
