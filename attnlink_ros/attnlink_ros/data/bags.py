"""Sensor records from KITTI folders and rosbags, and KITTI sequences written as bags (no rclpy).

A :class:`Record` is one camera image (BGR uint8), camera calibration (K, P, size) or LiDAR scan
((N, 4) x, y, z, intensity) with its stamp in seconds. Sources:

* :func:`kitti_records`: a KITTI-layout sequence, stamps from ``times.txt`` (+ ``stamp_offset``).
* :func:`bag_records`: ROS 1 bags (as kitti2bag writes them: ``/kitti/velo/pointcloud`` with field
  ``i``, ``/kitti/camera_color_left/image_raw`` and ``.../camera_info``) and ROS 2 bags (sqlite3
  or mcap, e.g. kitti2mcap's ``/kitti/velodyne_points`` with ``intensity``) through ``rosbags``.
  A topic not given is found by message type when the bag has exactly one of that type.

:func:`write_bag` writes records as a ROS 2 bag (mcap by default) with kitti2bag's topic names,
so that the same defaults read both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import DataError

DEFAULT_TOPICS = {
    "image": "/kitti/camera_color_left/image_raw",
    "camera_info": "/kitti/camera_color_left/camera_info",
    "points": "/kitti/velo/pointcloud",
}
MSGTYPES = {"image": "sensor_msgs/msg/Image", "camera_info": "sensor_msgs/msg/CameraInfo", "points": "sensor_msgs/msg/PointCloud2"}
FRAME_IDS = {"image": "camera_color_left", "camera_info": "camera_color_left", "points": "velo_link"}


@dataclass
class Record:
    kind: str  # "image" | "camera_info" | "points"
    stamp: float  # seconds
    data: object  # (H, W, 3) uint8 BGR | {"width", "height", "K" (3x3), "P" (3x4)} | (N, 4) float32
    frame_id: str = ""


def camera_info_dict(calib) -> dict:
    w, h = calib.image_size
    return {"width": int(w), "height": int(h), "K": np.asarray(calib.K, float), "P": np.asarray(calib.P, float)}


def kitti_records(root, sequence: str, frames: Iterable[int] | None = None, stamp_offset: float = 0.0,
                  with_image: bool = True, with_points: bool = True) -> Iterator[Record]:
    """Per frame, in time order: camera_info, points, image (all stamped with the frame's time)."""
    from .kitti import KittiSequence

    seq = KittiSequence(root, sequence)
    idx = list(frames) if frames is not None else [int(i) for i in seq.available_frames()]
    calib = seq.calib
    if calib.image_size is None and with_image:
        calib = calib.with_image_size(*seq.image_size)
    info = camera_info_dict(calib) if calib.image_size is not None else None
    for i in idx:
        t = float(seq.times[i]) + stamp_offset
        if info is not None:
            yield Record("camera_info", t, info, FRAME_IDS["camera_info"])
        if with_points:
            yield Record("points", t, seq.read_scan(i), FRAME_IDS["points"])
        if with_image:
            yield Record("image", t, seq.read_image(i), FRAME_IDS["image"])


def _resolve_topics(connections, topics: dict | None, path) -> dict[str, str]:
    """kind -> topic: the given one, else the default if present, else the only one of its type."""
    by_topic = {c.topic: c.msgtype for c in connections}
    out = {}
    for kind, msgtype in MSGTYPES.items():
        want = (topics or {}).get(kind)
        if want:
            if want not in by_topic:
                raise DataError(path, f"topic {want} not in the bag (topics: {', '.join(sorted(by_topic))})")
            out[kind] = want
            continue
        if DEFAULT_TOPICS[kind] in by_topic:
            out[kind] = DEFAULT_TOPICS[kind]
            continue
        of_type = sorted(t for t, m in by_topic.items() if m == msgtype)
        if len(of_type) == 1:
            out[kind] = of_type[0]
        elif len(of_type) > 1:
            raise DataError(path, f"several {msgtype} topics ({', '.join(of_type)}): name the {kind} topic")
    if "image" not in out and "points" not in out:
        raise DataError(path, f"no image or point-cloud topic in the bag (topics: {', '.join(sorted(by_topic)) or 'none'})")
    return out


def bag_records(path, topics: dict | None = None) -> Iterator[Record]:
    """Records of a ROS 1 or ROS 2 bag in bag-time order, stamped with their header stamps."""
    from rosbags.highlevel import AnyReader

    from ..ros.conversions import MessageError, image_to_bgr, pointcloud2_to_xyzi

    path = Path(path)
    if not path.exists():
        raise DataError(path, "bag not found")
    try:
        reader = AnyReader([path])
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types for unreadable bags
        raise DataError(path, f"not a readable ROS 1 or ROS 2 bag ({exc})") from None
    try:
        chosen = _resolve_topics(reader.connections, topics, path)
        kind_of = {t: k for k, t in chosen.items()}
        conns = [c for c in reader.connections if c.topic in kind_of]
        for conn, _, raw in reader.messages(connections=conns):
            kind = kind_of[conn.topic]
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            try:
                if kind == "image":
                    data = image_to_bgr(msg)
                elif kind == "points":
                    data = pointcloud2_to_xyzi(msg)
                else:
                    P = np.asarray(getattr(msg, "p", None) if hasattr(msg, "p") else msg.P, float).reshape(3, 4)
                    K = np.asarray(getattr(msg, "k", None) if hasattr(msg, "k") else msg.K, float).reshape(3, 3)
                    data = {"width": int(msg.width), "height": int(msg.height), "K": K, "P": P}
            except MessageError as exc:
                raise DataError(path, f"{conn.topic} at {stamp:.3f}: {exc}") from None
            yield Record(kind, stamp, data, msg.header.frame_id)
    finally:
        reader.close()


def _ros2_message(ts, rec: Record):
    """A rosbags ROS 2 (Jazzy) message of a record."""
    T = ts.types
    sec = int(np.floor(rec.stamp))
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((rec.stamp - sec) * 1e9)) % 1_000_000_000),
                                      frame_id=rec.frame_id)
    if rec.kind == "image":
        img = np.ascontiguousarray(rec.data, dtype=np.uint8)
        return T[MSGTYPES["image"]](header=header, height=img.shape[0], width=img.shape[1], encoding="bgr8", is_bigendian=0,
                                    step=img.shape[1] * 3, data=img.reshape(-1))
    if rec.kind == "points":
        pts = np.zeros((len(rec.data), 4), np.float32)
        pts[:, : min(4, rec.data.shape[1])] = rec.data[:, :4]
        PF = T["sensor_msgs/msg/PointField"]
        fields = [PF(name=n, offset=4 * k, datatype=7, count=1) for k, n in enumerate(("x", "y", "z", "intensity"))]
        return T[MSGTYPES["points"]](header=header, height=1, width=len(pts), fields=fields, is_bigendian=False, point_step=16,
                                     row_step=16 * len(pts), data=pts.view(np.uint8).reshape(-1), is_dense=True)
    d = rec.data
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return T[MSGTYPES["camera_info"]](header=header, height=d["height"], width=d["width"], distortion_model="plumb_bob",
                                      d=np.zeros(5), k=np.asarray(d["K"], float).reshape(-1), r=np.eye(3).reshape(-1),
                                      p=np.asarray(d["P"], float).reshape(-1), binning_x=0, binning_y=0, roi=roi)


def write_bag(records: Iterable[Record], out, topics: dict | None = None, storage: str = "mcap") -> dict:
    """Writes records as a ROS 2 bag (``storage`` mcap or sqlite3); returns message counts per topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    out = Path(out)
    if out.exists():
        raise DataError(out, "output bag already exists")
    ts = get_typestore(Stores.ROS2_JAZZY)
    names = {**DEFAULT_TOPICS, **(topics or {})}
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    counts: dict[str, int] = {}
    with Writer(out, version=9, storage_plugin=plugin) as w:
        conns = {}
        for rec in records:
            if rec.kind not in conns:
                conns[rec.kind] = w.add_connection(names[rec.kind], MSGTYPES[rec.kind], typestore=ts)
            msg = _ros2_message(ts, rec)
            w.write(conns[rec.kind], int(round(rec.stamp * 1e9)), ts.serialize_cdr(msg, MSGTYPES[rec.kind]))
            counts[names[rec.kind]] = counts.get(names[rec.kind], 0) + 1
    return counts
