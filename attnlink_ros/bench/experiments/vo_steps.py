"""Session 22, issue 19: visual odometry's steps against the truth, straight and turning, with and
without the planar-motion constraint (localization/visual_odometry.py, ``planar_motion``).

    python attnlink_ros/bench/experiments/vo_steps.py out/towns/s601 out/towns/s604 [--frames 0 1500] [--json F]

Runs VisualOdometry over each town's consecutive camera frames (full resolution, as `eval --track
--visual-odometry` does) once per setting and compares every step (forward, left, yaw) with the
truth's (tracker.odometry_delta of the ground-truth camera poses). A step is "turning" when the
truth turns more than 0.01 rad. Printed per town and setting: the step length error (median, mean,
90th percentile of |error|) for straight and turning steps, the yaw error, and the whole drive's
length ratio. ~65 s a town and setting on one core."""
import argparse
import json
from dataclasses import replace

import numpy as np

from attnlink_ros.data.kitti import KittiSequence
from attnlink_ros.localization.tracker import odometry_delta
from attnlink_ros.localization.visual_odometry import VisualOdometry, VisualOdometryConfig

ap = argparse.ArgumentParser()
ap.add_argument("roots", nargs="+")
ap.add_argument("--frames", type=int, nargs=2, default=[0, 1500])
ap.add_argument("--json")
args = ap.parse_args()

out = {}
for root in args.roots:
    seq = KittiSequence(root, "00")
    T = seq.poses  # (N, 4, 4) ground-truth camera poses
    K = seq.calib.P[:3, :3].astype(np.float64)
    lo, hi = args.frames[0], min(args.frames[1], len(T))
    truth = np.array([odometry_delta(T[i - 1], T[i]) for i in range(lo + 1, hi)])
    images = [seq.read_image(i) for i in range(lo, hi)]
    turning = np.abs(truth[:, 2]) > 0.01
    for planar in (False, True):
        vo = VisualOdometry(replace(VisualOdometryConfig(), planar_motion=planar))
        vo.step(images[0], K)
        est = np.array([s if (s := vo.step(im, K)) is not None else [np.nan] * 3 for im in images[1:]])
        L_est, L_true = np.hypot(est[:, 0], est[:, 1]), np.hypot(truth[:, 0], truth[:, 1])
        err, yaw_err = L_est - L_true, est[:, 2] - truth[:, 2]
        row = {"steps": len(truth), "unknown": int(np.isnan(est[:, 0]).sum()),
               "length_ratio": round(float(np.nansum(L_est) / L_true[~np.isnan(L_est)].sum()), 4)}
        for name, sel in (("straight", ~turning), ("turning", turning)):
            e, y = err[sel], yaw_err[sel]
            row[name] = {"steps": int(sel.sum()), "true_m": round(float(L_true[sel].mean()), 3),
                         "median_m": round(float(np.nanmedian(e)), 4), "mean_m": round(float(np.nanmean(e)), 4),
                         "p90_abs_m": round(float(np.nanpercentile(np.abs(e), 90)), 4),
                         "yaw_median_abs_rad": round(float(np.nanmedian(np.abs(y))), 5),
                         "yaw_mean_rad": round(float(np.nanmean(y)), 5)}
        key = f"{root.rstrip('/').split('/')[-1]} planar={planar}"
        out[key] = row
        s, t = row["straight"], row["turning"]
        print(f"{key:24s} straight {s['median_m']:+.3f} / {s['mean_m']:+.3f} / p90 {s['p90_abs_m']:.3f} m  "
              f"turning ({t['true_m']:.2f} m a step) {t['median_m']:+.3f} / {t['mean_m']:+.3f} / p90 {t['p90_abs_m']:.3f} m  "
              f"yaw |err| {s['yaw_median_abs_rad']:.5f} / {t['yaw_median_abs_rad']:.5f} rad  length x{row['length_ratio']:.3f}", flush=True)
if args.json:
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
