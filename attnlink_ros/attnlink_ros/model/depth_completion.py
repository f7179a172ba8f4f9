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


def _grow(old: nn.Module, new: nn.Module, in_segments, out_old: int) -> None:
    """Copies ``old``'s weights into the part of the wider ``new`` (Conv2d or Linear) that maps
    the old input channels to the old output channels; the old outputs ignore every added input
    (zero weights), the added outputs keep their fresh initialisation. ``in_segments``: the
    (old, new) channel counts of the concatenated inputs, in order."""
    with torch.no_grad():
        w = new.weight
        w[:out_old].zero_()
        o_old = n_new = 0
        for seg_old, seg_new in in_segments:
            w[:out_old, n_new:n_new + seg_old] = old.weight[:, o_old:o_old + seg_old]
            o_old, n_new = o_old + seg_old, n_new + seg_new
        if old.bias is not None:
            new.bias[:out_old] = old.bias


def _grow_block(old: nn.Sequential, new: nn.Sequential, in_segments, out_old: int) -> None:
    """A conv-BN-ReLU block (``_conv``): the conv grown, the BatchNorm's old channels copied."""
    _grow(old[0], new[0], in_segments, out_old)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new[1], name)[:out_old] = getattr(old[1], name)
        new[1].num_batches_tracked.copy_(old[1].num_batches_tracked)


def widen_mono(old: MonoDepth, widths, max_depth: float | None = None) -> MonoDepth:
    """A wider ``MonoDepth`` that computes exactly what ``old`` does (function-preserving: the old
    channels are copied, the added ones start fresh and reach the old ones only through zero
    weights), so a trained pseudo-LiDAR network can gain capacity and keep training from where it
    was. ``widths`` must be at least the old ones at every level."""
    a0, b0, c0, d0 = (old.enc1[0][0].out_channels, old.enc2[0][0].out_channels,
                      old.enc3[0][0].out_channels, old.enc4[0][0].out_channels)
    a, b, c, d = (int(x) for x in widths)
    if a < a0 or b < b0 or c < c0 or d < d0:
        raise ValueError(f"widen_mono: widths {tuple(widths)} narrower than {(a0, b0, c0, d0)}")
    new = MonoDepth((a, b, c, d), old.max_depth if max_depth is None else max_depth)
    seg = lambda o, n: [(o, n)]  # noqa: E731
    plan = [  # (block, input segments, old output channels)
        ("enc1.0", seg(5, 5), a0), ("enc1.1", seg(a0, a), a0),
        ("enc2.0", seg(a0, a), b0), ("enc2.1", seg(b0, b), b0),
        ("enc3.0", seg(b0, b), c0), ("enc3.1", seg(c0, c), c0),
        ("enc4.0", seg(c0, c), d0), ("enc4.1", seg(d0, d), d0),
        ("dec3", [(d0, d), (d0, d), (c0, c)], c0), ("dec2", [(c0, c), (b0, b)], b0),
        ("dec1", [(b0, b), (a0, a)], a0),
    ]
    for name, segments, out_old in plan:
        _grow_block(old.get_submodule(name), new.get_submodule(name), segments, out_old)
    _grow(old.context[0], new.context[0], seg(d0, d), d0)
    _grow(old.head, new.head, seg(a0, a), 2)
    return new
