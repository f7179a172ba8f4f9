"""The ROS 2 nodes over the one ``PlaceRecognizer`` pipeline.

Parts (plain classes, so that the one process and the split nodes share them):
  :class:`SensorFrontEnd`  Image + CameraInfo + PointCloud2 -> synchronised :class:`Frame`
  :class:`Outputs`         ~/place, ~/match, lio_loop/loop_closure_detection, ~/markers
and the nodes:
  ``attnlink_node``       :class:`AttnLinkNode` (node ``attnlink``): front end, encoder, retrieval, outputs
  ``attnlink_frontend``   :class:`FrontEndNode`: front end + encoder -> ``~/descriptor``
  ``attnlink_retrieval``  :class:`RetrievalNode`: ``descriptor`` -> retrieval -> outputs

Lifecycle (ros2/demos lifecycle_py style): parameters (``attnlink_ros.config.NodeConfig``, file
``config/attnlink.yaml``) are declared in ``__init__`` with descriptions and ranges, and a value
that ``NodeConfig`` refuses is refused at set time; configure loads the model, backend and map
(FAILURE with a logged reason on a missing or bad file); activate creates the subscriptions;
deactivate removes them; cleanup frees the model. ``autostart`` configures and activates at
start-up.

Sensor inputs use sensor-data QoS with depth 1: only the newest frame is kept, none is queued
behind a slow step; frames the sensor sent that were replaced before we took them are counted
(``dropped_stale``). A bad message is logged once per kind, counted and dropped; the node keeps
running. ``/diagnostics`` carries rate, latency, drops, fallbacks, backend and map.

Descriptor topic (split nodes): ``sensor_msgs/Image``, encoding ``32FC1``, height 1, width D (the
descriptor), header stamp = the query's stamp, ``frame_id`` = ``"<mode>:<model fingerprint[:12]>"``;
the retrieval node drops (and counts) descriptors of another model than its map's.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PoseWithCovarianceStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import ColorRGBA, Float64MultiArray, MultiArrayDimension
from visualization_msgs.msg import Marker, MarkerArray

from ..config import NODE_PARAM_DOCS, NodeConfig
from ..errors import AttnLinkError, ConfigError
from ..geometry.calibration import Calibration
from ..pipeline import Frame, PlaceRecognizer, resolve_mode
from .conversions import MessageError, camera_info_to_calibration, image_to_bgr, pointcloud2_to_xyzi, stamp_to_sec
from .sync import ApproximateSync

BACKENDS = NODE_PARAM_DOCS["backend"][1]
MODES = NODE_PARAM_DOCS["mode"][1]

# ~/match: std_msgs/Float64MultiArray, one row per hit (best first), these columns. layout.dim[0]
# is "hit" (size = hits), dim[1] is "field" (size = len(MATCH_FIELDS)), its label the column names
# joined by ",". place_*: the matched place's pose in the map frame (quaternion x, y, z, w);
# rel_*: the query's pose relative to the place from geometric verification, NaN when the hit is
# not verified (verified 0). view_yaw_deg: the heading view of the place that matched (degrees,
# counter-clockwise about the LiDAR's z axis; 180 = the place was mapped driving the other way).
# Online mode answers a query without any candidate with one row whose map_index is -1.
MATCH_FIELDS = ("query_stamp", "map_index", "place_stamp", "score", "verified",
                "place_x", "place_y", "place_z", "place_qx", "place_qy", "place_qz", "place_qw",
                "rel_x", "rel_y", "rel_z", "rel_qx", "rel_qy", "rel_qz", "rel_qw", "view_yaw_deg")
LOOP_TOPIC = "lio_loop/loop_closure_detection"
# online mode, a query without any candidate: one ~/match row with map_index -1 (score NaN)
NO_CANDIDATE = {"index": -1, "stamp": float("nan"), "score": float("nan"), "pose": None, "verified": False}


def rotation_to_quaternion(R: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a 3x3 rotation matrix."""
    m = R
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        w, x, y, z = 0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        w, x, y, z = (m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        w, x, y, z = (m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        w, x, y, z = (m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    return tuple(float(v) for v in q)


def place_covariance(score: float) -> list[float]:
    """6x6 row-major covariance from the match score (cosine similarity): position sigma grows
    from 2 m at score 1 to 12 m at score 0.5 and below; orientation sigma from 0.1 to 0.6 rad."""
    bad = float(np.clip((1.0 - score) / 0.5, 0.0, 1.0))
    sp, so = 2.0 + 10.0 * bad, 0.1 + 0.5 * bad
    cov = np.zeros((6, 6))
    cov[[0, 1, 2], [0, 1, 2]] = sp * sp
    cov[[3, 4, 5], [3, 4, 5]] = so * so
    return cov.reshape(-1).tolist()


def match_rows(query_stamp: float, hits: list[dict]) -> np.ndarray:
    """The ~/match table (len(hits), len(MATCH_FIELDS)) of a query's hits."""
    rows = np.full((len(hits), len(MATCH_FIELDS)), np.nan)
    for r, h in enumerate(hits):
        rows[r, :5] = (query_stamp, h["index"], h["stamp"], h["score"], float(bool(h.get("verified", False))))
        if h.get("pose") is not None:  # online mode: the drive's own keyframes have no map pose
            T = np.asarray(h["pose"])
            rows[r, 5:8] = T[:3, 3]
            rows[r, 8:12] = rotation_to_quaternion(T[:3, :3])
        rel = h.get("relative_pose")
        if rel is not None:
            rel = np.asarray(rel)
            rows[r, 12:15] = rel[:3, 3]
            rows[r, 15:19] = rotation_to_quaternion(rel[:3, :3])
        rows[r, 19] = h.get("view_yaw_deg", 0.0)
    return rows


def parse_match(msg: Float64MultiArray) -> list[dict]:
    """~/match back to one dict per hit (for subscribers in Python)."""
    fields = msg.layout.dim[1].label.split(",")
    table = np.asarray(msg.data, dtype=np.float64).reshape(msg.layout.dim[0].size, msg.layout.dim[1].size)
    return [dict(zip(fields, row.tolist())) for row in table]


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


class Outputs:
    """Publishers of a query's result: ~/place, ~/match, LIO-SAM loops, ~/markers."""

    def __init__(self, node: LifecycleNode, cfg: NodeConfig) -> None:
        self.node, self.cfg = node, cfg
        self.place = node.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/place", 10)
        self.match = node.create_lifecycle_publisher(Float64MultiArray, "~/match", 10)
        self.loop = node.create_lifecycle_publisher(Float64MultiArray, LOOP_TOPIC, 10) if cfg.loops else None
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.markers = node.create_lifecycle_publisher(MarkerArray, "~/markers", latched) if cfg.markers else None
        self._places: Marker | None = None

    def publish(self, header, query_stamp: float, hits: list[dict], counters: Counter, loop: bool | None = None) -> None:
        """``loop``: None = relocalize (a loop when the top-1 passes loop_min_score and loop_min_gap);
        True/False = the online detector's decision for the top-1."""
        if not hits:
            return
        top = hits[0]
        if top.get("pose") is not None:
            # verified against the place's stored scan: the vehicle's own pose; else the place's
            verified = top.get("vehicle_pose") is not None
            T = np.asarray(top["vehicle_pose"] if verified else top["pose"])
            msg = PoseWithCovarianceStamped()
            msg.header.stamp = header.stamp
            msg.header.frame_id = self.cfg.map_frame
            p = msg.pose.pose
            p.position.x, p.position.y, p.position.z = (float(v) for v in T[:3, 3])
            p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = rotation_to_quaternion(T[:3, :3])
            msg.pose.covariance = (np.asarray(top["vehicle_covariance"]).reshape(-1).tolist() if verified
                                   else place_covariance(top["score"]))
            self.place.publish(msg)
        self.publish_match(query_stamp, hits)
        if loop is None:
            loop = top["score"] >= self.cfg.loop_min_score and abs(query_stamp - top["stamp"]) >= self.cfg.loop_min_gap
        if self.loop is not None and loop:
            self.loop.publish(Float64MultiArray(data=[float(query_stamp), float(top["stamp"])]))
            counters["loops_published"] += 1
        if self.markers is not None and top.get("pose") is not None:
            self.markers.publish(MarkerArray(markers=self._marker_list(header, top)))

    def publish_match(self, query_stamp: float, hits: list[dict]) -> None:
        rows = match_rows(query_stamp, hits)
        m = Float64MultiArray()
        m.layout.dim = [MultiArrayDimension(label="hit", size=rows.shape[0], stride=rows.size),
                        MultiArrayDimension(label=",".join(MATCH_FIELDS), size=rows.shape[1], stride=rows.shape[1])]
        m.data = rows.reshape(-1).tolist()
        self.match.publish(m)

    def map_markers(self, xy: np.ndarray, z: np.ndarray | None = None) -> None:
        """The map's places as one POINTS marker (latched, so RViz gets it when it joins)."""
        if self.markers is None:
            return
        mk = Marker(ns="places", id=0, type=Marker.POINTS, action=Marker.ADD)
        mk.header.frame_id = self.cfg.map_frame
        mk.scale.x = mk.scale.y = 1.0
        mk.color = ColorRGBA(r=0.6, g=0.6, b=0.6, a=1.0)
        zz = np.zeros(len(xy)) if z is None else z
        mk.points = [Point(x=float(a), y=float(b), z=float(c)) for (a, b), c in zip(xy, zz)]
        mk.pose.orientation.w = 1.0
        self._places = mk
        self.markers.publish(MarkerArray(markers=[mk]))

    def _marker_list(self, header, top: dict) -> list[Marker]:
        T = np.asarray(top["vehicle_pose"] if top.get("vehicle_pose") is not None else top["pose"])
        s = float(np.clip(top["score"], 0.0, 1.0))
        mk = Marker(ns="match", id=0, type=Marker.SPHERE, action=Marker.ADD)
        mk.header.frame_id = self.cfg.map_frame
        mk.header.stamp = header.stamp
        mk.pose.position.x, mk.pose.position.y, mk.pose.position.z = (float(v) for v in T[:3, 3])
        mk.pose.orientation.w = 1.0
        mk.scale.x = mk.scale.y = mk.scale.z = 4.0
        mk.color = ColorRGBA(r=1.0 - s, g=s, b=0.1, a=0.9)  # green when confident, red when not
        text = Marker(ns="match_text", id=1, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, text=f"{top['score']:.2f}")
        text.header = mk.header
        text.pose.position.x, text.pose.position.y = mk.pose.position.x, mk.pose.position.y
        text.pose.position.z = mk.pose.position.z + 4.0
        text.pose.orientation.w = 1.0
        text.scale.z = 3.0
        text.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
        return ([self._places] if self._places is not None else []) + [mk, text]


class _AttnLinkLifecycle(LifecycleNode):
    """Parameters, bad-message handling, diagnostics and the lifecycle shared by the three nodes."""

    SUBJECT = "place recognition"

    def __init__(self, node_name: str, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        for name, f in NodeConfig.__dataclass_fields__.items():
            self._declare(name, f.default, *NODE_PARAM_DOCS[name])
        self.add_on_set_parameters_callback(self._validate)
        self.cfg: NodeConfig | None = None
        self.recognizer: PlaceRecognizer | None = None
        self._subs: list = []
        self._timer = None
        self._pub_diag = None
        self.counters: Counter = Counter()
        # counters and latencies change from the sensor callback, the verifier's result thread
        # and the diagnostics timer (a multi-threaded executor may run them at once)
        self._out_lock = threading.RLock()
        self._logged_kinds: set[str] = set()
        self._latency = deque(maxlen=500)
        self._processed_times = deque(maxlen=50)
        self.stage_ms: dict[str, deque] = defaultdict(lambda: deque(maxlen=500))  # per stage, ms

    def _autostart(self) -> None:
        if self.get_parameter("autostart").value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # -- parameters ----------------------------------------------------------------------------
    def _declare(self, name, default, description, choices, rng):
        desc = ParameterDescriptor(description=description + (f" ({', '.join(choices)})" if choices else ""))
        if rng is not None and isinstance(default, int) and not isinstance(default, bool):
            desc.integer_range = [IntegerRange(from_value=int(rng[0]), to_value=int(rng[1]), step=1)]
        elif rng is not None and isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(rng[0]), to_value=float(rng[1]), step=0.0)]
        if isinstance(default, tuple):  # a list parameter that may be unset (ROS has no empty typed default)
            self.declare_parameter(name, Parameter.Type.DOUBLE_ARRAY, desc)
        else:
            self.declare_parameter(name, default, desc)

    def _values(self) -> dict:
        out = {}
        for name in NodeConfig.__dataclass_fields__:
            try:
                v = self.get_parameter(name).value
            except ParameterUninitializedException:
                v = None
            if name == "lidar_to_camera":
                v = tuple(float(x) for x in v) if v is not None else ()
            out[name] = v
        return out

    def _validate(self, params) -> SetParametersResult:
        values = self._values()
        for p in params:
            values[p.name] = tuple(float(x) for x in p.value) if p.name == "lidar_to_camera" else p.value
        try:
            NodeConfig(**values)
        except (ConfigError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    # -- lifecycle -----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            import faiss

            # one query at a time: an OpenMP team only contends with the encoder's threads
            # (search of 10 places: 10 ms with the default team beside ORT on 2 cores)
            faiss.omp_set_num_threads(1)
        except ImportError:
            pass
        try:
            self.cfg = NodeConfig(**self._values())
            self._configure()
        except AttnLinkError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self.recognizer = None
            return TransitionCallbackReturn.FAILURE
        self._pub_diag = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._subs = self._subscribe(sensor_qos(self.cfg.reliability))
        self._timer = self.create_timer(1.0, self._publish_diagnostics)
        result = super().on_activate(state)
        self._activated()
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.recognizer = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None: ...

    def _subscribe(self, qos: QoSProfile) -> list: ...

    def _activated(self) -> None: ...

    # -- bad input, diagnostics ------------------------------------------------------------------
    def _bad(self, kind: str, message: str) -> None:
        with self._out_lock:
            self.counters[f"dropped_bad_{kind}"] += 1
            first = kind not in self._logged_kinds
            self._logged_kinds.add(kind)
        if first:
            self.get_logger().warning(f"dropping bad message ({kind}): {message} (logged once per kind, counted in /diagnostics)")

    def _processed(self, t0: float, timings: dict | None = None) -> None:
        with self._out_lock:
            for k, v in (timings or {}).items():
                self.stage_ms[k].append(v)
            self.counters["frames_processed"] += 1
            self._latency.append(1e3 * (time.perf_counter() - t0))
            self._processed_times.append(time.monotonic())

    def _status(self, now: float) -> tuple[int, str, dict]:
        level = DiagnosticStatus.WARN if self.counters.get("frames_processed", 0) == 0 else DiagnosticStatus.OK
        return level, "running", {}

    def _publish_diagnostics(self) -> None:
        with self._out_lock:
            self._publish_diagnostics_locked()

    def _publish_diagnostics_locked(self) -> None:
        now = time.monotonic()
        recent = [t for t in self._processed_times if now - t <= 5.0]
        rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        lat = np.asarray(self._latency) if self._latency else np.zeros(1)
        level, message, extra = self._status(now)
        st = DiagnosticStatus(level=level, name=f"{self.get_name()}: {self.SUBJECT}", hardware_id="attnlink", message=message)
        rec = self.recognizer
        values = {
            "rate_hz": f"{rate:.2f}", "latency_ms_p50": f"{np.percentile(lat, 50):.1f}", "latency_ms_p99": f"{np.percentile(lat, 99):.1f}",
            "backend": ", ".join(dict.fromkeys(b.describe() for b in rec._backends.values())) if rec else "",
            "map_places": str(len(rec.map)) if rec and rec.map else "0", "mode": self.cfg.mode,
            **extra, **{k: str(v) for k, v in sorted(dict(self.counters).items())},  # dict(): one atomic copy
            **{f"stage_ms_{k}_p50": f"{np.percentile(v, 50):.2f}" for k, v in sorted(self.stage_ms.items()) if v},
        }
        st.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(msg)


class _SensorNodeMixin:
    """Sensor subscriptions and sensor-loss diagnostics of the nodes that take camera and LiDAR."""

    def _sensor_subscriptions(self, qos: QoSProfile) -> list:
        return [
            self.create_subscription(Image, "image", lambda m: self._on_sensor("image", m), qos),
            self.create_subscription(CameraInfo, "camera_info", self.front.on_info, qos),
            self.create_subscription(PointCloud2, "points", lambda m: self._on_sensor("points", m), qos),
        ]

    def _on_sensor(self, stream: str, msg) -> None:
        try:
            out = self.front.on_message(stream, msg)
            if out is not None:
                self._process(*out)
        except Exception as exc:  # noqa: BLE001 - a bug in one frame must not stop the node: count, log once, go on
            self._bad("internal_error", f"{type(exc).__name__}: {exc}")

    def _warm_up(self) -> None:
        """Loads the backend of the configured mode and of its fallbacks now, not on the first frame."""
        for m in (("image", "lidar", "fused") if self.cfg.mode == "fused" else (self.cfg.mode,)):
            self.recognizer.backend(m)

    def _mode_for(self, frame: Frame) -> str:
        mode = resolve_mode(self.cfg.mode, frame.image is not None, frame.points is not None)
        if mode != self.cfg.mode:
            self.counters[f"fallback_{mode}"] += 1
        return mode

    def _status(self, now: float) -> tuple[int, str, dict]:
        lost = self.front.lost(now) if self.front else []
        level = DiagnosticStatus.WARN if lost or self.counters.get("frames_processed", 0) == 0 else DiagnosticStatus.OK
        sync = self.front.sync.stats if self.front else None
        extra = {"dropped_unpaired_image": str(sync.dropped["image"]), "dropped_unpaired_points": str(sync.dropped["points"])} if sync else {}
        return level, ("sensor lost: " + ", ".join(lost)) if lost else "running", extra


class AttnLinkNode(_SensorNodeMixin, _AttnLinkLifecycle):
    """The single-process node: front end, encoder, retrieval and outputs."""

    def __init__(self, node_name: str = "attnlink", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.front: SensorFrontEnd | None = None
        self.outputs: Outputs | None = None
        self._verifier = None  # relocalize + verify_async: retrieval.verifier.VerifierProcess
        self._autostart()

    @property
    def sync(self) -> ApproximateSync:
        return self.front.sync

    def _configure(self) -> None:
        c = self.cfg
        self.front = SensorFrontEnd(c, self.counters, self._bad)
        self.front.stage_ms = self.stage_ms  # conversion times beside the pipeline's, in /diagnostics
        online = c.map_mode == "online"
        # loop radius between camera centres, as the map poses and SLAM's ground truth measure it
        camera = tuple(float(v) for v in np.linalg.inv(self.front.T)[:3, 3]) if self.front.T is not None else (0.0, 0.0, 0.0)
        self.recognizer = PlaceRecognizer(c.model or None, None if online else (c.map or None), backend=c.backend,
                                          crop_top=None if c.crop_top < 0 else c.crop_top)
        self.detector = None
        if online:
            from ..retrieval.loops import LoopConfig, LoopDetector

            self.detector = LoopDetector(self.recognizer.cfg.descriptor_dim, LoopConfig(
                exclusion_s=c.loop_min_gap, keyframe_interval_s=c.keyframe_interval, min_score=c.loop_min_score,
                candidates=c.verify_candidates, verify=c.verify, min_inlier_ratio=c.min_inlier_ratio, consistency=c.consistency,
                distance_point=camera),
                views=c.keyframe_views, reverse_offset_m=c.reverse_offset)
        elif self.recognizer.map is None:
            raise AttnLinkError("parameter 'map' is empty: build one with `attnlink build-map` (or set map_mode: online)")
        self._verify = None
        if not online and c.verify and self.recognizer.can_verify:
            from ..retrieval.loops import RELOCALIZE_YAWS_DEG, LoopConfig

            # relocalisation against a map with stored scans: GICP-verify the best hits, publish a metric pose
            self._verify = LoopConfig(min_score=-1.0, candidates=c.verify_candidates, min_inlier_ratio=c.min_inlier_ratio,
                                      voxel_m=self.recognizer.map.scans.voxel, yaw_guesses_deg=RELOCALIZE_YAWS_DEG,
                                      distance_point=camera)
        self._warm_up()
        self.outputs = Outputs(self, c)
        self._close_verifier()
        if self._verify is not None and c.verify_async:
            from ..retrieval.verifier import VerifierProcess

            self._verifier = VerifierProcess(self.recognizer.map.scans, self._verify, self._on_verified)
        where = "online map (grows from the drive)" if online else f"map {len(self.recognizer.map)} places" + (
            ", stored scans: matches GICP-verified" + (" (own process)" if self._verifier else "") + ", ~/place metric"
            if self._verify else "")
        self.get_logger().info(f"configured: model {self.recognizer.fingerprint[:12]}, {where}, mode {c.mode}, backend {c.backend}")

    def _subscribe(self, qos):
        return self._sensor_subscriptions(qos)

    def _activated(self) -> None:
        if self.recognizer.map is not None:
            t = self.recognizer.map.table
            self.outputs.map_markers(t.xy, t.poses[:, 2, 3])

    def _process(self, frame: Frame, header) -> None:
        if self.detector is not None:
            return self._process_online(frame, header)
        t0 = time.perf_counter()
        offload = self._verifier is not None
        try:
            res = self.recognizer.query(frame, self.cfg.k, self._mode_for(frame), None if offload else self._verify)
        except (AttnLinkError, ValueError) as exc:
            self._bad("query", str(exc))
            return
        if offload and res.hits and frame.points is not None:
            if self._verifier.offer((frame, header, res, t0), res.hits, frame.points):
                return  # answered by _on_verified
            with self._out_lock:
                self.counters["verify_busy"] += 1
        self._answer(frame, header, res, t0)

    def _on_verified(self, job, hits, registrations: int, error: str | None) -> None:
        """The verifier process's answer (its reader thread): publish the frame, verified or not."""
        frame, header, res, t0 = job
        if error is not None:
            self._bad("verify", error)
        else:
            self.recognizer.apply_verification(res, frame, hits, registrations)
            res.timings_ms["verify"] = 1e3 * (time.perf_counter() - t0) - sum(res.timings_ms.values())
        try:
            self._answer(frame, header, res, t0)
        except Exception as exc:  # noqa: BLE001 - as in the sensor callback: count, log once, go on
            self._bad("internal_error", f"{type(exc).__name__}: {exc}")

    def _answer(self, frame: Frame, header, res, t0: float) -> None:
        """Publishes a relocalisation result (from the sensor callback or the verifier's thread)."""
        with self._out_lock:
            t1 = time.perf_counter()
            loop = None  # decided by score and time gap
            if self._verify is not None and res.hits:
                top = res.hits[0]
                verified = bool(top.get("verified"))
                if res.registrations or verified:  # verification ran (not skipped: busy, no scan)
                    self.counters["relocalized_verified" if verified else "relocalized_unverified"] += 1
                # with verification on, a loop is never published unverified (as in online mode)
                loop = verified and top["score"] >= self.cfg.loop_min_score and abs(frame.stamp - top["stamp"]) >= self.cfg.loop_min_gap
            self.outputs.publish(header, frame.stamp, res.hits, self.counters, loop=loop)
            self._processed(t0, {**res.timings_ms, "publish": 1e3 * (time.perf_counter() - t1)})

    def _close_verifier(self) -> None:
        if getattr(self, "_verifier", None) is not None:
            self._verifier.close()
        self._verifier = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_verifier()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_verifier()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._close_verifier()
        super().destroy_node()


    def _process_online(self, frame: Frame, header) -> None:
        """Online: query the drive's older keyframes (verify, check consistency), then offer this
        frame as a keyframe (its LiDAR descriptor: maps are LiDAR)."""
        t0 = time.perf_counter()
        det = self.detector
        try:
            mode = self._mode_for(frame)
            res = self.recognizer.encode(frame, mode)
            t1 = time.perf_counter()
            loop = det.query(frame.stamp, res.descriptor, frame.points if self.cfg.verify else None)
            t2 = time.perf_counter()
            if frame.points is not None and det.map.due(frame.stamp):
                if det.map.views == 1:
                    key = res.descriptor if mode == "lidar" else self.recognizer.encode(Frame(frame.stamp, frame.calib, points=frame.points), "lidar").descriptor
                else:  # the keyframe's heading views, one batch (once a keyframe_interval, not per frame)
                    size = (frame.image.shape[1], frame.image.shape[0]) if frame.image is not None else None
                    key = self.recognizer.encode_views(frame.points, frame.calib, det.map.view_yaws, size, det.map.view_offsets)
                det.map.maybe_add(frame.stamp, key, frame.points)
        except (AttnLinkError, ValueError) as exc:
            self._bad("query", str(exc))
            return
        self.counters["keyframes"] = len(det.map)
        if loop.index >= 0:
            if not loop.published:
                self.counters["loop_candidates_rejected"] += 1
            hit = {"index": loop.index, "stamp": loop.t_match, "score": loop.score, "pose": None, "verified": loop.verified,
                   "relative_pose": loop.T, "view_yaw_deg": loop.view_yaw_deg}
            self.outputs.publish(header, frame.stamp, [hit], self.counters, loop=loop.published)
        else:
            self.outputs.publish_match(frame.stamp, [NO_CANDIDATE])  # answered: one row, map_index -1
        self._processed(t0, {**res.timings_ms, "loop_search_verify": 1e3 * (t2 - t1)})


class FrontEndNode(_SensorNodeMixin, _AttnLinkLifecycle):
    """Split deployment, sensor side: front end + encoder -> ``~/descriptor`` (see module doc)."""

    SUBJECT = "descriptor front end"

    def __init__(self, node_name: str = "attnlink_frontend", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.front: SensorFrontEnd | None = None
        self._pub_desc = None
        self._autostart()

    def _configure(self) -> None:
        c = self.cfg
        self.front = SensorFrontEnd(c, self.counters, self._bad)
        self.front.stage_ms = self.stage_ms  # conversion times beside the pipeline's, in /diagnostics
        self.recognizer = PlaceRecognizer(c.model or None, None, backend=c.backend, crop_top=None if c.crop_top < 0 else c.crop_top)
        self._warm_up()
        self._pub_desc = self.create_lifecycle_publisher(Image, "~/descriptor", 10)

    def _subscribe(self, qos):
        return self._sensor_subscriptions(qos)

    def _process(self, frame: Frame, header) -> None:
        t0 = time.perf_counter()
        try:
            mode = self._mode_for(frame)
            res = self.recognizer.encode(frame, mode)
        except (AttnLinkError, ValueError) as exc:
            self._bad("encode", str(exc))
            return
        self._pub_desc.publish(descriptor_to_image(res.descriptor, header, f"{res.mode}:{self.recognizer.fingerprint[:12]}"))
        self._processed(t0)


class RetrievalNode(_AttnLinkLifecycle):
    """Split deployment, map side: ``descriptor`` -> search -> outputs."""

    SUBJECT = "retrieval"

    def __init__(self, node_name: str = "attnlink_retrieval", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.outputs: Outputs | None = None
        self._autostart()

    def _configure(self) -> None:
        c = self.cfg
        self.recognizer = PlaceRecognizer(c.model or None, c.map or None, backend=c.backend)
        if self.recognizer.map is None:
            raise AttnLinkError("parameter 'map' is empty: build one with `attnlink build-map`")
        self._model_tag = str(self.recognizer.map.manifest.get("model_fingerprint", ""))[:12]
        self.outputs = Outputs(self, c)

    def _subscribe(self, qos):
        return [self.create_subscription(Image, "descriptor", self._on_descriptor, 10)]

    def _activated(self) -> None:
        t = self.recognizer.map.table
        self.outputs.map_markers(t.xy, t.poses[:, 2, 3])

    def _on_descriptor(self, msg: Image) -> None:
        t0 = time.perf_counter()
        try:
            desc, mode, tag = image_to_descriptor(msg)
            if tag != self._model_tag:
                raise MessageError("descriptor_model", f"descriptor of model {tag}, the map is of model {self._model_tag}")
            if desc.shape[0] != self.recognizer.map.dim:
                raise MessageError("descriptor_dim", f"descriptor has {desc.shape[0]} values, the map {self.recognizer.map.dim}")
        except MessageError as exc:
            self._bad(exc.kind, str(exc))
            return
        hits = self.recognizer.map.hits(desc[None], self.cfg.k)[0]
        self.outputs.publish(msg.header, stamp_to_sec(msg.header.stamp), hits, self.counters)
        self._processed(t0)


def descriptor_to_image(desc: np.ndarray, header, frame_id: str) -> Image:
    d = np.ascontiguousarray(desc, dtype="<f4").reshape(-1)
    msg = Image(height=1, width=d.shape[0], encoding="32FC1", is_bigendian=0, step=4 * d.shape[0])
    msg.header.stamp = header.stamp
    msg.header.frame_id = frame_id
    msg.data = d.tobytes()
    return msg


def image_to_descriptor(msg: Image) -> tuple[np.ndarray, str, str]:
    """(descriptor, mode, model tag) of a descriptor-topic message."""
    if msg.encoding != "32FC1" or msg.height != 1 or msg.step != 4 * msg.width or len(msg.data) != msg.step:
        raise MessageError("descriptor_layout", f"descriptor message must be 1 x D 32FC1 (got {msg.height}x{msg.width} {msg.encoding}, "
                                                f"{len(msg.data)} bytes)")
    mode, _, tag = msg.header.frame_id.partition(":")
    if mode not in MODES:
        raise MessageError("descriptor_mode", f"descriptor frame_id {msg.header.frame_id!r} is not '<mode>:<model>'")
    desc = np.frombuffer(bytes(msg.data), dtype=">f4" if msg.is_bigendian else "<f4").astype(np.float32)
    return desc, mode, tag


def _spin(node_cls) -> None:
    rclpy.init()
    node = node_cls()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C, SIGTERM (ros2 launch stopping it)
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def main(args=None) -> None:
    _spin(AttnLinkNode)


def main_frontend(args=None) -> None:
    _spin(FrontEndNode)


def main_retrieval(args=None) -> None:
    _spin(RetrievalNode)
