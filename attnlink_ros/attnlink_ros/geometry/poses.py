"""Ground-truth poses and timestamps in KITTI's odometry convention.

A KITTI pose row is the 3x4 matrix camera-0 -> world (the world being camera 0 of the first
frame): x right, y down, z forward. The ground plane is x-z, so a place's 2-D position is
columns 3 and 11 of the row; column 7 is height and must not be used as a ground coordinate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError


def _load_table(path: Path, what: str, columns: int | None) -> np.ndarray:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(path, f"{what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"{what} file unreadable ({exc})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = [float(v) for v in line.split()]
        except ValueError:
            raise DataError(path, f"line {lineno}: a value is not a number") from None
        if columns is not None and len(row) != columns:
            raise DataError(path, f"line {lineno}: {len(row)} values, expected {columns}")
        rows.append(row)
    if not rows:
        raise DataError(path, f"{what} file is empty")
    return np.asarray(rows, dtype=np.float64)


def load_poses(path: str | Path) -> np.ndarray:
    """(N, 4, 4) float64 camera-0 -> world poses from a KITTI poses file (12 values a row)."""
    table = _load_table(Path(path), "poses", 12)
    poses = np.tile(np.eye(4), (len(table), 1, 1))
    poses[:, :3, :] = table.reshape(-1, 3, 4)
    if not np.all(np.isfinite(poses)):
        raise DataError(path, "poses hold a non-finite value")
    return poses


def load_times(path: str | Path) -> np.ndarray:
    """(N,) float64 timestamps in seconds from a KITTI ``times.txt`` (one value a row)."""
    path = Path(path)
    times = _load_table(path, "times", 1)[:, 0]
    if np.any(np.diff(times) < 0):
        raise DataError(path, "timestamps go backwards")
    return times


def ground_xy(poses: np.ndarray) -> np.ndarray:
    """(N, 2) ground-plane positions: x and z of each camera centre (pose columns 3 and 11)."""
    poses = np.asarray(poses)
    if poses.ndim == 2 and poses.shape[1] == 12:
        return poses[:, [3, 11]].copy()
    return np.stack([poses[:, 0, 3], poses[:, 2, 3]], axis=1)


def path_length(xy: np.ndarray) -> float:
    """Length in metres of the polyline through the ground positions."""
    xy = np.asarray(xy, dtype=np.float64)
    return float(np.linalg.norm(np.diff(xy, axis=0), axis=1).sum()) if len(xy) > 1 else 0.0


def format_kitti_poses(poses: np.ndarray) -> str:
    """KITTI poses file text: one row of 12 values (3x4, row-major) per pose."""
    poses = np.asarray(poses)
    return "".join(" ".join(f"{x:.6e}" for x in p[:3, :].reshape(-1)) + "\n" for p in poses)


def format_kitti_times(times: np.ndarray) -> str:
    return "".join(f"{t:.6e}\n" for t in np.asarray(times))


def headings_deg(poses: np.ndarray) -> np.ndarray:
    """(N,) driving direction in degrees in the ground plane (x-z of KITTI's camera-0 poses: the
    camera's forward axis z projected onto it)."""
    poses = np.asarray(poses)
    return np.degrees(np.arctan2(poses[:, 2, 2], poses[:, 0, 2]))
