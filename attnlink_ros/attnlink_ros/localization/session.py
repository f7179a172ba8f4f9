"""The filter as the node, the demo and the CLI use it: one map, the per-mode observation models,
odometry from timed poses when there are any, and the fix turned into what ``~/place`` carries."""

from __future__ import annotations

import numpy as np

from ..errors import AttnLinkError
from ..geometry.poses import ground_xy, headings_deg
from .tracker import Fix, ObservationModel, PlaceTracker, TrackerConfig, odometry_delta


def fix_pose(T_place: np.ndarray, view_yaw_deg: float, xy: np.ndarray) -> np.ndarray:
    """The vehicle's camera pose of a tracked fix: the place's pose turned by its view's yaw
    about the vertical (camera -y; a 180-degree view faces the other way), at the belief's mean
    ground-plane position ``xy`` (x, z of the map frame), the place's height."""
    a = np.radians(view_yaw_deg)
    R = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
    T = np.array(T_place, np.float64).copy()
    T[:3, :3] = T[:3, :3] @ R
    T[0, 3], T[2, 3] = float(xy[0]), float(xy[1])
    return T


def fix_covariance(cov_xy: np.ndarray, vertical_sigma_m: float = 1.0, heading_sigma_rad: float = 0.35,
                   tilt_sigma_rad: float = 0.05) -> list[float]:
    """6x6 row-major covariance of a tracked fix in the map frame (KITTI camera-0 world: x right,
    y down, z forward): the filter's ground-plane (x, z) covariance, the height's and the
    orientation's (yaw is about y)."""
    cov = np.zeros((6, 6))
    cov[np.ix_([0, 2], [0, 2])] = cov_xy
    cov[1, 1] = vertical_sigma_m ** 2
    cov[3, 3] = cov[5, 5] = tilt_sigma_rad ** 2
    cov[4, 4] = heading_sigma_rad ** 2
    return cov.reshape(-1).tolist()


class MapTracking:
    """Tracks the vehicle over ``place_map`` (a retrieval.place_map.PlaceMap with poses).
    ``observation``: per query mode, the calibrated observation model (``load_for_model``)."""

    def __init__(self, place_map, observation: dict[str, ObservationModel], cfg: TrackerConfig = TrackerConfig()) -> None:
        if not bool(place_map.poses_known.all()):
            raise AttnLinkError("tracking needs a map whose places all have poses (this one was saved without a pose topic)")
        self.map = place_map
        self.observation = observation
        self.cfg = cfg
        t = place_map.table
        self.tracker = PlaceTracker(t.xy, headings_deg(t.poses), place_map.view_yaws, next(iter(observation.values())), cfg)
        self._last_pose: np.ndarray | None = None

    def reset(self) -> None:
        """Relocalisation: the belief starts over (the ``~/relocalize`` service)."""
        self.tracker.reset()
        self._last_pose = None

    def odometry_lost(self) -> None:
        """The odometry's chain broke (visual odometry could not measure a step): the next pose
        starts a new chain (no step across the gap)."""
        self._last_pose = None

    def threshold(self, mode: str) -> float | None:
        """The confidence from which the belief's fix is published for queries of ``mode``; None:
        never (the calibration found this mode's belief imprecise: verified and carried poses only)."""
        if mode not in self.observation:
            return None
        obs, self.tracker.obs = self.tracker.obs, self.observation[mode]
        try:
            return self.tracker.threshold()
        finally:
            self.tracker.obs = obs

    def step(self, stamp: float, hits: list[dict], mode: str, pose: np.ndarray | None = None, checked: int = 0) -> Fix:
        """One query's hits (best first, as PlaceMap.hits gives them); ``pose``: the vehicle's
        camera pose (4x4, any fixed world frame) from odometry at the query's stamp, or None;
        ``checked``: how many of the first hits GICP verification tried (the pipeline's
        ``registrations``; verify_hits moves a verified one to the front). Each hit gains ``posterior``."""
        if mode not in self.observation:
            raise AttnLinkError(f"tracking calibration has no observation model for mode {mode!r}")
        self.tracker.obs = self.observation[mode]
        k = self.cfg.k
        places = np.full(k, -1, np.int64)
        views = np.zeros(k, np.int64)
        scores = np.full(k, -np.inf)
        verified = np.zeros(k, bool)
        for i, h in enumerate(hits[:k]):
            places[i], views[i], scores[i] = int(h["index"]), int(h.get("view", 0)), float(h["score"])
            verified[i] = bool(h.get("verified"))
        odom = catch_up = None
        last = self.tracker.last_stamp
        if pose is not None and np.isfinite(pose).all():
            if last is None or stamp >= last:
                if self._last_pose is not None:
                    odom = odometry_delta(self._last_pose, pose)
                self._last_pose = np.asarray(pose, np.float64)
            elif self._last_pose is not None:  # a late answer moves nothing; its verified pose is carried to the last frame
                catch_up = odometry_delta(np.asarray(pose, np.float64), self._last_pose)
        vpose = None  # the verified hit's registration: the vehicle's pose in the map (pipeline.apply_verification)
        if hits and hits[0].get("verified") and hits[0].get("vehicle_pose") is not None:
            T = np.asarray(hits[0]["vehicle_pose"], np.float64)[None]
            vpose = np.array([*ground_xy(T)[0], np.radians(headings_deg(T)[0])])
        fix = self.tracker.update(stamp, places, views, scores, odom, verified, np.arange(k) < int(checked), vpose, catch_up)
        for h, p in zip(hits[:k], fix.hit_posteriors):
            h["posterior"] = p
        return fix

    def tracked_pose(self, fix: Fix) -> tuple[np.ndarray, list[float]] | None:
        """(vehicle pose 4x4, 6x6 covariance) of a fix the filter is confident in, else None."""
        if not fix.published:
            return None
        T_place = self.map.table.poses[fix.place]
        if fix.source == "belief":
            return fix_pose(T_place, float(self.map.view_yaws[fix.view]), fix.xy), fix_covariance(fix.covariance_xy)
        # a verified pose (this frame's or carried by odometry) or the aligned drive's: its own
        # heading, known to a few degrees (registration) or to the alignment's fit and odometry
        yaw = float(headings_deg(np.asarray(T_place)[None])[0]) - fix.heading_deg
        return fix_pose(T_place, yaw, fix.xy), fix_covariance(fix.covariance_xy, heading_sigma_rad=0.1 if fix.source == "aligned" else 0.05)
