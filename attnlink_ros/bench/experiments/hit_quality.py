"""Session 19, issue 19: how good must the image hits be for image tracking's recall target?

    python attnlink_ros/bench/experiments/hit_quality.py out/towns/s601 ... [--fractions 0 0.2 0.4] [--json F]

Needs each town's cache in out/cache (attnlink eval --track --mode image --cache out/cache). A
better image branch is simulated: of the answerable frames whose top-1 hit is not right, a random
share (the fraction) gets the right state (the nearest map place within 10 m whose view faces the
vehicle's heading within 45 degrees, where one exists) put first. Off-map frames keep their hits
(look-alikes stay). The drive is replayed through the tracker with the eval's simulated wheel
odometry (the defaults) and per fraction the resulting top-1 rate (answerable frames whose top-1
state is right), the filter's precision and recall are printed: the top-1 rate at which recall
reaches 0.85 says what issue 20's image branch must deliver for issue 19's image target.
``--hits lidar``: the LiDAR branch's hits through the same tracker (image calibration, so the
belief stays silent and only the alignment publishes; no GICP verification): how far the
alignment gets with the hits of the network the image branch learns from."""
import argparse
import json

import numpy as np

from attnlink_ros.evaluation.tracking import TrackData, _state_right, run_filter, simulated_odometry
from attnlink_ros.localization.calibration import calibration_path
from attnlink_ros.localization.tracker import PlaceTracker, TrackerConfig, load_calibration
from attnlink_ros.model.io import load_model

ap = argparse.ArgumentParser()
ap.add_argument("roots", nargs="+")
ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6])
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--json")
ap.add_argument("--hits", default="image", choices=("image", "lidar", "fused"),
                help="whose hits are replayed (the image calibration kept: only the alignment publishes); lidar: the LiDAR branch's own hits, no GICP verification")
ap.add_argument("--timeline", action="store_true", help="per answerable episode: frames to the first right fix, right fixes missed after it")
a = ap.parse_args()
model, _ = load_model(None)
obs = load_calibration(calibration_path(None))["image"]
out = {}
for root in a.roots:
    d = TrackData(model, root, "00", "out/cache", modes=tuple(dict.fromkeys(("image", a.hits))))
    s0, p0, v0 = d.hits[a.hits]
    m = d.map_end
    mh = d.heading[:m]
    qh = d.heading[d.q]
    ans = d.dist.min(1) <= 10
    # the oracle state per answerable frame: nearest place within 10 m with a view facing the heading (45 deg)
    oracle = np.full((len(d.q), 2), -1)
    for i in np.flatnonzero(ans):
        near = np.flatnonzero(d.dist[i] <= 10)
        near = near[np.argsort(d.dist[i, near])]
        for pl in near:
            dh = np.abs((qh[i] - (mh[pl] - d.yaws) + 180.0) % 360.0 - 180.0)
            k = int(np.argmin(dh))
            if dh[k] < 45.0:
                oracle[i] = pl, k
                break
    top1 = np.array([_state_right(d.dist[i], qh[i], p0[i, :1], v0[i, :1], mh, d.yaws)[0] for i in range(len(d.q))])
    odom = simulated_odometry(d.poses[d.q], 0)
    rows = []
    for frac in a.fractions:
        rng = np.random.default_rng(a.seed)
        s, p, v = s0.copy(), p0.copy(), v0.copy()
        pick = ans & ~top1 & (oracle[:, 0] >= 0) & (rng.random(len(d.q)) < frac)
        for i in np.flatnonzero(pick):
            s[i, 1:], p[i, 1:], v[i, 1:] = s[i, :-1], p[i, :-1], v[i, :-1]
            s[i, 0], p[i, 0], v[i, 0] = s[i, 1] + 0.01, oracle[i, 0], oracle[i, 1]
        rate = float((top1[ans] | pick[ans]).mean())
        tr = PlaceTracker(d.xy[:m], d.heading[:m], d.yaws, obs, TrackerConfig())
        fixes = run_filter(s, p, v, d.stamps[d.q], tr, odom, None, None, None)
        pub = np.array([f.published for f in fixes])
        right = np.array([f.published and d.dist[i, f.place] <= 10 for i, f in enumerate(fixes)])
        prec = float(right.sum() / max(pub.sum(), 1))
        rec = float((right & ans).sum() / ans.sum())
        rows.append({"fraction": frac, "top1_rate": rate, "precision": prec, "recall": rec,
                     "off_map_published": int((pub & ~ans).sum())})
        if a.timeline:
            flags, parts = np.r_[False, ans, False], []
            edges = np.flatnonzero(np.diff(flags.astype(int)))
            for st, en in zip(edges[::2], edges[1::2]):
                hit = np.flatnonzero(right[st:en])
                first = int(hit[0]) if len(hit) else en - st
                parts.append(f"[{st}, {en}) first fix after {first}, missed after {int((~right[st:en])[first:].sum())}")
            print("   " + "; ".join(parts))
        print(f"{d.name}: fraction {frac:.2f}: {a.hits} top-1 right {rate:.3f} of answerable -> precision {prec:.3f} recall {rec:.3f} off-map published {rows[-1]['off_map_published']}", flush=True)
    out[d.name] = rows
print("mean over towns:")
for j, frac in enumerate(a.fractions):
    r = [out[k][j] for k in out]
    print(f"  fraction {frac:.2f}: top-1 {np.mean([x['top1_rate'] for x in r]):.3f}  precision {np.mean([x['precision'] for x in r]):.3f} "
          f"(worst {min(x['precision'] for x in r):.3f})  recall {np.mean([x['recall'] for x in r]):.3f} (worst {min(x['recall'] for x in r):.3f})")
if a.json:
    json.dump(out, open(a.json, "w"), indent=1)
