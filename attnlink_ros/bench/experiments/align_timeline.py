"""Session 17, issue 19: where image tracking with odometry publishes, frame by frame, and where the
answerable frames it misses are (the drive's start, a map entry, a drop).

    python attnlink_ros/bench/experiments/align_timeline.py out/towns/s601 out/towns/s602 [--lines]

Needs each town's cache in out/cache (attnlink eval --track --mode image --cache out/cache). Per
town: every answerable episode (frames with a map place within 10 m): its length, the frames to
its first published fix and the answerable frames missed after it, and the wrong fixes (place
more than 10 m from the truth: how far the aligned pose was). ``--lines``: two rows of 100 frames
each, truth (A answerable, _ not) over the output (P right fix, X wrong, r relocalising with an
alignment, l lost with one, . nothing held). ``--visual``: the drive's own monocular visual odometry
(session 18; computed once into the cache, as ``eval --track --visual-odometry``) instead of the
simulated wheel odometry, with the alignment's visual-odometry configuration."""
import dataclasses
import sys

import numpy as np

from attnlink_ros.evaluation.tracking import TrackData, run_filter, simulated_odometry
from attnlink_ros.localization.calibration import calibration_path
from attnlink_ros.localization.tracker import PlaceTracker, TrackerConfig, load_calibration
from attnlink_ros.localization.visual_odometry import visual_align
from attnlink_ros.model.io import load_model

roots = [a for a in sys.argv[1:] if not a.startswith("--")]
model, _ = load_model(None)
obs = load_calibration(calibration_path(None))["image"]
for root in roots:
    d = TrackData(model, root, "00", "out/cache", modes=("image",))
    visual = "--visual" in sys.argv
    cfg = TrackerConfig()
    if visual:
        cfg = dataclasses.replace(cfg, align=visual_align(cfg.align))
    tr = PlaceTracker(d.xy[: d.map_end], d.heading[: d.map_end], d.yaws, obs, cfg)
    s, p, v = d.hits["image"]
    odom = d.visual_odometry() if visual else simulated_odometry(d.poses[d.q], 0)
    fixes = run_filter(s, p, v, d.stamps[d.q], tr, odom, None, None, None)
    qxy = d.xy[d.q]
    ans = d.dist.min(1) <= 10
    pub = np.array([f.published for f in fixes])
    codes = []
    for i, f in enumerate(fixes):
        if f.published:
            wrong = d.dist[i, f.place] > 10
            codes.append("X" if wrong else "P")
            if wrong:
                print(f"  wrong fix at {i}: place {d.dist[i, f.place]:.1f} m from the truth, the aligned pose "
                      f"{np.linalg.norm(f.xy - qxy[i]):.1f} m, source {f.source}")
        else:
            codes.append("l" if f.state == "lost" and f.source == "aligned" else "r" if f.source == "aligned" else ".")
    eps, i = [], 0
    while i < len(ans):
        j = i
        while j < len(ans) and ans[j] == ans[i]:
            j += 1
        if ans[i]:
            eps.append((i, j))
        i = j
    parts = []
    for a, b in eps:
        hit = np.flatnonzero(pub[a:b])
        first = int(hit[0]) if len(hit) else b - a
        parts.append(f"[{a}, {b}): first fix after {first}, missed after it {int((~pub[a:b])[first:].sum())}")
    print(f"{root}: {int(ans.sum())} answerable, {int((ans & ~pub).sum())} missed; " + "; ".join(parts))
    if "--lines" in sys.argv:
        truth = "".join("A" if x else "_" for x in ans)
        out = "".join(codes)
        for k in range(0, len(out), 100):
            print(f"{k:5d} {truth[k:k + 100]}\n      {out[k:k + 100]}")
