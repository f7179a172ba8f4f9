"""Heading views of a place: its LiDAR scan turned about the LiDAR's vertical axis before the FoV
conversion, so that a place mapped driving one way is found driving the other way too.

The network sees only the camera's field of view of a scan (about 80 degrees of KITTI's 360). A
place held as K views (yaw 0, 360/K, ... degrees) answers a query that looks in any of those
directions: view ``yaw`` is what the camera would see with the vehicle turned by ``yaw``
counter-clockwise (LiDAR x forward, y left, z up) at the same spot. A rear view of a street is an
ordinary street view for the network.

Conventions shared by the map, the online loops and the verification:

* ``view_yaws(K)``: the K yaws in degrees, ``0`` first (view 0 is the unturned scan, so K = 1 is
  exactly the FoV map), wrapped to ``(-180, 180]``.
* A query matched through view ``yaw`` of a place faces ``yaw`` in the place's LiDAR frame: the
  query's LiDAR pose in the place's LiDAR frame is about ``Rz(yaw)``, the start GICP needs
  (:func:`attnlink_ros.retrieval.loops.verify`).
"""

from __future__ import annotations

import numpy as np

# Views a place of a built map (``build-map --views``) and an online keyframe hold by default;
# chosen on the validation towns (docs/model.md, "Heading views").
DEFAULT_VIEWS = 2
# A rear view (|yaw| > 90 degrees) is taken from a point this far to the left of where the place was
# scanned: in right-hand traffic the drive the other way passes on the other side of the road
# (negative for left-hand traffic). Chosen on the validation towns (docs/model.md).
DEFAULT_REVERSE_OFFSET_M = 3.5


def view_yaws(k: int) -> np.ndarray:
    """(K,) float64 yaws in degrees: 0, 360/K, ... wrapped to (-180, 180]."""
    k = int(k)
    if k < 1:
        raise ValueError(f"views per place must be >= 1, got {k}")
    return wrap_deg(np.arange(k) * (360.0 / k))


def wrap_deg(a) -> np.ndarray:
    """Angles in degrees wrapped to (-180, 180]."""
    a = np.asarray(a, dtype=np.float64)
    w = np.mod(a + 180.0, 360.0) - 180.0
    return np.where(w == -180.0, 180.0, w)


def view_offsets(yaws_deg, reverse_offset_m: float = DEFAULT_REVERSE_OFFSET_M) -> np.ndarray:
    """(K, 2) position (x forward, y left, metres, in the place's LiDAR frame) each view is taken
    from: the rear views (|yaw| > 90) ``reverse_offset_m`` to the left, the others at the scan."""
    yaws = np.asarray(yaws_deg, np.float64)
    out = np.zeros((len(yaws), 2))
    out[np.abs(yaws) > 90.0, 1] = float(reverse_offset_m)
    return out


def vertical_axis(T_cam_lidar: np.ndarray | None) -> np.ndarray:
    """(3,) the vehicle's up direction in the LiDAR frame: the (level) camera's up, -y, through the
    rig's calibration. A LiDAR is rarely mounted exactly level (KITTI's z axis leans 0.6 degrees):
    turning the scan about the LiDAR's own z axis would tilt the rear view's ground by twice that,
    which the network reads as another place (validation town 601: a 180-degree view of a scan
    against the scan of the rig turned round at the same spot scored 0.91 median about z, 0.94
    about the vertical; with the reverse lane's 3.5 m offset 0.75 vs 0.81)."""
    if T_cam_lidar is None:
        return np.array([0.0, 0.0, 1.0])
    u = np.asarray(T_cam_lidar, np.float64)[:3, :3].T @ np.array([0.0, -1.0, 0.0])
    return u / np.linalg.norm(u)


def view_rotation(yaw_deg: float, up=None) -> np.ndarray:
    """(3, 3) rotation by ``yaw_deg`` counter-clockwise about ``up`` (default the LiDAR's z)."""
    u = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, np.float64)
    th = np.radians(yaw_deg)
    K = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.eye(3) + np.sin(th) * K + (1.0 - np.cos(th)) * (K @ K)


def view_pose(yaw_deg: float, up=None, offset=None) -> np.ndarray:
    """(4, 4) the view's virtual LiDAR in the place's LiDAR frame: turned ``yaw_deg`` about ``up``,
    at ``offset`` (x, y). A query matched through this view sits about here: GICP's start."""
    T = np.eye(4)
    T[:3, :3] = view_rotation(yaw_deg, up)
    if offset is not None:
        T[:2, 3] = offset
    return T


def rotate_scan(points: np.ndarray, yaw_deg: float, up=None, offset=None) -> np.ndarray:
    """The scan as seen from a LiDAR at ``offset`` (x, y; default the scan's origin) turned
    ``yaw_deg`` counter-clockwise about the vertical ``up`` (in the LiDAR frame,
    :func:`vertical_axis`; default its z axis): ``p' = R^T (p - offset)`` on x, y, z (further
    columns, e.g. intensity, kept). Yaw 0 at the origin returns ``points`` itself (bit-identical
    views for K = 1)."""
    moved = offset is not None and bool(np.any(np.asarray(offset) != 0))
    if float(yaw_deg) == 0.0 and not moved:
        return points
    R = view_rotation(yaw_deg, up).astype(np.float32)
    o = (float(offset[0]), float(offset[1])) if moved else (0.0, 0.0)
    x = points[:, 0].astype(np.float32) - np.float32(o[0])
    y = points[:, 1].astype(np.float32) - np.float32(o[1])
    z = points[:, 2].astype(np.float32)
    out = np.array(points, copy=True)
    for j in range(3):  # (p - o) @ R, column by column (a (N, 3) @ (3, 3) matmul was 20x slower here)
        out[:, j] = x * R[0, j] + y * R[1, j] + z * R[2, j]
    return out


def yaw_of(T: np.ndarray) -> float:
    """Yaw (degrees) of a 4x4 transform's rotation about z."""
    T = np.asarray(T)
    return float(np.degrees(np.arctan2(T[1, 0], T[0, 0])))
