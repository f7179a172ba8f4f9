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


def rotate_scan(points: np.ndarray, yaw_deg: float) -> np.ndarray:
    """The scan as seen from a LiDAR turned ``yaw_deg`` counter-clockwise about its z axis:
    ``p' = Rz(-yaw) p`` on x, y (further columns, e.g. intensity, kept). Yaw 0 returns ``points``
    itself (bit-identical views for K = 1)."""
    if float(yaw_deg) == 0.0:
        return points
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    out = np.array(points, dtype=points.dtype, copy=True)
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    out[:, 0] = c * x + s * y
    out[:, 1] = -s * x + c * y
    return out


def yaw_of(T: np.ndarray) -> float:
    """Yaw (degrees) of a 4x4 transform's rotation about z."""
    T = np.asarray(T)
    return float(np.degrees(np.arctan2(T[1, 0], T[0, 0])))
