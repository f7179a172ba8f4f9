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


class MonoDepth(nn.Module):
    """Image -> the depth branch's input ("pseudo-LiDAR"): dense depth in metres and the logit of
    a LiDAR return at each pixel, from the RGB image alone.

    Image-only queries must land where the map's LiDAR descriptors are. Instead of asking the RGB
    tokens to learn that alignment from descriptors alone (a sparse signal: one vector per frame),
    this network predicts what the depth branch would have seen, supervised densely by every
    LiDAR-completed pixel, and the unchanged depth branch turns it into the descriptor. A four-level
    U-Net with pixel-row/column coordinates as extra inputs (on a level camera, the image row fixes
    the ground's depth) and a global-context vector at the bottleneck."""

    def __init__(self, widths=(16, 32, 64, 128), max_depth: float = 80.0) -> None:
        super().__init__()
        a, b, c, d = widths
        self.max_depth = max_depth
        self.enc1 = nn.Sequential(_conv(5, a), _conv(a, a))
        self.enc2 = nn.Sequential(_conv(a, b, 2), _conv(b, b))
        self.enc3 = nn.Sequential(_conv(b, c, 2), _conv(c, c))
        self.enc4 = nn.Sequential(_conv(c, d, 2), _conv(d, d))
        self.context = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True))
        self.dec3 = _conv(2 * d + c, c)
        self.dec2 = _conv(c + b, b)
        self.dec1 = _conv(b + a, a)
        self.head = nn.Conv2d(a, 2, 3, 1, 1)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb (B, 3, H, W) normalised -> (dense depth (B, 1, H, W) metres, return logit (B, 1, H, W))."""
        B, _, H, W = rgb.shape
        ys = torch.linspace(-1.0, 1.0, H, device=rgb.device, dtype=rgb.dtype).view(1, 1, H, 1).expand(B, 1, H, W)
        xs = torch.linspace(-1.0, 1.0, W, device=rgb.device, dtype=rgb.dtype).view(1, 1, 1, W).expand(B, 1, H, W)
        e1 = self.enc1(torch.cat([rgb, ys, xs], 1))
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        g = self.context(e4.mean(dim=(2, 3)))[:, :, None, None].expand_as(e4)
        up = lambda x, ref: F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        d3 = self.dec3(torch.cat([up(torch.cat([e4, g], 1), e3), e3], 1))
        d2 = self.dec2(torch.cat([up(d3, e2), e2], 1))
        d1 = self.dec1(torch.cat([up(d2, e1), e1], 1))
        out = self.head(d1)
        return F.softplus(out[:, :1]) * self.max_depth, out[:, 1:]
