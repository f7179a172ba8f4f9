"""What the three nodes share: parameters, lifecycle, bad-message handling, diagnostics, spinning.

Lifecycle (ros2/demos lifecycle_py style): parameters (``attnlink_ros.config.NodeConfig``, file
``config/attnlink.yaml``) are declared in ``__init__`` with descriptions and ranges, and a value
that ``NodeConfig`` refuses is refused at set time; configure loads the model, backend and map
(FAILURE with a logged reason on a missing or bad file); activate creates the subscriptions;
deactivate removes them; cleanup frees the model. ``autostart`` configures and activates at
start-up. A bad message is logged once per kind, counted and dropped; the node keeps running.
``/diagnostics`` carries rate, latency, drops, fallbacks, backend and map.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter, defaultdict, deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

from ..config import NODE_PARAM_DOCS, NodeConfig
from ..errors import AttnLinkError, ConfigError
from ..pipeline import Frame, PlaceRecognizer, resolve_mode
from .frontend import sensor_qos


class AttnLinkLifecycle(LifecycleNode):
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
        self.tracking = None  # relocalize + tracking: localization.session.MapTracking
        self._last_fix = None
        self._relocalize_srv = None

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
        except Exception as exc:  # noqa: BLE001 - rclpy swallows a transition callback's exception without a word
            import traceback

            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            self.recognizer = None
            return TransitionCallbackReturn.ERROR
        self._pub_diag = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
        if self.tracking is not None and self._relocalize_srv is None:
            self._relocalize_srv = self.create_service(Trigger, "~/relocalize", self._on_relocalize)
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

    # -- tracking (relocalize) -------------------------------------------------------------------
    def _configure_tracking(self, verification: bool = False):
        """The filter over the map's places (map_mode relocalize, parameter tracking); returns the
        odometry track to fill from pose_topic, or None. With ``verification`` (GICP against the
        map's scans, LiDAR queries) a fix is published only while a recent verification agrees
        with it. A map without poses cannot be tracked (and gives no ~/place): logged, tracking
        off. A missing or foreign calibration fails configure."""
        from dataclasses import replace

        from ..localization.calibration import load_for_model
        from ..localization.session import MapTracking
        from ..localization.alignment import AlignConfig
        from ..localization.tracker import TrackerConfig
        from ..localization.visual_odometry import VisualOdometry, VisualOdometryConfig, visual_align
        from ..retrieval.drive_map import PoseTrack

        c = self.cfg
        self.tracking, self._last_fix = None, None
        self._vo, self._vo_pose, self._vo_poses = None, None, {}
        if c.map_mode != "relocalize" or not c.tracking or self.recognizer.map is None:
            return None
        if not bool(self.recognizer.map.poses_known.all()):
            self.get_logger().warning("tracking off: the map's places have no poses (saved without a pose topic)")
            return None
        obs = load_for_model(c.tracking_calibration or None, c.model or None, self.recognizer.fingerprint)
        # no odometry topic: visual odometry from the camera, when asked (image or fused queries)
        visual = c.visual_odometry and c.track_alignment and not c.pose_topic and c.mode != "lidar"
        align = None
        if c.track_alignment:
            align = visual_align(AlignConfig()) if visual else replace(AlignConfig(), drift_per_m=c.track_odometry_drift)
        self.tracking = MapTracking(self.recognizer.map, obs, replace(TrackerConfig(), min_confidence=c.min_confidence if c.min_confidence >= 0 else None,
                                                                      align=align, require_anchor=verification))
        self._vo = VisualOdometry(VisualOdometryConfig(camera_height_m=c.camera_height)) if visual else None
        if c.visual_odometry and not visual:
            self.get_logger().warning("visual_odometry ignored: " + ("pose_topic gives the odometry" if c.pose_topic else
                                                                     "track_alignment is off" if not c.track_alignment else "mode lidar has no camera"))
        return PoseTrack(max_poses=3000) if c.pose_topic else None

    def _visual_step(self, frame) -> None:
        """Visual odometry (parameter visual_odometry): the camera's pose at ``frame``'s stamp in the
        odometry's own frame, kept for the answer (``_odometry_pose``); a frame whose motion is
        unknown breaks the chain (the alignment starts over)."""
        from ..localization.visual_odometry import step_pose

        if self._vo is None or frame.image is None:
            return
        try:
            step = self._vo.step(frame.image, frame.calib.P[:3, :3])
        except AttnLinkError as exc:
            self._bad("visual_odometry", str(exc))
            step = None
        if step is None:
            self._vo_pose = np.eye(4) if self._vo.steps == 0 else None  # the first frame starts the chain
            if self._vo_pose is None:
                self.counters["visual_odometry_unknown"] += 1
                self.tracking.odometry_lost()
        else:
            self._vo_pose = (np.eye(4) if self._vo_pose is None else self._vo_pose) @ step_pose(step)
        self._vo_poses[frame.stamp] = self._vo_pose
        while len(self._vo_poses) > 64:
            self._vo_poses.pop(next(iter(self._vo_poses)))

    def _track(self, stamp: float, hits: list[dict], mode: str, pose=None, checked: int = 0):
        """(fix, (pose, covariance) for ~/place or None) of one answered query; (None, None) with
        tracking off. ``checked``: the leading hits GICP verification tried."""
        if self.tracking is None:
            return None, None
        fix = self.tracking.step(stamp, hits, mode, pose, checked)
        self._last_fix = fix
        self.counters[f"tracking_{fix.state}"] += 1
        return fix, self.tracking.tracked_pose(fix)

    def _on_relocalize(self, request, response):
        """~/relocalize (std_srvs/Trigger): the filter forgets its belief and starts over."""
        with self._out_lock:
            if self.tracking is None:
                response.success, response.message = False, "tracking is off (parameter tracking, map_mode relocalize)"
                return response
            self.tracking.reset()
            self._last_fix = None
            self.counters["relocalize_requests"] += 1
        response.success, response.message = True, "belief reset: relocalising"
        self.get_logger().info(response.message)
        return response

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
        if self.tracking is not None:
            f = self._last_fix
            extra = {**extra, "tracking_state": f.state if f else "relocalising",
                     "tracking_confidence": f"{f.confidence:.3f}" if f else "0.000", "tracking_p_lost": f"{f.p_lost:.3f}" if f else "",
                     "tracking_source": f.source if f else "",  # belief | verified | carried (a verified pose moved by odometry) | aligned (the drive aligned onto the map by odometry)
                     "odometry": self.cfg.pose_topic or "none (map geometry)",
                     "odometry_jumps": str(self.tracking.tracker.odometry_jumps)}  # steps a vehicle cannot drive: taken as no odometry
        st = DiagnosticStatus(level=level, name=f"{self.get_name()}: {self.SUBJECT}", hardware_id="attnlink", message=message)
        rec = self.recognizer
        values = {
            "rate_hz": f"{rate:.2f}", "latency_ms_p50": f"{np.percentile(lat, 50):.1f}", "latency_ms_p99": f"{np.percentile(lat, 99):.1f}",
            "backend": ", ".join(dict.fromkeys(b.describe() for b in rec._backends.values())) if rec else "",
            "map_places": str(len(rec.map)) if rec and rec.map else "0", "mode": self.cfg.mode, "image_domain": self.cfg.image_domain,
            **extra, **{k: str(v) for k, v in sorted(dict(self.counters).items())},  # dict(): one atomic copy
            **{f"stage_ms_{k}_p50": f"{np.percentile(v, 50):.2f}" for k, v in sorted(self.stage_ms.items()) if v},
        }
        st.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(msg)


class SensorNodeMixin:
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


def spin_node(node_cls, poll_s: float = 0.1) -> None:
    """Runs one node (``node_cls()``: a node class or any factory, called after ``rclpy.init``)
    until Ctrl-C or SIGTERM (``ros2 launch`` stopping it), then tears down in order.

    A signal only sets ``entry.STOP`` (see ``ros/entry.py`` for why rclpy's own handlers are
    not used); the executor checks it every ``poll_s`` seconds, the node is destroyed while its
    context is valid, then ROS shuts down. A signal during start-up (the model and map loading)
    ends the process as soon as the node is built.
    """
    from .entry import STOP, catch_stop_signals

    previous = catch_stop_signals()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = executor = None
    try:
        node = node_cls()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not STOP.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=poll_s)
    except ExternalShutdownException:
        pass
    finally:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        for s, h in previous.items():
            signal.signal(s, h)
