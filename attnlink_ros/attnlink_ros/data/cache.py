"""Training cache of a KITTI-layout sequence: network-input images and in-view LiDAR points.

Training reads every frame many times; decoding a 1241x376 PNG and a 2 MB scan each time would
dominate a CPU step. The cache keeps, per frame, the network-input crop of the image (uint8, at
the cache's input size) and the LiDAR points that can land in that crop (float16 x, y, z; kept
as points so that augmentation can rotate and shift them before projection). Files are plain
``.npy`` arrays and a JSON manifest (no pickle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..geometry.calibration import Calibration
from ..geometry.projection import GridGeometry, crop_image, model_grid, network_grid, project_to_grid
from .kitti import KittiSequence

CACHE_VERSION = 1


def _infov(points: np.ndarray, calib: Calibration, grid: GridGeometry, margin: float = 0.1) -> np.ndarray:
    """Points that project into the crop, widened by ``margin`` of its size (for augmentation)."""
    mh, mw = int(grid.out_h * margin), int(grid.out_w * margin)
    G = grid.grid_matrix(calib.lidar_to_image)
    G[0] += mw * G[2]  # shift so that cells -mw .. out_w + mw are kept
    G[1] += mh * G[2]
    _, _, idx = project_to_grid(points, G, grid.out_h + 2 * mh, grid.out_w + 2 * mw)
    return points[idx, :3]


def build_cache(root: str | Path, sequence: str, out: str | Path, height: int = 128, width: int = 512,
                progress: bool = True, frame_range: tuple[int, int] | None = None, threads: int = 0, fov_deg=None,
                rear_view: bool = False) -> Path:
    """Writes the cache of ``root``'s ``sequence`` into ``out`` (atomically: temp dir + rename),
    optionally of the frames ``frame_range[0] <= i < frame_range[1]`` only. Frames are read and
    projected by ``threads`` threads (0: one per CPU core, at most 8; PNG decoding and numpy
    release the GIL), written in order. ``rear_view``: also each scan's rear view's points (the
    map's view 180, from retrieval.views' reverse offset to the left: what a place map answers a
    query driving the other way with), for training on it."""
    import os
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    seq = KittiSequence(root, sequence)
    frames = seq.available_frames()
    if frame_range is not None:
        frames = frames[(frames >= frame_range[0]) & (frames < frame_range[1])]
    if len(frames) == 0:
        raise DataError(seq.dir, "no frame has both a scan and an image")
    W, H = seq.image_size
    grid = model_grid(seq.calib, W, H, height, width, fov_deg)  # fov_deg: a model's level grid (input_fov_deg)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(frames), height, width, 3))
    pts, offsets, rear_pts, rear_offsets = [], [0], [], [0]
    from ..retrieval.views import rotate_scan, vertical_axis, view_offsets

    up, rear_offset = vertical_axis(seq.calib.T_cam_lidar), view_offsets([180.0])[0]

    def load(i):
        scan = seq.read_scan(i)
        rear = _infov(rotate_scan(scan, 180.0, up, rear_offset), seq.calib, grid).astype(np.float16) if rear_view else None
        return crop_image(seq.read_image(i), grid)[..., ::-1], _infov(scan, seq.calib, grid).astype(np.float16), rear

    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        loaded = pool.map(load, frames) if threads > 1 else map(load, frames)
        for k, (img, p, rp) in enumerate(tqdm(loaded, total=len(frames), desc=f"cache {seq.dir.name}", disable=not progress)):
            images[k] = img  # RGB
            pts.append(p)
            offsets.append(offsets[-1] + len(p))
            if rp is not None:
                rear_pts.append(rp)
                rear_offsets.append(rear_offsets[-1] + len(rp))
    images.flush()
    del images
    np.save(tmp / "points.npy", np.concatenate(pts, 0))
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    if rear_view:
        np.save(tmp / "rear_points.npy", np.concatenate(rear_pts, 0))
        np.save(tmp / "rear_offsets.npy", np.asarray(rear_offsets, dtype=np.int64))
    np.save(tmp / "frames.npy", frames)
    np.save(tmp / "xy.npy", seq.xy[frames] if seq.has_poses else np.zeros((len(frames), 2)))
    np.save(tmp / "times.npy", seq.times[frames])
    manifest = {
        "version": CACHE_VERSION, "source": str(seq.dir), "sequence": seq.name, "frames": int(len(frames)),
        "input": [height, width], "image_size": [W, H], "crop_top": grid.top,
        "grid": [grid.top, grid.left, grid.crop_h, grid.crop_w],
        "lidar_to_image": seq.calib.lidar_to_image.tolist(), "has_poses": seq.has_poses,
    }
    if rear_view:
        manifest["rear_view"] = {"yaw_deg": 180.0, "offset_m": rear_offset.tolist()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@dataclass
class FrameCache:
    """A cache opened for reading (images memory-mapped)."""

    path: Path
    images: np.ndarray  # (N, h, w, 3) uint8 RGB
    points: np.ndarray  # (P, 3) float16
    offsets: np.ndarray  # (N + 1,)
    frames: np.ndarray  # (N,) frame index in the sequence
    xy: np.ndarray  # (N, 2)
    times: np.ndarray  # (N,)
    calib: Calibration
    grid: GridGeometry
    name: str
    rear_points: np.ndarray | None = None  # (P', 3) float16: the rear views' points (build_cache rear_view)
    rear_offsets: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | Path) -> "FrameCache":
        path = Path(path)
        try:
            man = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError:
            raise DataError(path, "not a frame cache (no manifest.json)") from None
        if man.get("version") != CACHE_VERSION:
            raise DataError(path, f"cache version {man.get('version')} != {CACHE_VERSION}; rebuild it")
        M = np.asarray(man["lidar_to_image"])
        calib = Calibration(P=M, T_cam_lidar=np.eye(4))
        W, H = man["image_size"]
        h, w = man["input"]
        top, left, ch, cw = man.get("grid") or (man["crop_top"], 0, H - man["crop_top"], W)  # caches before session 11: no "grid"
        grid = GridGeometry(H, W, top, left, ch, cw, h, w)
        load = lambda n: np.load(path / n, allow_pickle=False)  # noqa: E731
        return cls(path, np.load(path / "images.npy", mmap_mode="r", allow_pickle=False), load("points.npy"), load("offsets.npy"),
                   load("frames.npy"), load("xy.npy"), load("times.npy"), calib, grid, f"{Path(man['source']).parent.parent.parent.name}/{man['sequence']}",
                   *((load("rear_points.npy"), load("rear_offsets.npy")) if man.get("rear_view") else ()))

    def __len__(self) -> int:
        return len(self.frames)

    def frame_points(self, k: int, rear: bool = False) -> np.ndarray:
        """Frame ``k``'s points in the camera's view, or (``rear``) in its rear view's."""
        if rear:
            if self.rear_points is None:
                raise DataError(self.path, "this cache holds no rear views (build_cache rear_view=True)")
            return self.rear_points[self.rear_offsets[k] : self.rear_offsets[k + 1]].astype(np.float32)
        return self.points[self.offsets[k] : self.offsets[k + 1]].astype(np.float32)


def model_cache(root: str | Path, sequence: str, cache_dir: str | Path, cfg, progress: bool = True) -> FrameCache:
    """The frame cache of ``root``'s ``sequence`` on the grid of a model (``cfg``: its ModelConfig),
    built in ``cache_dir`` the first time. A model with a level grid (``input_fov_deg``) that crops
    this camera otherwise than network_grid gets its own cache (name suffix ``_level``)."""
    name = f"{Path(root).resolve().name}_{sequence}_{cfg.input_height}x{cfg.input_width}"
    if cfg.input_fov_deg is not None:
        seq = KittiSequence(root, sequence)
        W, H = seq.image_size
        if model_grid(seq.calib, W, H, cfg.input_height, cfg.input_width, cfg.input_fov_deg) != \
                network_grid(seq.calib, W, H, cfg.input_height, cfg.input_width):
            name += "_level"
    path = Path(cache_dir) / name
    if not (path / "manifest.json").is_file():
        build_cache(root, sequence, path, cfg.input_height, cfg.input_width, progress=progress, fov_deg=cfg.input_fov_deg)
    return FrameCache.open(path)
