"""Recall of a model on cached sequences, per protocol and query mode.

The database is always LiDAR-only descriptors (maps are built from LiDAR); queries are image,
LiDAR or fused descriptors of the query frames. A database of K heading views a place
(retrieval/views.py) scores each place by its best view, as the map's search does; the revisit
protocol then also reports recall by heading class (same / reverse / other) and the share of
queries the map can reach.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.cache import FrameCache
from ..model.attnlink import AttnLink
from ..train.augment import make_sample, model_grid
from .protocols import PROTOCOLS, SUCCESS_RADIUS, make_protocol, one_percent, recall_curve

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


def model_key(model: AttnLink) -> str:
    """A digest of the model's weights, config and image domain (names files of derived descriptors;
    "auto" adds nothing, so files from before the domain existed stay valid)."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(model.cfg.__dict__, sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    if model.image_domain != "auto":
        h.update(f"image_domain={model.image_domain}".encode())
    return h.hexdigest()[:16]


class _FrameSubset:
    """Some of a frame cache's frames, as encode_views reads them (no storage of its own)."""

    def __init__(self, cache: FrameCache, idx: np.ndarray) -> None:
        self._cache, self.frames = cache, [cache.frames[int(i)] for i in idx]
        self.calib, self.name, self.path = cache.calib, cache.name, None

    def __len__(self) -> int:
        return len(self.frames)

    def __getattr__(self, name):
        return getattr(self._cache, name)


@torch.no_grad()
def encode_views(model: AttnLink, cache: FrameCache, seq, yaws_deg, batch: int = 32, progress: bool = False,
                 lidar: np.ndarray | None = None, store: bool = True, reverse_offset_m: float | None = None,
                 only: np.ndarray | None = None) -> np.ndarray:
    """(N, K, D) LiDAR descriptors of the cached frames' heading views: each frame's full scan
    (read from ``seq``, the cache holds only the camera's part) turned by each yaw, FoV-converted
    on the cache's grid and encoded (rear views from ``reverse_offset_m`` to the left, default
    retrieval.views.DEFAULT_REVERSE_OFFSET_M). Yaw 0 is taken from ``lidar`` (N, D) when given: the same
    descriptors the one-view evaluation uses, so K = 1 is exactly that. With ``store`` each yaw's
    descriptors are kept in the cache folder (``views/<model digest>_v<yaw>[_l<offset>].npy``) and reused.
    ``only``: a mask over the cached frames: only those are encoded (e.g. the frames an online map
    will take as keyframes), the others' rows are zeros; nothing is stored or reused then."""
    if only is not None:
        only = np.asarray(only, bool)
        out = np.zeros((len(cache), len(list(yaws_deg)), model.cfg.descriptor_dim), np.float32)
        idx = np.flatnonzero(only)
        if len(idx):
            sub = _FrameSubset(cache, idx)
            out[idx] = encode_views(model, sub, seq, yaws_deg, batch, progress, None if lidar is None else lidar[idx], False,
                                    reverse_offset_m)
        return out
    from tqdm import tqdm

    from ..geometry.projection import sparse_depth
    from ..retrieval.views import DEFAULT_REVERSE_OFFSET_M, rotate_scan, vertical_axis, view_offsets

    up = vertical_axis(seq.calib.T_cam_lidar)  # the cache's calibration holds only the projection
    yaws = [float(y) for y in yaws_deg]
    rev = DEFAULT_REVERSE_OFFSET_M if reverse_offset_m is None else float(reverse_offset_m)
    offset = {y: o for y, o in zip(yaws, view_offsets(yaws, rev))}
    tag = {y: f"v{y:+.3f}" + (f"_l{offset[y][1]:.2f}" if offset[y][1] else "") for y in yaws}
    vdir = Path(cache.path) / "views" if store and getattr(cache, "path", None) else None
    key = model_key(model) if vdir else ""
    stored = {}
    for y in yaws:
        f = vdir / f"{key}_{tag[y]}.npy" if vdir else None
        if f is not None and f.is_file() and not (y == 0.0 and lidar is not None):
            stored[y] = np.load(f, allow_pickle=False)
    todo = [y for y in yaws if not (y == 0.0 and lidar is not None) and y not in stored]
    model.eval()
    grid = model_grid(cache, model.cfg.input_height, model.cfg.input_width)
    got: dict[float, list] = {y: [] for y in todo}
    per = max(1, batch // max(1, len(todo)))
    for s in tqdm(range(0, len(cache) if todo else 0, per), desc=f"views {cache.name} ({len(todo)} yaws)", disable=not progress):
        depth = []
        for k in range(s, min(s + per, len(cache))):
            pts = seq.read_scan(int(cache.frames[k]))
            depth.extend(sparse_depth(rotate_scan(pts, y, up, offset[y]), cache.calib, grid)[None] for y in todo)
        d = model(depth=torch.from_numpy(np.stack(depth))).descriptor.float().numpy().reshape(-1, len(todo), model.cfg.descriptor_dim)
        for j, y in enumerate(todo):
            got[y].append(d[:, j])
    for y in todo:
        got[y] = np.concatenate(got[y])
        if vdir is not None:
            vdir.mkdir(exist_ok=True)
            tmp = vdir / f".{key}_{tag[y]}.tmp.npy"
            np.save(tmp, got[y])
            tmp.replace(vdir / f"{key}_{tag[y]}.npy")
    got.update(stored)
    cols = [lidar if (y == 0.0 and lidar is not None) else got[y] for y in yaws]
    return np.stack(cols, 1).astype(np.float32)


def place_similarity(query: np.ndarray, db: np.ndarray) -> np.ndarray:
    """(Q, N) similarity of queries (Q, D) to places: db (N, D), or (N, K, D) views scored by the best."""
    if db.ndim == 2:
        return query @ db.T
    return np.einsum("qd,nkd->qnk", query, db, optimize=True).max(2)


def ranked_prefix(query: np.ndarray, db: np.ndarray, db_end: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) best-first indices into ``db`` (places (N, D) or views (N, K, D)) by inner product,
    query i searching ``db[:db_end[i]]`` (exact, brute force; -1 pads a database shorter than k)."""
    sims = place_similarity(query, db)  # (Q, N)
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
                         top1: dict | None = None, db: np.ndarray | None = None, heading: np.ndarray | None = None,
                         view_yaws_deg=None) -> dict:
    """``{protocol: {mode: {"recall@1", "recall@1%", "recall@N", "queries"}}}``; when ``top1`` is
    a dict it receives ``{(protocol, mode): (queries, top-1 index)}``.

    ``db``: the database, (N, K, D) heading views at ``view_yaws_deg`` (default: ``desc["lidar"]``,
    one view). With ``heading`` (N,) degrees, the revisit protocol's modes also get
    ``by_heading`` (recall@1 and queries per heading class) and the protocol ``ceiling`` (share of
    queries with a same-heading place, and the share this map's views can reach)."""
    from .protocols import HEADING_CLASSES, heading_classes, reachable

    db = desc["lidar"] if db is None else db
    yaws = [0.0] if view_yaws_deg is None else list(view_yaws_deg)
    result: dict = {}
    for p in protocols:
        proto = make_protocol(p, xy, times)
        result[p] = {}
        cls = heading_classes(xy, heading, proto) if heading is not None and p == "revisit" else None
        if cls is not None and len(proto.queries):
            result[p]["ceiling"] = {"same_heading": float(np.mean(cls == "same")),
                                    "views": float(reachable(xy, heading, proto, yaws).mean()), "view_count": len(yaws),
                                    "queries_by_heading": {c: int(np.sum(cls == c)) for c in HEADING_CLASSES}}
        for m in modes:
            if len(proto.queries) == 0:
                result[p][m] = {"recall@1": None, "recall@1%": None, "recall@N": [], "queries": 0}
                continue
            k = max(max_n, max(one_percent(int(e)) for e in proto.db_end))
            ranked = ranked_prefix(desc[m][proto.queries], db, proto.db_end, k)
            result[p][m] = recall_curve(xy[proto.queries], xy, ranked, db_sizes=proto.db_end)
            if cls is not None:
                t1 = ranked[:, 0]
                ok = (t1 >= 0) & (np.linalg.norm(xy[np.maximum(t1, 0)] - xy[proto.queries], axis=1) <= SUCCESS_RADIUS)
                result[p][m]["by_heading"] = {c: {"recall@1": float(ok[cls == c].mean()) if np.any(cls == c) else None,
                                                  "queries": int(np.sum(cls == c))} for c in HEADING_CLASSES}
            if top1 is not None:
                top1[(p, m)] = (proto.queries, ranked[:, 0])
    return result


def evaluate_sequence(model: AttnLink, root, sequence: str, protocols=PROTOCOLS, modes=("image", "lidar", "fused"),
                      cache_dir=None, plots=None, robustness: bool = False, progress: bool = False, echo=print,
                      views=(1,), reverse_offset_m: float | None = None) -> dict:
    """What ``attnlink eval`` does for one sequence: cache, encode, recall per protocol and mode,
    fusion analysis, optional robustness study and PNG plots (Recall@N curves, top-1 match maps).

    ``views``: heading views a place of the database, one or more K; the result's top level is
    for ``views[0]``, and ``views_compared`` holds every K's table (same queries, same run)."""
    import tempfile
    from pathlib import Path

    from ..data.cache import model_cache
    from ..data.kitti import KittiSequence
    from ..retrieval.views import view_yaws
    from .plots import plot_matches, plot_recall_curves
    from ..geometry.poses import headings_deg
    from .robustness import fusion_analysis, robustness_study

    cache_dir = Path(cache_dir or tempfile.mkdtemp())
    cache = model_cache(root, sequence, cache_dir, model.cfg, progress)
    desc = encode_cache(model, cache, modes=tuple(dict.fromkeys(tuple(modes) + ("lidar", "fused"))), progress=progress)
    seq = KittiSequence(root, sequence)
    heading = headings_deg(seq.poses[cache.frames]) if seq.has_poses else None
    views = [int(k) for k in views]
    all_yaws = sorted({float(y) for k in views for y in view_yaws(k)}, key=lambda y: (y != 0.0, y))
    all_db = (encode_views(model, cache, seq, all_yaws, progress=progress, lidar=desc["lidar"], reverse_offset_m=reverse_offset_m)
              if all_yaws != [0.0] else desc["lidar"][:, None])
    tables, top1 = {}, {}
    for K in views:
        yaws = view_yaws(K)
        db = all_db[:, [all_yaws.index(float(y)) for y in yaws]]
        t1: dict = {}
        tables[K] = evaluate_descriptors(desc, cache.xy, cache.times, protocols, modes, top1=t1, db=db, heading=heading, view_yaws_deg=yaws)
        if K == views[0]:
            top1 = t1
        for p, by_mode in tables[K].items():
            ceil = by_mode.get("ceiling")
            if ceil:
                q = ceil["queries_by_heading"]
                echo(f"{sequence} {p:10s} K={K} queries by heading: same {q['same']}, reverse {q['reverse']}, other {q['other']}; "
                     f"same-heading ceiling {ceil['same_heading']:.3f}, reachable with {K} view(s) {ceil['views']:.3f}")
            for m in modes:
                r = by_mode[m]
                if r["queries"]:
                    bh = r.get("by_heading")
                    split = ("  [" + ", ".join(f"{c} {v['recall@1']:.3f}" for c, v in bh.items() if v["queries"]) + "]") if bh else ""
                    echo(f"{sequence} {p:10s} K={K} {m:6s} recall@1 {r['recall@1']:.3f}  recall@1% {r['recall@1%']:.3f}  ({r['queries']} queries){split}")
                else:
                    echo(f"{sequence} {p:10s} K={K} {m:6s} no queries")
    res = dict(tables[views[0]])
    res["views"] = views[0]
    if len(views) > 1:
        res["views_compared"] = {str(K): tables[K] for K in views}
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
