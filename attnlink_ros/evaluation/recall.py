"""Recall of a model on cached sequences, per protocol and query mode.

The database is always LiDAR-only descriptors (maps are built from LiDAR); queries are image,
LiDAR or fused descriptors of the query frames.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.cache import FrameCache
from ..model.attnlink import AttnLink
from ..train.augment import make_sample, model_grid
from .protocols import PROTOCOLS, make_protocol, one_percent, recall_curve

MODE_INPUTS = {"image": ("rgb",), "lidar": ("depth",), "fused": ("rgb", "depth")}


@torch.no_grad()
def encode_cache(model: AttnLink, cache: FrameCache, modes=("image", "lidar", "fused"), batch: int = 32,
                 device: str | torch.device = "cpu", progress: bool = False, degrade=None,
                 frames: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Descriptors (N, D) of the cached frames (all, or ``frames``) for each mode, plus
    'attention' (N, 4) of fused and 'brightness' (N,) of the input images.

    ``degrade(rgb, depth, first_index) -> (rgb, depth)`` alters the inputs (robustness study)."""
    from tqdm import tqdm

    model.eval()
    grid = model_grid(cache, model.cfg.input_height, model.cfg.input_width)
    out: dict[str, list] = {m: [] for m in modes}
    out["brightness"] = []
    if "fused" in modes:
        out["attention"] = []
    index = np.arange(len(cache)) if frames is None else np.asarray(frames)
    for s in tqdm(range(0, len(index), batch), desc=f"encode {cache.name}", disable=not progress):
        items = [make_sample(cache, int(k), grid, None) for k in index[s : s + batch]]
        rgb = torch.from_numpy(np.stack([i[0] for i in items])).to(device)
        depth = torch.from_numpy(np.stack([i[1] for i in items])).to(device)
        if degrade is not None:
            rgb, depth = degrade(rgb, depth, s)
        out["brightness"].append(rgb.mean(dim=(1, 2, 3)).cpu().numpy())
        for m in modes:
            kw = {"rgb": rgb, "depth": depth}
            res = model(**{k: kw[k] for k in MODE_INPUTS[m]})
            out[m].append(res.descriptor.float().cpu().numpy())
            if m == "fused":
                out["attention"].append(res.attention.float().cpu().numpy())
    return {k: np.concatenate(v, 0) for k, v in out.items()}


def ranked_prefix(query: np.ndarray, db: np.ndarray, db_end: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) best-first indices into ``db`` by inner product, query i searching ``db[:db_end[i]]``
    (exact, brute force; -1 pads a database shorter than k)."""
    sims = query @ db.T  # (Q, D)
    cols = np.arange(db.shape[0])[None, :]
    sims = np.where(cols < db_end[:, None], sims, -np.inf)
    k = min(k, db.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(-sims, top, 1).argsort(1)
    top = np.take_along_axis(top, order, 1)
    top[np.take_along_axis(sims, top, 1) == -np.inf] = -1
    return top


def evaluate_descriptors(desc: dict[str, np.ndarray], xy: np.ndarray, times: np.ndarray,
                         protocols=PROTOCOLS, modes=("image", "lidar", "fused"), max_n: int = 25,
                         top1: dict | None = None) -> dict:
    """``{protocol: {mode: {"recall@1", "recall@1%", "recall@N", "queries"}}}``; when ``top1`` is
    a dict it receives ``{(protocol, mode): (queries, top-1 index)}``."""
    result: dict = {}
    for p in protocols:
        proto = make_protocol(p, xy, times)
        result[p] = {}
        for m in modes:
            if len(proto.queries) == 0:
                result[p][m] = {"recall@1": None, "recall@1%": None, "recall@N": [], "queries": 0}
                continue
            k = max(max_n, max(one_percent(int(e)) for e in proto.db_end))
            ranked = ranked_prefix(desc[m][proto.queries], desc["lidar"], proto.db_end, k)
            result[p][m] = recall_curve(xy[proto.queries], xy, ranked, db_sizes=proto.db_end)
            if top1 is not None:
                top1[(p, m)] = (proto.queries, ranked[:, 0])
    return result


def evaluate_sequence(model: AttnLink, root, sequence: str, protocols=PROTOCOLS, modes=("image", "lidar", "fused"),
                      cache_dir=None, plots=None, robustness: bool = False, progress: bool = False, echo=print) -> dict:
    """What ``attnlink eval`` does for one sequence: cache, encode, recall per protocol and mode,
    fusion analysis, optional robustness study and PNG plots (Recall@N curves, top-1 match maps)."""
    import tempfile
    from pathlib import Path

    from ..data.cache import build_cache
    from .plots import plot_matches, plot_recall_curves
    from .protocols import SUCCESS_RADIUS
    from .robustness import fusion_analysis, robustness_study

    cache_dir = Path(cache_dir or tempfile.mkdtemp())
    path = cache_dir / f"{Path(root).resolve().name}_{sequence}_{model.cfg.input_height}x{model.cfg.input_width}"
    if not (path / "manifest.json").is_file():
        build_cache(root, sequence, path, model.cfg.input_height, model.cfg.input_width, progress=progress)
    cache = FrameCache.open(path)
    desc = encode_cache(model, cache, modes=tuple(dict.fromkeys(tuple(modes) + ("lidar", "fused"))), progress=progress)
    top1: dict = {}
    res = evaluate_descriptors(desc, cache.xy, cache.times, protocols, modes, top1=top1)
    for p, by_mode in res.items():
        for m, r in by_mode.items():
            if r["queries"]:
                echo(f"{sequence} {p:10s} {m:6s} recall@1 {r['recall@1']:.3f}  recall@1% {r['recall@1%']:.3f}  ({r['queries']} queries)")
            else:
                echo(f"{sequence} {p:10s} {m:6s} no queries")
    res["fusion_analysis"] = fusion_analysis(desc["attention"], desc["brightness"])
    if robustness:
        res["robustness"] = robustness_study(model, cache, "revisit" if "revisit" in protocols else protocols[0], progress=progress)
    if plots:
        out = Path(plots)
        res["plots"] = []
        for p in protocols:
            curves = {m: res[p][m]["recall@N"] for m in modes if res[p][m]["queries"]}
            if curves:
                res["plots"].append(str(plot_recall_curves(curves, out / f"recall_{sequence}_{p}.png", f"{sequence} {p}: query mode vs LiDAR map")))
            for m in modes:
                if (p, m) in top1 and res[p][m]["queries"]:
                    q, t1 = top1[(p, m)]
                    ok = (t1 >= 0) & (np.linalg.norm(cache.xy[np.maximum(t1, 0)] - cache.xy[q], axis=1) <= SUCCESS_RADIUS)
                    res["plots"].append(str(plot_matches(cache.xy, q, t1, ok, out / f"matches_{sequence}_{p}_{m}.png",
                                                         f"{sequence} {p} {m}: recall@1 {res[p][m]['recall@1']:.3f}")))
    return res
