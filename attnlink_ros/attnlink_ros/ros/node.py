"""The single-process node ``attnlink_node`` (node ``attnlink``): front end, encoder, retrieval, outputs.

Its parts live beside it, one room per role: ``frontend.py`` (sensor messages -> frames),
``outputs.py`` (the result topics), ``lifecycle.py`` (parameters, lifecycle, diagnostics),
``messages.py`` (the typed ``attnlink_msgs`` conversions); the split deployment's two nodes are in
``split.py``. The core (``pipeline``, ``retrieval``) knows nothing of rclpy.

``map_mode: relocalize`` matches a prebuilt map (``build-map``, or one saved from a drive);
``map_mode: online`` grows a map of the drive's keyframes and closes loops on it. In online mode
``pose_topic`` (nav_msgs/Odometry, the LiDAR's pose, e.g. SLAM's odometry) gives the keyframes
their poses and the ``~/save_map`` service (std_srvs/Trigger) writes the keyframes (heading-view
descriptors, scans, poses if known) as a normal map artifact at ``saved_map``, atomically, for a
later ``map_mode: relocalize``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from nav_msgs.msg import Odometry
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from std_srvs.srv import Trigger

from ..errors import AttnLinkError
from ..pipeline import Frame, PlaceRecognizer
from .conversions import stamp_to_sec
from .frontend import SensorFrontEnd
from .lifecycle import AttnLinkLifecycle, SensorNodeMixin
from .messages import pose_matrix
from .outputs import Outputs
from .sync import ApproximateSync


class AttnLinkNode(SensorNodeMixin, AttnLinkLifecycle):
    """The single-process node: front end, encoder, retrieval and outputs."""

    def __init__(self, node_name: str = "attnlink", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.front: SensorFrontEnd | None = None
        self.outputs: Outputs | None = None
        self._verifier = None  # relocalize + verify_async: retrieval.verifier.VerifierProcess
        self.detector = None
        self._poses = None  # online + pose_topic: retrieval.drive_map.PoseTrack of the LiDAR's pose
        self._map_lock = threading.Lock()  # keyframes grow in the sensor callback, ~/save_map reads them
        self._save_srv = None
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
                                          crop_top=None if c.crop_top < 0 else c.crop_top, image_domain=c.image_domain)
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
        # with GICP verification of LiDAR queries, published fixes must agree with a recent verification
        self._poses = self._configure_tracking(verification=self._verify is not None and c.mode != "image")
        self._warm_up()
        self.outputs = Outputs(self, c, self.recognizer.fingerprint)
        self._close_verifier()
        if online:
            from ..retrieval.drive_map import PoseTrack

            self._poses = PoseTrack() if c.pose_topic else None
            if self._save_srv is None:
                self._save_srv = self.create_service(Trigger, "~/save_map", self._on_save_map)
        if self._verify is not None and c.verify_async:
            from ..retrieval.verifier import VerifierProcess

            self._verifier = VerifierProcess(self.recognizer.map.scans, self._verify, self._on_verified)
        where = "online map (grows from the drive)" if online else f"map {len(self.recognizer.map)} places" + (
            ", stored scans: matches GICP-verified" + (" (own process)" if self._verifier else "") + ", ~/place metric"
            if self._verify else "")
        if self.tracking is not None:
            thresholds = {m: self.tracking.threshold(m) for m in ("image", "lidar", "fused")}
            conf = f"{c.min_confidence}" if c.min_confidence >= 0 else \
                "per mode " + ", ".join(f"{m} {'never' if t is None else t}" for m, t in thresholds.items())
            odometry = f"odometry {c.pose_topic}" if self._poses is not None else \
                f"visual odometry (camera {c.camera_height:g} m above the road)" if self._vo is not None else None
            where += (f", tracking (min_confidence {conf}" + (f", {odometry}" + (f", drive aligned onto the map (odometry drift {self.tracking.cfg.align.drift_per_m:g} a metre)" if self.tracking.cfg.align else "")
                                                              if odometry else ", no odometry")
                      + (", fixes anchored by GICP" if self.tracking.cfg.require_anchor else "") + ")")
        self.get_logger().info(f"configured: model {self.recognizer.fingerprint[:12]}, {where}, mode {c.mode}, backend {c.backend}, "
                               f"image domain {c.image_domain}")
        if c.image_domain == "auto" and c.mode != "lidar" and self.recognizer.cfg.mono_encoder == "mixture":
            self.get_logger().info("image_domain auto: a per-image gate picks the pseudo-LiDAR network and takes dark or blurred "
                                   "photographs for renders; on a vehicle set image_domain: camera (docs/deployment.md)")
        if self.tracking is not None and self.tracking.threshold(c.mode) is None:
            self.get_logger().warning(f"mode {c.mode}: ~/place carries no fix of the filter's belief (the tracking calibration found "
                                      f"no confidence at which {c.mode} fixes were precise on its validation towns); ~/match still "
                                      "has the filter's state and fix; set min_confidence to publish them anyway"
                                      + ("" if (self._poses is not None or self._vo is not None) and self.tracking.cfg.align else
                                         ", or give odometry (pose_topic, or visual_odometry: true) with track_alignment: the drive "
                                         "aligned onto the map is published"))

    def _subscribe(self, qos):
        subs = self._sensor_subscriptions(qos)
        if self._poses is not None:  # odometry: reliable, queued (every pose is kept)
            subs.append(self.create_subscription(Odometry, self.cfg.pose_topic, self._on_pose, 100))
        return subs

    def _activated(self) -> None:
        if self.recognizer.map is not None:
            t = self.recognizer.map.table
            self.outputs.map_markers(t.xy, t.poses[:, 2, 3])

    def _process(self, frame: Frame, header) -> None:
        if self.detector is not None:
            return self._process_online(frame, header)
        t0 = time.perf_counter()
        self._visual_step(frame)  # visual odometry (no pose_topic), in frame order
        offload = self._verifier is not None
        k = max(self.cfg.k, self.tracking.cfg.k) if self.tracking is not None else self.cfg.k  # the filter observes its calibrated k
        try:
            res = self.recognizer.query(frame, k, self._mode_for(frame), None if offload else self._verify)
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
            fix, tracked = self._track(frame.stamp, res.hits, res.mode, self._odometry_pose(frame.stamp), res.registrations)
            self.outputs.publish(header, res.hits[: self.cfg.k], res.mode, self.counters, loop=loop, tracked=tracked, fix=fix)
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
                with self._map_lock:
                    det.map.maybe_add(frame.stamp, key, frame.points)
        except (AttnLinkError, ValueError) as exc:
            self._bad("query", str(exc))
            return
        with self._out_lock:
            self.counters["keyframes"] = len(det.map)
            hits = []  # no candidate: answered with no hits
            if loop.index >= 0:
                if not loop.published:
                    self.counters["loop_candidates_rejected"] += 1
                # the drive's own keyframes: no map pose (SLAM's pose graph holds them)
                hits = [{"index": loop.index, "stamp": loop.t_match, "score": loop.score, "pose": None, "sequence": "", "frame": -1,
                         "verified": loop.verified, "relative_pose": loop.T, "covariance": loop.covariance,
                         "inlier_ratio": loop.inlier_ratio, "view_yaw_deg": loop.view_yaw_deg}]
            self.outputs.publish(header, hits, mode, self.counters, loop=loop.published)
        self._processed(t0, {**res.timings_ms, "loop_search_verify": 1e3 * (t2 - t1)})

    def _odometry_pose(self, stamp: float):
        """The camera's pose from pose_topic at ``stamp`` (LiDAR pose -> camera 0), or from visual
        odometry, or None."""
        if self._vo is not None:
            return self._vo_poses.get(stamp)
        if self._poses is None or not len(self._poses):
            return None
        T = self._poses.at([stamp], self.cfg.pose_tolerance)[0]
        if not np.isfinite(T).all():
            self.counters["odometry_missing"] += 1
            return None
        return T @ np.linalg.inv(self.front.T) if self.front.T is not None else T

    # -- online: the drive's poses and its map -------------------------------------------------------
    def _on_pose(self, msg: Odometry) -> None:
        try:
            T = pose_matrix(msg.pose.pose)
            if not np.isfinite(T).all():
                raise ValueError("pose is not finite")
            self._poses.add(stamp_to_sec(msg.header.stamp), T)
        except ValueError as exc:
            self._bad("pose", str(exc))

    def save_map(self, out: str | None = None) -> tuple[str, int, str]:
        """Writes the drive's keyframes as a map artifact (atomically); returns (path, places,
        pose source). Raises AttnLinkError when there is nothing to save or the write fails."""
        from ..retrieval.drive_map import drive_place_map

        if self.detector is None:
            raise AttnLinkError("~/save_map needs map_mode: online (a relocalizing node's map is already on disk)")
        c = self.cfg
        with self._map_lock:
            online = self.detector.map
            n = len(online)
            if n == 0:
                raise AttnLinkError("no keyframes yet: nothing to save")
            stamps = online.stamps[:n].copy()
            poses, source = None, "none"
            if self._poses is not None and len(self._poses):
                # the pose topic gives the LiDAR's pose; map poses are camera 0's (KITTI convention)
                T_lidar = self._poses.at(stamps, c.pose_tolerance)
                poses = T_lidar @ np.linalg.inv(self.front.T) if self.front.T is not None else T_lidar
                source = f"odometry {c.pose_topic} (LiDAR pose -> camera 0)"
            pm = drive_place_map(online, self.recognizer.fingerprint, poses, source)
        path = pm.save(out or c.saved_map)
        return str(path), len(pm), pm.manifest["poses"]

    def _on_save_map(self, request, response):
        try:
            path, n, poses = self.save_map()
        except (AttnLinkError, OSError, ValueError) as exc:
            response.success, response.message = False, f"map not saved: {exc}"
            self.get_logger().error(response.message)
            return response
        response.success = True
        response.message = f"saved {n} places to {path} (poses: {poses})"
        self.get_logger().info(response.message)
        return response

