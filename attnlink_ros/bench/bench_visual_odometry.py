"""Visual odometry's cost a frame beside the image query it rides with, one run, one core.

A synthetic drive (``attnlink synth``-style, seed 11, written to a temporary folder unless
``--data ROOT`` names one) replayed frame by frame: each frame runs the node's image query (the
shipped model through ONNX Runtime, the map search against a map of the same drive: the baseline)
and ``VisualOdometry.step`` on the same full-resolution image (the node's ``visual_odometry``), and
the same at half resolution (what a smaller camera image costs; not what the node runs). Prints
median and p99 a frame and the ratio to the query.

    .venv/bin/python attnlink_ros/bench/bench_visual_odometry.py [--frames 120] [--data ROOT] [--json FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def _stats(ts: list[float]) -> dict:
    return {"p50_ms": round(float(np.median(ts)), 2), "p99_ms": round(float(np.percentile(ts, 99)), 2), "frames": len(ts)}


def main() -> None:
    import cv2

    cv2.setNumThreads(1)
    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.data.synth import SynthConfig, write_synthetic_sequence
    from attnlink_ros.localization.visual_odometry import VisualOdometry
    from attnlink_ros.pipeline import Frame, PlaceRecognizer
    from attnlink_ros.retrieval.build import build_map_from_sequence

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--data", help="a KITTI-layout drive (sequence 00) instead of a fresh synthetic one")
    ap.add_argument("--json", help="write the table as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp)
        if not args.data:
            write_synthetic_sequence(root, SynthConfig(frames=args.frames, seed=11), workers=1, progress=False)
        seq = KittiSequence(root, "00")
        n = min(args.frames, len(seq))
        images = [seq.read_image(i) for i in range(n)]
        rec = PlaceRecognizer(None, None, backend="onnxruntime")
        rec.map, _ = build_map_from_sequence(rec, seq, progress=False)
        K = seq.calib.P[:3, :3]
        half_K = K.copy()
        half_K[:2] /= 2
        half = [cv2.resize(im, (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA) for im in images]
        rows = {}
        ts = []
        for i, im in enumerate(images):
            t = time.perf_counter()
            rec.query(Frame(float(seq.times[i]), seq.calib, im), 10, "image")
            ts.append(1e3 * (time.perf_counter() - t))
        rows["image query (baseline)"] = _stats(ts[3:])
        for name, ims, k in (("visual odometry, full resolution (the node)", images, K), ("visual odometry, half resolution", half, half_K)):
            vo, ts = VisualOdometry(), []
            for im in ims:
                t = time.perf_counter()
                vo.step(im, k)
                ts.append(1e3 * (time.perf_counter() - t))
            rows[name] = {**_stats(ts[1:]), "failed": vo.failed}
    base = rows["image query (baseline)"]["p50_ms"]
    print(f"{n} frames of {images[0].shape[1]} x {images[0].shape[0]}, one thread")
    print(f"{'path':46s} {'p50 ms':>8s} {'p99 ms':>8s} {'x query':>8s}")
    for name, r in rows.items():
        r["ratio_to_query"] = round(r["p50_ms"] / base, 2)
        print(f"{name:46s} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['ratio_to_query']:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"frames": n, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
