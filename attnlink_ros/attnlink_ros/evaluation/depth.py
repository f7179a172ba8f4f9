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


# How the depth branch's descriptor moves when its input depth is wrong in the ways a camera's
# depth is wrong. Each perturbation acts on the dense depth the branch sees (its completion of the
# scan, keeping the scan's return mask); "pseudo" rows put the image's own pseudo-depth there.
SENSITIVITY = ("scale 0.9", "scale 1.1", "scale 0.8", "scale 1.2", "log-noise 0.16 per pixel",
               "log-noise 0.3 smooth", "far clamped at 40 m", "pseudo-depth in the top third",
               "pseudo-depth in the lower two thirds", "pseudo-depth, scan's returns", "pseudo-LiDAR (its depth and returns)")


def descriptor_sensitivity(model, rgb: np.ndarray, depth: np.ndarray, batch: int = 16, seed: int = 0) -> dict:
    """Per perturbation (``SENSITIVITY``), the cosine of the perturbed input's descriptor to the
    scan's own LiDAR descriptor (median, mean over the frames), and the perturbed depth's AbsRel
    against the completion on the returns: how exact a depth the descriptor asks for. ``rgb`` (N, 3,
    h, w) in [0, 1] and ``depth`` (N, 1, h, w) sparse metres on the model's grid (data.real's
    frames). The "pseudo" rows need a model with a pseudo-LiDAR network and are left out without."""
    import torch
    import torch.nn.functional as F

    model.eval()
    g = torch.Generator().manual_seed(seed)
    cos: dict[str, list] = {}
    rel: dict[str, list] = {}
    with torch.no_grad():
        for i in range(0, len(depth), batch):
            d = torch.from_numpy(np.ascontiguousarray(depth[i:i + batch]))
            tok = model.encode(None, d)
            lidar, A = model.fuse(tok)[0], tok.dense_depth
            if A is None:
                raise AttnLinkError("descriptor sensitivity needs a model whose depth branch completes the scan (adcn)")
            ret = (d > 0).to(A.dtype)
            logit = torch.logit(ret.clamp(1e-4, 1 - 1e-4))
            smooth = F.avg_pool2d(F.pad(torch.randn(A.shape, generator=g), (3, 3, 3, 3), mode="replicate"), 7, 1)
            cases = {"scale 0.9": (A * 0.9, logit), "scale 1.1": (A * 1.1, logit), "scale 0.8": (A * 0.8, logit),
                     "scale 1.2": (A * 1.2, logit), "log-noise 0.16 per pixel": (A * torch.exp(0.16 * torch.randn(A.shape, generator=g)), logit),
                     "log-noise 0.3 smooth": (A * torch.exp(0.3 * smooth / smooth.std()), logit),
                     "far clamped at 40 m": (A.clamp(max=40.0), logit)}
            if getattr(model, "mono", None) is not None:
                x = torch.from_numpy(np.ascontiguousarray(rgb[i:i + batch]))
                P, plogit = model.mono((x - model.rgb_mean) / model.rgb_std)
                top = torch.arange(A.shape[2]).view(1, 1, -1, 1) < A.shape[2] // 3
                cases.update({"pseudo-depth in the top third": (torch.where(top, P, A), logit),
                              "pseudo-depth in the lower two thirds": (torch.where(top, A, P), logit),
                              "pseudo-depth, scan's returns": (P, logit), "pseudo-LiDAR (its depth and returns)": (P, plogit)})
            for name, (dd, lg) in cases.items():
                c = (model.fuse(model.pseudo_lidar_tokens(dd, lg))[0] * lidar).sum(1)
                cos.setdefault(name, []).append(c.numpy())
                on = ret > 0
                rel.setdefault(name, []).append(float(((dd - A).abs() / A.clamp_min(0.1))[on].mean()) if on.any() else 0.0)
    out = {}
    for name in SENSITIVITY:
        if name in cos:
            c = np.concatenate(cos[name])
            out[name] = {"cos_median": round(float(np.median(c)), 4), "cos_mean": round(float(c.mean()), 4),
                         "abs_rel_vs_completion": round(float(np.mean(rel[name])), 4)}
    return out


def format_sensitivity(table: dict, title: str = "") -> str:
    rows = [title] if title else []
    rows.append(f"{'the depth branch sees':40s} {'AbsRel':>7s} | {'cos to the scan own LiDAR descriptor: median':>44s} {'mean':>6s}")
    for name, r in table.items():
        rows.append(f"{name:40s} {r['abs_rel_vs_completion']:7.3f} | {r['cos_median']:44.3f} {r['cos_mean']:6.3f}")
    return "\n".join(rows)
