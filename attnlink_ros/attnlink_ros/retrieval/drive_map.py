"""A place map saved from the drive itself (the node's ``~/save_map`` in ``map_mode: online``).

The online loop detector keeps the drive's keyframes (K heading-view descriptors, the stamp and
the downsampled scan of each). :func:`drive_place_map` turns them into a normal map artifact
(map format 2, with scans) that ``map_mode: relocalize`` loads later. Poses come from a
:class:`PoseTrack` (fed by a pose topic, e.g. SLAM's odometry); without one, the map holds no
poses and says so (manifest ``poses: "none"``; its places then match and verify, but give no
map position).
"""

from __future__ import annotations

import numpy as np

from .loops import OnlineMap, ScanStore
from .place_map import PlaceMap, PlaceTable

DRIVE_SEQUENCE = "drive"


class PoseTrack:
    """Time-stamped poses (4x4, the sensor's pose in a world frame), looked up at other stamps."""

    def __init__(self, max_poses: int = 1_000_000) -> None:
        self.max_poses = max_poses
        self._t: list[float] = []
        self._T: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._t)

    def add(self, stamp: float, T: np.ndarray) -> None:
        T = np.asarray(T, np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            raise ValueError("pose must be a finite 4x4 transform")
        if self._t and stamp <= self._t[-1]:  # out of order or repeated: keep the track ascending
            if stamp == self._t[-1]:
                self._T[-1] = T
                return
            i = int(np.searchsorted(self._t, stamp))
            self._t.insert(i, float(stamp))
            self._T.insert(i, T)
        else:
            self._t.append(float(stamp))
            self._T.append(T)
        if len(self._t) > self.max_poses:  # drop the oldest tenth at once: not a list shift every pose
            cut = max(1, self.max_poses // 10)
            del self._t[:cut], self._T[:cut]

    def at(self, stamps, tolerance_s: float = 0.1) -> np.ndarray:
        """(M, 4, 4) poses at ``stamps``: the translation interpolated between the two poses around
        the stamp, the rotation of the nearer one; NaN where no pose lies within ``tolerance_s``."""
        stamps = np.asarray(stamps, np.float64).reshape(-1)
        out = np.full((len(stamps), 4, 4), np.nan)
        if not self._t:
            return out
        t = np.asarray(self._t)
        Ts = np.stack(self._T)
        for m, s in enumerate(stamps):
            j = int(np.searchsorted(t, s))
            lo, hi = max(j - 1, 0), min(j, len(t) - 1)
            near = lo if abs(t[lo] - s) <= abs(t[hi] - s) else hi
            if abs(t[near] - s) > tolerance_s:
                continue
            T = Ts[near].copy()
            if lo != hi and t[lo] <= s <= t[hi] and t[hi] - t[lo] <= 2 * tolerance_s:
                w = (s - t[lo]) / (t[hi] - t[lo])
                T[:3, 3] = (1 - w) * Ts[lo][:3, 3] + w * Ts[hi][:3, 3]
            out[m] = T
        return out


def drive_place_map(online: OnlineMap, model_fingerprint: str, poses: np.ndarray | None = None,
                    pose_source: str = "", extra: dict | None = None) -> PlaceMap:
    """The online map's keyframes as a :class:`PlaceMap` with their scans.

    ``poses``: (M, 4, 4) camera-0 -> world poses of the keyframes (NaN rows: unknown), or None
    (the map holds no poses). The places' ground-plane ``xy`` is the poses' (x, y): a SLAM world
    frame has z up."""
    n = len(online)
    if n == 0:
        raise ValueError("the drive has no keyframes yet: nothing to save")
    known = np.zeros(n, bool)
    if poses is None:
        P = np.full((n, 4, 4), np.nan)
    else:
        P = np.asarray(poses, np.float64).reshape(n, 4, 4)
        known = np.isfinite(P).all(axis=(1, 2))
    table = PlaceTable(poses=P, stamps=np.asarray(online.stamps[:n], np.float64), sequence=np.full(n, DRIVE_SEQUENCE),
                       frame=np.arange(n, dtype=np.int64), xy=P[:, :2, 3].copy())
    manifest_extra = {"source": "online drive (~/save_map)", "poses": "none" if not known.any() else pose_source or "given",
                      "poses_known": int(known.sum()), "keyframe_interval_s": float(online.cfg.keyframe_interval_s),
                      **(extra or {})}
    m = PlaceMap.build(online.desc[:n], table, model_fingerprint, extra=manifest_extra,
                       view_yaws_deg=online.view_yaws, view_offsets_m=online.view_offsets)
    m.attach_scans(ScanStore(online.scans.scans[:n], online.scans.voxel))
    return m
