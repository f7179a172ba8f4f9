"""Training samples: augmentation of points (before projection) and images, held-out depth."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..data.cache import FrameCache
from ..geometry.projection import GridGeometry, sparse_depth


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 2.0  # yaw; pitch and roll get a quarter of it
    translation_m: float = 0.3
    brightness: float = 0.2  # additive, in [0, 1] image units
    contrast: float = 0.3  # multiplicative range 1 +- contrast
    keep_min: float = 0.25  # share of LiDAR points kept: uniform in [keep_min, 1]
    hide: float = 0.2  # share of the kept LiDAR pixels hidden from the input (completion target)
    noise: float = 0.0  # Gaussian pixel noise, sigma uniform in [0, noise], on half of the images
    blur: float = 0.0  # Gaussian blur (defocus, motion), sigma uniform in [0, blur] pixels of the input, on a quarter of the images
    camera: float = 0.0  # share of the images recorded through a random camera (data/camera.py: exposure, white balance, tone, vignetting, blur, noise, JPEG)
    # the depth branch's input made wrong the ways a camera's depth is wrong (session 12: its
    # descriptor hangs on the far band and on the global scale, `eval --depth --sensitivity`)
    depth_scale: float = 0.0  # every depth (input and completion target) times exp(U(-depth_scale, depth_scale))
    far_band_drop: float = 0.0  # share of the samples whose top third of the grid (the far band) loses its returns


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return (Rz @ Ry @ Rx).astype(np.float32)


def model_grid(cache: FrameCache, height: int, width: int) -> GridGeometry:
    g = cache.grid
    return GridGeometry(g.image_h, g.image_w, g.top, g.left, g.crop_h, g.crop_w, height, width)


def make_sample(cache: FrameCache, k: int, grid: GridGeometry, rng: np.random.Generator | None,
                aug: AugmentConfig = AugmentConfig(), rear: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb (3, h, w) float32 [0, 1], depth input (1, h, w), hidden depth target (1, h, w)).

    With ``rng`` None nothing is augmented or hidden (evaluation). ``rear``: the depth is the
    frame's rear view (the map's view 180; the image is still the camera's, unrelated to it)."""
    import cv2

    img = cache.images[k]
    if img.shape[:2] != (grid.out_h, grid.out_w):
        img = cv2.resize(np.asarray(img), (grid.out_w, grid.out_h), interpolation=cv2.INTER_AREA)
    if rng is not None and aug.camera > 0 and rng.random() < aug.camera:
        from ..data.camera import camera_look, camera_response

        img = camera_response(np.ascontiguousarray(img, dtype=np.uint8), camera_look(int(rng.integers(1 << 30))), rng)
    rgb = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    pts = cache.frame_points(k, rear)
    if rng is not None:
        c = 1 + rng.uniform(-aug.contrast, aug.contrast)
        b = rng.uniform(-aug.brightness, aug.brightness)
        mean = rgb.mean()
        rgb = np.clip((rgb - mean) * c + mean + b, 0, 1).astype(np.float32)
        if aug.blur > 0 and rng.random() < 0.25:
            sigma = rng.uniform(0.0, aug.blur)
            if sigma > 0.1:
                rgb = cv2.GaussianBlur(rgb.transpose(1, 2, 0), (0, 0), sigma).transpose(2, 0, 1).copy()
        if aug.noise > 0 and rng.random() < 0.5:
            rgb = np.clip(rgb + rng.normal(0.0, rng.uniform(0, aug.noise), rgb.shape), 0, 1).astype(np.float32)
        r = math.radians(aug.rotation_deg)
        R = _rotation(rng.uniform(-r, r), rng.uniform(-r, r) / 4, rng.uniform(-r, r) / 4)
        t = rng.uniform(-aug.translation_m, aug.translation_m, 3).astype(np.float32) * np.array([1, 1, 0.3], np.float32)
        pts = pts @ R.T + t
        keep = rng.random(len(pts)) < rng.uniform(aug.keep_min, 1.0)
        pts = pts[keep]
    depth = sparse_depth(pts, cache.calib, grid)[None]  # (1, h, w)
    target = np.zeros_like(depth)
    if rng is not None and aug.hide > 0:
        filled = np.flatnonzero(depth)
        hidden = filled[rng.random(len(filled)) < aug.hide]
        target.ravel()[hidden] = depth.ravel()[hidden]
        depth.ravel()[hidden] = 0
    if rng is not None and aug.depth_scale > 0:
        s = np.float32(math.exp(rng.uniform(-aug.depth_scale, aug.depth_scale)))
        depth *= s
        target *= s
    if rng is not None and aug.far_band_drop > 0 and rng.random() < aug.far_band_drop:
        band = depth.shape[1] // 3
        depth[:, :band] = 0
        target[:, :band] = 0
    return rgb, depth, target
