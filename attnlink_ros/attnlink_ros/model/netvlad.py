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
    """1x1 reduction -> NetVLAD -> linear projection -> BatchNorm: one token.

    The final BatchNorm centres each token dimension over images: raw NetVLAD vectors of street
    scenes share a large common part (cosine ~0.99 between any two), which left the differences
    too small for the losses to see (runs 1 and 3 here: image tokens stayed constant)."""

    def __init__(self, in_channels: int, local_dim: int, clusters: int, token_dim: int, norm: bool = True) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, local_dim, 1, bias=False), nn.BatchNorm2d(local_dim), nn.ReLU(inplace=True))
        self.vlad = NetVLAD(local_dim, clusters)
        self.proj = nn.Linear(self.vlad.out_channels, token_dim)
        self.norm = nn.BatchNorm1d(token_dim) if norm else nn.Identity()
        self.out_channels = token_dim

    def forward(self, feat: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, token_dim)
        return self.norm(self.proj(self.vlad(self.reduce(feat).flatten(2))))


@torch.no_grad()
def kmeans_unit(x: torch.Tensor, k: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """Spherical k-means of unit vectors x (N, D): (k, D) unit centroids (seeded, deterministic)."""
    g = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iterations):
        assign = (x @ c.T).argmax(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
        c = F.normalize(c, dim=1)
    return c


@torch.no_grad()
def init_netvlad_from_features(vlad: NetVLAD, feats: torch.Tensor) -> None:
    """Data-driven NetVLAD start (as in the NetVLAD paper's code): centroids by k-means of local
    features, assignment ``2 alpha c_k . x - alpha |c_k|^2`` with alpha set so that the nearest
    centroid gets ~100x the weight of the second.

    Without it, random centroids make every image's residuals point the same way (-c_k after
    intra-normalisation) and the descriptor starts, and here stayed, nearly constant.
    feats: (N, D) local features (normalised here)."""
    x = F.normalize(feats, dim=1)
    k = vlad.centroids.shape[0]
    c = kmeans_unit(x, k)
    d = torch.cdist(x, c) ** 2
    two = d.topk(2, dim=1, largest=False).values
    gap = (two[:, 1] - two[:, 0]).mean().clamp_min(1e-3)
    alpha = float(-torch.log(torch.tensor(0.01)) / gap)
    vlad.centroids.copy_(c)
    vlad.assign.weight.copy_((2.0 * alpha * c).unsqueeze(-1))
    vlad.assign.bias.copy_(-alpha * (c * c).sum(1))
