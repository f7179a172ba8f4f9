"""LiDAR odometry by KISS-ICP (PyPI ``kiss-icp``): each scan registered to a local map of the last ones.

Poses are the LiDAR's, in the first scan's LiDAR frame. KITTI-format drives carry no per-point
times, so motion compensation (deskew) is off unless the caller passes per-point timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OdometryConfig:
    voxel_m: float = 1.0  # KISS-ICP's local-map voxel (its default: max_range / 100)
    max_range_m: float = 100.0
    min_range_m: float = 0.0
    # points KISS-ICP keeps per local-map voxel (its default 20). Validation towns (1500 scans, one
    # thread, session 10): 601: 20 -> 5 took 115 -> 65 ms a scan and RPE 0.35 -> 0.15 %; 602:
    # RPE 0.24 -> 0.12 % (fewer neighbours to search, and a map less smeared by old scans)
    max_points_per_voxel: int = 5
    deskew: bool = False  # needs per-point timestamps (KITTI .bin files have none)
    # KISS-ICP registration threads: a second thread gained 0-8 % on 2 cores (~3k points a scan),
    # so the odometry keeps one core and attnlink slam's loop worker the other
    threads: int = 1


class LidarOdometry:
    def __init__(self, cfg: OdometryConfig = OdometryConfig()) -> None:
        from kiss_icp.config import KISSConfig
        from kiss_icp.kiss_icp import KissICP

        kc = KISSConfig()
        kc.data.deskew = cfg.deskew
        kc.data.max_range = cfg.max_range_m
        kc.data.min_range = cfg.min_range_m
        kc.mapping.voxel_size = cfg.voxel_m
        kc.mapping.max_points_per_voxel = cfg.max_points_per_voxel
        kc.registration.max_num_threads = cfg.threads
        self.cfg = cfg
        self._icp = KissICP(kc)

    def register(self, points: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        """Registers one scan (N, >=3); returns its LiDAR pose (4x4) in the first scan's frame."""
        xyz = np.asarray(points)[:, :3]
        ts = np.zeros(len(xyz)) if timestamps is None or not self.cfg.deskew else np.asarray(timestamps, np.float64)
        if not np.isfinite(xyz).all():  # the rare scan with NaN returns: filtered (a pass over all points costs ~1 ms)
            ok = np.isfinite(xyz).all(1)
            xyz, ts = xyz[ok], ts[ok]
        if len(xyz) < 100:
            raise ValueError(f"scan has {len(xyz)} valid points: too few to register")
        p, ts = np.ascontiguousarray(xyz, dtype=np.float64), np.ascontiguousarray(ts, dtype=np.float64)
        self._icp.register_frame(p, ts)
        return np.array(self._icp.last_pose, dtype=np.float64)
