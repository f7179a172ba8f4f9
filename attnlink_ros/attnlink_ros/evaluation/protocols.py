"""Ground truth and evaluation protocols of place recognition.

A place's position is its ground-plane position (pose columns 3 and 11). A retrieval is a success
when the retrieved place lies within ``SUCCESS_RADIUS`` (10 m) of the query; training positives
are within ``POSITIVE_RADIUS`` (5 m).

Protocols (each gives, for every query, the database it is matched against):

* ``cotemporal`` (ModaLink's): every camera frame of a sequence queries the LiDAR frames of the
  same sequence, all of them (the query's own scan included).
* ``revisit``: a query is a frame that has an earlier frame at least ``min_gap_s`` (30 s) older
  within ``SUCCESS_RADIUS``; its database is the frames at least ``min_gap_s`` older than it.

Headings (:func:`heading_classes`): a revisit query is ``same`` when a database frame within
``SUCCESS_RADIUS`` was driven within ``SAME_HEADING_DEG`` (45) of its heading, else ``reverse``
when one was driven within 45 degrees of the opposite heading, else ``other`` (crossing at a
turn). A map of K heading views can reach a query when some view turns a nearby place's heading
to within 45 degrees of the query's (:func:`reachable`); with K = 1 that is the ``same`` share,
the ceiling of a camera-view map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POSITIVE_RADIUS = 5.0
SUCCESS_RADIUS = 10.0
REVISIT_GAP_S = 30.0
PROTOCOLS = ("cotemporal", "revisit")
SAME_HEADING_DEG = 45.0
HEADING_CLASSES = ("same", "reverse", "other")


@dataclass(frozen=True)
class Protocol:
    """Queries and, per query, the database size: the database of query ``i`` is the frames
    ``0 .. db_end[i] - 1`` (a prefix, since both protocols take frames in time order)."""

    name: str
    queries: np.ndarray  # (Q,) frame indices
    db_end: np.ndarray  # (Q,) exclusive end of each query's database


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(s + size, n)


def revisit_queries(xy: np.ndarray, times: np.ndarray, min_gap_s: float = REVISIT_GAP_S,
                    radius: float = SUCCESS_RADIUS) -> Protocol:
    """Frames with an earlier frame at least ``min_gap_s`` older within ``radius`` metres."""
    xy = np.asarray(xy, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if len(xy) != len(times):
        raise ValueError(f"{len(xy)} positions but {len(times)} timestamps")
    # database of frame i: frames with t <= t_i - gap, a prefix because times are sorted
    db_end = np.searchsorted(times, times - min_gap_s, side="right")
    queries = []
    r2 = radius * radius
    for s, e in _chunks(len(xy), 512):
        limit = int(db_end[e - 1])
        if limit == 0:
            continue
        d2 = ((xy[s:e, None, :] - xy[None, :limit, :]) ** 2).sum(-1)  # (B, limit)
        valid = np.arange(limit)[None, :] < db_end[s:e, None]
        has = ((d2 <= r2) & valid).any(1)
        queries.extend((np.flatnonzero(has) + s).tolist())
    q = np.asarray(queries, dtype=np.int64)
    return Protocol("revisit", q, db_end[q].astype(np.int64))


def cotemporal_queries(n: int) -> Protocol:
    """Every frame queries all ``n`` LiDAR frames of its sequence."""
    return Protocol("cotemporal", np.arange(n, dtype=np.int64), np.full(n, n, dtype=np.int64))


def make_protocol(name: str, xy: np.ndarray, times: np.ndarray) -> Protocol:
    if name == "revisit":
        return revisit_queries(xy, times)
    if name == "cotemporal":
        return cotemporal_queries(len(xy))
    raise ValueError(f"unknown protocol {name!r} (choose from {', '.join(PROTOCOLS)})")


def one_percent(db_size: int) -> int:
    """N of Recall@1%: the top ceil(1% of the database), at least 1."""
    return max(1, math.ceil(db_size / 100))


def recall_curve(query_xy: np.ndarray, db_xy: np.ndarray, ranked: np.ndarray, db_sizes: np.ndarray | None = None,
                 radius: float = SUCCESS_RADIUS) -> dict:
    """Recall@N for N = 1 .. K and Recall@1% from ranked retrievals.

    Args:
        query_xy: (Q, 2) query positions.
        db_xy: (D, 2) positions of the database frames (indexed by ``ranked``).
        ranked: (Q, K) database indices, best first; -1 pads a short list.
        db_sizes: (Q,) database size of each query, for Recall@1% (default: D for all).
    Returns:
        ``{"recall@1", "recall@1%", "recall@N": [R@1 .. R@K], "queries"}``; a query is correct at
        N when one of its first N retrievals lies within ``radius``.
    """
    query_xy = np.asarray(query_xy, dtype=np.float64)
    db_xy = np.asarray(db_xy, dtype=np.float64)
    ranked = np.asarray(ranked, dtype=np.int64)
    Q, K = ranked.shape if ranked.ndim == 2 else (0, 0)
    if Q == 0:
        return {"recall@1": float("nan"), "recall@1%": float("nan"), "recall@N": [], "queries": 0}
    valid = ranked >= 0
    d = np.linalg.norm(db_xy[np.maximum(ranked, 0)] - query_xy[:, None, :], axis=-1)
    good = valid & (d <= radius)  # (Q, K)
    first_good = np.where(good.any(1), good.argmax(1), K)  # rank (0-based) of first success
    curve = [(first_good < n).mean() for n in range(1, K + 1)]
    sizes = np.full(Q, len(db_xy)) if db_sizes is None else np.asarray(db_sizes)
    n1 = np.array([one_percent(int(s)) for s in sizes])
    if np.any(n1 > K):
        raise ValueError(f"Recall@1% needs top-{int(n1.max())} retrievals, got {K}")
    return {
        "recall@1": float(curve[0]),
        "recall@1%": float((first_good < n1).mean()),
        "recall@N": [float(c) for c in curve],
        "queries": int(Q),
    }


def _near_heading_offsets(xy, heading, proto: Protocol, radius: float = SUCCESS_RADIUS):
    """Per query, the heading differences (degrees, wrapped) to its database frames within ``radius``."""
    from ..retrieval.views import wrap_deg

    xy = np.asarray(xy, np.float64)
    for q, e in zip(proto.queries, proto.db_end):
        near = np.flatnonzero(np.linalg.norm(xy[:e] - xy[q], axis=1) <= radius)
        yield wrap_deg(heading[near] - heading[q])


def heading_class(dh_deg) -> str:
    """Class of a query from the heading differences (degrees) to its places within 10 m: ``same``
    when one is within 45 degrees, else ``reverse`` when one is within 45 of the opposite, else ``other``."""
    a = np.abs(np.atleast_1d(np.asarray(dh_deg, np.float64)))
    return "same" if np.any(a < SAME_HEADING_DEG) else "reverse" if np.any(a > 180.0 - SAME_HEADING_DEG) else "other"


def heading_classes(xy: np.ndarray, heading: np.ndarray, proto: Protocol) -> np.ndarray:
    """(Q,) class of each query of ``proto``: ``same``, ``reverse`` or ``other`` (module docstring)."""
    return np.asarray([heading_class(dh) for dh in _near_heading_offsets(xy, heading, proto)], dtype="<U7")


def reachable(xy: np.ndarray, heading: np.ndarray, proto: Protocol, yaws_deg) -> np.ndarray:
    """(Q,) bool: a place within 10 m has a view (yaws ``yaws_deg``) within 45 degrees of the
    query's heading (the ceiling of a map of those views)."""
    from ..retrieval.views import wrap_deg

    yaws = np.asarray(yaws_deg, np.float64)
    return np.asarray([bool(len(dh)) and bool(np.any(np.abs(wrap_deg(dh[:, None] + yaws[None, :])) < SAME_HEADING_DEG))
                       for dh in _near_heading_offsets(xy, heading, proto)], dtype=bool)


def heading_summary(xy: np.ndarray, times: np.ndarray, heading: np.ndarray, views=(1, 2, 4, 8)) -> dict:
    """Revisit queries by heading class and the share a map of K views can reach, per K."""
    from ..retrieval.views import view_yaws

    proto = revisit_queries(xy, times)
    n = max(1, len(proto.queries))
    cls = heading_classes(xy, heading, proto)
    return {"revisit_by_heading": {c: int(np.sum(cls == c)) for c in HEADING_CLASSES},
            "same_heading_share": round(float(np.sum(cls == "same")) / n, 3) if len(proto.queries) else None,
            "reachable_share": {str(k): round(float(reachable(xy, heading, proto, view_yaws(k)).mean()), 3) if len(proto.queries) else None
                                for k in views}}


def revisit_summary(xy: np.ndarray, times: np.ndarray, heading: np.ndarray | None = None) -> dict:
    """What ``attnlink revisits`` reports: frames, path length, revisit queries (and with
    ``heading``, their heading classes and the ceiling of maps of 1, 2, 4, 8 views)."""
    from ..geometry.poses import path_length

    proto = revisit_queries(xy, times)
    out = {"frames": int(len(xy)), "path_length_m": round(path_length(xy), 1), "revisit_queries": int(len(proto.queries)),
           "duration_s": round(float(times[-1] - times[0]), 1) if len(times) else 0.0}
    if heading is not None:
        out.update(heading_summary(xy, times, heading))
    return out
