"""Fusion of the four tokens (F_rgb, F_depth, S_rgb, S_depth) into one descriptor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TOKENS = ("F_rgb", "F_depth", "S_rgb", "S_depth")


def _scatter_tokens(values: torch.Tensor, which: list[int]) -> torch.Tensor:
    """(B, T) values of token types ``which`` -> (B, 4), zeros for the absent types."""
    cols = {i: j for j, i in enumerate(which)}
    zero = values.new_zeros(values.shape[0])
    return torch.stack([values[:, cols[i]] if i in cols else zero for i in range(len(TOKENS))], 1)


class AttentionFusion(nn.Module):
    """A learned query attends over the present tokens (multi-head attention with a key mask
    for absent modalities); its per-token attention weights are returned for evaluation."""

    def __init__(self, token_dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.type_embed = nn.Parameter(torch.zeros(len(TOKENS), token_dim))
        self.query = nn.Parameter(torch.randn(1, 1, token_dim) * 0.02)
        self.norm_in = nn.LayerNorm(token_dim)
        self.attn = nn.MultiheadAttention(token_dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, 2 * token_dim), nn.GELU(), nn.Linear(2 * token_dim, token_dim))
        self.out = nn.Linear(token_dim, out_dim)
        self.out_channels = out_dim

    def forward(self, tokens: torch.Tensor, which: list[int], mask: torch.Tensor | None = None):
        """tokens (B, T, d) for token types ``which`` (indices into TOKENS); mask (B, T) True =
        absent. Returns (descriptor (B, out_dim) L2-normalised, weights (B, 4))."""
        B = tokens.shape[0]
        # rows picked by Python ints (views): a list index would be a host tensor, which CUDA graph capture refuses
        x = self.norm_in(tokens + torch.stack([self.type_embed[i] for i in which]).unsqueeze(0))
        q = self.query.expand(B, -1, -1)
        out, w = self.attn(q, x, x, key_padding_mask=mask, need_weights=True)  # (B, 1, d), (B, 1, T)
        out = out + self.ffn(out)
        desc = F.normalize(self.out(out.squeeze(1)), dim=1)
        return desc, _scatter_tokens(w.squeeze(1), which)


class ConcatFusion(nn.Module):
    """Ablation: concatenate the tokens (absent ones as zeros) and project."""

    def __init__(self, token_dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.out = nn.Linear(len(TOKENS) * token_dim, out_dim)
        self.out_channels = out_dim

    def forward(self, tokens: torch.Tensor, which: list[int], mask: torch.Tensor | None = None):
        B = tokens.shape[0]
        if mask is not None:
            tokens = tokens.masked_fill(mask.unsqueeze(-1), 0.0)
        cols = {i: j for j, i in enumerate(which)}
        zero = tokens.new_zeros(B, self.token_dim)
        full = torch.stack([tokens[:, cols[i]] if i in cols else zero for i in range(len(TOKENS))], 1)
        desc = F.normalize(self.out(full.flatten(1)), dim=1)
        present = (~mask).to(tokens.dtype) if mask is not None else tokens.new_ones(B, len(which))
        weights = _scatter_tokens(present / present.sum(1, keepdim=True), which)
        return desc, weights
