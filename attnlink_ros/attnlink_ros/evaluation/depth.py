"""Pseudo-depth against real LiDAR: AbsRel, RMSE and delta < 1.25 of an image's predicted depth on
the pixels of the network grid that hold a LiDAR return (depth <= 80 m), per drive and pooled,
with a trivial baseline beside it: one constant image, each grid row's median LiDAR depth over
the frames evaluated (it sees their LiDAR, so it is an optimistic baseline)."""

from __future__ import annotations

import numpy as np

from ..errors import AttnLinkError

MAX_EVAL_DEPTH_M = 80.0


def depth_sums(pred: np.ndarray, target: np.ndarray, max_depth: float = MAX_EVAL_DEPTH_M) -> np.ndarray:
    """Sums over the valid pixels (target > 0 and <= max_depth): [n, sum |p-t|/t, sum (p-t)^2,
    count max(p/t, t/p) < 1.25]; ``pred`` and ``target`` of one shape, metres."""
    m = (target > 0) & (target <= max_depth)
    p = np.maximum(pred[m].astype(np.float64), 1e-3)
    t = target[m].astype(np.float64)
    return np.array([m.sum(), np.sum(np.abs(p - t) / t), np.sum((p - t) ** 2), np.sum(np.maximum(p / t, t / p) < 1.25)])


def metrics(sums: np.ndarray) -> dict:
    n = sums[0]
    if n == 0:
        return {"pixels": 0, "abs_rel": None, "rmse_m": None, "delta1": None}
    return {"pixels": int(n), "abs_rel": round(float(sums[1] / n), 4), "rmse_m": round(float(np.sqrt(sums[2] / n)), 3),
            "delta1": round(float(sums[3] / n), 4)}


def row_median_image(depth: np.ndarray, max_depth: float = MAX_EVAL_DEPTH_M) -> np.ndarray:
    """(h, w) constant image: each grid row's median over the valid returns of ``depth`` (N, 1, h, w);
    rows with no return take the nearest row's value."""
    d = depth[:, 0]
    h, w = d.shape[1:]
    med = np.full(h, np.nan)
    for r in range(h):
        v = d[:, r][(d[:, r] > 0) & (d[:, r] <= max_depth)]
        if len(v):
            med[r] = np.median(v)
    ok = np.flatnonzero(~np.isnan(med))
    if not len(ok):
        raise AttnLinkError("no LiDAR return on the grid: nothing to evaluate depth against")
    med = np.interp(np.arange(h), ok, med[ok])
    return np.repeat(med[:, None], w, 1).astype(np.float32)


def evaluate_depth(pred: np.ndarray, frames) -> dict:
    """Table of ``pred`` (N, 1, h, w) metres for ``frames`` (data.real.RealFrames): per drive and
    pooled, the prediction and the row-median baseline."""
    base = row_median_image(frames.depth)
    out = {}
    pooled = {"model": np.zeros(4), "row_median": np.zeros(4)}
    for d in frames.drives:
        keep = frames.drive == d
        s_model = sum(depth_sums(p, t) for p, t in zip(pred[keep], frames.depth[keep]))
        s_base = sum(depth_sums(base[None], t) for t in frames.depth[keep])
        pooled["model"] += s_model
        pooled["row_median"] += s_base
        out[d] = {"frames": int(keep.sum()), "model": metrics(s_model), "row_median": metrics(s_base)}
    out["pooled"] = {"frames": len(frames), "model": metrics(pooled["model"]), "row_median": metrics(pooled["row_median"])}
    return out


def predict_depth(model, rgb: np.ndarray, batch: int = 16) -> np.ndarray:
    """The model's pseudo-depth (N, 1, h, w) metres of images ``rgb`` (N, 3, h, w) in [0, 1]."""
    import torch

    if getattr(model, "mono", None) is None:
        raise AttnLinkError("this model has no pseudo-depth network (model.image_depth is false)")
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rgb), batch):
            x = torch.from_numpy(rgb[i:i + batch])
            out.append(model.mono((x - model.rgb_mean) / model.rgb_std)[0].numpy())
    return np.concatenate(out)


def format_table(table: dict, title: str = "") -> str:
    rows = [title] if title else []
    rows.append(f"{'drive':12s} {'frames':>6s} {'pixels':>8s} | {'AbsRel':>7s} {'RMSE m':>7s} {'d<1.25':>7s} | "
                f"{'row-median baseline':>26s}")
    for d, r in table.items():
        m, b = r["model"], r["row_median"]
        rows.append(f"{d:12s} {r['frames']:6d} {m['pixels']:8d} | {m['abs_rel']:7.3f} {m['rmse_m']:7.2f} {m['delta1']:7.3f} | "
                    f"{b['abs_rel']:7.3f} {b['rmse_m']:7.2f} {b['delta1']:7.3f}")
    return "\n".join(rows)
