"""Trajectory error by evo (PyPI ``evo``, the field's trajectory tool) and trajectory files.

APE: translation RMSE after an SE(3) Umeyama alignment of the whole trajectory (no scale; a
straight drive, where that alignment is degenerate, is aligned at its first pose instead).
RPE: mean translation error over every pair of poses 100 m of path apart (evo's all-pairs RPE),
in percent of those 100 m (the KITTI odometry benchmark's unit, at its shortest length).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

RPE_DELTA_M = 100.0


def trajectory(poses: np.ndarray, stamps: np.ndarray, name: str = ""):
    from evo.core.trajectory import PoseTrajectory3D

    return PoseTrajectory3D(poses_se3=[np.asarray(p, np.float64) for p in poses], timestamps=np.asarray(stamps, np.float64), meta={"name": name})


def errors(est: np.ndarray, ref: np.ndarray, stamps: np.ndarray) -> dict:
    """{ape_rmse_m, ape_max_m, rpe_percent} of ``est`` against ``ref`` ((N, 4, 4) each, same stamps)."""
    import copy

    from evo.core.metrics import PoseRelation, Unit
    from evo.main_ape import ape
    from evo.main_rpe import rpe

    from evo.core.geometry import GeometryException

    r, e = trajectory(ref, stamps, "truth"), trajectory(est, stamps, "estimate")
    try:
        a = ape(copy.deepcopy(r), copy.deepcopy(e), PoseRelation.translation_part, align=True)
        how = "se3"
    except GeometryException:  # a straight drive: Umeyama's alignment is degenerate; align the first poses
        a = ape(copy.deepcopy(r), copy.deepcopy(e), PoseRelation.translation_part, align_origin=True)
        how = "origin"
    out = {"ape_rmse_m": round(float(a.stats["rmse"]), 4), "ape_max_m": round(float(a.stats["max"]), 4), "alignment": how}
    path = float(np.sum(np.linalg.norm(np.diff(np.asarray(ref)[:, :3, 3], axis=0), axis=1)))
    if path > 1.2 * RPE_DELTA_M:
        p = rpe(copy.deepcopy(r), copy.deepcopy(e), PoseRelation.translation_part, delta=RPE_DELTA_M, delta_unit=Unit.meters,
                all_pairs=True)
        out["rpe_percent"] = round(100.0 * float(p.stats["mean"]) / RPE_DELTA_M, 4)
    else:
        out["rpe_percent"] = None  # the drive is too short for 100 m pairs
    return out


def write_trajectories(poses: np.ndarray, stamps: np.ndarray, stem: str | Path) -> dict:
    """Writes ``stem``.kitti.txt (KITTI poses: 12 numbers a line) and ``stem``.tum.txt (TUM:
    stamp x y z qx qy qz qw); returns both paths."""
    from evo.tools import file_interface

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    t = trajectory(poses, stamps)
    kitti, tum = stem.with_suffix(".kitti.txt"), stem.with_suffix(".tum.txt")
    file_interface.write_kitti_poses_file(str(kitti), t)
    file_interface.write_tum_trajectory_file(str(tum), t)
    return {"kitti": str(kitti), "tum": str(tum)}
