"""Column ray caster for the synthetic town (camera and LiDAR share it).

Every solid of the town is a vertical prism, so the rays of one image column (a level camera) or
one LiDAR azimuth share a horizontal direction and differ only in slope ``s = dz / |d_xy|``. A
column is intersected with the prisms in 2-D once, giving each prism's entry and exit distance
``[t_in, t_out]`` along the ground; a ray of slope ``s`` hits the prism iff
``s_lo <= s <= s_hi`` where ``s_lo``/``s_hi`` are the slopes to the prism's bottom/top edges
(front or back, whichever is steeper). Prisms are painted far to near, each as a slope interval,
which is a few vectorised passes per candidate instead of a ray-object test per pixel.

For the LiDAR, whose beams are tilted by the calibration's small rotation (about 0.5 deg), a
column's horizontal direction is that of its level beam; the horizontal deviation of a tilted
beam is at most ``tilt * tan(elevation)`` and steep beams only reach nearby surfaces, so the
surface error stays below about 2 cm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .town import Solids



@dataclass
class ColumnHits:
    """Result of :func:`cast_columns` on an (R, C) grid of rays.

    ``obj`` indexes the solids passed in (-1 = no prism hit); ``t`` is the horizontal distance of
    the hit (inf where none); ``face`` is 0 for a side, 1 for a top, 2 for a bottom; ``nx``/``ny``
    the horizontal normal of a side hit.
    """

    obj: np.ndarray  # (R, C) int32
    t: np.ndarray  # (R, C) float32
    face: np.ndarray  # (R, C) int8
    nx: np.ndarray  # (R, C) float32
    ny: np.ndarray  # (R, C) float32


def _column_pairs(s: Solids, ox: float, oy: float, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(column, solid) pairs whose angular extents overlap, without a C x M table.

    Column angles must be monotonic (an image's columns, or a LiDAR sweep); each solid's
    bounding circle subtends ``[phi - alpha, phi + alpha]`` seen from the origin, which is looked
    up in the sorted column angles.
    """
    ang = np.arctan2(dirs[:, 1].astype(np.float64), dirs[:, 0])
    theta0 = ang[0]
    rel = np.unwrap(ang - theta0)
    sign = 1.0 if rel[-1] >= rel[0] else -1.0
    rel = rel * sign  # increasing from 0
    dx = s.cx.astype(np.float64) - ox
    dy = s.cy.astype(np.float64) - oy
    dist = np.hypot(dx, dy)
    rad = s.radius.astype(np.float64)
    phi = ((np.arctan2(dy, dx) - theta0) * sign + np.pi) % (2 * np.pi) - np.pi
    alpha = np.where(dist > rad, np.arcsin(np.clip(rad / np.maximum(dist, 1e-9), 0, 1)), np.pi)
    objs, c0s, c1s = [], [], []
    for shift in (-2 * np.pi, 0.0, 2 * np.pi):
        lo, hi = phi - alpha + shift, phi + alpha + shift
        c0 = np.searchsorted(rel, lo, "left")
        c1 = np.searchsorted(rel, hi, "right")
        ok = c1 > c0
        objs.append(np.flatnonzero(ok))
        c0s.append(c0[ok])
        c1s.append(c1[ok])
    obj, c0, c1 = np.concatenate(objs), np.concatenate(c0s), np.concatenate(c1s)
    counts = c1 - c0
    pair_obj = np.repeat(obj, counts)
    starts = np.repeat(c0 - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    pair_col = np.arange(len(pair_obj)) + starts
    return pair_col, pair_obj


def _intersect_pairs(s: Solids, ox: float, oy: float, dirs: np.ndarray, col: np.ndarray, obj: np.ndarray):
    """Entry/exit distance and entry normal of each (column, solid) pair (inf where missed)."""
    dx = dirs[col, 0].astype(np.float32)
    dy = dirs[col, 1].astype(np.float32)
    t_in = np.full(len(col), np.inf, np.float32)
    t_out = np.full(len(col), np.inf, np.float32)
    nx = np.zeros(len(col), np.float32)
    ny = np.zeros(len(col), np.float32)
    kind = s.kind[obj]
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.flatnonzero(kind == 0)
        if len(m):
            o, ddx, ddy = obj[m], dx[m], dy[m]
            sdx = np.where(np.abs(ddx) < 1e-9, np.float32(1e-9), ddx)
            sdy = np.where(np.abs(ddy) < 1e-9, np.float32(1e-9), ddy)
            ix, iy = 1.0 / sdx, 1.0 / sdy
            ax = (s.x0[o] - ox) * ix
            bx = (s.x1[o] - ox) * ix
            ay = (s.y0[o] - oy) * iy
            by = (s.y1[o] - oy) * iy
            nearx, farx = np.minimum(ax, bx), np.maximum(ax, bx)
            neary, fary = np.minimum(ay, by), np.maximum(ay, by)
            tin = np.maximum(nearx, neary)
            tout = np.minimum(farx, fary)
            ok = (tin <= tout) & (tin > 0)
            t_in[m] = np.where(ok, tin, np.inf)
            t_out[m] = np.where(ok, tout, np.inf)
            xface = nearx > neary
            nx[m] = np.where(xface, -np.sign(sdx), 0)
            ny[m] = np.where(xface, 0, -np.sign(sdy))
        m = np.flatnonzero(kind == 1)
        if len(m):
            o, ddx, ddy = obj[m], dx[m], dy[m]
            r = 0.5 * (s.x1[o] - s.x0[o])
            fx = ox - s.cx[o]
            fy = oy - s.cy[o]
            b = fx * ddx + fy * ddy
            c = fx * fx + fy * fy - r * r
            disc = b * b - c
            root = np.sqrt(np.maximum(disc, 0))
            tin = -b - root
            ok = (disc > 0) & (tin > 0)
            t_in[m] = np.where(ok, tin, np.inf)
            t_out[m] = np.where(ok, -b + root, np.inf)
            nx[m] = (fx + tin * ddx) / r
            ny[m] = (fy + tin * ddy) / r
    return t_in, t_out, nx, ny


def cast_columns(s: Solids, origin: tuple[float, float, float], dirs: np.ndarray, slopes: np.ndarray) -> ColumnHits:
    """Casts an (R, C) grid of rays: column c has horizontal direction ``dirs[c]`` (unit, angles
    monotonic along c), ray (r, c) has slope ``slopes[r, c]``; all start at ``origin``."""
    ox, oy, oz = (float(v) for v in origin)
    R, C = slopes.shape
    win = np.full((R, C), -1, np.int16)
    col, obj = _column_pairs(s, ox, oy, dirs) if len(s) else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    t_in, t_out, pnx, pny = _intersect_pairs(s, ox, oy, dirs, col, obj)
    hit = np.isfinite(t_in)
    col, obj, t_in, t_out, pnx, pny = col[hit], obj[hit], t_in[hit], t_out[hit], pnx[hit], pny[hit]
    zlo = s.zmin[obj] - np.float32(oz)
    zhi = s.zmax[obj] - np.float32(oz)
    s_lo = np.where(zlo < 0, zlo / t_in, zlo / t_out).astype(np.float32)
    s_hi = np.where(zhi > 0, zhi / t_in, zhi / t_out).astype(np.float32)
    # nearest first within each column
    order = np.lexsort((t_in, col))
    col, obj, t_in, t_out, pnx, pny, s_lo, s_hi = (a[order] for a in (col, obj, t_in, t_out, pnx, pny, s_lo, s_hi))
    counts = np.bincount(col, minlength=C)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(col)) - start[col]
    # occlusion: every ground-standing solid covers all slopes from below its own base up to its
    # top, so a solid whose top slope is under the running maximum of nearer ground-standing tops
    # is hidden and never needs painting
    grounded_top = np.where(s.zmin[obj] <= 0, s_hi, -np.inf).astype(np.float32)
    K0 = int(counts.max()) if len(col) else 0
    if K0:
        table = np.full((C, K0), -np.inf, np.float32)
        table[col, rank] = grounded_top
        runmax = np.maximum.accumulate(table, axis=1)
        prev = np.concatenate([np.full((C, 1), -np.inf, np.float32), runmax[:, :-1]], 1)
        visible = s_hi > prev[col, rank]
        col, obj, t_in, t_out, pnx, pny, s_lo, s_hi = (a[visible] for a in (col, obj, t_in, t_out, pnx, pny, s_lo, s_hi))
        counts = np.bincount(col, minlength=C)
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(col)) - start[col]
    K = int(counts.max()) if len(col) else 0
    if K == 0:
        inf = np.full((R, C), np.inf, np.float32)
        zero = np.zeros((R, C), np.float32)
        return ColumnHits(np.full((R, C), -1, np.int32), inf, np.zeros((R, C), np.int8), zero, zero)
    pair_at = np.full((C, K), -1, np.int64)
    pair_at[col, rank] = np.arange(len(col))
    lo_t = np.full((C, K), np.inf, np.float32)
    hi_t = np.full((C, K), -np.inf, np.float32)
    lo_t[col, rank] = s_lo
    hi_t[col, rank] = s_hi
    # paint far to near: the nearest solid covering a ray's slope wins
    for k in range(K - 1, -1, -1):
        covered = (slopes >= lo_t[None, :, k]) & (slopes <= hi_t[None, :, k])
        win[covered] = k
    # per-pixel results, computed on the hit pixels only
    flat = np.flatnonzero(win >= 0)
    colf = flat % C
    pair = pair_at[colf, win.ravel()[flat]]
    o = obj[pair]
    t0 = t_in[pair]
    sl = slopes.ravel()[flat]
    z_in = np.float32(oz) + t0 * sl
    zmax = s.zmax[o]
    zmin = s.zmin[o]
    top = z_in > zmax
    bottom = z_in < zmin
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(top, (zmax - np.float32(oz)) / sl, np.where(bottom, (zmin - np.float32(oz)) / sl, t0))
    side = ~(top | bottom)
    out_obj = np.full(R * C, -1, np.int32)
    out_t = np.full(R * C, np.inf, np.float32)
    out_face = np.zeros(R * C, np.int8)
    out_nx = np.zeros(R * C, np.float32)
    out_ny = np.zeros(R * C, np.float32)
    out_obj[flat] = o
    out_t[flat] = t
    out_face[flat] = top.astype(np.int8) + 2 * bottom.astype(np.int8)
    out_nx[flat] = np.where(side, pnx[pair], 0)
    out_ny[flat] = np.where(side, pny[pair], 0)
    shape = (R, C)
    return ColumnHits(out_obj.reshape(shape), out_t.reshape(shape), out_face.reshape(shape), out_nx.reshape(shape), out_ny.reshape(shape))


def cull(s: Solids, ox: float, oy: float, max_range: float, forward: np.ndarray | None = None,
         half_fov: float | None = None) -> np.ndarray:
    """Indices of solids within ``max_range`` (and inside a horizontal field of view if given)."""
    dx = s.cx - ox
    dy = s.cy - oy
    dist = np.hypot(dx, dy)
    rad = s.radius
    keep = dist - rad < max_range
    if forward is not None and half_fov is not None:
        ang = np.arctan2(dy, dx) - np.arctan2(forward[1], forward[0])
        ang = (ang + np.pi) % (2 * np.pi) - np.pi
        margin = np.arcsin(np.clip(rad / np.maximum(dist, 1e-3), 0, 1))
        keep &= (np.abs(ang) - margin < half_fov) | (dist < rad + 1.0)
    return np.flatnonzero(keep)
