"""FoV conversion benchmark: a full scan to network-input sparse depth, one core.

Compares the project's numpy path with a plain argsort z-buffer (the usual way: project all
points, sort by depth, keep the first per pixel) measured in the same run, on the real KITTI
scans in ../shared/data/kitti (or a synthetic drive when they are absent).

    .venv/bin/python bench/bench_projection.py [--repeats 200] [--json FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attnlink_ros.data.kitti import KittiSequence  # noqa: E402
from attnlink_ros.geometry.projection import GridGeometry, network_grid, sparse_depth, sparse_depth_torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def argsort_zbuffer(points: np.ndarray, M: np.ndarray, grid: GridGeometry) -> np.ndarray:
    """Baseline: project every point (matrix product), sort all by depth, first per cell wins."""
    X = np.c_[points[:, :3], np.ones(len(points), np.float32)]
    uvw = X @ M.T.astype(np.float32)  # (N, 3)
    w = uvw[:, 2]
    front = w > 1e-3
    u = uvw[front, 0] / w[front]
    v = uvw[front, 1] / w[front]
    d = w[front]
    sx, sy = grid.scale
    col = np.floor((u + 0.5 - grid.left) * sx).astype(np.int64)
    row = np.floor((v + 0.5 - grid.top) * sy).astype(np.int64)
    ok = (col >= 0) & (col < grid.out_w) & (row >= 0) & (row < grid.out_h)
    flat, d = row[ok] * grid.out_w + col[ok], d[ok]
    order = np.argsort(d, kind="stable")
    flat, d = flat[order], d[order]
    cells, first = np.unique(flat, return_index=True)
    out = np.zeros(grid.out_h * grid.out_w, np.float32)
    out[cells] = d[first]
    return out.reshape(grid.out_h, grid.out_w)


def timeit(fn, scans, repeats: int) -> np.ndarray:
    for s in scans[:3]:
        fn(s)
    times = []
    for i in range(repeats):
        s = scans[i % len(scans)]
        t = time.perf_counter()
        fn(s)
        times.append(time.perf_counter() - t)
    return np.asarray(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--kitti", default=str(REPO.parents[1] / "shared" / "data" / "kitti"))
    ap.add_argument("--json", help="write the table as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        seq = KittiSequence(args.kitti, "00")
        fr = seq.available_frames()
        source = f"KITTI 00 frames {fr.min()}-{fr.max()}"
    except Exception:  # no real data here: a synthetic drive stands in
        from attnlink_ros.data.synth import SynthConfig, write_synthetic_sequence

        tmp = tempfile.mkdtemp()
        write_synthetic_sequence(tmp, SynthConfig(frames=10, seed=0), progress=False)
        seq = KittiSequence(tmp, "00")
        source = "synthetic town seed 0, frames 0-9"
    scans = [seq.read_scan(i) for i in seq.available_frames()]
    W, H = seq.image_size
    grid = network_grid(seq.calib, W, H)
    full = GridGeometry.full(W, H)
    M = seq.calib.lidar_to_image
    # the baseline and the project's path give the same map (up to float32 border cases)
    a, b = argsort_zbuffer(scans[0], M, grid), sparse_depth(scans[0], seq.calib, grid)
    agree = float(np.mean(np.isclose(a, b, rtol=1e-5)))
    tscans = [torch.from_numpy(s) for s in scans]
    rows = [
        ("baseline: argsort z-buffer -> 128x512", timeit(lambda s: argsort_zbuffer(s, M, grid), scans, args.repeats)),
        ("numpy path -> 128x512 (network input)", timeit(lambda s: sparse_depth(s, seq.calib, grid), scans, args.repeats)),
        (f"numpy path -> {W}x{H} (full image)", timeit(lambda s: sparse_depth(s, seq.calib, full), scans, args.repeats)),
        ("torch path, CPU 1 thread -> 128x512", timeit(lambda s: sparse_depth_torch(s, seq.calib, grid), tscans, args.repeats)),
    ]
    if torch.cuda.is_available():
        cscans = [s.cuda() for s in tscans]

        def cuda_run(s):
            sparse_depth_torch(s, seq.calib, grid)
            torch.cuda.synchronize()

        rows.append(("torch path, CUDA -> 128x512", timeit(cuda_run, cscans, args.repeats)))
    base = np.median(rows[0][1])
    print(f"FoV conversion, {np.mean([len(s) for s in scans]):.0f} points a scan ({source}), {args.repeats} runs, one core")
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}, torch {torch.__version__}; baseline/ours map agreement {agree:.4f}")
    print(f"{'method':44s} {'median ms':>10s} {'p90 ms':>8s} {'speed-up':>9s}")
    table = []
    for name, t in rows:
        med = float(np.median(t))
        print(f"{name:44s} {med:10.2f} {np.percentile(t, 90):8.2f} {base / med:8.2f}x")
        table.append({"method": name, "median_ms": round(med, 3), "p90_ms": round(float(np.percentile(t, 90)), 3), "speedup_vs_baseline": round(base / med, 2)})
    if args.json:
        Path(args.json).write_text(json.dumps({"source": source, "rows": table, "agreement": agree}, indent=2) + "\n")


if __name__ == "__main__":
    main()
