"""Reader of the KITTI odometry layout, as the official archives unpack.

``ROOT/dataset/sequences/XX/{velodyne/NNNNNN.bin, image_2/NNNNNN.png, calib.txt, times.txt}`` and
``ROOT/dataset/poses/XX.txt``. ``ROOT`` may also be the ``dataset`` folder itself. The number of
frames of a sequence is the number of rows of ``times.txt``; scans and images may be a subset
(a slice of the data), and reading a frame that is not there is a clear error.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..geometry.calibration import Calibration
from ..geometry.poses import ground_xy, load_poses, load_times


def read_velodyne_bin(path: str | Path) -> np.ndarray:
    """(N, 4) float32 points (x, y, z, reflectance) of a KITTI ``.bin`` scan."""
    path = Path(path)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise DataError(path, "scan file not found") from None
    if size % 16:
        raise DataError(path, f"scan size {size} bytes is not a multiple of 16 (4 float32 per point): truncated or not a KITTI scan")
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    return pts


def write_velodyne_bin(path: str | Path, points: np.ndarray) -> None:
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 4:
        raise ValueError(f"points must be (N, 4), got {pts.shape}")
    pts.tofile(path)


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR image (as OpenCV reads it)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(path, "image unreadable (not a PNG/JPEG or corrupt)")
    return img


# A sequence folder that `attnlink synth` rendered holds this file (its seed and frame count): a
# town's drive is named like a real one ("00"), and real-image bookkeeping must not mistake it.
SYNTHETIC_MARKER = "synthetic.json"


def is_synthetic(root: str | Path, sequence: str) -> bool:
    """Whether ``root``'s ``sequence`` was rendered by ``attnlink synth`` (its marker file; towns
    rendered before session 21 have none)."""
    try:
        return (resolve_dataset_root(root) / "sequences" / str(sequence) / SYNTHETIC_MARKER).is_file()
    except DataError:  # no dataset layout: not a town
        return False


def resolve_dataset_root(root: str | Path) -> Path:
    """The ``dataset`` folder under ``root`` (or ``root`` itself when it is that folder)."""
    root = Path(root)
    if (root / "dataset" / "sequences").is_dir():
        return root / "dataset"
    if (root / "sequences").is_dir():
        return root
    raise DataError(root, "not a KITTI odometry folder (no dataset/sequences inside)")


def list_sequences(root: str | Path) -> list[str]:
    base = resolve_dataset_root(root)
    return sorted(p.name for p in (base / "sequences").iterdir() if p.is_dir())


class KittiSequence:
    """One sequence of a KITTI odometry folder.

    Args:
        root: folder holding ``dataset/`` (or the ``dataset`` folder itself).
        sequence: sequence name, e.g. ``"00"`` (an int is zero-padded).
        camera: which projection matrix the calibration uses (2 = left colour camera).
    """

    def __init__(self, root: str | Path, sequence: str | int, camera: int = 2) -> None:
        self.dataset = resolve_dataset_root(root)
        self.name = f"{int(sequence):02d}" if isinstance(sequence, int) or str(sequence).isdigit() else str(sequence)
        self.dir = self.dataset / "sequences" / self.name
        if not self.dir.is_dir():
            raise DataError(self.dir, "sequence folder not found")
        self.camera = camera
        self.image_dir = self.dir / f"image_{camera}"
        self.velodyne_dir = self.dir / "velodyne"
        self.poses_path = self.dataset / "poses" / f"{self.name}.txt"
        self.times  # validate now: every reader needs the frame count

    def __repr__(self) -> str:
        return f"KittiSequence({str(self.dataset)!r}, {self.name!r}, frames={len(self)})"

    def __len__(self) -> int:
        return len(self.times)

    @cached_property
    def times(self) -> np.ndarray:
        """(N,) seconds since the start of the sequence."""
        return load_times(self.dir / "times.txt")

    @cached_property
    def calib(self) -> Calibration:
        calib = Calibration.from_kitti_odometry(self.dir / "calib.txt", camera=self.camera)
        size = self.image_size
        return calib.with_image_size(*size) if size else calib

    @property
    def has_poses(self) -> bool:
        return self.poses_path.is_file()

    @cached_property
    def poses(self) -> np.ndarray:
        """(N, 4, 4) camera-0 -> world ground truth; a row-count mismatch is an error."""
        poses = load_poses(self.poses_path)
        if len(poses) != len(self):
            raise DataError(self.poses_path, f"{len(poses)} pose rows but {len(self)} frames in {self.dir / 'times.txt'}")
        return poses

    @property
    def xy(self) -> np.ndarray:
        """(N, 2) ground-plane positions (pose columns 3 and 11)."""
        return ground_xy(self.poses)

    def scan_path(self, i: int) -> Path:
        return self.velodyne_dir / f"{self._check(i):06d}.bin"

    def image_path(self, i: int) -> Path:
        return self.image_dir / f"{self._check(i):06d}.png"

    def _check(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise DataError(self.dir, f"frame {i} out of range (sequence has {len(self)} frames)")
        return i

    def read_scan(self, i: int) -> np.ndarray:
        """(N, 4) float32 x, y, z, reflectance of frame ``i`` in the LiDAR frame."""
        return read_velodyne_bin(self.scan_path(i))

    def read_image(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 BGR image of frame ``i``."""
        return read_image(self.image_path(i))

    def available_frames(self) -> np.ndarray:
        """Indices of frames whose scan and image are both present."""
        scans = {p.stem for p in self.velodyne_dir.glob("*.bin")} if self.velodyne_dir.is_dir() else set()
        images = {p.stem for p in self.image_dir.glob("*.png")} if self.image_dir.is_dir() else set()
        both = sorted(int(s) for s in scans & images if s.isdigit())
        return np.asarray([i for i in both if i < len(self)], dtype=np.int64)

    @cached_property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the sequence's images, read from the first image present."""
        import cv2

        if not self.image_dir.is_dir():
            return None
        first = next(iter(sorted(self.image_dir.glob("*.png"))), None)
        if first is None:
            return None
        img = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataError(first, "image unreadable (not a PNG or corrupt)")
        return int(img.shape[1]), int(img.shape[0])
