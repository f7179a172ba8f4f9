"""The output side of a node: a query's result on its topics.

  ``~/place``   geometry_msgs/PoseWithCovarianceStamped: the vehicle's pose when the top hit is
                GICP-verified against the place's stored scan; else, tracking on (the default), the
                filter's fix when its confidence passes min_confidence (covariance from the belief's
                spread), nothing otherwise; tracking off: the top place's pose with a covariance from
                the score; never for a place without a pose
  ``~/match``   attnlink_msgs/PlaceMatches: the top-k, typed (one message per answered query; an
                online query without a candidate is answered with no hits)
  ``~/loop``    attnlink_msgs/LoopClosure: a loop that goes to SLAM, with its relative pose and
                covariance when verified
  ``lio_loop/loop_closure_detection``  LIO-SAM's own std_msgs/Float64MultiArray [t_query, t_match]
  ``~/markers`` visualization_msgs/MarkerArray: the map's places (latched) and the current match
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from attnlink_msgs.msg import LoopClosure, PlaceMatches
from geometry_msgs.msg import Point, PoseWithCovarianceStamped
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import ColorRGBA, Float64MultiArray
from visualization_msgs.msg import Marker, MarkerArray

from ..config import NodeConfig
from .conversions import stamp_to_sec
from .messages import LOOP_TOPIC, loop_msg, matches_msg, place_covariance, pose_msg


class Outputs:
    """Publishers of a query's result (lifecycle publishers of ``node``)."""

    def __init__(self, node: LifecycleNode, cfg: NodeConfig, fingerprint: str) -> None:
        self.node, self.cfg, self.fingerprint = node, cfg, fingerprint
        self.place = node.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/place", 10)
        self.match = node.create_lifecycle_publisher(PlaceMatches, "~/match", 10)
        self.loop_typed = node.create_lifecycle_publisher(LoopClosure, "~/loop", 10) if cfg.loops else None
        self.loop = node.create_lifecycle_publisher(Float64MultiArray, LOOP_TOPIC, 10) if cfg.loops else None
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.markers = node.create_lifecycle_publisher(MarkerArray, "~/markers", latched) if cfg.markers else None
        self._places: Marker | None = None

    def publish(self, header, hits: list[dict], mode: str, counters: Counter, loop: bool | None = None,
                tracked: tuple | None = None, fix=None) -> None:
        """A query's answer; ``header`` is the query's (its stamp is the query's). ``loop``: None =
        relocalize (a loop when the top-1 passes loop_min_score and loop_min_gap); True/False = the
        caller's decision for the top-1 (the online detector's, or verification's).

        ``~/place``: a GICP-verified top hit gives the vehicle's own pose; else, with tracking on
        (``fix`` given), only ``tracked`` = (pose 4x4, 6x6 covariance) of a fix the filter is
        confident in; with tracking off, the top place's pose with a covariance from its score."""
        query_stamp = stamp_to_sec(header.stamp)
        top = hits[0] if hits else None
        if top is not None and loop is None:
            loop = top["score"] >= self.cfg.loop_min_score and abs(query_stamp - top["stamp"]) >= self.cfg.loop_min_gap
        loop = bool(top is not None and loop)
        pose = cov = None
        if top is not None and top.get("vehicle_pose") is not None:  # verified against the place's stored scan
            pose, cov = top["vehicle_pose"], np.asarray(top["vehicle_covariance"]).reshape(-1).tolist()
        elif tracked is not None:
            pose, cov = tracked
        elif fix is None and top is not None and top.get("pose") is not None:  # tracking off: every frame's top place
            pose, cov = top["pose"], place_covariance(top["score"])
        if pose is not None:
            msg = PoseWithCovarianceStamped()
            msg.header.stamp = header.stamp
            msg.header.frame_id = self.cfg.map_frame
            msg.pose.pose = pose_msg(pose)
            msg.pose.covariance = cov
            self.place.publish(msg)
            counters["place_published"] += 1
        self.match.publish(matches_msg(header, self.cfg.map_frame, hits, mode, self.fingerprint, self.cfg.map_mode, loop, fix))
        if loop and self.loop is not None:
            self.loop.publish(Float64MultiArray(data=[float(query_stamp), float(top["stamp"])]))
            self.loop_typed.publish(loop_msg(header, header.frame_id, top))
            counters["loops_published"] += 1
        if self.markers is not None and top is not None and top.get("pose") is not None:
            self.markers.publish(MarkerArray(markers=self._marker_list(header, top)))

    def map_markers(self, xy: np.ndarray, z: np.ndarray | None = None) -> None:
        """The map's places as one POINTS marker (latched, so RViz gets it when it joins); places
        without a pose are left out."""
        if self.markers is None:
            return
        mk = Marker(ns="places", id=0, type=Marker.POINTS, action=Marker.ADD)
        mk.header.frame_id = self.cfg.map_frame
        mk.scale.x = mk.scale.y = 1.0
        mk.color = ColorRGBA(r=0.6, g=0.6, b=0.6, a=1.0)
        zz = np.zeros(len(xy)) if z is None else z
        mk.points = [Point(x=float(a), y=float(b), z=float(c)) for (a, b), c in zip(xy, zz) if np.isfinite((a, b, c)).all()]
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
