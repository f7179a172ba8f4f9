"""Synthetic town rendering benchmark: ms per frame (camera image + LiDAR scan), one core.

    .venv/bin/python attnlink_ros/bench/bench_synth.py [--frames 40] [--seed 1] [--json FILE]

Frames are spread over a 600-frame drive. 'write' adds PNG encoding and the .bin write, which is
what `attnlink synth` spends per frame and per worker. 'camera response' is the optional real
camera's response (``SynthConfig.camera_effects``, data/camera.py), timed on the same frames.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from attnlink_ros.data import synth  # noqa: E402
from attnlink_ros.data.camera import camera_look, camera_response  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    drive = synth.SyntheticDrive(synth.SynthConfig(frames=600, seed=args.seed))
    setup = time.perf_counter() - t0
    idx = np.linspace(0, 599, args.frames).astype(int)
    cam, lid, wr, resp = [], [], [], []
    look = camera_look(args.seed)
    tmp = Path(tempfile.mkdtemp())
    for i in idx:
        t = float(drive.drive.t[i])
        scene = drive._scene(t)
        Twc = drive.T_world_cam0(i)
        rng = np.random.default_rng(0)
        a = time.perf_counter()
        img, _ = drive._render_camera(scene, Twc, t, rng)
        b = time.perf_counter()
        pts = drive._render_lidar(scene, Twc @ drive.Tr, rng)
        c = time.perf_counter()
        camera_response(img, look, np.random.default_rng(int(i)))
        c2 = time.perf_counter()
        resp.append(c2 - c)
        cv2.imwrite(str(tmp / "x.png"), img)
        pts.tofile(tmp / "x.bin")
        d = time.perf_counter()
        cam.append(b - a)
        lid.append(c - b)
        wr.append(d - c2)
    cam, lid, wr, resp = (np.asarray(x) * 1e3 for x in (cam, lid, wr, resp))
    total = cam + lid + wr
    rows = {"camera": cam, "lidar": lid, "write (png + bin)": wr, "frame total": total,
            "camera response": resp, "total with response": total + resp}
    print(f"synthetic town seed {args.seed}: {args.frames} frames of a 600-frame drive, one core; town + drive set-up {setup * 1e3:.0f} ms")
    print(f"{'stage':20s} {'median ms':>10s} {'p90 ms':>8s}")
    for k, v in rows.items():
        print(f"{k:20s} {np.median(v):10.1f} {np.percentile(v, 90):8.1f}")
    print(f"target <= 100 ms per frame: median {np.median(total):.0f} ms ({100 / np.median(total):.2f}x of target rate); "
          f"with the camera response {np.median(total + resp):.0f} ms ({np.median(total + resp) / np.median(total):.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90))} for k, v in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
