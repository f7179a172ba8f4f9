"""Two pseudo-LiDAR networks and a gate that picks, per image, the one that knows its kind of image.

Sessions 11-13 (model card) found that no single pseudo-LiDAR network trained here serves both
kinds of image the product meets:

- ``render``: the U-Net (``MonoDepth``) trained end to end on twelve rendered towns gives the
  depth branch the pseudo-LiDAR it recognises on rendered images (validation town 601, image
  same-heading Recall@1 0.643) and is worse than a constant on camera images (real KITTI
  pseudo-depth AbsRel 1.18);
- ``camera``: the frozen ImageNet EfficientNet-Lite0 with a decoder taught by real LiDAR
  (``MonoDepthLite0``, train/real_image.py) gives real depth (held-out AbsRel 0.45) and real image
  queries off chance (held-out "which drive" 0.47), but on rendered images its pseudo-LiDAR,
  though as close to the truth as the U-Net's, lands elsewhere in the depth branch (0.17-0.33 on
  town 601, even when taught to copy the U-Net: 0.27).

The gate is a logistic regression on the ImageNet encoder's pooled features (every level's
channel means: colour, texture and noise statistics, which is where a render and a photograph
differ), fitted on rendered towns against real camera frames (train/mixture.py). Its output is
the probability that the image is a render; the two networks' outputs are mixed with it (log
depth and return logit), so a confident gate passes one network's pseudo-LiDAR through unchanged.
Both networks run on every image (one ONNX graph, no data-dependent branches). The image-only
descriptor's RGB share (``image_rgb_weight``, the rendered-town model's: its image query mixed its
RGB tokens' descriptor in) is scaled by the same probability, so a render's image query is the
rendered-town model's whole image path and a camera image's is the Lite0 network's alone (the
RGB tokens know the towns, not real roads: session 12).

The gate is a fallback for sources of unknown kind: it misroutes photographs it has not seen the
like of (darkened x0.3: 75 of 77 held-out real frames to the render network; model card). Where
the source is known, ``domain`` (``set_domain``) fixes the route: "camera" runs the camera
network alone (a vehicle's camera: no gate, no render U-Net, a faster query), "render" the
rendered-town network alone, "auto" (default) the gate. The domain is a query-time setting (not
in the weights or the config): exporters trace the chosen route, one ONNX per domain
(inference/export.py)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import IMAGE_DOMAINS as DOMAINS
from .depth_completion import MonoDepth
from .efficientnet import MonoDepthLite0


class MonoMixture(nn.Module):
    """Image -> pseudo-LiDAR (dense depth in metres, LiDAR-return logit) as ``MonoDepth`` does:
    ``render`` for rendered images, ``camera`` for camera images, mixed by ``render_probability``."""

    def __init__(self, render_widths=(16, 32, 64, 128), max_depth: float = 80.0) -> None:
        super().__init__()
        self.render = MonoDepth(render_widths, max_depth)
        self.camera = MonoDepthLite0(max_depth)
        n = sum(self.camera.encoder.out_channels)
        self.gate = nn.Linear(n, 1)
        # the gate's input standardisation (fitted with it)
        self.register_buffer("gate_mean", torch.zeros(n))
        self.register_buffer("gate_std", torch.ones(n))
        # 1: a hard gate (the favoured network alone: a render's output IS the render network's); 0: the soft mix
        self.register_buffer("hard", torch.zeros(()))
        self.domain = "auto"  # query time, not saved: set_domain

    def set_domain(self, domain: str) -> None:
        """Which network serves every image from now on: "auto" (the gate), "camera" or "render"."""
        if domain not in DOMAINS:
            raise ValueError(f"image domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
        self.domain = domain

    @staticmethod
    def gate_features(feats) -> torch.Tensor:
        """(B, sum of channels): the channel means of the encoder's feature maps."""
        return torch.cat([f.mean(dim=(2, 3)) for f in feats], 1)

    def render_logit(self, feats) -> torch.Tensor:
        """(B,) the gate's logit that the image is a render, from the encoder's features."""
        return self.gate((self.gate_features(feats) - self.gate_mean) / self.gate_std)[:, 0]

    def gated(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """rgb (B, 3, H, W) normalised -> (depth (B, 1, H, W) metres, logit (B, 1, H, W), the
        render probability (B,); with the hard gate or a fixed domain 1 or 0)."""
        if self.domain != "auto":  # a fixed route: the other network does not run
            if self.domain == "camera":
                depth, logit = self.camera(rgb)
            else:
                depth, logit = self.render(rgb)
            return depth, logit, torch.full((rgb.shape[0],), float(self.domain == "render"), dtype=rgb.dtype, device=rgb.device)
        feats = self.camera.encoder(rgb)
        cam_d, cam_l = self.camera.decode(feats)
        ren_d, ren_l = self.render(rgb)
        prob = torch.sigmoid(self.render_logit(feats))
        p = prob.view(-1, 1, 1, 1)
        depth = torch.exp(p * torch.log(ren_d.clamp_min(1e-3)) + (1 - p) * torch.log(cam_d.clamp_min(1e-3)))
        logit = p * ren_l + (1 - p) * cam_l
        # the hard gate picks one network's output as it is (bit for bit), not a mix of one with weight 1
        hard, pick = self.hard > 0, p > 0.5
        depth = torch.where(hard, torch.where(pick, ren_d, cam_d), depth)
        logit = torch.where(hard, torch.where(pick, ren_l, cam_l), logit)
        prob = torch.where(hard, (prob > 0.5).to(prob.dtype), prob)
        return depth, logit, prob

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb (B, 3, H, W) normalised -> (depth (B, 1, H, W) metres, logit (B, 1, H, W))."""
        return self.gated(rgb)[:2]


def render_half(model):
    """A copy of a mixture model whose pseudo-LiDAR network is its ``render`` U-Net alone
    (mono_encoder "unet"): what a run that trains the U-Net, or a new mixture, starts from."""
    import dataclasses

    from .attnlink import AttnLink

    if model.cfg.mono_encoder != "mixture":
        raise ValueError("render_half needs a mixture model")
    out = AttnLink(dataclasses.replace(model.cfg, mono_encoder="unet"))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("mono.")}
    state.update({f"mono.{k}": v for k, v in model.mono.render.state_dict().items()})
    out.load_state_dict(state)
    return out.eval()
