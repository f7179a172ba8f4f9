"""Session 17, issue 19: a picture of the drive alignment at one frame (image queries, simulated
odometry seed 0, the shipped calibration): the map's places, the truth over the alignment's window,
the window as the held alignment lays it (or, with none held, the search's best candidate) with
the hits that agree with it, and the window laid by the right alignment (a least-squares fit of the
dead-reckoned window onto the truth) with its agreeing hits; counts of the frames each places facing
a mapped view and of those that agree. What showed validation town 604's street-grid corner.

    python attnlink_ros/bench/experiments/align_snapshot.py out/towns/s604 592 out/exp/s604_592.png

Needs the town's cache in out/cache (attnlink eval --track --mode image --cache out/cache)."""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import attnlink_ros.localization.alignment as A  # noqa: E402
from attnlink_ros.evaluation.tracking import TrackData, simulated_odometry  # noqa: E402
from attnlink_ros.localization.calibration import calibration_path  # noqa: E402
from attnlink_ros.localization.tracker import PlaceTracker, TrackerConfig, load_calibration  # noqa: E402
from attnlink_ros.model.io import load_model  # noqa: E402

root, frame, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model, _ = load_model(None)
d = TrackData(model, root, "00", "out/cache", modes=("image",))
obs = load_calibration(calibration_path(None))["image"]
tr = PlaceTracker(d.xy[: d.map_end], d.heading[: d.map_end], d.yaws, obs, TrackerConfig())
al = tr.aligner
s, p, v = d.hits["image"]
odo = simulated_odometry(d.poses[d.q], 0)
stamps = d.stamps[d.q]
tr.reset()
for i in range(frame + 1):
    tr.update(float(stamps[i]), p[i], v[i], s[i], odo[i])
P, vxy, vh = al._window()
truth = d.xy[d.q][frame + 1 - len(P): frame + 1]
# the right alignment: the dead-reckoned window fitted onto the truth (2-D Umeyama)
a0, b0 = P[:, :2] - P[:, :2].mean(0), truth - truth.mean(0)
th = float(np.arctan2((a0[:, 0] * b0[:, 1] - a0[:, 1] * b0[:, 0]).sum(), (a0 * b0).sum()))
c, sn = np.cos(th), np.sin(th)
ca, cb = P[:, :2].mean(0), truth.mean(0)
right = (th, cb[0] - (c * ca[0] - sn * ca[1]), cb[1] - (sn * ca[0] + c * ca[1]))
held = al.T
if held is None:
    found = al.search(P, vxy, vh)
    held = found[0][0] if found else None
fig, ax = plt.subplots(figsize=(9, 9))
ax.plot(d.xy[: d.map_end, 0], d.xy[: d.map_end, 1], ".", color="0.8", ms=2, label="map places")
ax.plot(truth[:, 0], truth[:, 1], "g-", lw=2, label="truth (window)")
ax.plot(truth[-1, 0], truth[-1, 1], "go")
for name, T, col in (("held" if al.T is not None else "search's best", held, "r"), ("right", right, "b")):
    if T is None:
        continue
    pw = A.apply(T, P[:, :2])
    radius = al.cfg.inlier_m + (al.cfg.drift_per_m * al.carried if T is al.T else 0.0)
    dist, j = al._agree(T, P, vxy, vh, radius)
    agree = np.isfinite(dist)
    facing = al._expected(T, P)
    hits = vxy[np.flatnonzero(agree), j[agree]]
    label = f"{name}: {int(facing.sum())} frames facing a view, {int((agree & facing).sum())} agree"
    ax.plot(pw[:, 0], pw[:, 1], col + "--", label=label)
    ax.plot(pw[-1, 0], pw[-1, 1], col + "o")
    ax.plot(hits[:, 0], hits[:, 1], col + "x", ms=4)
    print(label, f"(newest pose {np.linalg.norm(pw[-1] - truth[-1]):.1f} m from the truth)")
ax.set_aspect("equal")
ax.legend(loc="best", fontsize=8)
ax.set_title(f"{root} frame {frame}: {len(P)} window frames")
fig.savefig(out, dpi=90)
print("wrote", out)
