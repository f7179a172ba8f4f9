"""KISS-SLAM (PyPI ``kiss-slam``: KISS-ICP + map_closures + its pose graph) on a KITTI-layout drive,
as the peer of ``attnlink slam``. A standalone script for the peer's own environment (``make
kiss-slam`` builds ``.venv-kiss``: kiss-slam pins numpy < 2.3 through open3d, the project's venv
has a newer one), so it imports numpy and kiss_slam only, never attnlink_ros.

    .venv-kiss/bin/python kiss_slam_peer.py --velodyne DIR --first 0 --last 1500 --out poses.npz

Writes the LiDAR poses of every scan (in the first scan's frame, after KISS-SLAM's final
fine-grained optimisation) and the closures it found. The odometry settings match
``attnlink slam``'s (slam/odometry.py, passed by slam/peer.py): no deskew (KITTI files carry no
point times), 100 m range, 1 m voxels, 5 points a voxel; everything else is KISS-SLAM's default.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _preload_libusb() -> None:
    """open3d (kiss-slam's dependency) links libusb-1.0.so.0, which a machine without the system
    package lacks; PyPI's ``libusb-package`` ships it: loaded first, the linker reuses it."""
    try:
        import ctypes
        import os

        import libusb_package
    except ImportError:
        return
    lib = os.path.join(os.path.dirname(libusb_package.__file__), "libusb-1.0.so")
    if os.path.isfile(lib):
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--velodyne", required=True, help="folder of KITTI .bin scans")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--last", type=int, required=True, help="one past the last frame")
    ap.add_argument("--voxel", type=float, default=1.0)
    ap.add_argument("--max-range", type=float, default=100.0)
    ap.add_argument("--max-points-per-voxel", type=int, default=20, help="KISS-ICP's local map (attnlink slam passes its own)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    _preload_libusb()
    from kiss_slam.config import KissSLAMConfig
    from kiss_slam.slam import KissSLAM

    cfg = KissSLAMConfig()
    cfg.odometry.preprocessing.deskew = False
    cfg.odometry.preprocessing.max_range = a.max_range
    cfg.odometry.mapping.voxel_size = a.voxel
    cfg.odometry.mapping.max_points_per_voxel = a.max_points_per_voxel
    slam = KissSLAM(cfg)
    t0 = time.perf_counter()
    for i in range(a.first, a.last):
        pts = np.fromfile(Path(a.velodyne) / f"{i:06d}.bin", dtype=np.float32).reshape(-1, 4)[:, :3].astype(np.float64)
        slam.process_scan(pts, np.zeros(len(pts)))
    slam.generate_new_node()
    slam.local_map_graph.erase_last_local_map()
    poses, _ = slam.fine_grained_optimization()
    wall = time.perf_counter() - t0
    np.savez(a.out, poses=np.asarray(poses, np.float64), closures=np.asarray(slam.closures, np.int64).reshape(-1, 2),
             seconds=np.float64(wall))
    print(f"kiss-slam: {a.last - a.first} scans, {len(slam.closures)} closures, {wall:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
