"""A first real-image signal: which KITTI drive does a camera image come from?

The real frames in ``../shared/data/kitti`` are four drives of ten frames (00, 01, 02, 08): too
few for a revisit, enough for one sim-to-real probe. Every frame's LiDAR scan becomes a place of
one map (the drives far apart: each drive's poses shifted 10 km from the others'; every frame
with its own drive's calibration); every frame's camera image is an image-only query; Recall@1 is
the share of queries whose best place comes from the query's drive (chance: the share of the map
that drive holds, 0.25 for four equal drives). A probe, not a bar: no choice may be made on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import AttnLinkError

DRIVE_SPACING_M = 10_000.0


def kitti_drives(root: str | Path) -> list[str]:
    """Sequences of ``root`` that hold both scans and images."""
    seqs = Path(root) / "dataset" / "sequences"
    out = []
    for d in sorted(seqs.iterdir()) if seqs.is_dir() else []:
        if any((d / "velodyne").glob("*.bin")) and any((d / "image_2").glob("*.png")):
            out.append(d.name)
    return out


def drive_probe(rec, root: str | Path, sequences=None, views: int = 2, k: int = 5, mode: str = "image") -> dict:
    """"Which drive" Recall@1 of ``rec`` (a ``PlaceRecognizer``) over the real drives, queries of
    ``mode`` (image: the probe; lidar or fused: the map's own modality, a check of the probe)."""
    from ..data.kitti import KittiSequence
    from ..pipeline import Frame
    from ..retrieval.place_map import PlaceMap, PlaceTable
    from ..retrieval.views import DEFAULT_REVERSE_OFFSET_M, view_offsets, view_yaws

    sequences = list(sequences or kitti_drives(root))
    if len(sequences) < 2:
        raise AttnLinkError(f"{root}: the probe needs two or more drives with scans and images, found {sequences}")
    yaws = view_yaws(views)
    offsets = view_offsets(yaws, DEFAULT_REVERSE_OFFSET_M)
    descs, queries, poses, stamps, names, frames, drive = [], [], [], [], [], [], []
    for d, name in enumerate(sequences):
        seq = KittiSequence(root, name)
        calib = seq.calib.with_image_size(*seq.image_size)
        for i in seq.available_frames():
            pts, img = seq.read_scan(i), seq.read_image(i)
            descs.append(rec.encode_views(pts, calib, yaws, offsets=offsets))
            queries.append(rec.encode(Frame(float(seq.times[i]), calib, image=img if mode != "lidar" else None,
                                            points=pts if mode != "image" else None), mode).descriptor)
            T = (seq.poses[i] if seq.has_poses else np.eye(4)).copy()
            T[0, 3] += d * DRIVE_SPACING_M  # the drives far apart: never within any radius of each other
            poses.append(T)
            stamps.append(float(seq.times[i]))
            names.append(name)
            frames.append(int(i))
            drive.append(d)
    poses_a = np.stack(poses)
    table = PlaceTable(poses_a, np.asarray(stamps), np.asarray(names), np.asarray(frames, np.int64), poses_a[:, [0, 2], 3])
    pm = PlaceMap.build(np.stack(descs), table, rec.fingerprint, view_yaws_deg=yaws, view_offsets_m=offsets)
    scores, idx, view = pm.search_views(np.stack(queries), k)
    drive = np.asarray(drive)
    top = idx[:, 0]
    ok = drive[top] == drive
    counts = np.bincount(drive, minlength=len(sequences))
    return {
        "drives": sequences, "frames": int(len(drive)), "views": int(views), "query_mode": mode,
        "recall@1": round(float(ok.mean()), 4),
        "chance": round(float(np.sum((counts / counts.sum()) ** 2)), 4),
        "own_frame_top1": round(float(np.mean(top == np.arange(len(drive)))), 4),
        "recall@1_by_drive": {s: round(float(ok[drive == d].mean()), 4) for d, s in enumerate(sequences)},
        "top1_drive_counts": {s: int(np.sum(drive[top] == d)) for d, s in enumerate(sequences)},
        "top1_rear_view_share": round(float(np.mean(pm.view_yaws[view[:, 0]] != 0.0)), 4),
        "model_fingerprint": rec.fingerprint,
    }
