"""``attnlink replay``: publishes a KITTI-layout sequence or a ROS 1/ROS 2 bag on ROS 2 topics
(``image``, ``camera_info``, ``points`` by default, remappable), with the original stamps.

Timing: ``rate`` times real time (1 = as recorded); ``lockstep`` topic given: each frame waits for
one message on that topic (the node's ``~/match``) or ``lockstep_timeout``, i.e. as fast as the
node consumes. ``clock``: publishes ``/clock`` with the data's time, for ``use_sim_time``.
Large frames need the shipped Fast DDS profile (:mod:`attnlink_ros.ros.transport`), which this
command applies unless the environment already names one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..data.bags import Record
from .transport import apply_transport_profile


@dataclass
class ReplayStats:
    published: dict = field(default_factory=dict)
    frames: int = 0
    wall_s: float = 0.0
    data_s: float = 0.0
    lockstep_timeouts: int = 0

    def as_dict(self) -> dict:
        return {"frames": self.frames, "published": self.published, "wall_s": round(self.wall_s, 3), "data_s": round(self.data_s, 3),
                "rate_hz": round(self.frames / self.wall_s, 2) if self.wall_s > 0 else 0.0, "lockstep_timeouts": self.lockstep_timeouts}


def frames_of(records: Iterable[Record]) -> Iterator[list[Record]]:
    """Groups consecutive records of one stamp (a frame's camera_info, points, image)."""
    group: list[Record] = []
    for r in records:
        if group and abs(r.stamp - group[0].stamp) > 1e-6:
            yield group
            group = []
        group.append(r)
    if group:
        yield group


class Replayer:
    """Publishes record frames from a node it owns (call :meth:`run`; :meth:`close` after)."""

    def __init__(self, topics: dict | None = None, clock: bool = False, lockstep: str | None = None,
                 lockstep_timeout: float = 2.0, reliable: bool = True, node_name: str = "attnlink_replay") -> None:
        apply_transport_profile()
        import rclpy
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        if not rclpy.ok():
            rclpy.init()
            self._owns_context = True
        else:
            self._owns_context = False
        self.node = rclpy.create_node(node_name)
        self.reliable = reliable
        names = {"image": "image", "camera_info": "camera_info", "points": "points", **(topics or {})}
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        self.pubs = {"image": self.node.create_publisher(Image, names["image"], qos),
                     "camera_info": self.node.create_publisher(CameraInfo, names["camera_info"], qos),
                     "points": self.node.create_publisher(PointCloud2, names["points"], qos)}
        self.clock_pub = None
        if clock:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = self.node.create_publisher(Clock, "/clock", 10)
        self._ack = threading.Event()
        self._awaited: tuple[float, ...] = ()  # stamps of the frame in flight (image and cloud may differ in a bag)
        self.sent_at: dict[float, float] = {}  # frame stamp -> monotonic time it was published
        self.lockstep_timeout = lockstep_timeout
        self._executor = None
        if lockstep:
            from attnlink_msgs.msg import PlaceMatches
            from rclpy.executors import SingleThreadedExecutor

            # the node's answer (attnlink_msgs/PlaceMatches on its ~/match) to the frame in flight,
            # matched by stamp, releases the next frame: a late answer to an earlier frame (one
            # that outlived the timeout) must not release the next one early
            self.node.create_subscription(PlaceMatches, lockstep, self._on_answer, 10)
            self._executor = SingleThreadedExecutor()
            self._executor.add_node(self.node)
            self._spin = threading.Thread(target=self._executor.spin, daemon=True)
            self._spin.start()
        self.lockstep = bool(lockstep)

    def _on_answer(self, msg) -> None:
        from .conversions import stamp_to_sec

        t = stamp_to_sec(msg.header.stamp)
        if any(abs(t - a) < 1e-4 for a in self._awaited):
            self._ack.set()

    def wait_for_subscribers(self, timeout: float = 5.0, kinds: tuple[str, ...] = ("points",)) -> bool:
        """Waits until each publisher of ``kinds`` has a subscriber (discovery), up to ``timeout`` s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(self.pubs[k].get_subscription_count() > 0 for k in kinds):
                return True
            time.sleep(0.05)
        return False

    def message(self, rec: Record):
        from std_msgs.msg import Header

        from .conversions import bgr_to_image, sec_to_stamp, xyzi_to_pointcloud2

        header = Header(stamp=sec_to_stamp(rec.stamp), frame_id=rec.frame_id)
        if rec.kind == "image":
            return bgr_to_image(rec.data, header)
        if rec.kind == "points":
            return xyzi_to_pointcloud2(rec.data, header)
        from sensor_msgs.msg import CameraInfo

        d = rec.data
        msg = CameraInfo(header=header, width=d["width"], height=d["height"], distortion_model="plumb_bob")
        msg.d = [0.0] * 5
        msg.k = [float(v) for v in d["K"].reshape(-1)]
        msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        msg.p = [float(v) for v in d["P"].reshape(-1)]
        return msg

    def publish_frame(self, group: list[Record], stats: ReplayStats) -> None:
        if self.clock_pub is not None:
            from rosgraph_msgs.msg import Clock

            from .conversions import sec_to_stamp

            self.clock_pub.publish(Clock(clock=sec_to_stamp(group[0].stamp)))
        self._ack.clear()
        self._awaited = tuple(rec.stamp for rec in group)
        self.sent_at[round(group[0].stamp, 6)] = time.monotonic()
        for rec in group:
            self.pubs[rec.kind].publish(self.message(rec))
            stats.published[rec.kind] = stats.published.get(rec.kind, 0) + 1
        stats.frames += 1
        if self.lockstep and not self._ack.wait(self.lockstep_timeout):
            stats.lockstep_timeouts += 1

    def run(self, records: Iterable[Record], rate: float = 1.0, loop: bool = False, progress: bool = True,
            total: int | None = None) -> ReplayStats:
        """Publishes every frame; ``rate`` 0 (or lockstep) = no pacing. ``records`` must be
        re-iterable (a list) for ``loop``."""
        from tqdm import tqdm

        stats = ReplayStats()
        t_wall0 = time.monotonic()
        bar = tqdm(total=total, desc="replay", unit="frame", disable=not progress)
        try:
            while True:
                t_data0 = None
                w0 = time.monotonic()
                for group in frames_of(records):
                    t = group[0].stamp
                    if t_data0 is None:
                        t_data0 = t
                    if rate > 0 and not self.lockstep:
                        delay = w0 + (t - t_data0) / rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    self.publish_frame(group, stats)
                    stats.data_s = max(stats.data_s, t - t_data0)
                    bar.update(1)
                if not loop:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            bar.close()
        stats.wall_s = time.monotonic() - t_wall0
        return stats

    def close(self, ack_timeout: float = 3.0) -> None:
        """Waits (up to ``ack_timeout`` s) until reliable subscribers acknowledged the last frames
        (a process that exits at once would take a large last frame with it), then shuts down."""
        import rclpy
        from rclpy.duration import Duration

        if self.reliable:
            for pub in self.pubs.values():
                if pub.get_subscription_count() > 0:
                    pub.wait_for_all_acked(Duration(seconds=ack_timeout))
        if self._executor is not None:
            self._executor.shutdown()
            self._spin.join(timeout=5)  # a spin thread still inside rclpy at exit aborts the process
        self.node.destroy_node()
        if self._owns_context and rclpy.ok():
            rclpy.shutdown()
