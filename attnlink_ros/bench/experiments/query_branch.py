"""Session 20, issue 19: an image query branch of its own.

Image queries go through the depth branch the map's LiDAR descriptors come from (trunk, NetVLAD
heads, fusion), fed the U-Net's pseudo-LiDAR. Session 7 trained the U-Net against that frozen
branch and found it at its ceiling; session 12 trained the shared trunk and lost LiDAR recall
(the map side moved). Here the map side stays frozen (its descriptors are fixed vectors) and a
copy of the depth branch is trained for the pseudo-LiDAR queries alone, with the U-Net frozen
(its outputs cached): the copy can learn what the pseudo-LiDAR gets wrong (the far band) while
every map descriptor, LiDAR and fused query stays bit-identical.

    python attnlink_ros/bench/experiments/query_branch.py prep out/towns/s104 ...     # cache (U-Net output, map views)
    python attnlink_ros/bench/experiments/query_branch.py train --towns s104 ... --val s601 s602 --out out/exp/qb/run1
    python attnlink_ros/bench/experiments/query_branch.py eval --branch out/exp/qb/run1/best.pt --towns s601 ...

``prep`` writes ``out/exp/qb/<town>.npz`` (pseudo-LiDAR input (N, 2, 64, 256) float16, RGB-share
descriptor, render probability, the shipped image descriptor, LiDAR views 0 / 180, positions,
headings) from the town's frame cache in out/cache (built if missing; the town folder is needed
for the rear views). ``eval`` searches the query frames (the drive after its first 3/8) in the
map of the first 3/8 (two views a place), as ``attnlink eval --track`` does, and replays the
tracker with the eval's simulated wheel odometry: top-1 rate of the answerable frames,
precision, recall. With no ``--branch`` it uses the shipped model's descriptors (a check: the
hits must be the cached eval hits).

Result (session 20, bench/experiments/README.md row 15): on towns not looked at while training
(603 / 604) four training towns gave image top-1 0.425 -> 0.426 and image + odometry recall
0.810 -> 0.718, twelve towns 0.466 and 0.803; not kept.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

OUT = Path("out/exp/qb")
POS_M, NEG_M, POS_DEG = 7.5, 20.0, 45.0


def _model():
    from attnlink_ros.model.io import load_model

    model, _ = load_model(None)
    return model.eval()


@torch.no_grad()
def prep(roots, batch: int = 32) -> None:
    from tqdm import tqdm

    from attnlink_ros.data.cache import model_cache
    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.evaluation.recall import encode_cache, encode_views
    from attnlink_ros.evaluation.tracking import headings_deg
    from attnlink_ros.retrieval.views import view_yaws
    from attnlink_ros.train.augment import make_sample, model_grid

    model = _model()
    shipped = QueryBranch(model).eval()
    OUT.mkdir(parents=True, exist_ok=True)
    for root in roots:
        name = Path(root).name
        dst = OUT / f"{name}.npz"
        if dst.is_file():
            print(f"{name}: have {dst}")
            continue
        cache = model_cache(root, "00", "out/cache", model.cfg, progress=True)
        seq = KittiSequence(root, "00")
        grid = model_grid(cache, model.cfg.input_height, model.cfg.input_width)
        pin, rgbd, prob, img = [], [], [], []
        for s in tqdm(range(0, len(cache), batch), desc=f"pseudo-LiDAR {name}"):
            rgb = torch.from_numpy(np.stack([make_sample(cache, k, grid, None)[0] for k in range(s, min(s + batch, len(cache)))]))
            x = (rgb - model.rgb_mean) / model.rgb_std
            dense, logit, p = model.mono.gated(x)
            pin.append(torch.cat([dense / model.cfg.max_depth_m, torch.sigmoid(logit)], 1).half().numpy())
            r = model.fuse(model.encode(rgb, None, pseudo=False))[0]
            rgbd.append(r.numpy())
            prob.append(p.numpy())
            # the image query, as AttnLink.forward computes it, through the untrained copy (the same weights)
            img.append(shipped(torch.cat([dense / model.cfg.max_depth_m, torch.sigmoid(logit)], 1), r, p).numpy())
        lidar = encode_cache(model, cache, modes=("lidar",), progress=True)["lidar"]
        views = encode_views(model, cache, seq, view_yaws(2), progress=True, lidar=lidar)
        poses = seq.poses[cache.frames]
        tmp = dst.with_suffix(".tmp.npz")
        np.savez(tmp, pin=np.concatenate(pin), rgbd=np.concatenate(rgbd), prob=np.concatenate(prob), img=np.concatenate(img),
                 views=views.astype(np.float32), xy=np.asarray(cache.xy), poses=poses, heading=headings_deg(poses), times=np.asarray(cache.times))
        tmp.replace(dst)
        print(f"{name}: wrote {dst}")


def load_town(name: str) -> dict:
    with np.load(OUT / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


class QueryBranch(torch.nn.Module):
    """A copy of the model's depth branch (trunk, semantic clustering, the two depth NetVLAD heads,
    fusion) for pseudo-LiDAR queries; the image descriptor mixes its output with the RGB share
    exactly as AttnLink.forward does."""

    def __init__(self, model) -> None:
        super().__init__()
        self.trunk = copy.deepcopy(model.trunk)
        self.semantic = copy.deepcopy(model.semantic)
        self.heads = torch.nn.ModuleDict({k: copy.deepcopy(model.heads[k]) for k in ("F_depth", "S_depth")})
        self.fusion = copy.deepcopy(model.fusion)
        self.rgb_weight = float(model.cfg.image_rgb_weight)
        self.token_index = [i for i, n in enumerate(_TOKENS()) if n in ("F_depth", "S_depth")]

    def forward(self, pin: torch.Tensor, rgbd: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        f = self.trunk.forward_stages(self.trunk.forward_stem(pin, depth=True))
        toks = torch.stack([self.heads["F_depth"](f), self.heads["S_depth"](self.semantic(f))], 1)
        desc = self.fusion(toks, self.token_index, None)[0]
        w = self.rgb_weight * prob[:, None]
        return F.normalize((1.0 - w) * desc + w * rgbd, dim=1)


def _TOKENS():
    from attnlink_ros.model.attnlink import TOKENS

    return TOKENS


def _labels(t: dict, q: np.ndarray, yaws=(0.0, 180.0), exclude: int = 0):
    """(B, N*2) positive and negative masks of the queries ``q`` against the town's views; with
    ``exclude`` > 0 only views of frames more than that many frames from the query are positives
    (another pass of the place: the revisit the map serves), the query's own pass ignored."""
    d = np.linalg.norm(t["xy"][q][:, None] - t["xy"][None], axis=2)  # (B, N)
    d = np.repeat(d[:, :, None], 2, 2)
    hs = t["heading"][None, :, None] - np.asarray(yaws)[None, None]
    dh = np.abs((t["heading"][q][:, None, None] - hs + 180.0) % 360.0 - 180.0)
    pos = (d <= POS_M) & (dh < POS_DEG)
    if exclude > 0:
        far = np.abs(q[:, None] - np.arange(len(t["xy"]))[None]) > exclude
        pos &= far[:, :, None]
    neg = d > NEG_M
    return pos.reshape(len(q), -1), neg.reshape(len(q), -1)


def search(desc: np.ndarray, t: dict, m: int, k: int = 10):
    """Top-k (scores, places, views) of the queries in the map of the town's first ``m`` frames,
    built and searched as TrackData does (PlaceMap, two heading views)."""
    from attnlink_ros.retrieval.place_map import PlaceMap, PlaceTable
    from attnlink_ros.retrieval.views import view_offsets, view_yaws

    yaws = view_yaws(2)
    table = PlaceTable(t["poses"][:m], t["times"][:m], np.full(m, "00"), np.arange(m, dtype=np.int64), t["xy"][:m])
    pm = PlaceMap.build(t["views"][:m], table, "eval", view_yaws_deg=yaws, view_offsets_m=view_offsets(yaws))
    s, p, v = pm.search_views(desc.astype(np.float32), k)
    return s.astype(np.float64), p, v


def track(t: dict, desc: np.ndarray, map_fraction: float = 0.375) -> dict:
    """The eval's image tracking of a town with the query descriptors ``desc`` (all frames)."""
    from attnlink_ros.evaluation.tracking import _state_right, run_filter, simulated_odometry
    from attnlink_ros.localization.calibration import calibration_path
    from attnlink_ros.localization.tracker import PlaceTracker, TrackerConfig, load_calibration

    n = len(desc)
    m = int(round(n * map_fraction))
    q = np.arange(m, n)
    yaws = np.array([0.0, 180.0])
    s, p, v = search(desc[q], t, m)
    dist = np.linalg.norm(t["xy"][q][:, None] - t["xy"][None, :m], axis=2)
    ans = dist.min(1) <= 10
    qh, mh = t["heading"][q], t["heading"][:m]
    top1 = np.array([_state_right(dist[i], qh[i], p[i, :1], v[i, :1], mh, yaws)[0] for i in range(len(q))])
    obs = load_calibration(calibration_path(None))["image"]
    tr = PlaceTracker(t["xy"][:m], mh, yaws, obs, TrackerConfig())
    poses = t["poses"][q]
    fixes = run_filter(s, p, v, t["times"][q], tr, simulated_odometry(poses, 0), None, None, None)
    pub = np.array([f.published for f in fixes])
    right = np.array([f.published and dist[i, f.place] <= 10 for i, f in enumerate(fixes)])
    # ceilings (as session 19 measured them): answerable frames with a map place within 10 m
    # recorded driving the query's way (|dh| < 45 deg), or either way (two views: < 45 or > 135)
    dh = np.abs((qh[:, None] - mh[None] + 180.0) % 360.0 - 180.0)
    near = dist <= 10
    same = (near & (dh < 45)).any(1)[ans].mean()
    two = (near & ((dh < 45) | (dh > 135))).any(1)[ans].mean()
    return {"top1": float(top1[ans].mean()), "ceiling_same_heading": float(same), "ceiling_two_views": float(two), "precision": float(right.sum() / max(pub.sum(), 1)),
            "recall": float((right & ans).sum() / ans.sum()), "off_map_published": int((pub & ~ans).sum()),
            "hits": (s, p, v)}


@torch.no_grad()
def describe(branch: QueryBranch | None, t: dict, batch: int = 64) -> np.ndarray:
    if branch is None:
        return t["img"]
    branch.eval()
    out = []
    for s in range(0, len(t["pin"]), batch):
        sl = slice(s, s + batch)
        out.append(branch(torch.from_numpy(t["pin"][sl].astype(np.float32)), torch.from_numpy(t["rgbd"][sl]),
                          torch.from_numpy(t["prob"][sl])).numpy())
    return np.concatenate(out)


def train(a) -> None:
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    model = _model()
    branch = QueryBranch(model)
    del model
    towns = [load_town(n) for n in a.towns]
    vals = {n: load_town(n) for n in a.val}
    banks = [torch.from_numpy(t["views"].reshape(-1, t["views"].shape[-1])) for t in towns]
    # the queries that have a positive (with --exclude: a revisit of their place)
    candidates = [np.flatnonzero(np.concatenate([_labels(t, np.arange(s, min(s + 256, len(t["xy"]))), exclude=a.exclude)[0].any(1)
                                                 for s in range(0, len(t["xy"]), 256)])) for t in towns]
    print("training queries with a positive per town:", [len(c) for c in candidates], flush=True)
    if a.train == "late":
        for name, p in branch.named_parameters():
            p.requires_grad = not (name.startswith("trunk.") and not any(k in name for k in ("layer3", "layer4", "att3", "att4")))
    params = [p for p in branch.parameters() if p.requires_grad]
    print(f"{sum(p.numel() for p in params)} parameters train", flush=True)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * min(s, a.steps) / a.steps)))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = []
    start = 0
    if (out / "last.pt").is_file():
        ck = torch.load(out / "last.pt", weights_only=False)
        branch.load_state_dict(ck["branch"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        start, log = ck["step"], ck["log"]
        rng = np.random.default_rng(a.seed + start)
        print(f"resumed at step {start}")

    def validate(step):
        r = {}
        for n, t in vals.items():
            res = track(t, describe(branch, t))
            r[n] = {k: v for k, v in res.items() if k != "hits"}
        mean = {k: float(np.mean([x[k] for x in r.values()])) for k in ("top1", "precision", "recall")}
        log.append({"step": step, "val": r, "mean": mean})
        print(f"step {step}: val top-1 {mean['top1']:.3f} precision {mean['precision']:.3f} recall {mean['recall']:.3f} "
              + " ".join(f"{n} {x['top1']:.3f}/{x['recall']:.3f}" for n, x in r.items()), flush=True)
        return mean

    if start == 0:
        validate(0)
        torch.save(branch.state_dict(), out / "best.pt")
    best = max((e["mean"]["top1"] for e in log), default=-1)
    t0 = time.monotonic()
    for step in range(start + 1, a.steps + 1):
        branch.train()
        if a.frozen_bn:
            for mod in branch.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        ti = int(rng.integers(len(towns)))
        t, bank = towns[ti], banks[ti]
        q = rng.choice(candidates[ti], a.batch, replace=False)
        pos, neg = _labels(t, q, exclude=a.exclude)
        x = torch.from_numpy(t["pin"][q].astype(np.float32))
        if a.scale_jitter > 0:  # the pseudo-depth's global scale error (a camera's depth is rarely right to 10 %)
            x[:, 0] *= torch.exp(torch.empty(len(q), 1, 1).uniform_(-a.scale_jitter, a.scale_jitter))
            x[:, 0].clamp_(0, 1)
        desc = branch(x, torch.from_numpy(t["rgbd"][q]), torch.from_numpy(t["prob"][q]))
        logits = desc @ bank.T / a.tau
        pos_t, keep = torch.from_numpy(pos), torch.from_numpy(pos | neg)
        all_ = torch.logsumexp(logits.masked_fill(~keep, -1e9), 1)
        pos_l = torch.logsumexp(logits.masked_fill(~pos_t, -1e9), 1)
        loss = (all_ - pos_l)[pos_t.any(1)].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0:
            with torch.no_grad():
                hard = logits.masked_fill(~torch.from_numpy(neg), -1e9).max(1).values
                best_pos = logits.masked_fill(~pos_t, -1e9).max(1).values
                beaten = float((hard > best_pos).float().mean())
            print(f"step {step} loss {loss.item():.4f} negative beats every positive {beaten:.2f} "
                  f"({(time.monotonic() - t0) / (step - start):.2f} s/step)", flush=True)
        if step % a.val_every == 0 or step == a.steps:
            mean = validate(step)
            if mean["top1"] > best:
                best = mean["top1"]
                torch.save(branch.state_dict(), out / "best.pt")
            torch.save({"branch": branch.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step, "log": log},
                       out / "last.pt")
            json.dump({"args": vars(a), "log": log}, open(out / "log.json", "w"), indent=1)


def evaluate(a) -> None:
    branch = None
    if a.branch:
        branch = QueryBranch(_model())
        branch.load_state_dict(torch.load(a.branch, weights_only=True))
    rows = {}
    for n in a.towns:
        t = load_town(n)
        r = track(t, describe(branch, t))
        if a.check and branch is None:
            _check(n, r["hits"])
        rows[n] = {k: v for k, v in r.items() if k != "hits"}
        print(f"{n}: image top-1 {r['top1']:.3f} of answerable, precision {r['precision']:.3f} recall {r['recall']:.3f} "
              f"off-map published {r['off_map_published']}; ceilings same-heading {r['ceiling_same_heading']:.3f} "
              f"two views {r['ceiling_two_views']:.3f}", flush=True)
    for k in ("top1", "precision", "recall"):
        vals = [x[k] for x in rows.values()]
        print(f"mean {k} {np.mean(vals):.3f} (worst {min(vals):.3f})")
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)


def _check(name: str, hits) -> None:
    """The shipped model's hits here against the eval's cached hits of that town."""
    files = sorted(Path("out/cache").glob(f"{name}_00_64x256/track_hits_*_v2_k10.npz"))
    for f in files:
        with np.load(f) as z:
            if "image_p" in z.files:
                same = float((z["image_p"] == hits[1]).mean())
                print(f"  check {f.name}: image hits equal to the eval's: {same:.4f} of entries")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("prep")
    sp.add_argument("roots", nargs="+")
    sp = sub.add_parser("train")
    sp.add_argument("--towns", nargs="+", required=True)
    sp.add_argument("--val", nargs="+", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--steps", type=int, default=1000)
    sp.add_argument("--batch", type=int, default=32)
    sp.add_argument("--lr", type=float, default=1e-4)
    sp.add_argument("--weight-decay", type=float, default=1e-4)
    sp.add_argument("--tau", type=float, default=0.05)
    sp.add_argument("--val-every", type=int, default=100)
    sp.add_argument("--frozen-bn", action="store_true")
    sp.add_argument("--exclude", type=int, default=0, help="positives only from frames more than this many frames away (another pass)")
    sp.add_argument("--train", default="all", choices=("all", "late"), help="late: only layer3-4, heads, fusion train")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--scale-jitter", type=float, default=0.0, help="log-uniform global scale of the pseudo-depth in +-this")
    sp = sub.add_parser("eval")
    sp.add_argument("--towns", nargs="+", required=True)
    sp.add_argument("--branch")
    sp.add_argument("--check", action="store_true")
    sp.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
    if a.cmd == "prep":
        prep(a.roots)
    elif a.cmd == "train":
        train(a)
    else:
        evaluate(a)
