"""ResNet trunk (BasicBlocks, torchvision's module names) with CBAM-like attention per stage.

Written here because torchvision does not install beside this project's torch. The module names
match torchvision's ``resnet34`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...), so a
torchvision-format state dict loads with :meth:`ResNetTrunk.load_torchvision`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .attention import SpatialAttention


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetTrunk(nn.Module):
    """Stem per modality (RGB: 3 channels, depth: ``depth_channels``), shared stages 1-4.

    ``forward_stem`` maps an input to 1/4 (or 1/2 without max-pool) resolution; ``forward_stages``
    is the shared part. ``out_channels`` is the channel count of the final feature map, whose
    stride is ``stride``.
    """

    def __init__(self, blocks, widths, depth_channels: int = 2, maxpool: bool = True, last_stride: int = 1,
                 attention: bool = True) -> None:
        super().__init__()
        w0 = widths[0]
        self.conv1 = nn.Conv2d(3, w0, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w0)
        self.conv1_depth = nn.Conv2d(depth_channels, w0, 7, 2, 3, bias=False)
        self.bn1_depth = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if maxpool else nn.Identity()
        strides = (1, 2, 2, last_stride)
        in_ch = w0
        for i, (n, w, s) in enumerate(zip(blocks, widths, strides), start=1):
            layer = [BasicBlock(in_ch, w, s)] + [BasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            setattr(self, f"att{i}", SpatialAttention(w) if attention else nn.Identity())
            in_ch = w
        self.out_channels = in_ch
        self.stride = 2 * (2 if maxpool else 1) * 2 * 2 * last_stride

    def forward_stem(self, x: torch.Tensor, depth: bool) -> torch.Tensor:
        if depth:
            return self.maxpool(self.relu(self.bn1_depth(self.conv1_depth(x))))
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stages(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 5):
            x = getattr(self, f"att{i}")(getattr(self, f"layer{i}")(x))
        return x

    def load_torchvision(self, path: str | Path) -> dict:
        """Loads a torchvision ResNet state dict (``weights_only``) into the matching tensors.

        Returns ``{"loaded": [...], "skipped": [...]}``; tensors whose shape differs (another
        width) and the classifier ``fc`` are skipped; the depth stem starts from the mean of the
        RGB stem's filters.
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "state_dict" in state:
            state = state["state_dict"]
        own = self.state_dict()
        loaded, skipped = [], []
        update = {}
        for k, v in state.items():
            if k in own and own[k].shape == v.shape:
                update[k] = v
                loaded.append(k)
            else:
                skipped.append(k)
        if "conv1.weight" in update:
            w = update["conv1.weight"].mean(dim=1, keepdim=True)
            update["conv1_depth.weight"] = w.repeat(1, own["conv1_depth.weight"].shape[1], 1, 1)
        self.load_state_dict(update, strict=False)
        return {"loaded": loaded, "skipped": skipped}
