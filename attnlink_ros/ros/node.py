"""``attnlink_node``: the single-process lifecycle node (sensor front end, encoder, retrieval and
publishers over the one ``PlaceRecognizer`` pipeline).

Lifecycle (ros2/demos lifecycle_py style): parameters are declared in ``__init__``; configure
loads the model, backend and map (FAILURE with a logged reason on a missing or bad file);
activate creates the subscriptions; deactivate removes them; cleanup frees the model (and GPU
memory). ``autostart`` configures and activates at start-up for plain ``ros2 run`` use.

Topics (remappable): in ``image``, ``camera_info``, ``points``; out ``~/place``
(PoseWithCovarianceStamped, the matched place's pose in ``map_frame``, stamped with the query's
time) and ``/diagnostics``. Sensor inputs use sensor-data QoS with depth 1: only the newest frame
is kept, none is queued behind a slow step. A bad message is logged once per kind, counted and
dropped; the node keeps running.
"""

from __future__ import annotations

import time
from collections import Counter, deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from ..errors import AttnLinkError
from ..geometry.calibration import Calibration
from ..pipeline import Frame, PlaceRecognizer, resolve_mode
from .conversions import MessageError, camera_info_to_calibration, image_to_bgr, pointcloud2_to_xyzi, stamp_to_sec
from .sync import ApproximateSync

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
MODES = ("image", "lidar", "fused")


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


class AttnLinkNode(LifecycleNode):
    def __init__(self, node_name: str = "attnlink", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        d = self._declare
        d("model", "", "model artifact (NAME.json); empty: the shipped default model")
        d("map", "", "place map directory (attnlink build-map)")
        d("backend", "auto", f"inference backend: {', '.join(BACKENDS)}")
        d("mode", "fused", f"query mode: {', '.join(MODES)} (fused falls back to the modality present)")
        d("calib_file", "", "KITTI calib.txt giving P2 and Tr (used when no CameraInfo arrives / for Tr)")
        d("lidar_to_camera", [0.0], "LiDAR -> camera 4x4 transform, 16 floats row-major (overrides calib_file's Tr)")
        d("k", 5, "places returned per query", IntegerRange(from_value=1, to_value=100, step=1))
        d("slop", 0.05, "max stamp difference of a camera/LiDAR pair, s", FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0))
        d("sensor_timeout", 1.0, "a stream silent this long (s) counts as lost: query with the other",
          FloatingPointRange(from_value=0.05, to_value=60.0, step=0.0))
        d("reliability", "best_effort", "sensor subscription reliability: best_effort or reliable")
        d("map_frame", "map", "frame_id of ~/place")
        d("autostart", False, "configure and activate at start-up")
        self.add_on_set_parameters_callback(self._validate)
        self.recognizer: PlaceRecognizer | None = None
        self._subs: list = []
        self._pub_place = None
        self._pub_diag = None
        self._timer = None
        self._calib_info: Calibration | None = None
        self._calib_file: Calibration | None = None
        self._T: np.ndarray | None = None
        self.sync = ApproximateSync()
        self.counters: Counter = Counter()
        self._logged_kinds: set[str] = set()
        self._latency = deque(maxlen=200)
        self._processed_times = deque(maxlen=50)
        self._last_stamp: dict[str, float] = {}
        self._period: dict[str, float] = {}
        if self.get_parameter("autostart").value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # -- parameters ----------------------------------------------------------------------------
    def _declare(self, name, default, description, rng=None):
        desc = ParameterDescriptor(description=description)
        if isinstance(rng, IntegerRange):
            desc.integer_range = [rng]
        elif isinstance(rng, FloatingPointRange):
            desc.floating_point_range = [rng]
        self.declare_parameter(name, default, desc)

    def _validate(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "backend" and p.value not in BACKENDS:
                return SetParametersResult(successful=False, reason=f"backend must be one of {BACKENDS}")
            if p.name == "mode" and p.value not in MODES:
                return SetParametersResult(successful=False, reason=f"mode must be one of {MODES}")
            if p.name == "reliability" and p.value not in ("best_effort", "reliable"):
                return SetParametersResult(successful=False, reason="reliability must be best_effort or reliable")
            if p.name == "lidar_to_camera" and len(p.value) not in (0, 1, 16):
                return SetParametersResult(successful=False, reason="lidar_to_camera needs 16 floats (row-major 4x4)")
        return SetParametersResult(successful=True)

    def _p(self, name):
        return self.get_parameter(name).value

    # -- lifecycle -----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            if self._p("calib_file"):
                self._calib_file = Calibration.from_kitti_odometry(self._p("calib_file"))
                self._T = self._calib_file.T_cam_lidar
            T = list(self._p("lidar_to_camera"))
            if len(T) == 16:
                self._T = np.asarray(T, dtype=np.float64).reshape(4, 4)
            self.recognizer = PlaceRecognizer(self._p("model") or None, self._p("map") or None, backend=self._p("backend"))
            if self.recognizer.map is None:
                raise AttnLinkError("parameter 'map' is empty: build one with `attnlink build-map`")
            self.sync = ApproximateSync(slop=self._p("slop"), timeout=self._p("sensor_timeout"))
        except AttnLinkError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self.recognizer = None
            return TransitionCallbackReturn.FAILURE
        self._pub_place = self.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/place", 10)
        self._pub_diag = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
        self.get_logger().info(f"configured: model {self.recognizer.fingerprint[:12]}, map {len(self.recognizer.map)} places, "
                               f"mode {self._p('mode')}, backend {self._p('backend')}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        rel = ReliabilityPolicy.RELIABLE if self._p("reliability") == "reliable" else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=rel)
        self._subs = [
            self.create_subscription(Image, "image", self._on_image, qos),
            self.create_subscription(CameraInfo, "camera_info", self._on_info, qos),
            self.create_subscription(PointCloud2, "points", self._on_points, qos),
        ]
        self._timer = self.create_timer(1.0, self._publish_diagnostics)
        return super().on_activate(state)

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

    # -- callbacks -----------------------------------------------------------------------------
    def _bad(self, kind: str, message: str) -> None:
        self.counters[f"dropped_bad_{kind}"] += 1
        if kind not in self._logged_kinds:
            self._logged_kinds.add(kind)
            self.get_logger().warning(f"dropping bad message ({kind}): {message} (logged once per kind, counted in /diagnostics)")

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

    def _on_info(self, msg: CameraInfo) -> None:
        if self._T is None:
            self._bad("no_extrinsics", "CameraInfo arrived but neither lidar_to_camera nor calib_file gives the LiDAR extrinsics")
            return
        try:
            self._calib_info = camera_info_to_calibration(msg, self._T)
        except (MessageError, AttnLinkError) as exc:
            self._bad(getattr(exc, "kind", "camera_info"), str(exc))

    def _on_image(self, msg: Image) -> None:
        self._take("image", msg, image_to_bgr)

    def _on_points(self, msg: PointCloud2) -> None:
        self._take("points", msg, pointcloud2_to_xyzi)

    def _take(self, stream: str, msg, convert) -> None:
        """Thin callback: convert (a bad message is counted and dropped), then synchronise."""
        stamp = stamp_to_sec(msg.header.stamp)
        self._note_arrival(stream, stamp)
        try:
            data = convert(msg)
        except MessageError as exc:
            self._bad(exc.kind, str(exc))
            return
        self._feed(stream, stamp, (data, msg.header))

    def _feed(self, stream: str, stamp: float, payload) -> None:
        frame = self.sync.add(stream, stamp, payload, now=time.monotonic())
        if frame is not None:
            self._process(frame)

    def _calibration(self) -> Calibration | None:
        return self._calib_info or self._calib_file

    def _process(self, frame: dict) -> None:
        t0 = time.perf_counter()
        img = frame["image"][1][0] if frame["image"] else None
        pts = frame["points"][1][0] if frame["points"] else None
        header = (frame["image"] or frame["points"])[1][1]
        stamp = (frame["image"] or frame["points"])[0]
        calib = self._calibration()
        if calib is None:
            self._bad("no_calibration", "no CameraInfo yet and no calib_file: cannot project the scan")
            return
        if img is not None and calib.image_size is None:
            calib = calib.with_image_size(img.shape[1], img.shape[0])
        try:
            mode = resolve_mode(self._p("mode"), img is not None, pts is not None)
            if mode != self._p("mode"):
                self.counters[f"fallback_{mode}"] += 1
            res = self.recognizer.query(Frame(stamp, calib, img if mode != "lidar" else None, pts if mode != "image" else None),
                                        self._p("k"), mode)
        except (AttnLinkError, ValueError) as exc:
            self._bad("query", str(exc))
            return
        self.counters["frames_processed"] += 1
        if res.hits:
            self._publish_place(header, res.hits[0])
        self._latency.append(1e3 * (time.perf_counter() - t0))
        self._processed_times.append(time.monotonic())

    # -- outputs -------------------------------------------------------------------------------
    def _publish_place(self, header, hit: dict) -> None:
        T = np.asarray(hit["pose"])
        msg = PoseWithCovarianceStamped()
        msg.header.stamp = header.stamp
        msg.header.frame_id = self._p("map_frame")
        p = msg.pose.pose
        p.position.x, p.position.y, p.position.z = (float(v) for v in T[:3, 3])
        p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = rotation_to_quaternion(T[:3, :3])
        msg.pose.covariance = place_covariance(hit["score"])
        self._pub_place.publish(msg)

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        recent = [t for t in self._processed_times if now - t <= 5.0]
        rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        lat = np.asarray(self._latency) if self._latency else np.zeros(1)
        st = DiagnosticStatus()
        st.name = f"{self.get_name()}: place recognition"
        st.hardware_id = "attnlink"
        lost = [s for s in ("image", "points") if self.sync.silent(s, now)]
        st.level = DiagnosticStatus.WARN if lost or self.counters.get("frames_processed", 0) == 0 else DiagnosticStatus.OK
        st.message = ("sensor lost: " + ", ".join(lost)) if lost else "running"
        rec = self.recognizer
        values = {
            "rate_hz": f"{rate:.2f}", "latency_ms_p50": f"{np.percentile(lat, 50):.1f}", "latency_ms_p99": f"{np.percentile(lat, 99):.1f}",
            "backend": ", ".join(b.describe() for b in rec._backends.values()) if rec else "",
            "map_places": str(len(rec.map)) if rec and rec.map else "0", "mode": self._p("mode"),
            "dropped_unpaired_image": str(self.sync.stats.dropped["image"]), "dropped_unpaired_points": str(self.sync.stats.dropped["points"]),
            **{k: str(v) for k, v in sorted(self.counters.items())},
        }
        st.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [st]
        self._pub_diag.publish(msg)


def main(args=None) -> None:
    rclpy.init(args=args)
    node = AttnLinkNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
