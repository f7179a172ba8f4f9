"""Monocular visual odometry: the vehicle's motion between consecutive camera frames, for image
queries when no odometry is given (issue 19: image tracking without a pose topic published nothing).

Why: the drive's alignment onto the map (alignment.py) needs the shape of the recent drive; a
camera-only robot has no wheel odometry on ``pose_topic``, but consecutive images hold its motion.
Each step tracks corners of the previous frame into this one (pyramidal Lucas-Kanade, checked
backwards), estimates the essential matrix (five-point RANSAC) and recovers the rotation and the
translation's direction. A single camera cannot see scale; the road can: the tracked points of the
road ahead (a window below the horizon, in front of the vehicle) triangulated with a unit baseline
lie ``1 / scale`` below the camera, whose height above the road is known (``camera_height_m``;
KITTI's rig: 1.65 m). Steps whose road points are too few keep the last scale; a frame whose
geometry fails (few corners, a degenerate essential matrix) repeats the last step, up to
``max_repeats`` frames, then reports no motion known (None: the tracker starts its alignment over).

Measured (session 18; the synthetic towns' full-resolution camera, 1241 x 376, 7 m/s): per step
median |error| 0.05 m forward (of 0.72 m), 0.0004 rad yaw; after laying a 150 m stretch onto the
truth, the position 100 m on is off by 4 m (median) / 14 m (95th percentile), about three times
the evaluation's simulated wheel odometry (2 / 5 m). 44 ms a frame (p50; p99 79 ms) on one core, 1.4x the
image query (bench/bench_visual_odometry.py; half resolution 14 ms, but its yaw drifts).
Session 22: in turns the essential matrix's translation direction is 3-4 degrees off and the road
scale with it (turning steps +0.10-0.12 m median of 0.42 m); ``planar_motion`` (a vehicle's camera
does not move along its own vertical axis) brings that to +0.07-0.09 m, straight steps unchanged
(docs/deployment.md, bench/experiments/vo_steps.py).

Conventions: the camera frame is KITTI's (x right, y down, z forward); a step is (forward m,
left m, yaw rad, positive to the left) of the new frame in the previous one, as
``tracker.odometry_delta`` gives it for two poses. Core code: numpy and OpenCV only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

# The drive's alignment (alignment.py) with visual odometry's steps: its drift measured (see the
# module text), and a shorter window, whose shape drifts less (session 18, towns 601-604 and
# 74043 / 83547 / 85288 / 57334, image recall with visual odometry, mean of the 8: 150 m window
# 0.548, 100 m 0.610; drift 0.03: 0.544, 0.06: 0.548, 0.1: 0.530; precision >= 0.997 every one)
VISUAL_WINDOW_M = 100.0
VISUAL_DRIFT_PER_M = 0.06


def visual_align(cfg):
    """The alignment's configuration ``cfg`` (alignment.AlignConfig) for visual odometry."""
    from dataclasses import replace

    return replace(cfg, window_m=VISUAL_WINDOW_M, drift_per_m=VISUAL_DRIFT_PER_M)


def step_pose(step) -> np.ndarray:
    """4x4 camera-frame transform of one step (forward, left, yaw): ``T_prev @ step_pose(s)`` is the
    new camera's pose; tracker.odometry_delta(T_prev, that) gives ``s`` back."""
    from ..retrieval.views import view_rotation

    f, left, yaw = (float(v) for v in step)
    T = np.eye(4)
    T[:3, :3] = view_rotation(math.degrees(yaw), up=(0.0, -1.0, 0.0))  # counter-clockwise seen from above (camera up: -y)
    T[0, 3], T[2, 3] = -left, f
    return T


@dataclass(frozen=True)
class VisualOdometryConfig:
    camera_height_m: float = 1.65  # the camera above the road (KITTI's rig)
    max_corners: int = 1500  # corners tracked from each frame
    min_tracked: int = 30  # fewer tracked corners: the step fails
    ransac_px: float = 0.5  # the essential matrix's inlier threshold (full-resolution pixels)
    # the road window: below the horizon by at least this angle, within this angle of straight
    # ahead, nearer than road_max_baselines steps (the tracked points there are the road's; a
    # sidewalk's kerb beside it biased the scale +3% when the whole lower image was used)
    road_below_deg: float = 3.2
    road_half_width_deg: float = 22.7
    road_max_baselines: float = 40.0
    min_road_points: int = 8
    min_flow_px: float = 0.3  # median corner motion below this: the vehicle stands still
    max_repeats: int = 3  # failed frames in a row that repeat the last step; more: motion unknown
    # the camera rides a vehicle on the road: its translation between frames has no component along
    # its own vertical axis (a slope tilts the camera with the vehicle). True: the essential matrix's
    # translation direction projected onto that plane before the road scale (session 22: in turns
    # the direction is 3-4 deg off, which inflates the scale; see the module text)
    planar_motion: bool = True

    def __post_init__(self) -> None:
        if not 0.1 <= self.camera_height_m <= 10.0:
            raise ValueError(f"VisualOdometryConfig.camera_height_m must lie in [0.1, 10] m, got {self.camera_height_m}")


class VisualOdometry:
    """``step(image, K)`` per camera frame, in order: the motion since the previous frame
    (forward, left, yaw) or None (the first frame, or motion unknown)."""

    def __init__(self, cfg: VisualOdometryConfig = VisualOdometryConfig()) -> None:
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self._prev: np.ndarray | None = None
        self._scale: float | None = None  # metres per unit of the essential matrix's translation
        self._last: np.ndarray | None = None  # the last step measured
        self._repeats = 0
        self.steps = self.failed = self.repeated = 0  # counters (diagnostics)

    def step(self, image: np.ndarray, K: np.ndarray) -> np.ndarray | None:
        import cv2

        img = np.asarray(image)
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
            raise DataError(None, f"visual odometry needs an (H, W) or (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
        K = np.asarray(K, np.float64)[:3, :3]
        if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise DataError(None, "visual odometry needs a finite camera matrix with positive focal lengths")
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 and img.shape[2] == 3 else img.reshape(img.shape[0], img.shape[1])
        prev, self._prev = self._prev, gray
        if prev is None or prev.shape != gray.shape:
            self._last, self._repeats = None, 0
            return None
        self.steps += 1
        delta = self._measure(prev, gray, K)
        if delta is not None:
            self._last, self._repeats = delta, 0
            return delta
        self.failed += 1
        if self._last is None or self._repeats >= self.cfg.max_repeats:
            self._last = None
            return None
        self._repeats += 1
        self.repeated += 1
        return self._last.copy()

    def _measure(self, prev: np.ndarray, cur: np.ndarray, K: np.ndarray) -> np.ndarray | None:
        import cv2

        c = self.cfg
        p0 = cv2.goodFeaturesToTrack(prev, c.max_corners, 0.01, 6)
        if p0 is None or len(p0) < c.min_tracked:
            return None
        lk = dict(winSize=(21, 21), maxLevel=3)
        p1, st, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **lk)
        ok = (st[:, 0] == 1) & (st2[:, 0] == 1) & (np.linalg.norm((back - p0)[:, 0], axis=1) < 0.5)
        a, b = p0[ok, 0].astype(np.float64), p1[ok, 0].astype(np.float64)
        if len(a) < c.min_tracked:
            return None
        if float(np.median(np.linalg.norm(b - a, axis=1))) < c.min_flow_px:
            return np.zeros(3)  # standing still
        E, inl = cv2.findEssentialMat(a, b, K, cv2.RANSAC, 0.999, c.ransac_px)
        if E is None or E.shape != (3, 3):
            return None
        n, R, t, pose_mask = cv2.recoverPose(E, a, b, K, mask=inl.copy())
        m = pose_mask[:, 0] > 0
        if m.sum() < c.min_tracked // 2:
            return None
        if c.planar_motion:
            C = -R.T @ t[:, 0]  # the unit baseline, in the previous camera's frame
            C[1] = 0.0
            if float(np.linalg.norm(C)) < 1e-6:
                return None  # a purely vertical translation: no planar motion to take
            t = (-R @ (C / np.linalg.norm(C)))[:, None]
        scale = self._road_scale(a[m], b[m], R, t, K)
        if scale is not None:
            self._scale = scale
        if self._scale is None:
            return None
        C = (-R.T @ t[:, 0]) * self._scale  # the new camera's centre in the previous camera's frame
        Rr = R.T
        dh = math.atan2(Rr[2, 2], Rr[0, 2]) - math.pi / 2
        return np.array([C[2], -C[0], math.atan2(math.sin(dh), math.cos(dh))])

    def _road_scale(self, a, b, R, t, K) -> float | None:
        """Metres per unit baseline from the road's tracked points, or None (too few)."""
        import cv2

        c = self.cfg
        P1 = K @ np.hstack([np.eye(3), np.zeros((3, 1))])
        P2 = K @ np.hstack([R, t])
        X = cv2.triangulatePoints(P1, P2, a.T, b.T)
        with np.errstate(divide="ignore", invalid="ignore"):
            X = (X[:3] / X[3]).T
        below = a[:, 1] - K[1, 2] > K[1, 1] * math.tan(math.radians(c.road_below_deg))
        ahead = np.abs(a[:, 0] - K[0, 2]) < K[0, 0] * math.tan(math.radians(c.road_half_width_deg))
        road = below & ahead & np.isfinite(X).all(1) & (X[:, 2] > 0) & (X[:, 1] > 0) & (X[:, 2] < c.road_max_baselines)
        if road.sum() < c.min_road_points:
            return None
        return c.camera_height_m / float(np.median(X[road, 1]))
