"""KISS-SLAM as the peer: run in its own environment (``make kiss-slam`` -> ``.venv-kiss``) by
:mod:`.kiss_slam_peer`, its poses read back. When that environment is missing the peer is
skipped with the reason, and the table says so."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
PEER_SCRIPT = Path(__file__).with_name("kiss_slam_peer.py")


def peer_python(explicit: str | None = None) -> Path | None:
    """The interpreter with kiss-slam: ``explicit``, $ATTNLINK_KISS_SLAM_PYTHON, or ./.venv-kiss or
    the repository's .venv-kiss."""
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    for c in (os.environ.get("ATTNLINK_KISS_SLAM_PYTHON"), Path.cwd() / ".venv-kiss/bin/python", REPO / ".venv-kiss/bin/python"):
        if c and Path(c).is_file():
            return Path(c)
    return None


def run_kiss_slam(seq, frames: np.ndarray, python: str | None = None, timeout_s: float = 3600, odometry=None) -> dict:
    """{"poses": (N, 4, 4) LiDAR poses, "closures": int, "seconds": float} or {"skipped": reason}.
    ``odometry``: the OdometryConfig whose KISS-ICP settings the peer takes (default: attnlink slam's)."""
    from .odometry import OdometryConfig

    odo = odometry or OdometryConfig()
    py = peer_python(python)
    if py is None:
        return {"skipped": f"KISS-SLAM's environment not found ({python or 'make kiss-slam builds .venv-kiss'})"}
    frames = np.asarray(frames)
    if len(frames) and np.any(np.diff(frames) != 1):
        return {"skipped": "KISS-SLAM needs consecutive frames"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.npz"
        cmd = [str(py), str(PEER_SCRIPT), "--velodyne", str(seq.dir / "velodyne"), "--first", str(int(frames[0])),
               "--last", str(int(frames[-1]) + 1), "--out", str(out), "--voxel", str(odo.voxel_m), "--max-range", str(odo.max_range_m),
               "--max-points-per-voxel", str(odo.max_points_per_voxel)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"skipped": f"KISS-SLAM ran past {timeout_s:.0f} s"}
        if p.returncode != 0 or not out.is_file():
            return {"skipped": f"KISS-SLAM failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}"}
        with np.load(out) as z:
            return {"poses": z["poses"], "closures": int(len(z["closures"])), "seconds": float(z["seconds"])}
