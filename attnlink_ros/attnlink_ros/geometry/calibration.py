"""Camera and LiDAR calibration: KITTI odometry ``calib.txt`` and KITTI raw-drive files.

The one object the rest of the package uses is :class:`Calibration`: a 3x4 projection matrix of
the (rectified) camera whose image is used, and the 4x4 transform from the LiDAR frame into the
rectified reference camera frame. ``P @ T_cam_lidar`` maps a homogeneous LiDAR point to
homogeneous pixel coordinates; its third component ``w`` is the point's depth in metres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

# Keys of the raw-drive files that hold text, not numbers.
_TEXT_KEYS = {"calib_time"}


def parse_calib_file(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a ``KEY: v0 v1 ...`` calibration file into float64 arrays, one per key.

    Blank lines are skipped; a line without ``:`` or with a value that is not a number is an
    error naming the file and the line, except for the raw drives' ``calib_time`` text.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(path, "calibration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"calibration file unreadable ({exc})") from None
    values: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            raise DataError(path, f"line {lineno}: expected 'KEY: values', got {line[:40]!r}")
        key = key.strip()
        if key in _TEXT_KEYS:
            continue
        try:
            values[key] = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            raise DataError(path, f"line {lineno}: key {key!r} has a value that is not a number") from None
    return values


def _take(values: dict[str, np.ndarray], path: Path, key: str, count: int) -> np.ndarray:
    if key not in values:
        raise DataError(path, f"missing calibration key {key!r}")
    arr = values[key]
    if arr.size != count:
        raise DataError(path, f"calibration key {key!r} has {arr.size} values, expected {count}")
    return arr


def _homogeneous(mat34: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :] = mat34
    return out


@dataclass(frozen=True)
class Calibration:
    """Projection of LiDAR points into one camera image.

    Attributes:
        P: (3, 4) projection matrix of the rectified camera whose image is used (KITTI's P2).
        T_cam_lidar: (4, 4) LiDAR frame -> rectified reference camera frame (KITTI's Tr).
        image_size: (width, height) of the image when the calibration knows it, else None.
        extra: other matrices of the file (P0..P3 of an odometry calib), by key.
    """

    P: np.ndarray
    T_cam_lidar: np.ndarray
    image_size: tuple[int, int] | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        P = np.asarray(self.P, dtype=np.float64)
        T = np.asarray(self.T_cam_lidar, dtype=np.float64)
        if P.shape != (3, 4):
            raise DataError(None, f"projection matrix must be 3x4, got {P.shape}")
        if T.shape != (4, 4):
            raise DataError(None, f"LiDAR-to-camera transform must be 4x4, got {T.shape}")
        if not (np.all(np.isfinite(P)) and np.all(np.isfinite(T))):
            raise DataError(None, "calibration holds a non-finite value")
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "T_cam_lidar", T)

    @property
    def lidar_to_image(self) -> np.ndarray:
        """(3, 4) matrix taking homogeneous LiDAR points to homogeneous pixels (w = depth)."""
        return self.P @ self.T_cam_lidar

    @property
    def K(self) -> np.ndarray:
        """(3, 3) intrinsic matrix of the camera (left part of P)."""
        return self.P[:, :3].copy()

    @property
    def camera_center_lidar(self) -> np.ndarray:
        """(3,) optical centre of the camera of P, in the LiDAR frame."""
        M = self.lidar_to_image
        return -np.linalg.solve(M[:, :3], M[:, 3])

    @classmethod
    def from_kitti_odometry(cls, path: str | Path, camera: int = 2) -> "Calibration":
        """Reads an odometry ``calib.txt`` (P0-P3 and Tr) for camera ``camera`` (default P2)."""
        path = Path(path)
        values = parse_calib_file(path)
        mats = {f"P{i}": _take(values, path, f"P{i}", 12).reshape(3, 4) for i in range(4)}
        Tr = _homogeneous(_take(values, path, "Tr", 12).reshape(3, 4))
        return cls(P=mats[f"P{camera}"], T_cam_lidar=Tr, extra={**mats, "Tr": Tr})

    @classmethod
    def from_kitti_raw(cls, velo_to_cam: str | Path, cam_to_cam: str | Path, camera: int = 2) -> "Calibration":
        """Reads a raw drive's ``calib_velo_to_cam.txt`` and ``calib_cam_to_cam.txt``.

        The LiDAR-to-rectified-camera transform is ``R_rect_00 @ [R | T]``, the projection is
        ``P_rect_0{camera}`` and the image size is the rectified size ``S_rect_0{camera}``.
        """
        velo_to_cam, cam_to_cam = Path(velo_to_cam), Path(cam_to_cam)
        v = parse_calib_file(velo_to_cam)
        c = parse_calib_file(cam_to_cam)
        T_velo_cam = np.eye(4)
        T_velo_cam[:3, :3] = _take(v, velo_to_cam, "R", 9).reshape(3, 3)
        T_velo_cam[:3, 3] = _take(v, velo_to_cam, "T", 3)
        R_rect = np.eye(4)
        R_rect[:3, :3] = _take(c, cam_to_cam, "R_rect_00", 9).reshape(3, 3)
        P = _take(c, cam_to_cam, f"P_rect_0{camera}", 12).reshape(3, 4)
        size = _take(c, cam_to_cam, f"S_rect_0{camera}", 2)
        return cls(P=P, T_cam_lidar=R_rect @ T_velo_cam, image_size=(int(size[0]), int(size[1])))

    def with_image_size(self, width: int, height: int) -> "Calibration":
        return Calibration(self.P, self.T_cam_lidar, (int(width), int(height)), self.extra)


def format_kitti_odometry_calib(P: dict[str, np.ndarray], Tr: np.ndarray) -> str:
    """Text of an odometry ``calib.txt`` (P0-P3 then Tr, 12 values each, as KITTI writes it)."""
    lines = []
    for key in ("P0", "P1", "P2", "P3"):
        lines.append(f"{key}: " + " ".join(f"{x:.12e}" for x in np.asarray(P[key]).reshape(-1)[:12]))
    lines.append("Tr: " + " ".join(f"{x:.12e}" for x in np.asarray(Tr).reshape(-1)[:12]))
    return "\n".join(lines) + "\n"
