"""FoV conversion: LiDAR points -> sparse depth aligned with the camera image.

Points are taken to the rectified camera by ``Tr`` and projected by ``P`` (KITTI's P2); the depth
of a point is the homogeneous ``w`` of its projection, points with ``w <= 0`` (behind the camera)
are dropped, and where several points land on one pixel the nearest wins. A pixel index is the
pixel whose centre is nearest (``floor(u + 0.5)``), so ``u = 0`` is the centre of column 0.

The same z-buffer makes the full-size map (``attnlink project``) and the network input, which is
the image rows that the LiDAR covers, cropped and resized to the model's input size: there the
points are projected straight into the small grid, so every filled cell holds the depth of a real
point (the nearest among those falling in it) and empty pixels are never averaged in.

Two implementations, one numpy (CPU) and one torch (CPU or CUDA), evaluate the same float32
operations in the same order, so they give the same map bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .calibration import Calibration

# Points nearer than this (metres of camera depth) are treated as behind the camera.
MIN_DEPTH = 1e-3


@dataclass(frozen=True)
class GridGeometry:
    """Where a depth grid sits in the full image: a crop, resized to ``out_h x out_w``.

    ``top``/``left`` are the crop's first row/column and ``crop_h``/``crop_w`` its size, in
    full-image pixels; ``image_h``/``image_w`` the full image size. The full-size map is the
    grid with no crop and no resize (:meth:`full`).
    """

    image_h: int
    image_w: int
    top: int
    left: int
    crop_h: int
    crop_w: int
    out_h: int
    out_w: int

    def __post_init__(self) -> None:
        if min(self.image_h, self.image_w, self.crop_h, self.crop_w, self.out_h, self.out_w) <= 0:
            raise ValueError(f"grid sizes must be positive: {self}")
        # a level grid (:func:`level_grid`) may reach past the image's edges (its cells there are
        # black); it must still see part of the image
        if self.top >= self.image_h or self.left >= self.image_w or self.top + self.crop_h <= 0 or self.left + self.crop_w <= 0:
            raise ValueError(f"crop lies outside the {self.image_w}x{self.image_h} image: {self}")

    @classmethod
    def full(cls, width: int, height: int) -> "GridGeometry":
        return cls(height, width, 0, 0, height, width, height, width)

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): output cells per full-image pixel."""
        return self.out_w / self.crop_w, self.out_h / self.crop_h

    def grid_matrix(self, lidar_to_image: np.ndarray) -> np.ndarray:
        """(3, 4) float32 matrix taking LiDAR points to ``(col_edge * w, row_edge * w, w)``.

        ``col_edge = (u + 0.5 - left) * sx`` is the continuous output column whose floor is the
        cell; folding the crop and scale into the matrix saves two passes over the points.
        """
        M = np.asarray(lidar_to_image, dtype=np.float64)
        sx, sy = self.scale
        G = np.empty((3, 4), dtype=np.float64)
        G[0] = sx * (M[0] + (0.5 - self.left) * M[2])
        G[1] = sy * (M[1] + (0.5 - self.top) * M[2])
        G[2] = M[2]
        return G.astype(np.float32)


def lidar_row_range(
    calib: Calibration,
    width: int,
    height: int,
    max_elevation_deg: float = 2.0,
    min_range_m: float = 3.0,
) -> int:
    """First image row that LiDAR returns can reach: the top of the network-input crop.

    The highest beam (``max_elevation_deg`` above the LiDAR's horizon) is swept over the azimuths
    that the camera sees, at ranges from ``min_range_m`` to infinity; the smallest row it
    projects to is returned (clipped to the image).
    """
    phi = np.radians(np.linspace(-90.0, 90.0, 721))
    e = math.radians(max_elevation_deg)
    dirs = np.stack([np.cos(e) * np.cos(phi), np.cos(e) * np.sin(phi), np.full_like(phi, np.sin(e))], axis=1)
    M = calib.lidar_to_image
    rows = []
    for r in (min_range_m, 2 * min_range_m, 4 * min_range_m, 10 * min_range_m, math.inf):
        hom = np.concatenate([dirs, np.zeros((len(dirs), 1))], 1) if math.isinf(r) else np.concatenate([dirs * r, np.ones((len(dirs), 1))], 1)
        uvw = hom @ M.T
        ok = uvw[:, 2] > MIN_DEPTH
        u = uvw[ok, 0] / uvw[ok, 2]
        v = uvw[ok, 1] / uvw[ok, 2]
        inside = (u >= -0.5) & (u < width - 0.5)
        if inside.any():
            rows.append(v[inside].min())
    top = math.floor(min(rows) + 0.5) if rows else 0
    return int(min(max(top, 0), height - 1))


def network_grid(
    calib: Calibration,
    width: int,
    height: int,
    out_h: int = 128,
    out_w: int = 512,
    top: int | None = None,
    max_elevation_deg: float = 2.0,
    min_range_m: float = 3.0,
) -> GridGeometry:
    """Geometry of the network input: rows ``top..height`` (LiDAR-covered), all columns."""
    if top is None:
        top = lidar_row_range(calib, width, height, max_elevation_deg, min_range_m)
    if not 0 <= top < height:
        raise ValueError(f"crop top {top} outside an image of height {height}")
    return GridGeometry(height, width, int(top), 0, height - int(top), width, out_h, out_w)


# ----------------------------------------------------------------------------------------------
# numpy path


def _as_xyz_rows(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, >=3), got {points.shape}")
    return np.ascontiguousarray(points[:, :3].T, dtype=np.float32)  # (3, N)


def project_to_grid(points: np.ndarray, G: np.ndarray, out_h: int, out_w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Projects points with a grid matrix; returns (flat cell index, depth, point index).

    Only points in front of the camera and inside the grid are returned. ``G`` comes from
    :meth:`GridGeometry.grid_matrix` (float32).
    """
    x, y, z = _as_xyz_rows(points)  # each (N,)
    g = [[np.float32(G[r, c]) for c in range(4)] for r in range(3)]
    w = x * g[2][0] + y * g[2][1] + z * g[2][2] + g[2][3]
    cw = x * g[0][0] + y * g[0][1] + z * g[0][2] + g[0][3]
    rw = x * g[1][0] + y * g[1][1] + z * g[1][2] + g[1][3]
    front = w > np.float32(MIN_DEPTH)
    keep = np.flatnonzero(front)
    w = w[keep]
    col = np.floor(cw[keep] / w)
    row = np.floor(rw[keep] / w)
    inside = (col >= 0) & (col < out_w) & (row >= 0) & (row < out_h)
    keep = keep[inside]
    flat = row[inside].astype(np.int64) * out_w + col[inside].astype(np.int64)
    return flat, w[inside], keep


def zbuffer(flat: np.ndarray, depth: np.ndarray, size: int) -> np.ndarray:
    """(size,) float32 nearest depth per cell, 0 where no point fell."""
    buf = np.full(size, np.inf, dtype=np.float32)
    np.minimum.at(buf, flat, depth)
    buf[np.isinf(buf)] = 0.0
    return buf


def sparse_depth(points: np.ndarray, calib: Calibration, grid: GridGeometry) -> np.ndarray:
    """(out_h, out_w) float32 sparse depth in metres on ``grid``, 0 where empty."""
    G = grid.grid_matrix(calib.lidar_to_image)
    flat, depth, _ = project_to_grid(points, G, grid.out_h, grid.out_w)
    return zbuffer(flat, depth, grid.out_h * grid.out_w).reshape(grid.out_h, grid.out_w)


def sparse_depth_full(points: np.ndarray, calib: Calibration, width: int, height: int) -> np.ndarray:
    """(height, width) float32 sparse depth of the full image (what ``attnlink project`` writes)."""
    return sparse_depth(points, calib, GridGeometry.full(width, height))


def crop_image(image: np.ndarray, grid: GridGeometry) -> np.ndarray:
    """The network-input image: the grid's crop of ``image`` resized to the grid (area filter)."""
    import cv2

    if image.shape[0] != grid.image_h or image.shape[1] != grid.image_w:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, grid expects {grid.image_w}x{grid.image_h}")
    t, l, b, r = grid.top, grid.left, grid.top + grid.crop_h, grid.left + grid.crop_w
    if t < 0 or l < 0 or b > grid.image_h or r > grid.image_w:  # a level grid past the image's edges: black there
        crop = np.zeros((grid.crop_h, grid.crop_w) + image.shape[2:], image.dtype)
        crop[max(-t, 0):grid.crop_h - max(b - grid.image_h, 0), max(-l, 0):grid.crop_w - max(r - grid.image_w, 0)] = \
            image[max(t, 0):min(b, grid.image_h), max(l, 0):min(r, grid.image_w)]
    else:
        crop = image[t:b, l:r]
    if crop.shape[:2] == (grid.out_h, grid.out_w):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (grid.out_w, grid.out_h), interpolation=cv2.INTER_AREA)


# ----------------------------------------------------------------------------------------------
# torch path


def sparse_depth_torch(points, calib: Calibration, grid: GridGeometry):
    """Torch twin of :func:`sparse_depth`: same float32 operations, runs on the points' device.

    ``points``: (N, >=3) tensor. Returns an (out_h, out_w) float32 tensor on the same device.
    """
    import torch

    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, >=3), got {tuple(points.shape)}")
    dev = points.device
    G = torch.from_numpy(grid.grid_matrix(calib.lidar_to_image)).to(dev)  # (3, 4) float32
    x, y, z = points[:, :3].to(torch.float32).T.contiguous()  # each (N,)
    w = x * G[2, 0] + y * G[2, 1] + z * G[2, 2] + G[2, 3]
    cw = x * G[0, 0] + y * G[0, 1] + z * G[0, 2] + G[0, 3]
    rw = x * G[1, 0] + y * G[1, 1] + z * G[1, 2] + G[1, 3]
    keep = w > MIN_DEPTH
    w = w[keep]
    col = torch.floor(cw[keep] / w)
    row = torch.floor(rw[keep] / w)
    inside = (col >= 0) & (col < grid.out_w) & (row >= 0) & (row < grid.out_h)
    flat = row[inside].to(torch.int64) * grid.out_w + col[inside].to(torch.int64)
    buf = torch.full((grid.out_h * grid.out_w,), float("inf"), dtype=torch.float32, device=dev)
    buf.scatter_reduce_(0, flat, w[inside], reduce="amin", include_self=True)
    buf[torch.isinf(buf)] = 0.0
    return buf.view(grid.out_h, grid.out_w)


# The reference field of view of a level grid: KITTI odometry's left colour camera cropped as
# :func:`network_grid` crops it (rows from the LiDAR's top beam down, every column), as angles in
# the LiDAR frame (x forward, y left, z up): elevation of the top and bottom edges, azimuth of the
# left and right edges, degrees. The synthetic towns use this camera, so their grid is unchanged.
KITTI_FOV_DEG = (4.771, -15.277, 40.213, -41.376)


def _ray_pixel(M: np.ndarray, elevation: float, azimuth: float) -> np.ndarray:
    """(u, v) of the LiDAR-frame direction (radians) at infinity through ``M`` (lidar_to_image)."""
    d = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation), 0.0])
    uvw = np.asarray(M, np.float64) @ d
    if uvw[2] <= MIN_DEPTH:
        raise ValueError(f"direction (elevation {math.degrees(elevation):.1f}, azimuth {math.degrees(azimuth):.1f} deg) is behind the camera")
    return uvw[:2] / uvw[2]


def level_grid(calib: Calibration, width: int, height: int, out_h: int, out_w: int, fov_deg=KITTI_FOV_DEG) -> GridGeometry:
    """The network grid that sees the same angles about the vehicle (the LiDAR frame) through any
    camera: its window's edges are where the LiDAR-frame directions ``fov_deg`` = (top elevation,
    bottom elevation, left azimuth, right azimuth) project, on the straight-ahead lines. A camera
    with another focal length, principal point or pitch (KITTI-360's looks 5 degrees down) then
    gives the network the same rows for the same elevations: a monocular depth network learns the
    ground's depth per row, so this is what lets it work through a camera it never trained on.
    The window may reach past the image (those cells are black)."""
    M = calib.lidar_to_image
    top, bottom, left, right = (math.radians(float(a)) for a in fov_deg)
    v0, v1 = _ray_pixel(M, top, 0.0)[1], _ray_pixel(M, bottom, 0.0)[1]
    u0, u1 = _ray_pixel(M, 0.0, left)[0], _ray_pixel(M, 0.0, right)[0]
    t, b, l, r = (int(round(x)) for x in (v0, v1, u0, u1))
    if b <= t or r <= l:
        raise ValueError(f"fov {fov_deg} gives an empty window ({l}..{r} x {t}..{b}) through this calibration")
    return GridGeometry(height, width, t, l, b - t, r - l, out_h, out_w)


def grid_fov_deg(calib: Calibration, grid: GridGeometry) -> tuple[float, float, float, float]:
    """The inverse of :func:`level_grid`: the LiDAR-frame angles of ``grid``'s window edges."""
    M = calib.lidar_to_image

    def solve(f, target):
        lo, hi = -1.4, 1.4  # radians; the pixel coordinate is monotonic in the angle over a camera's view
        flo = f(lo) - target
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            fm = f(mid) - target
            if (fm > 0) == (flo > 0):
                lo, flo = mid, fm
            else:
                hi = mid
        return math.degrees(0.5 * (lo + hi))

    return (solve(lambda e: _ray_pixel(M, e, 0.0)[1], grid.top), solve(lambda e: _ray_pixel(M, e, 0.0)[1], grid.top + grid.crop_h),
            solve(lambda a: _ray_pixel(M, 0.0, a)[0], grid.left), solve(lambda a: _ray_pixel(M, 0.0, a)[0], grid.left + grid.crop_w))


def model_grid(calib: Calibration, width: int, height: int, out_h: int, out_w: int, fov_deg=None, top: int | None = None) -> GridGeometry:
    """A model's grid: :func:`level_grid` when the model fixes a field of view (``input_fov_deg``),
    else :func:`network_grid` (rows from the LiDAR's top beam down, every column)."""
    if fov_deg is not None:
        return level_grid(calib, width, height, out_h, out_w, fov_deg)
    return network_grid(calib, width, height, out_h, out_w, top=top)


def network_grid_from_config(calib: Calibration, width: int, height: int, cfg) -> GridGeometry:
    """:func:`network_grid` with the fields of an :class:`attnlink_ros.config.InputConfig`."""
    return network_grid(calib, width, height, cfg.height, cfg.width, cfg.crop_top, cfg.max_elevation_deg, cfg.min_range_m)
