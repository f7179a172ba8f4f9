"""NMF semantic clustering with context gating: ``S = NMF(F) * G(avgpool(F))``."""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-6


def nmf_multiplicative(F: torch.Tensor, W0: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lee-Seung multiplicative updates for ``F ~ W H`` with a fixed start and iteration count.

    F: (B, C, N) non-negative features; W0: (C, k) non-negative start. Returns W (B, C, k) and
    H (B, k, N). Every step is a matmul and elementwise ops, so it differentiates and exports.
    """
    B = F.shape[0]
    W = W0.unsqueeze(0).expand(B, -1, -1)  # (B, C, k)
    H = torch.relu(W.transpose(1, 2) @ F) + EPS  # (B, k, N) deterministic start
    for _ in range(iterations):
        Wt = W.transpose(1, 2)
        H = H * (Wt @ F) / (Wt @ W @ H + EPS)
        Ht = H.transpose(1, 2)
        W = W * (F @ Ht) / (W @ (H @ Ht) + EPS)
    return W, H


class SemanticClustering(nn.Module):
    """k-component NMF of a feature map, reconstructed (``W @ H``: the map seen through its k
    semantic parts) and gated per channel by the map's global context."""

    def __init__(self, channels: int, components: int = 16, iterations: int = 8, gating: bool = True, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W0", torch.rand(channels, components, generator=g) + 0.1)
        self.iterations = iterations
        self.gate = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid()) if gating else None
        self.out_channels = channels

    def forward(self, feat: torch.Tensor) -> torch.Tensor:  # (B, C, H, W), non-negative
        B, C, H, W = feat.shape
        Fm = feat.flatten(2)  # (B, C, N)
        # scale-free updates: normalise for conditioning, restore the scale after
        scale = Fm.mean(dim=(1, 2), keepdim=True) + EPS
        Wn, Hn = nmf_multiplicative(Fm / scale, self.W0, self.iterations)
        S = (Wn @ Hn) * scale  # (B, C, N)
        if self.gate is not None:
            S = S * self.gate(Fm.mean(dim=2)).unsqueeze(2)  # (B, C, 1)
        return S.view(B, C, H, W)
