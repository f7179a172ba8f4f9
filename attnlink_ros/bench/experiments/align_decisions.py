"""Session 16, issue 19: the drive alignment's decisions frame by frame (image queries, simulated
odometry seed 0, the shipped calibration), to see why a held alignment goes wrong.

    python attnlink_ros/bench/experiments/align_decisions.py out/towns/s85288 600 640

Needs the town's cache in out/cache (attnlink eval --track --cache out/cache). Per frame: the
fix's state and error, the aligner's decision (new / confirmed / held / dropped / none), metres
carried, the agreeing frames of the last confirmation, how far the decision moved the alignment's
translation, and the truth's distance to the map."""
import sys

import numpy as np

import attnlink_ros.localization.alignment as A
from attnlink_ros.evaluation.tracking import TrackData, run_filter, simulated_odometry
from attnlink_ros.localization.calibration import calibration_path
from attnlink_ros.localization.tracker import PlaceTracker, TrackerConfig, load_calibration
from attnlink_ros.model.io import load_model

root, a, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model, _ = load_model(None)
d = TrackData(model, root, "00", "out/cache", modes=("image",))
obs = load_calibration(calibration_path(None))["image"]
log = []
decide = A.TrajectoryAligner._decide


def logged(self):
    before, carried = self.T, self.carried
    decide(self)
    log.append((before, self.T, carried, self.carried, self.support))


A.TrajectoryAligner._decide = logged
tr = PlaceTracker(d.xy[: d.map_end], d.heading[: d.map_end], d.yaws, obs, TrackerConfig())
s, p, v = d.hits["image"]
fixes = run_filter(s, p, v, d.stamps[d.q], tr, simulated_odometry(d.poses[d.q], 0), None, None, None)
by_frame = dict(enumerate(log))  # the aligner decides once a frame (the eval's odometry has a row for every frame, the first zero)
assert len(log) == len(fixes)
qxy = d.xy[d.q]
for i in range(a, min(b, len(fixes))):
    f = fixes[i]
    T0, T1, c0, c1, sup = by_frame.get(i, (None, None, 0.0, 0.0, 0))
    ev = "none" if T1 is None and T0 is None else "dropped" if T1 is None else "new" if T0 is None else "confirmed" if c1 == 0 else "held"
    moved = None if T0 is None or T1 is None else round(float(np.hypot(T1[1] - T0[1], T1[2] - T0[2])), 2)
    err = None if f.xy is None else round(float(np.linalg.norm(f.xy - qxy[i])), 1)
    print(i, f.state, f.source, "err", err, ev, "carried", round(c0, 1), "support", sup, "moved", moved, "truth->map", round(float(d.dist[i].min()), 1))
