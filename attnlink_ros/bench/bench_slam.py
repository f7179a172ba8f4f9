"""Cost of ``attnlink slam`` on 2 cores beside its baseline, KISS-ICP odometry alone, in one run.

Baseline: each scan read and registered by KISS-ICP (the odometry the SLAM run uses). Then the
whole ``attnlink slam`` job on the same drive without the peer and without a front-end cache:
the drive's LiDAR descriptors (frame cache + encoder, batched), the odometry, the online loop
search and GICP verification (SLAM's own estimate as the prior), the GTSAM pose graph. Prints the
stages in ms a scan, the scans a second of each, and the ratio to the baseline (the issue's bar:
the whole run at >= 10 scans a second).

    .venv/bin/python attnlink_ros/bench/bench_slam.py --data out/towns/s85288 [--frames 1500] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="KITTI-layout root with scans and poses (a 1500-frame town)")
    ap.add_argument("--sequence", default="00")
    ap.add_argument("--json", help="write the table as JSON")
    a = ap.parse_args()
    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.model.io import load_model
    from attnlink_ros.slam.odometry import LidarOdometry
    from attnlink_ros.slam.pipeline import evaluate_slam

    seq = KittiSequence(a.data, a.sequence)
    frames = seq.available_frames()
    odo = LidarOdometry()
    t0 = time.perf_counter()
    for f in frames:
        odo.register(seq.read_scan(int(f)))
    base = time.perf_counter() - t0
    model, _ = load_model(None)
    with tempfile.TemporaryDirectory() as tmp:
        r = evaluate_slam(model, a.data, a.sequence, out=None, cache_dir=tmp, peer=False)
    n = len(frames)
    s = r["seconds"]
    rows = [("baseline: KISS-ICP odometry alone (read + register)", base),
            ("slam: descriptors (frame cache + LiDAR encoder, batched)", s["descriptors"]),
            ("slam: scan read", s["read"]), ("slam: odometry", s["odometry"]),
            ("slam: loop search + GICP verification", s["loops"]), ("slam: pose graph (iSAM2)", s["graph"]),
            ("slam: whole run", s["total"])]
    print(f"{n} scans of {a.data} (2 cores)")
    print(f"{'stage':58s} {'ms/scan':>8s} {'scans/s':>8s} {'x baseline':>10s}")
    for name, sec in rows:
        ms = 1e3 * sec / n
        print(f"{name:58s} {ms:8.1f} {n / sec if sec else float('inf'):8.1f} {sec / base:10.2f}")
    print(f"loops: {r['loops']['published']} published, precision {r['loops']['precision']:.3f}, recall {r['loops']['recall']:.3f}; "
          f"APE odometry {r['odometry']['ape_rmse_m']:.3f} m -> with loops {r['with_loops']['ape_rmse_m']:.3f} m")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"scans": n, "baseline_s": round(base, 2), "slam_seconds": s, "scans_per_second": round(n / s["total"], 2),
                       "baseline_scans_per_second": round(n / base, 2), "loops": r["loops"]}, fh, indent=2)


if __name__ == "__main__":
    main()
