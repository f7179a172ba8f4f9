"""The sensor side of a node: camera, CameraInfo and LiDAR messages -> synchronised ``Frame`` s.

No node here: a node owns a :class:`SensorFrontEnd` and passes it its messages. Sensor inputs use
sensor-data QoS with depth 1 (:func:`sensor_qos`): only the newest frame is kept, none is queued
behind a slow step; frames the sensor sent that were replaced before we took them are counted
(``dropped_stale``). A bad message is reported through ``bad(kind, message)`` and dropped.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque

import numpy as np
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo

from ..config import NodeConfig
from ..errors import AttnLinkError
from ..geometry.calibration import Calibration
from ..pipeline import Frame
from .conversions import MessageError, camera_info_to_calibration, image_to_bgr, pointcloud2_to_xyzi, stamp_to_sec
from .sync import ApproximateSync


def sensor_qos(reliability: str) -> QoSProfile:
    rel = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=rel)


class SensorFrontEnd:
    """Converts and synchronises camera and LiDAR messages into :class:`Frame` s.

    ``bad(kind, message)`` is called for every dropped bad message; ``counters`` counts arrivals
    and stale drops."""

    def __init__(self, cfg: NodeConfig, counters: Counter, bad) -> None:
        self.cfg = cfg
        self.counters = counters
        self.bad = bad
        self.needed = {"image": ("image",), "lidar": ("points",), "fused": ("image", "points")}[cfg.mode]
        self.sync = ApproximateSync(slop=cfg.slop, timeout=cfg.sensor_timeout, streams=self.needed)
        self.calib_info: Calibration | None = None
        self.calib_file = Calibration.from_kitti_odometry(cfg.calib_file) if cfg.calib_file else None
        self.T = self.calib_file.T_cam_lidar if self.calib_file is not None else None
        if len(cfg.lidar_to_camera) == 16:
            self.T = np.asarray(cfg.lidar_to_camera, dtype=np.float64).reshape(4, 4)
        self._last_stamp: dict[str, float] = {}
        self._period: dict[str, float] = {}
        self.stage_ms: dict[str, deque] = defaultdict(lambda: deque(maxlen=500))

    def on_info(self, msg: CameraInfo) -> None:
        if self.T is None:
            self.bad("no_extrinsics", "CameraInfo arrived but neither lidar_to_camera nor calib_file gives the LiDAR extrinsics")
            return
        try:
            self.calib_info = camera_info_to_calibration(msg, self.T)
        except (MessageError, AttnLinkError) as exc:
            self.bad(getattr(exc, "kind", "camera_info"), str(exc))

    def on_message(self, stream: str, msg) -> tuple[Frame, object] | None:
        """Converts one image or cloud (a bad one is counted and dropped) and synchronises; returns
        (frame, header) when a frame is complete."""
        stamp = stamp_to_sec(msg.header.stamp)
        if stream not in self.needed:  # e.g. images reaching a LiDAR-only node: not converted
            self.counters[f"{stream}_ignored"] += 1
            return None
        self._note_arrival(stream, stamp)
        t0 = time.perf_counter()
        try:
            data = (image_to_bgr if stream == "image" else pointcloud2_to_xyzi)(msg)
        except MessageError as exc:
            self.bad(exc.kind, str(exc))
            return None
        self.stage_ms[f"convert_{stream}"].append(1e3 * (time.perf_counter() - t0))
        pair = self.sync.add(stream, stamp, (data, msg.header), now=time.monotonic())
        return None if pair is None else self._frame(pair)

    def _note_arrival(self, stream: str, stamp: float) -> None:
        """Counts frames the sensor sent but DDS replaced before we took them (newest-only QoS)."""
        self.counters[f"{stream}_in"] += 1
        last = self._last_stamp.get(stream)
        if last is not None and stamp > last:
            gap = stamp - last
            period = self._period.get(stream)
            if period is None or gap < period:
                self._period[stream] = period = gap if period is None else 0.9 * period + 0.1 * gap
            if period and gap > 1.5 * period:
                self.counters["dropped_stale"] += int(round(gap / period)) - 1
        self._last_stamp[stream] = stamp

    def _frame(self, pair: dict) -> tuple[Frame, object] | None:
        img = pair["image"][1][0] if pair["image"] else None
        pts = pair["points"][1][0] if pair["points"] else None
        first = pair["image"] or pair["points"]
        calib = self.calib_info or self.calib_file
        if calib is None:
            self.bad("no_calibration", "no CameraInfo yet and no calib_file: cannot project the scan")
            return None
        if img is not None and calib.image_size is None:
            calib = calib.with_image_size(img.shape[1], img.shape[0])
        return Frame(first[0], calib, img, pts), first[1][1]

    def lost(self, now: float) -> list[str]:
        return [s for s in self.needed if self.sync.silent(s, now)]
