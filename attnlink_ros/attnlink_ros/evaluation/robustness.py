"""The paper's robustness study and fusion analysis.

- LiDAR kept at 75/50/25%: a seeded random share of the query's sparse-depth pixels is removed
  (the map stays built from full scans).
- Gaussian image noise sigma 0.05/0.10/0.15 (image in [0, 1], clipped).
- Fusion analysis: mean attention weight per token (F_rgb, F_depth, S_rgb, S_depth) of fused
  queries, split into dark / medium / bright thirds by mean image brightness.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.cache import FrameCache
from ..model.attnlink import AttnLink
from .protocols import make_protocol, one_percent, recall_curve
from .recall import encode_cache, ranked_prefix

LIDAR_KEEP = (1.0, 0.75, 0.5, 0.25)
IMAGE_NOISE = (0.0, 0.05, 0.10, 0.15)
TOKEN_NAMES = ("F_rgb", "F_depth", "S_rgb", "S_depth")


def lidar_keep(share: float, seed: int = 0):
    def degrade(rgb, depth, first):
        g = torch.Generator().manual_seed(seed + first)
        keep = torch.rand(depth.shape, generator=g) < share
        return rgb, depth * keep.to(depth.dtype)

    return degrade


def image_noise(sigma: float, seed: int = 0):
    def degrade(rgb, depth, first):
        g = torch.Generator().manual_seed(seed + first)
        return (rgb + sigma * torch.randn(rgb.shape, generator=g)).clamp(0, 1), depth

    return degrade


def _recall(query_desc, db_desc, proto, xy) -> dict:
    k = max(25, max(one_percent(int(e)) for e in proto.db_end))
    ranked = ranked_prefix(query_desc, db_desc, proto.db_end, k)
    r = recall_curve(xy[proto.queries], xy, ranked, db_sizes=proto.db_end)
    return {"recall@1": r["recall@1"], "recall@1%": r["recall@1%"], "queries": r["queries"]}


def robustness_study(model: AttnLink, cache: FrameCache, protocol: str = "revisit", progress: bool = False) -> dict:
    """``{"lidar_keep": {share: {mode: recall}}, "image_noise": {sigma: {mode: recall}}}``."""
    proto = make_protocol(protocol, cache.xy, cache.times)
    if len(proto.queries) == 0:
        return {}
    db = encode_cache(model, cache, modes=("lidar",), progress=progress)["lidar"]
    out: dict = {"protocol": protocol, "lidar_keep": {}, "image_noise": {}}
    for share in LIDAR_KEEP:
        d = encode_cache(model, cache, modes=("lidar", "fused"), frames=proto.queries, degrade=lidar_keep(share))
        out["lidar_keep"][str(share)] = {m: _recall(d[m], db, proto, cache.xy) for m in ("lidar", "fused")}
    out["image_noise"] = image_noise_recall(model, cache, proto, db, IMAGE_NOISE, modes=("image", "fused"))
    return out


def image_noise_recall(model: AttnLink, cache: FrameCache, proto, db: np.ndarray, sigmas=IMAGE_NOISE,
                       modes=("image",)) -> dict:
    """``{str(sigma): {mode: recall}}`` of the protocol's queries with seeded Gaussian image noise
    against the (clean) LiDAR database ``db``; training validation uses it too."""
    out = {}
    for sigma in sigmas:
        d = encode_cache(model, cache, modes=modes, frames=proto.queries, degrade=image_noise(sigma))
        out[str(sigma)] = {m: _recall(d[m], db, proto, cache.xy) for m in modes}
    return out


def fusion_analysis(attention: np.ndarray, brightness: np.ndarray) -> dict:
    """Mean attention per token overall and per brightness third."""
    lo, hi = np.quantile(brightness, [1 / 3, 2 / 3])
    groups = {"all": np.ones(len(brightness), bool), "dark": brightness <= lo,
              "medium": (brightness > lo) & (brightness <= hi), "bright": brightness > hi}
    return {g: {"frames": int(m.sum()), "mean_brightness": float(brightness[m].mean()),
                **{t: float(attention[m, i].mean()) for i, t in enumerate(TOKEN_NAMES)}} for g, m in groups.items()}
