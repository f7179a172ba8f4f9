"""A place map from a KITTI-layout drive: LiDAR descriptors of its frames (``attnlink build-map``,
the demo)."""

from __future__ import annotations

import time

import numpy as np

from ..errors import AttnLinkError
from .place_map import PlaceMap, PlaceTable


def build_map_from_sequence(rec, seq, frames=None, index: str = "flat", batch: int = 16, progress: bool = True,
                            scan_voxel: float | None = None, views: int = 1, reverse_offset_m: float | None = None) -> tuple[PlaceMap, dict]:
    """(map, stats) of ``seq``'s frames (default: every frame with a scan) encoded by ``rec``
    (a :class:`~attnlink_ros.pipeline.PlaceRecognizer`) in LiDAR mode, each place from ``views``
    headings (retrieval/views.py; 1 = the camera's only; rear views taken ``reverse_offset_m`` to
    the left, default ``DEFAULT_REVERSE_OFFSET_M``); with ``scan_voxel`` each place's scan
    is stored too, downsampled to that voxel (m), for verified relocalisation."""
    from tqdm import tqdm

    if frames is None:
        frames = [i for i in range(len(seq)) if seq.scan_path(i).is_file()]
    frames = np.asarray(frames, dtype=np.int64)
    if len(frames) == 0:
        raise AttnLinkError(f"{seq.velodyne_dir}: no scans to map")
    calib = seq.calib
    if calib.image_size is None:
        raise AttnLinkError(f"{seq.dir}: no image to take the image size from")
    from .views import DEFAULT_REVERSE_OFFSET_M, view_offsets, view_yaws

    yaws = view_yaws(views)
    offsets = view_offsets(yaws, DEFAULT_REVERSE_OFFSET_M if reverse_offset_m is None else reverse_offset_m)
    backend = rec.backend("lidar")
    t0 = time.perf_counter()
    descs = []
    from .loops import ScanStore

    store = ScanStore(voxel=scan_voxel) if scan_voxel else None
    step = max(1, batch // len(yaws))  # places a batch: views x places stays near ``batch``
    for s in tqdm(range(0, len(frames), step), desc=f"map {seq.name} ({len(yaws)} views)", unit="batch", disable=not progress):
        scans = [seq.read_scan(i) for i in frames[s : s + step]]
        depth = np.concatenate([rec.view_depths(p, calib, yaws, offsets) for p in scans])  # place-major
        descs.append(backend.encode(depth=depth).reshape(len(scans), len(yaws), -1))
        if store is not None:
            for p in scans:
                store.add(p)
    elapsed = time.perf_counter() - t0
    poses = seq.poses[frames] if seq.has_poses else np.tile(np.eye(4), (len(frames), 1, 1))
    table = PlaceTable(poses, seq.times[frames], np.full(len(frames), seq.name), frames,
                       poses[:, [0, 2], 3] if seq.has_poses else np.zeros((len(frames), 2)))
    pm = PlaceMap.build(np.concatenate(descs), table, rec.fingerprint, index, extra={"source": str(seq.dir), "backend": backend.describe()},
                        view_yaws_deg=yaws, view_offsets_m=offsets)
    stats = {"places": int(len(frames)), "views": len(yaws), "frames_per_second": round(len(frames) / elapsed, 2),
             "seconds": round(elapsed, 2), "backend": backend.describe()}
    if store is not None:
        pm.attach_scans(store)
        stats["stored_scan_points"] = int(sum(len(x) for x in store.scans))
    return pm, stats
