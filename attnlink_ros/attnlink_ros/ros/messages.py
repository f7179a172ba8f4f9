"""The typed outputs (``attnlink_msgs``) built from, and read back into, the core's plain values.

Pure conversions: no node, no publisher. The hit dicts are the ones ``PlaceMap.hits``,
``verify_hits`` and the online loop detector produce (``index``, ``stamp``, ``score``, ``pose``
(4x4 or None), ``verified``, ``relative_pose``, ``covariance``, ``inlier_ratio``, ``view``,
``view_yaw_deg``, ``view_offset_m``, ``sequence``, ``frame``).

Field meanings are documented in ``attnlink_msgs/msg/*.msg``.
"""

from __future__ import annotations

import numpy as np
from attnlink_msgs.msg import Descriptor, LoopClosure, PlaceHit, PlaceMatches
from geometry_msgs.msg import Pose

from .conversions import MessageError, sec_to_stamp, stamp_to_sec

# LIO-SAM's loop topic (std_msgs/Float64MultiArray [query stamp, match stamp]): its own format.
LOOP_TOPIC = "lio_loop/loop_closure_detection"


def rotation_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a 3x3 rotation matrix."""
    m = R
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        w, x, y, z = 0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        w, x, y, z = (m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        w, x, y, z = (m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        w, x, y, z = (m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    return tuple(float(v) for v in q)


def quaternion_to_rotation(x: float, y: float, z: float, w: float) -> np.ndarray:
    n = np.sqrt(x * x + y * y + z * z + w * w)
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def pose_msg(T) -> Pose:
    """geometry_msgs/Pose of a 4x4 transform."""
    T = np.asarray(T, np.float64)
    p = Pose()
    p.position.x, p.position.y, p.position.z = (float(v) for v in T[:3, 3])
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = rotation_to_quaternion(T[:3, :3])
    return p


def pose_matrix(p: Pose) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation(p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w)
    T[:3, 3] = (p.position.x, p.position.y, p.position.z)
    return T


def place_covariance(score: float) -> list[float]:
    """6x6 row-major covariance from the match score (cosine similarity): position sigma grows
    from 2 m at score 1 to 12 m at score 0.5 and below; orientation sigma from 0.1 to 0.6 rad."""
    bad = float(np.clip((1.0 - score) / 0.5, 0.0, 1.0))
    sp, so = 2.0 + 10.0 * bad, 0.1 + 0.5 * bad
    cov = np.zeros((6, 6))
    cov[[0, 1, 2], [0, 1, 2]] = sp * sp
    cov[[3, 4, 5], [3, 4, 5]] = so * so
    return cov.reshape(-1).tolist()


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def hit_msg(h: dict) -> PlaceHit:
    """One hit dict -> attnlink_msgs/PlaceHit."""
    m = PlaceHit(map_index=int(h["index"]), score=_nan(h.get("score")), sequence=str(h.get("sequence", "")),
                 frame=int(h.get("frame", -1)), verified=bool(h.get("verified", False)),
                 inlier_ratio=_nan(h.get("inlier_ratio")) if h.get("verified") else float("nan"),
                 view=int(h.get("view", 0)), view_yaw_deg=float(h.get("view_yaw_deg", 0.0)), posterior=_nan(h.get("posterior")))
    m.place_stamp = sec_to_stamp(float(h["stamp"]))
    off = h.get("view_offset_m")
    if off is not None:
        m.view_offset_x_m, m.view_offset_y_m = float(off[0]), float(off[1])
    if h.get("pose") is not None:  # online keyframes and pose-less maps have none
        m.has_place_pose = True
        m.place_pose = pose_msg(h["pose"])
    else:
        m.place_pose.orientation.w = 1.0
    if h.get("verified") and h.get("relative_pose") is not None:
        m.relative_pose.pose = pose_msg(h["relative_pose"])
        if h.get("covariance") is not None:
            m.relative_pose.covariance = np.asarray(h["covariance"], np.float64).reshape(36).tolist()
    else:
        m.relative_pose.pose.orientation.w = 1.0
    return m


def matches_msg(header, frame_id: str, hits: list[dict], mode: str, fingerprint: str, map_mode: str,
                loop_closure: bool = False, fix=None) -> PlaceMatches:
    """A query's top-k (best first) as attnlink_msgs/PlaceMatches; ``header``: the query's;
    ``fix``: the tracking filter's answer (localization.tracker.Fix) or None (tracking off)."""
    m = PlaceMatches(mode=mode, model_fingerprint=fingerprint, map_mode=map_mode, loop_closure=bool(loop_closure),
                     hits=[hit_msg(h) for h in hits], fix_index=-1, confidence=float("nan"))
    if fix is not None:
        m.tracking_state, m.fix_index, m.confidence = fix.state, int(fix.place), float(fix.confidence)
        m.fix_view = max(int(fix.view), 0)
    m.header.stamp = header.stamp
    m.header.frame_id = frame_id
    return m


def parse_matches(msg: PlaceMatches) -> list[dict]:
    """~/match back to one flat dict per hit (for subscribers in Python): ``query_stamp``,
    ``map_index``, ``place_stamp``, ``sequence``, ``frame``, ``score``, ``verified``,
    ``inlier_ratio``, ``view``, ``view_yaw_deg``, ``view_offset_m``, ``place_pose`` (4x4 or None)
    with ``place_x/y/z`` (NaN without a pose), ``relative_pose`` (4x4 or None) with ``rel_x/y/z``
    and ``rel_covariance`` (6x6 or None)."""
    q = stamp_to_sec(msg.header.stamp)
    out = []
    for h in msg.hits:
        place = pose_matrix(h.place_pose) if h.has_place_pose else None
        rel = pose_matrix(h.relative_pose.pose) if h.verified else None
        d = {"query_stamp": q, "map_index": int(h.map_index), "place_stamp": stamp_to_sec(h.place_stamp),
             "sequence": h.sequence, "frame": int(h.frame), "score": float(h.score), "verified": bool(h.verified),
             "inlier_ratio": float(h.inlier_ratio), "view": int(h.view), "view_yaw_deg": float(h.view_yaw_deg),
             "posterior": float(h.posterior), "tracking_state": msg.tracking_state, "confidence": float(msg.confidence),
             "fix_index": int(msg.fix_index),
             "view_offset_m": (float(h.view_offset_x_m), float(h.view_offset_y_m)),
             "place_pose": place, "relative_pose": rel,
             "rel_covariance": np.asarray(h.relative_pose.covariance, np.float64).reshape(6, 6) if h.verified else None}
        for prefix, T in (("place", place), ("rel", rel)):
            xyz = T[:3, 3] if T is not None else (float("nan"),) * 3
            d[f"{prefix}_x"], d[f"{prefix}_y"], d[f"{prefix}_z"] = (float(v) for v in xyz)
        out.append(d)
    return out


def loop_msg(header, frame_id: str, hit: dict) -> LoopClosure:
    """The top hit of a query that went to SLAM as attnlink_msgs/LoopClosure."""
    m = LoopClosure(match_index=int(hit["index"]), score=_nan(hit.get("score")), view_yaw_deg=float(hit.get("view_yaw_deg", 0.0)),
                    verified=bool(hit.get("verified", False)))
    m.header.stamp = header.stamp
    m.header.frame_id = frame_id
    m.match_stamp = sec_to_stamp(float(hit["stamp"]))
    h = hit_msg(hit)
    m.inlier_ratio, m.relative_pose = h.inlier_ratio, h.relative_pose
    return m


def descriptor_msg(desc: np.ndarray, header, mode: str, fingerprint: str) -> Descriptor:
    m = Descriptor(mode=mode, model_fingerprint=fingerprint)
    m.header.stamp = header.stamp
    m.header.frame_id = header.frame_id
    m.data = np.ascontiguousarray(desc, dtype=np.float32).reshape(-1)
    return m


def parse_descriptor(msg: Descriptor, modes) -> tuple[np.ndarray, str, str]:
    """(descriptor (D,) float32, mode, model fingerprint) of a descriptor message."""
    if msg.mode not in modes:
        raise MessageError("descriptor_mode", f"descriptor mode {msg.mode!r} is not one of {', '.join(modes)}")
    desc = np.asarray(msg.data, dtype=np.float32).reshape(-1)
    if not len(desc) or not np.isfinite(desc).all():
        raise MessageError("descriptor_values", f"descriptor has {len(desc)} values, {int((~np.isfinite(desc)).sum())} not finite")
    return desc, msg.mode, msg.model_fingerprint
