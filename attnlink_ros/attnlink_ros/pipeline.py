"""``PlaceRecognizer``: the one pipeline shared by the CLI, the evaluation tools, the benchmarks
and the ROS nodes. Frame in (image and/or LiDAR scan, calibration), descriptor and top-k places
out. ROS-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import AttnLinkError
from .geometry.calibration import Calibration
from .geometry.projection import GridGeometry, crop_image, model_grid, sparse_depth
from .inference.backends import Backend, make_backend
from .model.io import default_model_path, load_model
from .retrieval.place_map import PlaceMap


@dataclass
class Frame:
    """One synchronised sensor frame."""

    stamp: float
    calib: Calibration  # P of the camera, T_cam_lidar; image_size when known
    image: np.ndarray | None = None  # (H, W, 3) uint8 BGR
    points: np.ndarray | None = None  # (N, >=3) float32 in the LiDAR frame


@dataclass
class Result:
    mode: str
    descriptor: np.ndarray  # (D,)
    hits: list[dict] = field(default_factory=list)
    timings_ms: dict = field(default_factory=dict)
    registrations: int = 0  # GICP registrations run to verify the hits


def resolve_mode(requested: str, has_image: bool, has_points: bool) -> str:
    """The query mode a frame allows: fused falls back to the modality that is there."""
    if not has_image and not has_points:
        raise AttnLinkError("frame has neither an image nor a scan")
    if requested == "fused":
        return "fused" if has_image and has_points else ("image" if has_image else "lidar")
    if requested == "image" and not has_image:
        raise AttnLinkError("mode 'image' needs an image")
    if requested == "lidar" and not has_points:
        raise AttnLinkError("mode 'lidar' needs a LiDAR scan")
    return requested


def network_inputs(frame: Frame, grid: GridGeometry, mode: str) -> dict[str, np.ndarray]:
    """The network's inputs of a frame on ``grid``: rgb (1, 3, h, w) RGB in [0, 1] (mode image or
    fused) and/or depth (1, 1, h, w) sparse metres, 0 = no return (mode lidar or fused). The one
    place a frame becomes network input: the pipeline, training on real frames and the depth
    evaluation all call it."""
    out = {}
    if mode in ("image", "fused"):
        img = frame.image
        if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise AttnLinkError(f"image must be (H, W, 3) uint8 BGR, got {None if img is None else (img.shape, img.dtype)}")
        out["rgb"] = (crop_image(img, grid)[..., ::-1].astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    if mode in ("lidar", "fused"):
        out["depth"] = sparse_depth(frame.points, frame.calib, grid)[None, None]
    return out


def view_depth_grids(points: np.ndarray, calib: Calibration, grid: GridGeometry, yaws_deg, offsets=None) -> np.ndarray:
    """(K, 1, h, w) depth inputs on ``grid`` of a scan's heading views (retrieval/views.py): the
    scan turned by each yaw about the vehicle's vertical, seen from each of ``offsets``."""
    from .retrieval.views import rotate_scan, vertical_axis

    up = vertical_axis(calib.T_cam_lidar)
    offsets = [None] * len(yaws_deg) if offsets is None else offsets
    return np.stack([sparse_depth(rotate_scan(points, y, up, o), calib, grid)[None] for y, o in zip(yaws_deg, offsets)])


class PlaceRecognizer:
    def __init__(self, model_path: str | Path | None = None, place_map: PlaceMap | str | Path | None = None,
                 backend: str = "auto", crop_top: int | None = None, backend_options: dict | None = None,
                 image_domain: str = "auto") -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        model, self.meta = load_model(self.model_path)
        self.cfg = model.cfg
        model.set_image_domain(image_domain)  # refused here, not at the first image query, when the model has no choice
        self.image_domain = image_domain  # which pseudo-LiDAR network image queries run (model/mixture.py)
        del model
        self.backend_kind = backend
        self.backend_options = dict(backend_options or {})  # passed to the backend (e.g. onnxruntime threads=1)
        if crop_top is not None and self.cfg.input_fov_deg is not None:
            raise AttnLinkError(f"crop_top {crop_top} does not apply: this model sees a fixed field of view "
                                f"(input_fov_deg {list(self.cfg.input_fov_deg)}) through any camera")
        self.crop_top = crop_top
        self._backends: dict[str, Backend] = {}
        self._grids: dict[tuple, GridGeometry] = {}
        if place_map is not None and not isinstance(place_map, PlaceMap):
            place_map = PlaceMap.load(place_map, model_fingerprint=self.meta["fingerprint"], descriptor_dim=self.cfg.descriptor_dim)
        elif isinstance(place_map, PlaceMap):
            if place_map.manifest.get("model_fingerprint") != self.meta["fingerprint"]:
                raise AttnLinkError("map was built with another model: rebuild the map with this model")
        self.map = place_map

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def backend(self, mode: str) -> Backend:
        if mode not in self._backends:
            self._backends[mode] = make_backend(self.backend_kind, self.model_path, mode, image_domain=self.image_domain,
                                                **self.backend_options)
        return self._backends[mode]

    def grid(self, calib: Calibration, width: int, height: int) -> GridGeometry:
        key = (calib.lidar_to_image.tobytes(), width, height)
        if key not in self._grids:
            self._grids[key] = model_grid(calib, width, height, self.cfg.input_height, self.cfg.input_width,
                                          self.cfg.input_fov_deg, top=self.crop_top)
        return self._grids[key]

    def prepare(self, frame: Frame, mode: str) -> dict[str, np.ndarray]:
        """Network inputs of a frame: rgb (1, 3, h, w) in [0, 1] and/or depth (1, 1, h, w) metres."""
        if frame.image is not None:
            h, w = frame.image.shape[:2]
        elif frame.calib.image_size is not None:
            w, h = frame.calib.image_size
        else:
            raise AttnLinkError("a LiDAR-only frame needs the calibration's image size")
        return network_inputs(frame, self.grid(frame.calib, w, h), mode)

    def encode(self, frame: Frame, mode: str = "fused") -> Result:
        mode = resolve_mode(mode, frame.image is not None, frame.points is not None)
        t0 = time.perf_counter()
        inputs = self.prepare(frame, mode)
        t1 = time.perf_counter()
        desc = self.backend(mode).encode(**inputs)[0]
        t2 = time.perf_counter()
        return Result(mode, desc, timings_ms={"prepare": 1e3 * (t1 - t0), "encode": 1e3 * (t2 - t1)})

    def view_depths(self, points: np.ndarray, calib: Calibration, yaws_deg, offsets=None,
                    image_size: tuple[int, int] | None = None) -> np.ndarray:
        """(K, 1, h, w) network depth inputs of a scan's heading views (retrieval/views.py): the
        scan turned by each yaw about the vehicle's vertical, seen from each of ``offsets`` (K, 2)
        (default: the scan's origin). ``image_size`` (w, h): the camera image's, where the
        calibration does not know it."""
        size = image_size or calib.image_size
        if size is None:
            raise AttnLinkError("a LiDAR-only frame needs the calibration's image size")
        return view_depth_grids(points, calib, self.grid(calib, *size), yaws_deg, offsets)

    def encode_views(self, points: np.ndarray, calib: Calibration, yaws_deg, image_size: tuple[int, int] | None = None,
                     offsets=None) -> np.ndarray:
        """(K, D) LiDAR descriptors of a scan's heading views, one batch: a place of the map, or an
        online keyframe. View yaw 0 is the plain LiDAR descriptor."""
        return self.backend("lidar").encode(depth=self.view_depths(points, calib, yaws_deg, offsets, image_size))

    @property
    def can_verify(self) -> bool:
        """Whether the loaded map stores its places' scans (``build-map --scans``)."""
        return self.map is not None and self.map.scans is not None

    def query(self, frame: Frame, k: int = 5, mode: str = "fused", verify=None) -> Result:
        """Top-k places of ``frame``. With ``verify`` (a :class:`~attnlink_ros.retrieval.loops.LoopConfig`),
        a map with stored scans and a frame with a scan, the best hits are GICP-verified
        (:func:`~attnlink_ros.retrieval.loops.verify_hits`): the first verified one leads, with its
        ``relative_pose`` and the vehicle's metric ``vehicle_pose`` (camera-0 -> world, as the map's
        poses), on the assumption that the map was recorded with the same camera-LiDAR rig."""
        if self.map is None:
            raise AttnLinkError("no place map loaded")
        res = self.encode(frame, mode)
        t = time.perf_counter()
        res.hits = self.map.hits(res.descriptor[None], k)[0]
        res.timings_ms["search"] = 1e3 * (time.perf_counter() - t)
        if verify is not None:
            self.verify(res, frame, verify)
        return res

    def verify(self, res: Result, frame: Frame, cfg) -> Result:
        """GICP-verifies ``res``'s best hits (``query``'s second half; the node with
        ``verify_async`` runs ``verify_hits`` in a process of its own instead, retrieval/verifier.py,
        and applies the answer with ``apply_verification``). Does nothing without stored scans, a
        live scan or hits."""
        if not (self.can_verify and frame.points is not None and res.hits):
            return res
        from .retrieval.loops import verify_hits

        t = time.perf_counter()
        self.apply_verification(res, frame, *verify_hits(res.hits, frame.points, self.map.scans, cfg))
        res.timings_ms["verify"] = 1e3 * (time.perf_counter() - t)
        return res

    @staticmethod
    def apply_verification(res: Result, frame: Frame, hits: list[dict], registrations: int) -> Result:
        """Takes verify_hits' answer into ``res``: with a verified top hit, the vehicle's pose and
        its covariance in the world."""
        res.hits, res.registrations = hits, registrations
        top = hits[0]
        if top["verified"] and top.get("pose") is not None:  # a pose-less place (map saved without poses): no world pose
            top["vehicle_pose"] = vehicle_pose(np.asarray(top["pose"]), top["relative_pose"], frame.calib.T_cam_lidar)
            R = (np.asarray(top["pose"], np.float64) @ np.asarray(frame.calib.T_cam_lidar, np.float64))[:3, :3]
            top["vehicle_covariance"] = world_covariance(top["covariance"], R)
        return res


def vehicle_pose(T_world_place: np.ndarray, T_place_query_lidar: np.ndarray, T_cam_lidar: np.ndarray) -> np.ndarray:
    """The query's camera pose in the world from the place's camera pose and the registration of
    the query's scan onto the place's (both in the LiDAR frame of one rig)."""
    T_cam_lidar = np.asarray(T_cam_lidar, np.float64)
    return np.asarray(T_world_place, np.float64) @ T_cam_lidar @ np.asarray(T_place_query_lidar, np.float64) @ np.linalg.inv(T_cam_lidar)


def world_covariance(cov: np.ndarray, R: np.ndarray, min_sigma_m: float = 0.1, min_sigma_rad: float = 0.01) -> np.ndarray:
    """A registration's 6x6 covariance (x, y, z, rx, ry, rz in the place scan's frame) rotated into
    the world by ``R`` (world <- that frame), with floors on the standard deviations (GICP's
    Hessian is optimistic: it knows nothing of a wrong but self-consistent alignment)."""
    B = np.zeros((6, 6))
    B[:3, :3] = B[3:, 3:] = R
    C = B @ np.asarray(cov, np.float64) @ B.T
    C = 0.5 * (C + C.T)
    floor = np.array([min_sigma_m] * 3 + [min_sigma_rad] * 3) ** 2
    return C + np.diag(np.maximum(floor - np.diag(C), 0.0))
