"""Cost of ``attnlink slam`` on 2 cores beside its baseline, KISS-ICP odometry alone, in one run.

Baseline: each scan read and registered by KISS-ICP, the odometry the SLAM run uses (same
config). Then the whole ``attnlink slam`` command (a fresh process, without the KISS-SLAM peer,
no front-end cache): the odometry and pose graph in the main process, each scan's LiDAR
descriptor, the online loop search and GICP verification in the loop worker beside it
(slam/frontend.py), evo's errors and the trajectories written. Prints each stage in ms a scan
(main process and worker: they overlap), the scans a second, and the ratio to the baseline (the
issue's bar: the whole run at >= 10 scans a second).

    .venv/bin/python attnlink_ros/bench/bench_slam.py --data out/towns/s85288 [--json FILE] [--in-process]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="KITTI-layout root with scans and poses (a 1500-frame town)")
    ap.add_argument("--sequence", default="00")
    ap.add_argument("--in-process", action="store_true", help="also time attnlink slam --in-process (loops in the main process)")
    ap.add_argument("--json", help="write the table as JSON")
    a = ap.parse_args()
    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.slam.odometry import LidarOdometry

    seq = KittiSequence(a.data, a.sequence)
    frames = seq.available_frames()
    n = len(frames)
    odo = LidarOdometry()
    t0 = time.perf_counter()
    for f in frames:
        odo.register(seq.read_scan(int(f)))
    base = time.perf_counter() - t0
    runs = {}
    for name, extra in [("worker", [])] + ([("in_process", ["--in-process"])] if a.in_process else []):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "attnlink_ros", "slam", "--data", a.data, "--sequence", a.sequence, "--no-peer", "--quiet",
                            "--out", str(Path(tmp) / "out"), "--json", str(out), *extra], check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            runs[name] = {"command_s": round(wall, 2), **json.loads(out.read_text())[a.sequence]}
    print(f"{n} scans of {a.data} (2 cores)")
    print(f"{'stage':62s} {'ms/scan':>8s} {'scans/s':>8s} {'x baseline':>10s}")

    def row(name: str, sec: float) -> None:
        print(f"{name:62s} {1e3 * sec / n:8.1f} {n / sec if sec else float('inf'):8.1f} {sec / base:10.2f}")

    row("baseline: KISS-ICP odometry alone (read + register)", base)
    for name, r in runs.items():
        s = r["seconds"]
        how = "loops in a worker process" if name == "worker" else "loops in the main process"
        for k, label in (("read", "main: scan read"), ("odometry", "main: KISS-ICP odometry"), ("graph", "main: pose graph (iSAM2 + refinement)"),
                         ("wait", "main: waiting for loop answers"), ("loops_read", "worker: scan read"),
                         ("descriptors", "loops: LiDAR descriptor (+ keyframe views), ONNX 1 thread"),
                         ("loops", "loops: search + GICP verification")):
            if k in s:
                row(f"  {label}", s[k])
        row(f"slam ({how}): run_slam wall", s["total"])
        row(f"slam ({how}): whole command (start to exit)", r["command_s"])
        lp = r["loops"]
        print(f"  loops: {lp['published']} published, precision {lp['precision']:.3f}, recall {lp['recall']:.3f}; "
              f"APE odometry {r['odometry']['ape_rmse_m']:.3f} m -> with loops {r['with_loops']['ape_rmse_m']:.3f} m")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"scans": n, "baseline_s": round(base, 2), "baseline_scans_per_second": round(n / base, 2),
                       **{name: {"seconds": r["seconds"], "command_s": r["command_s"], "scans_per_second_command": round(n / r["command_s"], 2),
                                 "scans_per_second_run": r["scans_per_second"], "loops": r["loops"],
                                 "ape_rmse_m": {"odometry": r["odometry"]["ape_rmse_m"], "with_loops": r["with_loops"]["ape_rmse_m"]}}
                          for name, r in runs.items()}}, fh, indent=2)


if __name__ == "__main__":
    main()
