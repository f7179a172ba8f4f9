"""Synthetic town drives in the KITTI odometry layout (``attnlink synth``).

The sensor rig is KITTI's: the left colour camera of sequence 00's calibration (P2, 1241x376)
and a 64-beam HDL-64E-like LiDAR placed by sequence 00's ``Tr``. Poses are written in KITTI's
camera-0 convention (the first frame's camera 0 is the origin; x right, y down, z forward), so
every reader, projection and protocol runs on a synthetic drive unchanged.

Appearance changes slowly with time (sun direction, brightness, colour balance, sensor noise) and
parked cars come and go, so two visits of one place 30 s or more apart differ in pixels while the
buildings, trees and poles, what a LiDAR map holds, stay.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..geometry.calibration import Calibration, format_kitti_odometry_calib
from ..geometry.poses import format_kitti_poses, format_kitti_times
from . import town as T
from .kitti import SYNTHETIC_MARKER
from .render import cast_columns, cull

# KITTI odometry sequence 00 calibration (the camera model the synthetic rig copies).
KITTI00_P = {
    "P0": [718.856, 0.0, 607.1928, 0.0, 0.0, 718.856, 185.2157, 0.0, 0.0, 0.0, 1.0, 0.0],
    "P1": [718.856, 0.0, 607.1928, -386.1448, 0.0, 718.856, 185.2157, 0.0, 0.0, 0.0, 1.0, 0.0],
    "P2": [718.856, 0.0, 607.1928, 45.38225, 0.0, 718.856, 185.2157, -0.1130887, 0.0, 0.0, 1.0, 0.003779761],
    "P3": [718.856, 0.0, 607.1928, -337.2877, 0.0, 718.856, 185.2157, 2.369057, 0.0, 0.0, 1.0, 0.004915215],
}
KITTI00_TR = [
    4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02,
    -7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02,
    9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01,
]
IMAGE_W, IMAGE_H = 1241, 376
CAMERA_HEIGHT = 1.65  # camera 0 above the ground, metres (KITTI's rig)
# HDL-64E: upper block +2.0 .. -8.33 deg, lower block -8.83 .. -24.8 deg
LIDAR_ELEVATIONS_DEG = np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.8, 32)])
LIDAR_MIN_RANGE = 2.5


def kitti00_calibration() -> Calibration:
    P = {k: np.asarray(v).reshape(3, 4) for k, v in KITTI00_P.items()}
    Tr = np.eye(4)
    Tr[:3, :] = np.asarray(KITTI00_TR).reshape(3, 4)
    return Calibration(P=P["P2"], T_cam_lidar=Tr, image_size=(IMAGE_W, IMAGE_H), extra={**P, "Tr": Tr})


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of a synthetic drive. Defaults give KITTI-like data."""

    frames: int = 600
    seed: int = 0
    rate_hz: float = 10.0
    speed_mps: float = 8.5
    blocks: int = 6
    azimuth_step_deg: float = 0.18
    max_range_m: float = 120.0
    camera_range_m: float = 260.0
    dropout: float = 0.02
    range_noise_m: float = 0.012
    # a real camera's response on top of the rendered light (data/camera.py): exposure error,
    # white balance, tone curve, saturation, vignetting, blur, shot noise, JPEG. Off by default:
    # the towns of the test set and of earlier models were rendered without it.
    camera_effects: bool = False
    # more of the scene's look, camera only (the scan is unchanged): clouds drifting over the sky
    # (a town's cover), parked cars in a continuous range of paint colours, cast shadows on the
    # ground. Off by default, as camera_effects.
    scene_variety: bool = False


@dataclass(frozen=True)
class Appearance:
    brightness: float
    gains: np.ndarray  # (3,) BGR
    sun: np.ndarray  # (3,) unit vector towards the sun (town frame)
    noise_sigma: float
    haze: float


def appearance_at(seed: int, t: float) -> Appearance:
    """Lighting and camera response at time ``t``: slow, seeded, never periodic within a drive."""
    ph = np.random.default_rng(seed + 991).uniform(0, 2 * math.pi, 8)
    brightness = 0.72 + 0.28 * math.sin(2 * math.pi * t / 97.0 + ph[0])
    gains = 1.0 + 0.13 * np.sin(2 * math.pi * t / np.array([71.0, 83.0, 113.0]) + ph[1:4])
    az = ph[4] + 2 * math.pi * t / 430.0
    el = math.radians(38 + 22 * math.sin(2 * math.pi * t / 157.0 + ph[5]))
    sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    noise = 2.0 + 2.5 * (0.5 + 0.5 * math.sin(2 * math.pi * t / 61.0 + ph[6]))
    haze = 0.5 + 0.5 * math.sin(2 * math.pi * t / 133.0 + ph[7])
    return Appearance(brightness, gains.astype(np.float32), sun.astype(np.float32), noise, haze)


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


_NOISE_CELL = 0.625  # metres per texel of the ground noise table (tiles every 640 m)


def _noise_table(seed: int, size: int = 1024) -> np.ndarray:
    """A smooth, tileable (size, size) float32 noise texture in [0, 1)."""
    import cv2

    rng = np.random.default_rng(seed + 4242)
    coarse = rng.random((size // 4, size // 4)).astype(np.float32)
    tiled = np.tile(coarse, (3, 3))
    big = cv2.resize(tiled, (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)[size : 2 * size, size : 2 * size]
    big -= big.min()
    return np.ascontiguousarray(big / (big.max() + 1e-6), dtype=np.float32)


def ground_at(town: T.Town, x: np.ndarray, y: np.ndarray, noise: np.ndarray | None = None):
    """Ground class (``T.G_*``) at town points (x, y), and their planar (3, n) BGR albedo when a
    noise table (:func:`_noise_table`) is given (else None)."""
    xs, ys = town.xs.astype(np.float32), town.ys.astype(np.float32)
    ix = np.clip(np.searchsorted(xs, x), 1, len(xs) - 1)
    iy = np.clip(np.searchsorted(ys, y), 1, len(ys) - 1)
    sx_lo, sx_hi = x - xs[ix - 1], x - xs[ix]
    sx = np.where(np.abs(sx_lo) < np.abs(sx_hi), sx_lo, sx_hi)  # signed offset from nearest N-S street
    sy_lo, sy_hi = y - ys[iy - 1], y - ys[iy]
    sy = np.where(np.abs(sy_lo) < np.abs(sy_hi), sy_lo, sy_hi)
    ax, ay = np.abs(sx), np.abs(sy)
    inside = (x > xs[0] - T.SIDEWALK_HALF) & (x < xs[-1] + T.SIDEWALK_HALF) & (y > ys[0] - T.SIDEWALK_HALF) & (y < ys[-1] + T.SIDEWALK_HALF)
    near = np.minimum(ax, ay)
    cls = np.full(x.shape, T.G_GRASS, np.int8)
    lots = T.hash01(np.arange(len(xs) + 1)[:, None], np.arange(len(ys) + 1)[None], town.seed, 3) < 0.35  # per block
    cls[lots[ix, iy]] = T.G_LOT
    cls[near < T.SIDEWALK_HALF] = T.G_SIDEWALK
    cls[(near >= T.ROAD_HALF) & (near < T.ROAD_HALF + T.KERB_W)] = T.G_KERB
    road = near < T.ROAD_HALF
    cls[road] = T.G_ROAD
    cls[~inside] = T.G_GRASS
    # markings: on a N-S street outside the intersection (ay beyond the sidewalk) and vice versa
    ns = road & (ax < T.ROAD_HALF) & (ay > T.SIDEWALK_HALF)
    ew = road & (ay < T.ROAD_HALF) & (ax > T.SIDEWALK_HALF)
    lane_w, park = T.LANE_W, T.LANES * T.LANE_W

    def lines(off, along):
        centre = (off > 0.08) & (off < 0.28)
        dashed = (np.abs(off - lane_w) < 0.08) & (_frac(along / 9.0) < 0.4)
        edge = np.abs(off - park) < 0.08
        return centre | dashed | edge

    mark = (ns & lines(ax, y)) | (ew & lines(ay, x))
    # zebra crossings at the approaches of each intersection
    zebra_ns = road & (ax < park) & (ay > T.SIDEWALK_HALF + 0.5) & (ay < T.SIDEWALK_HALF + 4.0) & (_frac(x / 1.1) < 0.5)
    zebra_ew = road & (ay < park) & (ax > T.SIDEWALK_HALF + 0.5) & (ax < T.SIDEWALK_HALF + 4.0) & (_frac(y / 1.1) < 0.5)
    mark |= (zebra_ns | zebra_ew) & inside
    cls[mark] = T.G_MARKING
    if noise is None:
        return cls, None
    size = noise.shape[0]
    inv = np.float32(1.0 / _NOISE_CELL)
    flat = (np.floor(y * inv).astype(np.int32) & (size - 1)) * size + (np.floor(x * inv).astype(np.int32) & (size - 1))
    n = noise.ravel().take(flat)
    base = np.array(
        [[0.27, 0.27, 0.28], [0.88, 0.88, 0.86], [0.56, 0.57, 0.58], [0.7, 0.7, 0.7], [0.20, 0.42, 0.30], [0.33, 0.33, 0.34]],
        dtype=np.float32,
    )
    side = cls == T.G_SIDEWALK
    joints = side & ((_frac(x / 1.5) < 0.04) | (_frac(y / 1.5) < 0.04))
    bright = np.float32(0.8) + np.float32(0.4) * n
    bright[joints] *= np.float32(0.75)
    albedo = np.ascontiguousarray(base.T).take(cls.astype(np.intp), axis=1)  # (3, n) planar
    albedo *= bright
    return cls, albedo


class SyntheticDrive:
    """A seeded town and a drive through it; renders any frame on demand."""

    def __init__(self, config: SynthConfig) -> None:
        self.config = config
        self.calib = kitti00_calibration()
        self.town = T.make_town(config.seed, config.blocks)
        self.drive = T.plan_drive(self.town, config.frames, config.rate_hz, config.speed_mps, config.seed)
        P2 = self.calib.P
        K = P2[:, :3]
        self.K = K
        self.cam2_center = -np.linalg.solve(K, P2[:, 3])  # (3,) in camera-0 coordinates
        self.Tr = self.calib.T_cam_lidar
        # camera rays: column a = (u - cx)/fx, row b = (v - cy)/fy (level camera)
        u = np.arange(IMAGE_W, dtype=np.float64)
        v = np.arange(IMAGE_H, dtype=np.float64)
        self._a = ((u - K[0, 2]) / K[0, 0]).astype(np.float32)
        self._b = ((v - K[1, 2]) / K[1, 1]).astype(np.float32)
        hn = np.sqrt(1 + self._a.astype(np.float64) ** 2)
        self._cam_hnorm = hn.astype(np.float32)
        self._cam_slopes = (-self._b[:, None] / hn[None, :]).astype(np.float32)  # (H, W)
        # LiDAR beams in the LiDAR frame
        az = np.radians(np.arange(180.0, -180.0, -config.azimuth_step_deg))
        el = np.radians(LIDAR_ELEVATIONS_DEG)
        self._lidar_dirs = np.stack(
            [np.cos(el)[:, None] * np.cos(az)[None], np.cos(el)[:, None] * np.sin(az)[None], np.repeat(np.sin(el)[:, None], len(az), 1)], -1
        ).astype(np.float32)  # (64, A, 3)
        self._lidar_level = np.stack([np.cos(az), np.sin(az), np.zeros_like(az)], -1)  # (A, 3)
        self._noise = _noise_table(config.seed)
        # sensor noise bank: a random window of it per frame (cheaper than fresh normals)
        self._sensor_noise = np.random.default_rng(config.seed + 77).standard_normal((IMAGE_H + 64, IMAGE_W + 64), dtype=np.float32)
        self.look = None
        cr = np.random.default_rng([config.seed, 2024])
        self._cloud_cover, self._cloud_drift = float(cr.uniform(0.1, 0.75)), float(cr.uniform(-3.0, 3.0))
        if config.camera_effects:
            from .camera import camera_look

            self.look = camera_look(config.seed)

    def __len__(self) -> int:
        return self.config.frames

    # -- poses ---------------------------------------------------------------------------------
    def T_world_cam0(self, i: int) -> np.ndarray:
        """(4, 4) camera 0 -> town frame at frame ``i``."""
        yaw = float(self.drive.yaw[i])
        fwd = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        down = np.array([0.0, 0.0, -1.0])
        Tm = np.eye(4)
        Tm[:3, 0], Tm[:3, 1], Tm[:3, 2] = right, down, fwd
        Tm[:3, 3] = [self.drive.xy[i, 0], self.drive.xy[i, 1], CAMERA_HEIGHT]
        return Tm

    def kitti_poses(self) -> np.ndarray:
        """(N, 4, 4) camera-0 -> world with the world at the first frame's camera 0 (KITTI)."""
        first_inv = np.linalg.inv(self.T_world_cam0(0))
        return np.stack([first_inv @ self.T_world_cam0(i) for i in range(len(self))])

    def _scene(self, t: float) -> T.Solids:
        return T.Solids.concat([self.town.solids, T.parked_cars_at(self.town, t)])

    # -- rendering -----------------------------------------------------------------------------
    def render(self, i: int, with_depth: bool = False):
        """(image BGR uint8 (H, W, 3), points float32 (N, 4)) of frame ``i`` [, camera depth (H, W)]."""
        t = float(self.drive.t[i])
        scene = self._scene(t)
        Twc = self.T_world_cam0(i)
        rng = np.random.default_rng([self.config.seed, i, 5])
        image, depth = self._render_camera(scene, Twc, t, rng)
        points = self._render_lidar(scene, Twc @ self.Tr, rng)
        if self.look is not None:  # its own generator: the scan is the same with or without it
            from .camera import camera_response

            image = camera_response(image, self.look, np.random.default_rng([self.config.seed, i, 7]))
        return (image, points, depth) if with_depth else (image, points)

    def _render_camera(self, scene: T.Solids, Twc: np.ndarray, t: float, rng) -> tuple[np.ndarray, np.ndarray]:
        # Colours are planar (3, n): numpy's inner loops then run over pixels, not over 3 channels.
        cfg = self.config
        app = appearance_at(cfg.seed, t)
        origin = (Twc @ np.append(self.cam2_center, 1.0))[:3]
        right2, fwd2 = Twc[:2, 0], Twc[:2, 2]
        dirs = self._a[:, None] * right2[None] + fwd2[None]  # (W, 2)
        dirs = (dirs / self._cam_hnorm[:, None]).astype(np.float32)
        dir_x, dir_y = np.ascontiguousarray(dirs[:, 0]), np.ascontiguousarray(dirs[:, 1])
        half_fov = math.atan(IMAGE_W / 2 / self.K[0, 0]) + 0.02
        idx = cull(scene, origin[0], origin[1], cfg.camera_range_m, fwd2, half_fov)
        sub = scene.take(idx)
        S = self._cam_slopes
        H, W = S.shape
        hits = cast_columns(sub, tuple(origin), dirs, S)
        Sf = S.ravel()
        obj = hits.obj.ravel()
        img = np.empty((3, H * W), np.float32)
        dist = np.zeros(H * W, np.float32)
        light = np.float32(app.brightness)
        sun = app.sun
        horizon = np.array([0.92, 0.85, 0.78], np.float32)[:, None]
        inv_haze = np.float32(-1.0 / (700 - 350 * app.haze))
        out_gain = (app.gains * np.float32(255.0))[:, None]
        fog_col = horizon * light

        def finish(p, colour, d):  # haze with distance and colour balance, written once
            fog = 1 - np.exp(d * inv_haze)
            colour += (fog_col - colour) * fog
            colour *= out_gain
            img[:, p] = colour
            dist[p] = d

        # solids
        p = np.flatnonzero(obj >= 0)
        c = p % W
        th = hits.t.ravel()[p]
        o = obj[p]
        x = np.float32(origin[0]) + th * dir_x[c]
        y = np.float32(origin[1]) + th * dir_y[c]
        z = np.float32(origin[2]) + th * Sf[p]
        face = hits.face.ravel()[p]
        nx = hits.nx.ravel()[p]
        ny = hits.ny.ravel()[p]
        col = np.ascontiguousarray(sub.color.T)[:, o]  # (3, n)
        mat = sub.material[o]
        bld = np.flatnonzero((mat == T.BUILDING) & (face == 0))
        if len(bld):  # facades: windows per floor, shop fronts, floor lines, a dark cornice
            ob = o[bld]
            ws, fh, wf, glass = (sub.style[:, k][ob] for k in range(4))
            along = np.where(np.abs(nx[bld]) > 0.5, y[bld], x[bld])
            zb = z[bld]
            fa, fz = along / ws, zb / fh
            uf, vf = fa - np.floor(fa), fz - np.floor(fz)
            top = sub.zmax[ob]
            win = (np.abs(uf - 0.5) < wf * 0.5) & (vf > 0.3) & (vf < 0.85) & (zb > fh) & (zb < top - 0.8)
            fs = along / (2 * ws)
            shop = (zb < fh - 0.5) & (zb > 0.6) & (np.abs(fs - np.floor(fs) - 0.5) < 0.36)
            shade = np.where((vf < 0.05) & (zb > fh), np.float32(0.78), np.float32(1.0))
            shade *= np.where(zb > top - 0.5, np.float32(0.7), np.float32(1.0))
            cb = col[:, bld] * shade
            g = np.flatnonzero(win | shop)
            lit = T.hash01(idx[ob[g]], np.floor(fa[g]).astype(np.int64), np.floor(fz[g]).astype(np.int64))
            cb[:, g] = np.array([1.05, 0.95, 0.85], np.float32)[:, None] * (glass[g] * (0.55 + 0.9 * lit))
            col[:, bld] = cb
        car = np.flatnonzero(mat == T.CAR)
        if len(car):  # windows band and wheels
            zc, top = z[car], sub.zmax[o[car]]
            cc = col[:, car]
            if cfg.scene_variety:  # paint: a continuous tint a car (fixed per car and period: its solid's key)
                key = idx[o[car]]
                cc *= np.stack([0.6 + 0.8 * T.hash01(key, k + 31) for k in range(3)]).astype(np.float32)
            cc[:, (zc > 0.55 * top + 0.2) & (zc < top - 0.08)] = 0.12
            cc[:, zc < 0.42] = 0.06
            col[:, car] = cc
        # per-pixel brightness: sun (Lambert), roofs, foliage texture
        nz = np.where(face == 1, np.float32(1), np.where(face == 2, np.float32(-1), np.float32(0)))
        bright = (0.5 + 0.6 * np.maximum(nx * sun[0] + ny * sun[1] + nz * sun[2], 0)) * light
        bright[face == 1] *= np.float32(0.65)
        leafy = np.flatnonzero((mat == T.CROWN) | (mat == T.HEDGE))
        if len(leafy):  # foliage texture, fixed in the world
            q = np.float32(1 / 0.35)
            n = T.hash01(np.floor(x[leafy] * q).astype(np.int64), np.floor(y[leafy] * q).astype(np.int64),
                         np.floor(z[leafy] * q).astype(np.int64))
            bright[leafy] *= 0.6 + 0.7 * n
        col *= bright
        finish(p, col, th)
        # ground
        below = (obj < 0) & (Sf < 0)
        p = np.flatnonzero(below)
        tg = np.float32(-origin[2]) / Sf[p]
        c = p % W
        gx = np.float32(origin[0]) + tg * dir_x[c]
        gy = np.float32(origin[1]) + tg * dir_y[c]
        _, albedo = ground_at(self.town, gx, gy, self._noise)
        albedo *= np.float32((0.55 + 0.6 * max(float(sun[2]), 0.0)) * light)
        if cfg.scene_variety and float(sun[2]) > 0.05:  # cast shadows of buildings, trees, cars, walls
            albedo *= np.where(self._in_shadow(scene, origin, sun, gx, gy), np.float32(0.55), np.float32(1.0))
        finish(p, albedo, tg)
        # sky
        p = np.flatnonzero((obj < 0) & ~below)
        zenith = np.array([0.85, 0.55, 0.35], np.float32)[:, None] * np.float32(0.8 + 0.4 * app.haze)
        rows = np.arange(H, dtype=np.float32)
        mix = np.clip((self.K[1, 2] - rows) / self.K[1, 1] * 2.5, 0, 1).astype(np.float32)[None]
        sky_rows = (horizon * (1 - mix) + zenith * mix) * np.float32(0.8 + 0.35 * light) * out_gain  # (3, H)
        img[:, p] = sky_rows[:, p // W]
        if cfg.scene_variety and len(p):
            img[:, p] = self._clouds(p, dir_x, dir_y, t, light, out_gain, img[:, p])
        # sensor noise, then interleave to an (H, W, 3) BGR image
        dy, dx = rng.integers(0, 64, 2)
        img += self._sensor_noise[dy : dy + H, dx : dx + W].reshape(1, -1) * np.float32(app.noise_sigma)
        np.clip(img, 0, 255, out=img)
        planes = img.astype(np.uint8).reshape(3, H, W)
        depth = dist.reshape(H, W) / self._cam_hnorm[None]  # 0 on the sky
        return np.ascontiguousarray(planes.transpose(1, 2, 0)), depth

    def _in_shadow(self, scene: T.Solids, origin, sun, gx: np.ndarray, gy: np.ndarray, reach: float = 90.0,
                   cell: float = 0.4) -> np.ndarray:
        """Whether ground points (gx, gy) lie in a solid's shadow: each solid's footprint (its
        bounding rectangle) swept from its base's shadow to its top's, rasterised on a ground grid
        around the camera (``reach`` m, ``cell`` m); points beyond the grid are lit."""
        import cv2

        n = int(2 * reach / cell)
        grid = np.zeros((n, n), np.uint8)
        ox, oy = float(origin[0]) - reach, float(origin[1]) - reach
        d = -np.asarray(sun[:2], np.float64) / float(sun[2])  # ground offset of a point 1 m up
        near = cull(scene, float(origin[0]), float(origin[1]), reach + 40.0)
        for j in near:
            x0, x1, y0, y1 = float(scene.x0[j]), float(scene.x1[j]), float(scene.y0[j]), float(scene.y1[j])
            foot = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            pts = np.concatenate([foot + d * float(scene.zmin[j]), foot + d * float(scene.zmax[j])])
            hull = cv2.convexHull(((pts - (ox, oy)) / cell).astype(np.int32))
            cv2.fillConvexPoly(grid, hull, 1)
        ix = ((gx - ox) / cell).astype(np.int64)
        iy = ((gy - oy) / cell).astype(np.int64)
        inside = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
        out = np.zeros(len(gx), bool)
        out[inside] = grid[iy[inside], ix[inside]] > 0
        return out

    def _clouds(self, p: np.ndarray, dir_x: np.ndarray, dir_y: np.ndarray, t: float, light, out_gain, sky: np.ndarray) -> np.ndarray:
        """Sky pixels ``p`` with clouds: the town's noise table seen on a dome, drifting with time;
        the town's cover decides how much of it is cloud."""
        W = IMAGE_W
        c, r = p % W, p // W
        az = np.arctan2(dir_y[c], dir_x[c]) * np.float32(1024 / np.pi)  # two table widths a turn: seamless at +-180 deg
        el = np.maximum((self.K[1, 2] - r) / self.K[1, 1], 0.02).astype(np.float32)  # tan of the elevation
        u = (az + np.float32(t * self._cloud_drift)).astype(np.int64) % 1024
        v = (np.float32(90.0) / (0.1 + el)).astype(np.int64) % 1024  # farther clouds crowd towards the horizon
        n = self._noise[v, u]
        cloud = np.clip((n - np.float32(1.0 - self._cloud_cover)) / np.float32(0.18), 0, 1)[None]
        white = np.array([0.93, 0.93, 0.95], np.float32)[:, None] * (np.float32(0.7) + np.float32(0.4) * light) * out_gain
        return sky * (1 - cloud) + white * (np.float32(0.75) + np.float32(0.25) * n[None]) * cloud

    def _render_lidar(self, scene: T.Solids, Twl: np.ndarray, rng) -> np.ndarray:
        cfg = self.config
        R = Twl[:3, :3].astype(np.float32)
        origin = Twl[:3, 3]
        idx = cull(scene, origin[0], origin[1], cfg.max_range_m + 10)
        sub = scene.take(idx)
        dW = self._lidar_dirs @ R.T  # (64, A, 3) world directions
        hn = np.hypot(dW[..., 0], dW[..., 1])
        slopes = (dW[..., 2] / hn).astype(np.float32)
        level = self._lidar_level @ R.T.astype(np.float64)
        cdirs = (level[:, :2] / np.linalg.norm(level[:, :2], axis=1, keepdims=True)).astype(np.float32)
        hits = cast_columns(sub, tuple(origin), cdirs, slopes)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ground = np.where(slopes < 0, -origin[2] / slopes, np.inf).astype(np.float32)
        has = hits.obj >= 0
        t = np.where(has, hits.t, t_ground)
        rng_m = t / hn
        keep = np.isfinite(rng_m) & (rng_m < cfg.max_range_m) & (rng_m > LIDAR_MIN_RANGE)
        keep &= rng.random(keep.shape) >= cfg.dropout
        f = np.flatnonzero(keep)
        A = keep.shape[1]
        rr = rng_m.ravel()[f] + rng.standard_normal(len(f), dtype=np.float32) * np.float32(cfg.range_noise_m)
        pts = self._lidar_dirs.reshape(-1, 3).take(f, axis=0)
        pts *= rr[:, None]
        inten = np.empty(len(f), np.float32)
        objf = hits.obj.ravel()[f]
        is_obj = objf >= 0
        inten[is_obj] = sub.intensity[objf[is_obj]]
        g = ~is_obj
        if g.any():
            fg = f[g]
            tg = t_ground.ravel()[fg]
            cg = fg % A
            gx = np.float32(origin[0]) + tg * cdirs[cg, 0]
            gy = np.float32(origin[1]) + tg * cdirs[cg, 1]
            cls, _ = ground_at(self.town, gx, gy)
            inten[g] = T.GROUND_INTENSITY[cls]
        inten = np.clip(inten * (0.85 + 0.3 * rng.random(len(f), dtype=np.float32)), 0.0, 0.99)
        return np.concatenate([pts, inten[:, None]], 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# writing a sequence

_WORKER: SyntheticDrive | None = None


def _init_worker(config: SynthConfig) -> None:
    global _WORKER
    _WORKER = SyntheticDrive(config)


def _write_frames(args: tuple[list[int], str, str]) -> int:
    import cv2

    frames, image_dir, velo_dir = args
    assert _WORKER is not None
    for i in frames:
        image, points = _WORKER.render(i)
        if not cv2.imwrite(os.path.join(image_dir, f"{i:06d}.png"), image):
            raise OSError(f"could not write {image_dir}/{i:06d}.png")
        points.tofile(os.path.join(velo_dir, f"{i:06d}.bin"))
    return len(frames)


def write_synthetic_sequence(
    out: str | Path,
    config: SynthConfig,
    sequence: str = "00",
    workers: int = 1,
    progress: bool = True,
    only=None,
) -> Path:
    """Renders a drive into ``out/dataset/sequences/<sequence>`` (+ ``poses/<sequence>.txt``).

    Returns the sequence folder. Frames are rendered by ``workers`` processes; the result does
    not depend on their number. ``only``: render just these frame indices (times and poses are
    written for the whole drive; readers see the others as missing frames).
    """
    from tqdm import tqdm

    out = Path(out)
    seq_dir = out / "dataset" / "sequences" / sequence
    image_dir, velo_dir = seq_dir / "image_2", seq_dir / "velodyne"
    image_dir.mkdir(parents=True, exist_ok=True)
    velo_dir.mkdir(parents=True, exist_ok=True)
    (out / "dataset" / "poses").mkdir(parents=True, exist_ok=True)
    drive = SyntheticDrive(config)
    calib = drive.calib
    (seq_dir / "calib.txt").write_text(format_kitti_odometry_calib({k: calib.extra[k] for k in ("P0", "P1", "P2", "P3")}, calib.extra["Tr"]))
    (seq_dir / "times.txt").write_text(format_kitti_times(drive.drive.t))
    (seq_dir / SYNTHETIC_MARKER).write_text(json.dumps({"generator": "attnlink synth", "seed": config.seed, "frames": config.frames}) + "\n")
    (out / "dataset" / "poses" / f"{sequence}.txt").write_text(format_kitti_poses(drive.kitti_poses()))
    todo = sorted({int(i) for i in only if 0 <= int(i) < config.frames}) if only is not None else list(range(config.frames))
    chunks = [todo[s : s + 8] for s in range(0, len(todo), 8)]
    jobs = [(ch, str(image_dir), str(velo_dir)) for ch in chunks]
    bar = tqdm(total=len(todo), desc=f"synth seed {config.seed}", unit="frame", disable=not progress)
    if workers <= 1:
        global _WORKER
        _WORKER = drive
        for job in jobs:
            bar.update(_write_frames(job))
    else:
        # workers from a fork server, not forks of this process: a caller with threads and
        # native state (rclpy, ONNX Runtime: a test session, a node) forked mid-flight crashed a
        # worker in garbage collection (seen once in the full test run, session 5)
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"), initializer=_init_worker,
                                 initargs=(config,)) as pool:
            for n in pool.map(_write_frames, jobs):
                bar.update(n)
    bar.close()
    return seq_dir
