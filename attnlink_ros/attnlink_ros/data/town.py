"""Procedural town: street grid, buildings, trees, poles, parked cars, and a drive through it.

Town frame: x east, y north, z up, metres, ground at z = 0. Every solid is a vertical prism with a
footprint that is an axis-aligned rectangle (buildings, cars, walls) or a circle (tree trunks and
crowns, poles) and a height interval ``[zmin, zmax]``; this is what lets the renderer cast a whole
image column in 2-D (see :mod:`attnlink_ros.data.render`).

The drive follows the right-hand lanes of the streets and is planned to revisit places early: two
laps of the smallest central block (the second in the other lane), a lap of its neighbour (which
drives the shared street the opposite way), a lap of the first block the opposite way round, then
a seeded random walk over the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Street cross-section, metres from the centreline.
LANE_W = 3.5
LANES = 2  # per direction
PARK_OUTER = LANES * LANE_W + 2.5  # parking strip 7.0 .. 9.5
ROAD_HALF = PARK_OUTER
SIDEWALK_HALF = ROAD_HALF + 3.5  # 13.0: sidewalk 9.5 .. 13.0
KERB_W = 0.2

# Materials (index into MATERIAL_* tables).
BUILDING, CAR, TRUNK, CROWN, POLE, WALL, HEDGE, LAMP = range(8)
MATERIAL_INTENSITY = np.array([0.32, 0.22, 0.38, 0.45, 0.55, 0.30, 0.42, 0.70], dtype=np.float32)

# Ground classes.
G_ROAD, G_MARKING, G_SIDEWALK, G_KERB, G_GRASS, G_LOT = range(6)
GROUND_INTENSITY = np.array([0.12, 0.62, 0.26, 0.30, 0.40, 0.16], dtype=np.float32)


@dataclass
class Solids:
    """A table of prisms. Rectangles use x0..x1, y0..y1; circles use cx, cy, r (kind = 1)."""

    kind: np.ndarray  # (M,) int8: 0 rectangle, 1 circle
    x0: np.ndarray
    x1: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    zmin: np.ndarray
    zmax: np.ndarray
    material: np.ndarray  # (M,) int8
    color: np.ndarray  # (M, 3) float32 BGR in [0, 1]
    style: np.ndarray  # (M, 4) float32: per-object texture parameters
    intensity: np.ndarray  # (M,) float32 LiDAR reflectance

    @property
    def cx(self) -> np.ndarray:
        return 0.5 * (self.x0 + self.x1)

    @property
    def cy(self) -> np.ndarray:
        return 0.5 * (self.y0 + self.y1)

    @property
    def radius(self) -> np.ndarray:
        """Radius of the bounding circle of each footprint."""
        return 0.5 * np.hypot(self.x1 - self.x0, self.y1 - self.y0)

    def __len__(self) -> int:
        return len(self.kind)

    def take(self, idx: np.ndarray) -> "Solids":
        return Solids(**{k: v[idx] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(parts: list["Solids"]) -> "Solids":
        keys = parts[0].__dict__.keys()
        return Solids(**{k: np.concatenate([p.__dict__[k] for p in parts]) for k in keys})


class _SolidBuilder:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def rect(self, x0, x1, y0, y1, zmin, zmax, material, color, style=(0, 0, 0, 0), intensity=None):
        self.rows.append((0, min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1), zmin, zmax, material, color, style, intensity))

    def circle(self, cx, cy, r, zmin, zmax, material, color, style=(0, 0, 0, 0), intensity=None):
        self.rows.append((1, cx - r, cx + r, cy - r, cy + r, zmin, zmax, material, color, style, intensity))

    def build(self) -> Solids:
        cols = list(zip(*self.rows))
        mat = np.asarray(cols[7], dtype=np.int8)
        inten = np.array([MATERIAL_INTENSITY[m] if i is None else i for m, i in zip(mat, cols[10])], dtype=np.float32)
        return Solids(
            kind=np.asarray(cols[0], dtype=np.int8),
            x0=np.asarray(cols[1], dtype=np.float32),
            x1=np.asarray(cols[2], dtype=np.float32),
            y0=np.asarray(cols[3], dtype=np.float32),
            y1=np.asarray(cols[4], dtype=np.float32),
            zmin=np.asarray(cols[5], dtype=np.float32),
            zmax=np.asarray(cols[6], dtype=np.float32),
            material=mat,
            color=np.asarray(cols[8], dtype=np.float32).reshape(-1, 3),
            style=np.asarray(cols[9], dtype=np.float32).reshape(-1, 4),
            intensity=inten,
        )


@dataclass
class ParkedCars:
    """Car slots along the kerbs; which slots hold a car, and where, changes every ``period`` s."""

    x: np.ndarray  # (S,) slot centre
    y: np.ndarray
    along_x: np.ndarray  # (S,) bool: the car's long axis is x
    key: np.ndarray  # (S,) uint32 hash key of the slot
    period: float = 40.0
    occupancy: float = 0.6


@dataclass
class Town:
    seed: int
    xs: np.ndarray  # (nx+1,) x of the north-south street centrelines
    ys: np.ndarray  # (ny+1,) y of the east-west street centrelines
    solids: Solids
    cars: ParkedCars
    palette_seed: int

    @property
    def extent(self) -> tuple[float, float, float, float]:
        return float(self.xs[0]), float(self.xs[-1]), float(self.ys[0]), float(self.ys[-1])


def _hash_u32(*keys: np.ndarray | int) -> np.ndarray:
    """Deterministic integer hash of integer arrays (wrapping uint32 arithmetic)."""
    h = np.uint32(0x9E3779B9)
    primes = (0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F, 0x165667B1, 0x9E3779B1)
    with np.errstate(over="ignore"):
        for i, k in enumerate(keys):
            k = np.asarray(k).astype(np.int64).astype(np.uint32)
            h = (h ^ (k * np.uint32(primes[i % len(primes)]))).astype(np.uint32)
            h = (h ^ (h >> np.uint32(15))) * np.uint32(0x2C1B3C6D)
            h = (h ^ (h >> np.uint32(12))) * np.uint32(0x297A2D39)
            h = h ^ (h >> np.uint32(15))
    return np.asarray(h, dtype=np.uint32)


def hash01(*keys) -> np.ndarray:
    """Hash of integer arrays mapped to float32 in [0, 1)."""
    return (_hash_u32(*keys) >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _facade_palette(rng: np.random.Generator) -> np.ndarray:
    """A BGR facade colour: plaster, brick, stone, painted, concrete or glassy."""
    family = rng.integers(6)
    if family == 0:  # plaster / beige
        rgb = np.array([0.78, 0.72, 0.60]) + rng.normal(0, 0.06, 3)
    elif family == 1:  # brick
        rgb = np.array([0.58, 0.30, 0.22]) + rng.normal(0, 0.05, 3)
    elif family == 2:  # grey stone
        rgb = np.full(3, rng.uniform(0.45, 0.75)) + rng.normal(0, 0.02, 3)
    elif family == 3:  # painted
        rgb = rng.uniform(0.25, 0.9, 3)
    elif family == 4:  # dark concrete
        rgb = np.full(3, rng.uniform(0.25, 0.4)) + rng.normal(0, 0.03, 3)
    else:  # blue-green glass
        rgb = np.array([0.35, 0.50, 0.58]) + rng.normal(0, 0.05, 3)
    return np.clip(rgb[::-1], 0.05, 0.95)


def _add_building(b: _SolidBuilder, rng, x0, x1, y0, y1, height) -> None:
    color = _facade_palette(rng)
    window_spacing = rng.uniform(1.8, 3.6)
    floor_h = rng.uniform(2.8, 3.6)
    window_frac = rng.uniform(0.35, 0.75)
    glass_tone = rng.uniform(0.1, 0.45)
    b.rect(x0, x1, y0, y1, 0.0, height, BUILDING, color, (window_spacing, floor_h, window_frac, glass_tone),
           intensity=float(np.clip(rng.normal(0.32, 0.07), 0.1, 0.6)))


def _fill_block(b: _SolidBuilder, rng, bx0, bx1, by0, by1, district: float) -> None:
    """Buildings along the four edges of a block (its inner rectangle), gaps as lots or walls."""
    w, h = bx1 - bx0, by1 - by0
    if min(w, h) < 30 or rng.random() < 0.06:  # a park
        for _ in range(int(w * h / 120)):
            tx, ty = rng.uniform(bx0 + 3, bx1 - 3), rng.uniform(by0 + 3, by1 - 3)
            _add_tree(b, rng, tx, ty)
        b.rect(bx0, bx1, by0, by0 + 0.4, 0, 1.0, HEDGE, (0.15, 0.42, 0.2))
        return
    edges = [  # (start, end along the edge, fixed coord, inward sign, axis)
        (bx0, bx1, by1, -1, "x"),  # north edge, buildings extend south
        (bx0, bx1, by0, +1, "x"),  # south edge
        (by0 + 20, by1 - 20, bx0, +1, "y"),  # west edge, between the north/south rows
        (by0 + 20, by1 - 20, bx1, -1, "y"),  # east edge
    ]
    for a0, a1, fixed, sign, axis in edges:
        a = a0
        while a1 - a > 6:
            width = min(rng.uniform(9, 28), a1 - a)
            if a1 - a - width < 6:
                width = a1 - a
            if rng.random() < 0.12:  # gap: a lot with a low wall, or nothing
                if rng.random() < 0.5:
                    wall_h = rng.uniform(0.8, 2.2)
                    lo = fixed + sign * rng.uniform(0.0, 1.0)
                    if axis == "x":
                        b.rect(a, a + width, lo, lo + sign * 0.3, 0, wall_h, WALL, _facade_palette(rng) * 0.8)
                    else:
                        b.rect(lo, lo + sign * 0.3, a, a + width, 0, wall_h, WALL, _facade_palette(rng) * 0.8)
                a += width
                continue
            setback = rng.uniform(0.0, 3.0)
            depth = rng.uniform(10, 19)
            if district > 0.6:
                height = rng.uniform(14, 34)
            elif district > 0.25:
                height = rng.uniform(8, 18)
            else:
                height = rng.uniform(5, 11)
            near = fixed + sign * setback
            far = near + sign * depth
            if axis == "x":
                _add_building(b, rng, a, a + width, near, far, height)
            else:
                _add_building(b, rng, near, far, a, a + width, height)
            a += width + (rng.uniform(0.0, 2.5) if rng.random() < 0.4 else 0.0)


def _add_tree(b: _SolidBuilder, rng, x, y) -> None:
    trunk_h = rng.uniform(2.2, 3.2)
    crown_r = rng.uniform(1.4, 3.0)
    green = np.array([0.18, 0.45, 0.22]) + rng.normal(0, 0.05, 3)  # BGR
    b.circle(x, y, rng.uniform(0.15, 0.28), 0.0, trunk_h + 0.5, TRUNK, (0.16, 0.26, 0.36))
    b.circle(x, y, crown_r, trunk_h, trunk_h + rng.uniform(2.5, 5.5), CROWN, np.clip(green, 0.05, 0.9),
             (rng.uniform(0, 1000), 0, 0, 0))


def _street_furniture(b: _SolidBuilder, rng, slots: list, a0, a1, c, axis: str) -> None:
    """Trees, poles and parking slots along both sides of one street segment."""
    for side in (-1, 1):
        lined = rng.random() < 0.65
        # trees in the sidewalk
        if lined:
            a = a0 + SIDEWALK_HALF + rng.uniform(2, 8)
            while a < a1 - SIDEWALK_HALF - 2:
                off = c + side * (ROAD_HALF + 1.8)
                _add_tree(b, rng, a, off) if axis == "x" else _add_tree(b, rng, off, a)
                a += rng.uniform(8, 16)
        # street lights and signs near the kerb
        a = a0 + SIDEWALK_HALF + rng.uniform(5, 20)
        while a < a1 - SIDEWALK_HALF - 2:
            off = c + side * (ROAD_HALF + 0.6)
            px, py = (a, off) if axis == "x" else (off, a)
            if rng.random() < 0.7:
                b.circle(px, py, 0.12, 0.0, 7.5, POLE, (0.45, 0.45, 0.47))
                b.circle(px, py, 0.35, 7.3, 7.7, LAMP, (0.75, 0.8, 0.85))
            else:
                b.circle(px, py, 0.05, 0.0, 2.2, POLE, (0.5, 0.5, 0.5))
                plate = np.array([0.2, 0.2, 0.8]) if rng.random() < 0.5 else np.array([0.75, 0.35, 0.15])
                b.circle(px, py, 0.35, 2.2, 2.9, POLE, plate)
            a += rng.uniform(22, 38)
        # parking slots in the strip
        a = a0 + SIDEWALK_HALF + 4
        while a < a1 - SIDEWALK_HALF - 4:
            off = c + side * (LANES * LANE_W + 1.25)
            slots.append((a, off, axis == "x") if axis == "x" else (off, a, False))
            a += 6.5


def make_town(seed: int, blocks: int = 6) -> Town:
    """A ``blocks x blocks`` grid town; the drive uses the streets inside the outer ring."""
    rng = np.random.default_rng(seed)
    inner = rng.uniform(48, 100, size=(2, blocks))
    inner[:, blocks // 2 - 1] = rng.uniform(46, 56, size=2)  # one small central block for early loops
    xs = np.concatenate([[0.0], np.cumsum(inner[0] + 2 * SIDEWALK_HALF)])
    ys = np.concatenate([[0.0], np.cumsum(inner[1] + 2 * SIDEWALK_HALF)])
    xs -= xs[len(xs) // 2]
    ys -= ys[len(ys) // 2]
    b = _SolidBuilder()
    slots: list = []
    for i in range(blocks):
        for j in range(blocks):
            bx0, bx1 = xs[i] + SIDEWALK_HALF, xs[i + 1] - SIDEWALK_HALF
            by0, by1 = ys[j] + SIDEWALK_HALF, ys[j + 1] - SIDEWALK_HALF
            center = 1.0 - max(abs(i + 0.5 - blocks / 2), abs(j + 0.5 - blocks / 2)) / (blocks / 2)
            _fill_block(b, rng, bx0, bx1, by0, by1, district=float(np.clip(center * 0.8 + rng.normal(0, 0.2), 0, 1)))
    for i, x in enumerate(xs):
        for j in range(blocks):
            _street_furniture(b, rng, slots, ys[j], ys[j + 1], x, "y")
    for j, y in enumerate(ys):
        for i in range(blocks):
            _street_furniture(b, rng, slots, xs[i], xs[i + 1], y, "x")
    sl = np.asarray(slots, dtype=np.float64).reshape(-1, 3)
    cars = ParkedCars(
        x=sl[:, 0].astype(np.float32),
        y=sl[:, 1].astype(np.float32),
        along_x=sl[:, 2].astype(bool),
        key=_hash_u32(np.arange(len(sl)), seed),
    )
    return Town(seed=seed, xs=xs, ys=ys, solids=b.build(), cars=cars, palette_seed=int(rng.integers(1 << 30)))


def parked_cars_at(town: Town, t: float) -> Solids:
    """The parked cars present at time ``t`` (s): each slot's car comes, goes and shifts per period."""
    c = town.cars
    window = np.floor((t + hash01(c.key, 7) * c.period) / c.period).astype(np.int64)
    present = hash01(c.key, window, 1) < c.occupancy
    idx = np.flatnonzero(present)
    if len(idx) == 0:
        return _empty_solids()
    key, win = c.key[idx], window[idx]
    length = 3.8 + 1.0 * hash01(key, win, 2)
    width = 1.65 + 0.3 * hash01(key, win, 3)
    height = 1.35 + 0.45 * hash01(key, win, 4)
    shift = (hash01(key, win, 5) - 0.5) * 1.6
    ax = c.along_x[idx]
    cx = c.x[idx] + np.where(ax, shift, 0)
    cy = c.y[idx] + np.where(ax, 0, shift)
    hx = np.where(ax, length, width) / 2
    hy = np.where(ax, width, length) / 2
    hue = hash01(key, win, 6)
    palette = np.array([[0.85, 0.85, 0.85], [0.1, 0.1, 0.1], [0.15, 0.15, 0.6], [0.55, 0.25, 0.1],
                        [0.5, 0.5, 0.5], [0.2, 0.45, 0.15], [0.7, 0.7, 0.72], [0.1, 0.6, 0.8]], dtype=np.float32)
    color = palette[(hue * len(palette)).astype(int) % len(palette)]
    n = len(idx)
    return Solids(
        kind=np.zeros(n, np.int8), x0=(cx - hx).astype(np.float32), x1=(cx + hx).astype(np.float32),
        y0=(cy - hy).astype(np.float32), y1=(cy + hy).astype(np.float32),
        zmin=np.zeros(n, np.float32), zmax=height.astype(np.float32), material=np.full(n, CAR, np.int8),
        color=color, style=np.zeros((n, 4), np.float32),
        intensity=(0.15 + 0.25 * hash01(key, win, 8)).astype(np.float32),
    )


def _empty_solids() -> Solids:
    z = np.zeros(0, np.float32)
    return Solids(np.zeros(0, np.int8), z, z, z, z, z, z, np.zeros(0, np.int8), np.zeros((0, 3), np.float32),
                  np.zeros((0, 4), np.float32), z)


# ----------------------------------------------------------------------------------------------
# the drive


def _block_loop(i: int, j: int, clockwise: bool) -> list[tuple[int, int]]:
    """Grid nodes of a lap around block (i, j), starting and ending at its NE corner."""
    ne, se, sw, nw = (i + 1, j + 1), (i + 1, j), (i, j), (i, j + 1)
    return [ne, se, sw, nw, ne] if clockwise else [ne, nw, sw, se, ne]


def plan_nodes(town: Town, rng: np.random.Generator, min_segments: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Node sequence of the drive and the lane (0 inner, 1 outer) of each segment."""
    n = len(town.xs) - 1
    bi = bj = n // 2 - 1
    nodes = _block_loop(bi, bj, True)
    lanes = [0] * 4
    nodes += _block_loop(bi, bj, True)[1:]
    lanes += [1] * 4
    # the east neighbour, clockwise from its NW corner (= our NE): drives our east street northwards
    nb = [(bi + 1, bj + 1), (bi + 2, bj + 1), (bi + 2, bj), (bi + 1, bj), (bi + 1, bj + 1)]
    nodes += nb[1:]
    lanes += [0] * 4
    nodes += _block_loop(bi, bj, False)[1:]
    lanes += [0, 1, 0, 1]
    lo, hi = 1, n - 1  # stay inside the outer ring of blocks
    lane = 0
    while len(nodes) - 1 < min_segments:
        (pi, pj), (ci, cj) = nodes[-2], nodes[-1]
        d = (ci - pi, cj - pj)
        options, weights = [], []
        for nd, wgt in ((d, 0.45), ((-d[1], d[0]), 0.275), ((d[1], -d[0]), 0.275)):
            ni, nj = ci + nd[0], cj + nd[1]
            if lo <= ni <= hi and lo <= nj <= hi:
                options.append((ni, nj))
                weights.append(wgt)
        w = np.asarray(weights) / sum(weights)
        nxt = options[int(rng.choice(len(options), p=w))]
        if nxt != (ci + d[0], cj + d[1]) and rng.random() < 0.4:
            lane = 1 - lane
        nodes.append(nxt)
        lanes.append(lane)
    return nodes, lanes


def _lane_polyline(town: Town, nodes, lanes) -> np.ndarray:
    """Dense (M, 2) polyline of the lane centre along the node sequence, with rounded corners."""
    pts = [np.array([town.xs[i], town.ys[j]]) for i, j in nodes]
    out: list[np.ndarray] = []
    for k in range(len(nodes) - 1):
        a, b = pts[k], pts[k + 1]
        d = (b - a) / np.linalg.norm(b - a)
        nrm = np.array([d[1], -d[0]])  # right-hand normal
        off = LANE_W * (0.5 + lanes[k])
        start = a + nrm * off
        end = b + nrm * off
        if k == 0:
            out.append(start[None])
        if k + 1 < len(nodes) - 1:
            c = pts[k + 2]
            d2 = (c - b) / np.linalg.norm(c - b)
            n2 = np.array([d2[1], -d2[0]])
            off2 = LANE_W * (0.5 + lanes[k + 1])
            cross = d[0] * d2[1] - d[1] * d2[0]
            if abs(cross) < 1e-6 and np.dot(d, d2) > 0:  # straight on, maybe changing lane
                if abs(off - off2) > 1e-6:
                    out.append((b - d * 15 + nrm * off)[None])
                    out.append((b + d * 15 + n2 * off2)[None])
                continue
            if abs(cross) < 1e-6:
                raise ValueError("the route makes a U-turn, which the planner never asks for")
            # corner: intersection of the two offset lines, filleted
            p1 = b + nrm * off
            p2 = b + n2 * off2
            # solve p1 + d*s = p2 + d2*u for the corner point
            A = np.array([d, -d2]).T
            s, _ = np.linalg.solve(A, p2 - p1)
            corner = p1 + d * s
            right_turn = cross < 0
            r = 7.0 if right_turn else 11.0
            t0 = corner - d * r
            t1 = corner + d2 * r
            turn_n = np.array([-d[1], d[0]]) if not right_turn else nrm
            centre = t0 + turn_n * r
            a0 = math.atan2(t0[1] - centre[1], t0[0] - centre[0])
            a1 = math.atan2(t1[1] - centre[1], t1[0] - centre[0])
            da = (a1 - a0 + math.pi) % (2 * math.pi) - math.pi
            ang = a0 + np.linspace(0, da, 12)
            out.append(centre + r * np.stack([np.cos(ang), np.sin(ang)], 1))
        else:
            out.append(end[None])
    poly = np.concatenate(out, 0)
    keep = np.concatenate([[True], np.linalg.norm(np.diff(poly, axis=0), axis=1) > 1e-6])
    return poly[keep]


@dataclass
class Drive:
    """Vehicle trajectory sampled at the sensor rate."""

    t: np.ndarray  # (N,) s
    xy: np.ndarray  # (N, 2) lane position (town frame)
    yaw: np.ndarray  # (N,) heading, rad, counter-clockwise from east


def plan_drive(town: Town, frames: int, rate_hz: float = 10.0, speed: float = 8.5, seed: int = 0) -> Drive:
    """A drive of ``frames`` samples at ``rate_hz`` along the planned route."""
    rng = np.random.default_rng(seed + 17)
    need = frames / rate_hz * speed + 200
    spacing = float(np.mean(np.diff(town.xs)))
    nodes, lanes = plan_nodes(town, rng, int(need / spacing) + 18)
    poly = _lane_polyline(town, nodes, lanes)
    # resample at 0.25 m
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    ss = np.arange(0, s[-1], 0.25)
    xy = np.stack([np.interp(ss, s, poly[:, 0]), np.interp(ss, s, poly[:, 1])], 1)
    heading = np.unwrap(np.arctan2(np.gradient(xy[:, 1]), np.gradient(xy[:, 0])))
    curvature = np.abs(np.gradient(heading)) / 0.25
    v = np.minimum(speed, np.sqrt(2.2 / np.maximum(curvature, 1e-6)))
    kernel = np.ones(81) / 81  # 20 m moving minimum-ish: smooth the braking
    v = np.minimum(v, np.convolve(np.pad(v, 40, mode="edge"), kernel, mode="valid"))
    v = np.maximum(v, 2.5)
    tt = np.concatenate([[0], np.cumsum(0.25 / v[:-1])])
    t = np.arange(frames) / rate_hz
    if t[-1] > tt[-1]:
        raise RuntimeError("route too short for the requested drive")
    sf = np.interp(t, tt, ss)
    fx, fy = np.interp(sf, ss, xy[:, 0]), np.interp(sf, ss, xy[:, 1])
    yaw = np.interp(sf, ss, heading)
    return Drive(t=t, xy=np.stack([fx, fy], 1), yaw=yaw)
