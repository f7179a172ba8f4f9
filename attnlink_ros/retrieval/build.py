"""A place map from a KITTI-layout drive: LiDAR descriptors of its frames (``attnlink build-map``,
the demo)."""

from __future__ import annotations

import time

import numpy as np

from ..errors import AttnLinkError
from .place_map import PlaceMap, PlaceTable


def build_map_from_sequence(rec, seq, frames=None, index: str = "flat", batch: int = 16, progress: bool = True) -> tuple[PlaceMap, dict]:
    """(map, stats) of ``seq``'s frames (default: every frame with a scan) encoded by ``rec``
    (a :class:`~attnlink_ros.pipeline.PlaceRecognizer`) in LiDAR mode."""
    from tqdm import tqdm

    from ..pipeline import Frame

    if frames is None:
        frames = [i for i in range(len(seq)) if seq.scan_path(i).is_file()]
    frames = np.asarray(frames, dtype=np.int64)
    if len(frames) == 0:
        raise AttnLinkError(f"{seq.velodyne_dir}: no scans to map")
    calib = seq.calib
    if calib.image_size is None:
        raise AttnLinkError(f"{seq.dir}: no image to take the image size from")
    backend = rec.backend("lidar")
    t0 = time.perf_counter()
    descs = []
    for s in tqdm(range(0, len(frames), batch), desc=f"map {seq.name}", unit="batch", disable=not progress):
        depth = np.concatenate([rec.prepare(Frame(float(seq.times[i]), calib, points=seq.read_scan(i)), "lidar")["depth"]
                                for i in frames[s : s + batch]])
        descs.append(backend.encode(depth=depth))
    elapsed = time.perf_counter() - t0
    poses = seq.poses[frames] if seq.has_poses else np.tile(np.eye(4), (len(frames), 1, 1))
    table = PlaceTable(poses, seq.times[frames], np.full(len(frames), seq.name), frames,
                       poses[:, [0, 2], 3] if seq.has_poses else np.zeros((len(frames), 2)))
    pm = PlaceMap.build(np.concatenate(descs), table, rec.fingerprint, index, extra={"source": str(seq.dir), "backend": backend.describe()})
    return pm, {"places": int(len(frames)), "frames_per_second": round(len(frames) / elapsed, 2), "backend": backend.describe()}
