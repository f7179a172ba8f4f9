"""A camera's response: what a real camera does to the light the renderer computes.

Real images differ from the renderer's in ways no scene change shows: auto-exposure that over- or
under-shoots, a white balance that is slightly off, the maker's tone curve and saturation,
vignetting, motion and focus blur, signal-dependent noise, JPEG compression. A town draws its
camera's character once (:func:`camera_look`, per seed: every frame of a drive comes from one
camera); every frame draws its own exposure error, blur, noise and compression from its own
generator, so a town renders the same every time.

:func:`camera_response` works on any BGR uint8 image size: the renderer applies it to full
frames (``SynthConfig.camera_effects``), training may apply it to cached crops.
Cost on one core at 1241x376: about 20 ms (``bench/bench_synth.py --camera-effects``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class CameraLook:
    """One camera's character (a town's)."""

    gamma: float  # tone curve: output = input ** (1 / gamma_ratio), 1 = the renderer's
    saturation: float  # 1 = unchanged
    white_balance: tuple[float, float, float]  # BGR gains of the camera's white-balance error
    vignette: float  # brightness lost in the image corners (0 = none)
    exposure_sigma: float  # log-std of the auto-exposure error a frame
    blur_max_px: float  # largest defocus sigma / half the largest motion-blur length
    noise: float  # shot-noise scale (std at full scale, in 0-255 units)
    jpeg_quality: tuple[int, int]  # JPEG quality range a frame (high = mild)


def camera_look(seed: int) -> CameraLook:
    """The camera of town ``seed``."""
    r = np.random.default_rng([int(seed), 1717])
    wb = 1.0 + r.normal(0.0, 0.05, 3)
    q_lo = int(r.integers(55, 85))
    return CameraLook(gamma=float(r.uniform(0.8, 1.25)), saturation=float(r.uniform(0.65, 1.25)),
                      white_balance=tuple(float(v) for v in wb / wb.mean()), vignette=float(r.uniform(0.05, 0.45)),
                      exposure_sigma=float(r.uniform(0.08, 0.3)), blur_max_px=float(r.uniform(0.5, 2.0)),
                      noise=float(r.uniform(1.0, 4.0)), jpeg_quality=(q_lo, int(min(98, q_lo + r.integers(5, 20)))))


@lru_cache(maxsize=8)
def _vignette_mask(h: int, w: int, strength_permille: int) -> np.ndarray:
    """(h, w, 1) float32 gain, 1 in the centre, 1 - strength in the corners (cos^4-like)."""
    y = (np.arange(h, dtype=np.float32) - (h - 1) / 2) / ((h - 1) / 2 or 1)
    x = (np.arange(w, dtype=np.float32) - (w - 1) / 2) / ((w - 1) / 2 or 1)
    r2 = (x[None, :] ** 2 + y[:, None] ** 2) / 2.0  # 1 in the corners
    return (1.0 - strength_permille / 1000.0 * r2 * r2 * 0.5 - strength_permille / 1000.0 * r2 * 0.5)[..., None].astype(np.float32)


def camera_response(img: np.ndarray, look: CameraLook, rng: np.random.Generator) -> np.ndarray:
    """``img`` (H, W, 3) BGR uint8 as ``look``'s camera would record it; a new uint8 image."""
    import cv2

    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"camera_response needs an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    # exposure error, white balance and tone curve are per-channel point maps: one lookup table each
    exposure = float(np.exp(rng.normal(0.0, look.exposure_sigma)))
    wb = np.asarray(look.white_balance) * (1.0 + rng.normal(0.0, 0.015, 3))
    v = np.arange(256, dtype=np.float64) / 255.0
    lut = np.stack([np.clip((np.clip(v * exposure * g, 0, None) ** (1.0 / look.gamma)) * 255.0 + 0.5, 0, 255) for g in wb], axis=1)
    out = cv2.LUT(img, lut.astype(np.uint8).reshape(256, 1, 3))
    x = out.astype(np.float32)
    if abs(look.saturation - 1.0) > 1e-3:
        gray = x @ np.array([0.114, 0.587, 0.299], np.float32)  # BGR luma
        x = gray[..., None] + (x - gray[..., None]) * np.float32(look.saturation)
    x *= _vignette_mask(h, w, int(round(1000 * look.vignette)))
    # blur: motion along the image rows (the vehicle moves forward, the scene streams sideways) or focus
    b = float(rng.uniform(0.0, look.blur_max_px))
    if rng.random() < 0.35 and b >= 0.5:
        n = 2 * int(round(b)) + 1
        x = cv2.blur(x, (n, 1))
    elif b >= 0.3:
        x = cv2.GaussianBlur(x, (0, 0), b)
    # shot noise grows with the signal (sqrt), read noise does not; from a shifted noise table
    sigma = np.float32(look.noise * float(rng.uniform(0.5, 1.0)))
    noise = _noise_field(h, w, int(rng.integers(0, 1 << 16)))
    x += noise * (np.sqrt(np.maximum(x, 0.0) / np.float32(255.0)) * sigma + np.float32(0.5))
    out = np.clip(x, 0, 255).astype(np.uint8)
    q = int(rng.integers(look.jpeg_quality[0], look.jpeg_quality[1] + 1))
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else out


@lru_cache(maxsize=4)
def _noise_bank(h: int, w: int) -> np.ndarray:
    """A fixed (h + 64, w + 64, 3) standard-normal field; frames take shifted windows of it."""
    return np.random.default_rng(90210).standard_normal((h + 64, w + 64, 3)).astype(np.float32)


def _noise_field(h: int, w: int, key: int) -> np.ndarray:
    bank = _noise_bank(h, w)
    dy, dx = key % 64, (key // 64) % 64
    field = bank[dy:dy + h, dx:dx + w]
    return field[:, :, ::-1] if key & 1 else field  # channel order flipped on odd keys: more distinct fields
