"""The real node over real rclpy: a publisher replays synthetic KITTI-layout frames, a subscriber
listens to ~/place and /diagnostics. Bad messages are sent in between."""

import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from attnlink_ros.data.kitti import KittiSequence
from attnlink_ros.model import AttnLink, variant
from attnlink_ros.model.io import save_model
from attnlink_ros.pipeline import Frame, PlaceRecognizer
from attnlink_ros.retrieval.place_map import PlaceMap, PlaceTable
from attnlink_ros.ros.conversions import bgr_to_image, calibration_to_camera_info, sec_to_stamp, stamp_to_sec, xyzi_to_pointcloud2
from attnlink_msgs.msg import Descriptor, LoopClosure, PlaceMatches
from std_msgs.msg import Float64MultiArray
from visualization_msgs.msg import MarkerArray

from attnlink_ros.ros.messages import LOOP_TOPIC, descriptor_msg, parse_matches, rotation_to_quaternion
from attnlink_ros.ros.node import AttnLinkNode
from attnlink_ros.ros.split import FrontEndNode, RetrievalNode


@pytest.fixture(scope="module")
def model_and_map(synth_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node")
    torch.manual_seed(0)
    save_model(AttnLink(variant("attnlink-lite")).eval(), tmp / "lite")
    seq = KittiSequence(synth_root, "00")
    rec = PlaceRecognizer(tmp / "lite", None, backend="torch")
    from attnlink_ros.retrieval.views import view_offsets, view_yaws

    yaws = view_yaws(2)  # places held as two heading views (0, 180)
    desc = np.stack([rec.encode_views(seq.read_scan(i), seq.calib, yaws, offsets=view_offsets(yaws)) for i in range(len(seq))])
    table = PlaceTable(seq.poses, seq.times, np.full(len(seq), "00"), np.arange(len(seq)), seq.xy)
    PlaceMap.build(desc, table, rec.fingerprint, view_yaws_deg=yaws, view_offsets_m=view_offsets(yaws)).save(tmp / "map")
    return tmp / "lite", tmp / "map", seq


def _spinning(*nodes, threads: int = 3):
    """An executor spinning ``nodes`` in a thread of its own: (executor, thread)."""
    ex = MultiThreadedExecutor(num_threads=threads)
    for n in nodes:
        ex.add_node(n)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    return ex, spin


def _wait_for_readers(pubs, settle: float = 1.0) -> None:
    """Until every publisher has a reader (10 s at most), then ``settle`` s more: the node's readers
    match too (discovery is not symmetric)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs):
        time.sleep(0.05)
    time.sleep(settle)


@pytest.fixture()
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()



def test_node_end_to_end(ros, model_and_map):
    model, map_dir, seq = model_and_map
    node = AttnLinkNode(parameter_overrides=[
        Parameter("model", value=str(model)), Parameter("map", value=str(map_dir)), Parameter("backend", value="torch"),
        Parameter("mode", value="fused"), Parameter("lidar_to_camera", value=seq.calib.T_cam_lidar.reshape(-1).tolist()),
        Parameter("autostart", value=True), Parameter("loop_min_gap", value=0.0), Parameter("loop_min_score", value=-1.0),
        Parameter("tracking", value=False),  # the single-frame path: every frame's top place on ~/place
    ])
    assert node.outputs is not None, "autostart did not configure the node"
    io = rclpy.create_node("replayer")
    pubs = {
        "image": io.create_publisher(Image, "image", qos_profile_sensor_data),
        "info": io.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data),
        "points": io.create_publisher(PointCloud2, "points", qos_profile_sensor_data),
    }
    places, diags = [], []
    io.create_subscription(PoseWithCovarianceStamped, "/attnlink/place", places.append, 10)
    io.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    matches, loops, typed_loops, markers = [], [], [], []
    io.create_subscription(PlaceMatches, "/attnlink/match", matches.append, 10)
    io.create_subscription(Float64MultiArray, "/" + LOOP_TOPIC, loops.append, 10)
    io.create_subscription(LoopClosure, "/attnlink/loop", typed_loops.append, 10)
    from rclpy.qos import DurabilityPolicy, QoSProfile

    io.create_subscription(MarkerArray, "/attnlink/markers", markers.append, QoSProfile(depth=5, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    ex, spin = _spinning(node, io)
    try:
        time.sleep(1.0)  # discovery
        sent = []
        for i in range(12):
            t = 1000.0 + float(seq.times[i])
            h = Header(stamp=sec_to_stamp(t), frame_id="camera")
            pubs["info"].publish(calibration_to_camera_info(seq.calib, h))
            if i == 4:  # an unknown encoding and a truncated cloud: dropped, counted, survived
                bad = bgr_to_image(seq.read_image(i), h)
                bad.encoding = "yuv422"
                pubs["image"].publish(bad)
                cloud = xyzi_to_pointcloud2(seq.read_scan(i), h)
                cloud.data = bytes(cloud.data)[:-5]
                pubs["points"].publish(cloud)
            else:
                pubs["image"].publish(bgr_to_image(seq.read_image(i), h, "rgb8"))
                pubs["points"].publish(xyzi_to_pointcloud2(seq.read_scan(i), h))
                sent.append(t)
            time.sleep(0.4)
        deadline = time.time() + 5
        while time.time() < deadline and len(diags) < 2:
            time.sleep(0.1)
        time.sleep(1.2)
    finally:
        ex.shutdown()
        spin.join(timeout=5)
    stamps = [stamp_to_sec(m.header.stamp) for m in places]
    assert len(places) >= 6, f"only {len(places)} places published"
    assert all(any(abs(s - t) < 1e-6 for t in sent) for s in stamps)  # stamped with the query's time
    assert all(m.header.frame_id == "map" for m in places)
    assert places[-1].pose.covariance[0] > 0
    values = {kv.key: kv.value for kv in diags[-1].status[0].values}
    assert int(values["dropped_bad_image_encoding"]) >= 1 and int(values["dropped_bad_cloud_size"]) >= 1
    assert int(values["frames_processed"]) >= 6 and values["map_places"] == "24"
    assert values["image_domain"] == "auto" and values["mode"] == "fused"
    processed_after_bad = [s for s in stamps if s > 1000.0 + float(seq.times[4])]
    assert processed_after_bad, "the node stopped after the bad messages"
    # ~/match: attnlink_msgs/PlaceMatches, k hits best first, the same place as ~/place
    assert len(matches) == len(places)
    last = matches[-1]
    assert last.header.frame_id == "map" and last.mode == "fused" and last.map_mode == "relocalize" and last.loop_closure
    assert last.model_fingerprint == node.recognizer.fingerprint and len(last.model_fingerprint) == 64
    raw = last.hits[0]
    assert raw.sequence == "00" and raw.frame == raw.map_index and raw.has_place_pose and not raw.verified
    assert raw.view in (0, 1) and raw.view_yaw_deg == (0.0, 180.0)[raw.view]
    hits = parse_matches(last)
    assert len(hits) == 5 and hits[0]["relative_pose"] is None and np.isnan(hits[0]["rel_x"])
    assert hits[0]["query_stamp"] == pytest.approx(stamps[-1]) and hits[0]["verified"] is False
    np.testing.assert_allclose(hits[0]["place_pose"], seq.poses[hits[0]["map_index"]], atol=1e-6)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert hits[0]["place_x"] == pytest.approx(places[-1].pose.pose.position.x)
    assert hits[0]["place_stamp"] == pytest.approx(float(seq.times[int(hits[0]["map_index"])]))
    # each place once, at its best heading view (column view_yaw_deg)
    assert len({h["map_index"] for h in hits}) == 5 and all(h["view_yaw_deg"] in (0.0, 180.0) for h in hits)
    # LIO-SAM pairs [t_query, t_match] (thresholds opened in this test), markers: map places + match
    assert len(loops) == len(places) and list(loops[-1].data) == pytest.approx([hits[0]["query_stamp"], hits[0]["place_stamp"]])
    # and the typed loop: the same pair, unverified here (this map has no scans)
    assert len(typed_loops) == len(loops) and stamp_to_sec(typed_loops[-1].header.stamp) == pytest.approx(hits[0]["query_stamp"])
    assert stamp_to_sec(typed_loops[-1].match_stamp) == pytest.approx(hits[0]["place_stamp"], abs=1e-6)
    assert typed_loops[-1].match_index == hits[0]["map_index"] and not typed_loops[-1].verified
    assert markers and len(markers[0].markers[0].points) == 24
    assert any(m.ns == "match" for m in markers[-1].markers)
    assert int(values["loops_published"]) >= 6
    node.destroy_node()
    io.destroy_node()


def test_lidar_lost_and_back(ros, model_and_map):
    """A fused node whose LiDAR stops: after sensor_timeout of message time the images are queried
    alone (fallback_image), /diagnostics names the lost sensor (WARN); when the LiDAR comes back,
    fused pairs resume. Every image is answered."""
    from diagnostic_msgs.msg import DiagnosticStatus

    model, map_dir, seq = model_and_map
    node = AttnLinkNode(parameter_overrides=[
        Parameter("model", value=str(model)), Parameter("map", value=str(map_dir)), Parameter("backend", value="torch"),
        Parameter("mode", value="fused"), Parameter("lidar_to_camera", value=seq.calib.T_cam_lidar.reshape(-1).tolist()),
        Parameter("autostart", value=True), Parameter("sensor_timeout", value=0.5), Parameter("reliability", value="reliable"),
        Parameter("tracking", value=False)])
    io = rclpy.create_node("sensors")
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {k: io.create_publisher(t, k, qos) for k, t in (("image", Image), ("camera_info", CameraInfo), ("points", PointCloud2))}
    places, diags = [], []
    io.create_subscription(PoseWithCovarianceStamped, "/attnlink/place", places.append, 50)
    io.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 50)
    ex, spin = _spinning(node, io)
    phases = [("both", 6), ("image", 24), ("both", 12)]
    try:
        _wait_for_readers(pubs.values())
        k, lost_seen = 0, []
        for what, count in phases:
            for _ in range(count):
                h = Header(stamp=sec_to_stamp(2000.0 + 0.1 * k), frame_id="camera")
                i = k % len(seq)
                before = {s: node.counters[f"{s}_in"] for s in ("image", "points")}
                pubs["camera_info"].publish(calibration_to_camera_info(seq.calib, h))
                pubs["image"].publish(bgr_to_image(seq.read_image(i), h))
                sent = ("image", "points") if what == "both" else ("image",)
                if what == "both":
                    pubs["points"].publish(xyzi_to_pointcloud2(seq.read_scan(i), h))
                # lock step: the next frame goes out once the node took this one, so that a loaded
                # machine cannot make DDS replace a sample in the node's depth-1 queue (the test is
                # about the sensor timeout, not about delivery under load)
                wait_until = time.monotonic() + 5
                while time.monotonic() < wait_until and any(node.counters[f"{s}_in"] <= before[s] for s in sent):
                    time.sleep(0.01)
                k += 1
                time.sleep(0.15)
            lost_seen.append(len(diags))
        time.sleep(1.5)
    finally:
        ex.shutdown()
        spin.join(timeout=5)
    counters = dict(node.counters)
    node.destroy_node()
    io.destroy_node()
    n_image_only = phases[1][1]
    # the first images of the gap wait (0.5 s of stamps) for clouds that never come, then pass alone
    assert n_image_only - 7 <= counters.get("fallback_image", 0) <= n_image_only, counters
    assert counters["frames_processed"] >= sum(c for _, c in phases) - 7 and "fallback_lidar" not in counters, counters
    assert len(places) == counters["frames_processed"]
    # fused again after the gap: the images that went alone were the gap's, and at most the first
    # after it (its cloud may come after it, and the LiDAR still counts as lost then); a frame DDS
    # replaced under load is missing, not a fallback; the frames after the gap were answered
    stamps = sorted(stamp_to_sec(m.header.stamp) for m in places)
    gap_start, back = (2000.0 + 0.1 * (phases[0][1] - 0.5), 2000.0 + 0.1 * (phases[0][1] + n_image_only - 0.5))
    in_gap = sum(gap_start < s < back for s in stamps)
    assert in_gap <= counters.get("fallback_image", 0) <= in_gap + 1, (counters, stamps)
    assert sum(s > back for s in stamps) >= phases[2][1] - 4 and stamps[-1] > 2000.0 + 0.1 * (k - 3), stamps
    during = [d.status[0] for d in diags[lost_seen[0]:lost_seen[1]]]
    assert any(st.level == DiagnosticStatus.WARN and st.message == "sensor lost: points" for st in during), [st.message for st in during]
    after = [d.status[0] for d in diags[lost_seen[1]:lost_seen[2]]]
    assert any(st.level == DiagnosticStatus.OK and st.message == "running" for st in after), [st.message for st in after]


def test_configure_fails_cleanly_on_missing_map(ros, model_and_map, tmp_path):
    model, _, _ = model_and_map
    node = AttnLinkNode(parameter_overrides=[Parameter("model", value=str(model)), Parameter("map", value=str(tmp_path / "none"))])
    from rclpy.lifecycle import TransitionCallbackReturn

    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert node.recognizer is None
    # a file where the map directory should be: the same clean failure (it was a NotADirectoryError)
    (tmp_path / "a_file").write_text("not a map")
    assert node.set_parameters([Parameter("map", value=str(tmp_path / "a_file"))])[0].successful
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE and node.recognizer is None
    res = node.set_parameters([Parameter("backend", value="tpu")])
    assert not res[0].successful and "backend" in res[0].reason and "tpu" in res[0].reason
    for name, bad in (("k", 0), ("mode", "sonar"), ("lidar_to_camera", [1.0, 2.0])):
        assert not node.set_parameters([Parameter(name, value=bad)])[0].successful, name
    assert node.set_parameters([Parameter("k", value=3)])[0].successful
    node.destroy_node()
    # a camera image domain asks for the camera network of a mixture model: this one has a single network
    _, map_dir, _ = model_and_map
    node = AttnLinkNode(parameter_overrides=[Parameter("model", value=str(model)), Parameter("map", value=str(map_dir)),
                                             Parameter("backend", value="torch"), Parameter("image_domain", value="camera"),
                                             Parameter("autostart", value=False)])
    assert not node.set_parameters([Parameter("image_domain", value="infrared")])[0].successful
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE and node.recognizer is None
    node.destroy_node()


def test_rotation_to_quaternion():
    for yaw in (0.0, 0.7, 2.5, -3.0):
        c, s = np.cos(yaw), np.sin(yaw)
        R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        q = rotation_to_quaternion(R)
        assert q == pytest.approx((0, 0, np.sin(yaw / 2) * np.sign(np.cos(yaw / 2)), abs(np.cos(yaw / 2))), abs=1e-9) or \
            q == pytest.approx((0, 0, -np.sin(yaw / 2), -np.cos(yaw / 2)), abs=1e-9)


def test_split_nodes_descriptor_topic(ros, model_and_map):
    """Front end (sensors -> ~/descriptor) and retrieval (descriptor -> ~/place, ~/match) as two
    nodes give the single node's result; a descriptor of another model is counted and dropped."""
    model, map_dir, seq = model_and_map
    common = [Parameter("model", value=str(model)), Parameter("backend", value="torch"), Parameter("mode", value="lidar")]
    front = FrontEndNode(parameter_overrides=common + [Parameter("lidar_to_camera", value=seq.calib.T_cam_lidar.reshape(-1).tolist())])
    retr = RetrievalNode(parameter_overrides=common + [Parameter("map", value=str(map_dir)), Parameter("tracking", value=False)],
                         cli_args=["--ros-args", "-r", "descriptor:=/attnlink_frontend/descriptor"])
    io = rclpy.create_node("replayer2")
    info = io.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
    pts = io.create_publisher(PointCloud2, "points", qos_profile_sensor_data)
    fake = io.create_publisher(Descriptor, "/attnlink_frontend/descriptor", 10)
    matches, descriptors = [], []
    io.create_subscription(PlaceMatches, "/attnlink_retrieval/match", matches.append, 10)
    io.create_subscription(Descriptor, "/attnlink_frontend/descriptor", descriptors.append, 10)
    ex, spin = _spinning(front, retr, io, threads=4)
    rec = PlaceRecognizer(model, map_dir, backend="torch")
    want = {}
    try:
        time.sleep(1.0)
        for i in (3, 9, 15):
            t = 2000.0 + float(seq.times[i])
            h = Header(stamp=sec_to_stamp(t), frame_id="velodyne")
            info.publish(calibration_to_camera_info(seq.calib, h))
            time.sleep(0.05)
            pts.publish(xyzi_to_pointcloud2(seq.read_scan(i), h))
            want[t] = [hit["index"] for hit in rec.query(Frame(t, seq.calib, points=seq.read_scan(i)), 5, "lidar").hits]
            time.sleep(0.5)
        h = Header(stamp=sec_to_stamp(1.0))
        fake.publish(descriptor_msg(np.ones(256, np.float32) / 16, h, "lidar", "0" * 64))  # another model's
        fake.publish(descriptor_msg(np.ones(64, np.float32) / 8, h, "lidar", rec.fingerprint))  # another dimension
        bad_mode = descriptor_msg(np.ones(256, np.float32) / 16, h, "lidar", rec.fingerprint)
        bad_mode.mode = "sonar"
        fake.publish(bad_mode)
        time.sleep(1.0)
    finally:
        ex.shutdown()
        spin.join(timeout=5)
    got = {}
    for m in matches:
        hits = parse_matches(m)
        assert m.mode == "lidar" and m.model_fingerprint == rec.fingerprint
        got[round(hits[0]["query_stamp"], 6)] = [int(h["map_index"]) for h in hits]
    assert len(got) == 3
    for t, idx in want.items():
        assert got[round(t, 6)] == idx
    # the typed descriptor: the query's header, mode, full fingerprint, unit-norm float32 values
    real = [d for d in descriptors if d.model_fingerprint == rec.fingerprint and len(d.data) == 256 and d.mode == "lidar"]
    assert len(real) == 3 and real[0].header.frame_id == "velodyne"
    assert np.linalg.norm(np.asarray(real[0].data)) == pytest.approx(1.0, abs=1e-3)
    for kind in ("descriptor_model", "descriptor_dim", "descriptor_mode"):
        assert retr.counters[f"dropped_bad_{kind}"] == 1, (kind, retr.counters)
    for n in (front, retr, io):
        n.destroy_node()


def test_node_on_real_kitti_frames_with_calib_file(kitti_root, tmp_path):
    """Real KITTI 00 frames replayed (the replay tool, lockstep on ~/match) through the node
    configured from calib_file; every frame is answered, stamped with its own time."""
    from attnlink_ros.data.bags import kitti_records
    from attnlink_ros.retrieval.build import build_map_from_sequence

    from .conftest import replay_through_node

    seq = KittiSequence(kitti_root, "00")
    pm, _ = build_map_from_sequence(PlaceRecognizer(None, None, backend="onnxruntime"), seq, progress=False)
    pm.save(tmp_path / "map")
    rclpy.init()
    try:
        node = AttnLinkNode(parameter_overrides=[Parameter("map", value=str(tmp_path / "map")), Parameter("backend", value="onnxruntime"),
                                                 Parameter("calib_file", value=str(seq.dir / "calib.txt"))])
        assert node.outputs is not None
        io = rclpy.create_node("kitti_listener")
        matches = []
        io.create_subscription(PlaceMatches, "/attnlink/match", matches.append, 20)
        stats, counters = replay_through_node(node, io, kitti_records(kitti_root, "00"))
    finally:
        rclpy.shutdown()
    frames = seq.available_frames()
    n = len(frames)
    assert stats.frames == n and stats.lockstep_timeouts == 0
    got = [parse_matches(m)[0] for m in matches]
    assert [round(h["query_stamp"], 6) for h in got] == [round(float(seq.times[i]), 6) for i in frames]
    assert counters["frames_processed"] == n and not any(k.startswith("dropped_bad") for k in counters)
    # the frames lie within ~8 m: every top-1 place is within 10 m of the query's true position
    for i, h in zip(frames, got):
        assert np.hypot(h["place_x"] - seq.xy[i, 0], h["place_z"] - seq.xy[i, 1]) <= 10.0


def _bench_e2e(kitti_root, *extra):
    import os
    import subprocess
    import sys

    from .conftest import PKG

    import signal

    # SIGINT back to its default in the child: a test run launched from a background shell inherits
    # SIGINT ignored (session 11 lost two `make test` runs to that: the Ctrl-C below never arrived)
    return subprocess.Popen([sys.executable, str(PKG / "bench" / "bench_ros_e2e.py"), "--data", str(kitti_root), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_end_to_end_benchmark_exits_cleanly(kitti_root, tmp_path):
    """bench_ros_e2e across processes on real KITTI frames: a short run ends with exit 0, its
    table and JSON, no traceback; Ctrl-C while it measures ends it with 130 and no traceback,
    after stopping its child process (communicate() returning means no child holds its pipes)."""
    import json
    import signal

    p = _bench_e2e(kitti_root, "--frames", "3", "--json", str(tmp_path / "e2e.json"))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "Traceback" not in err and "RCLError" not in err, err[-2000:]
    rows = json.loads((tmp_path / "e2e.json").read_text())
    assert rows["end_to_end_ms"]["n"] == 3 and rows["end_to_end_ms"]["p50"] > 0 and "end to end" in out
    p = _bench_e2e(kitti_root, "--frames", "100000")  # would run for hours: interrupted while it measures
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not _child_named(p.pid, "--relay"):
        time.sleep(0.2)
    assert _child_named(p.pid, "--relay"), "the relay process never started"
    time.sleep(3.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err and "RCLError" not in err, err[-2000:]
    assert "interrupted" in err


def _child_named(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a live child whose command line contains ``name``."""
    from pathlib import Path

    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            state = stat.rsplit(")", 1)[1].split()[0]
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and state != "Z" and name in cmd:
            return True
    return False


def test_node_process_interrupted_at_random_moments_exits_cleanly(ros, model_and_map, tmp_path):
    """The real ``attnlink_node`` process (GICP verifier in its own process), fed frames at
    ~12 Hz, stopped many times at random moments (SIGINT, every third time SIGTERM as ``ros2
    launch`` sends): from its start-up (imports, model and map loading, lifecycle transitions) to
    well after it answers frames. Every time it exits 0 within 30 s, with no traceback and no
    RCLError (the shutdown race of issue 19)."""
    import os
    import random
    import signal
    import subprocess

    from attnlink_ros.launch_logic import attnlink_nodes
    from attnlink_ros.retrieval.loops import ScanStore

    model, map_dir, seq = model_and_map
    pm = PlaceMap.load(map_dir)
    pm.attach_scans(ScanStore([seq.read_scan(i)[:, :3] for i in range(len(seq))], voxel=0.5))
    pm.save(tmp_path / "map_scans")  # stored scans: the node starts its verifier process
    (spec,) = attnlink_nodes(model=str(model), map=str(tmp_path / "map_scans"), backend="torch", mode="fused",
                             calib_file=str(seq.dir / "calib.txt"))
    spec.parameters["tracking"] = False  # a test model without a tracking calibration
    io = rclpy.create_node("interrupter")
    pubs = {k: io.create_publisher(t, k, qos_profile_sensor_data) for k, t in
            (("image", Image), ("camera_info", CameraInfo), ("points", PointCloud2))}
    frames = [(seq.read_image(i), seq.read_scan(i)) for i in range(4)]
    flowing = threading.Event()
    flowing.set()

    def feed():
        k = 0
        while flowing.is_set():
            img, pts = frames[k % len(frames)]
            h = Header(stamp=sec_to_stamp(100.0 + 0.1 * k), frame_id="sensor")
            pubs["camera_info"].publish(calibration_to_camera_info(seq.calib, h))
            pubs["image"].publish(bgr_to_image(img, h))
            pubs["points"].publish(xyzi_to_pointcloud2(pts, h))
            k += 1
            time.sleep(0.08)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    rng = random.Random(19)
    outcomes = []
    try:
        # the first run measures how long start-up takes (until the node answers on ~/match)
        t0 = time.monotonic()
        p = subprocess.Popen(spec.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        while time.monotonic() - t0 < 120 and io.count_publishers("/attnlink/match") == 0 and p.poll() is None:
            time.sleep(0.05)
        startup = time.monotonic() - t0
        assert p.poll() is None, p.communicate()[1][-2000:]
        delays = [startup + 1.0] + [rng.uniform(0.5, startup + 2.5) for _ in range(9)]
        for run, delay in enumerate(delays):
            if run:
                p = subprocess.Popen(spec.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
            time.sleep(max(0.0, delay - (startup if run == 0 else 0.0)))
            sig = signal.SIGTERM if run % 3 == 2 else signal.SIGINT
            p.send_signal(sig)
            try:
                out, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
                err += "\n<did not exit within 30 s>"
            outcomes.append((round(delay, 2), sig.name, p.returncode, err))
            while io.count_publishers("/attnlink/match") > 0 and time.monotonic() - t0 < 600:
                time.sleep(0.05)  # the next run starts with the last one gone from the graph
    finally:
        flowing.clear()
        feeder.join(timeout=5)
        io.destroy_node()
    bad = [(d, s, rc, e[-1500:]) for d, s, rc, e in outcomes if rc != 0 or "Traceback" in e or "RCLError" in e or "did not exit" in e]
    assert len(outcomes) == 10 and not bad, f"start-up {startup:.1f} s; failed runs (delay s, signal, exit code, stderr): {bad}"


def test_node_tracks_publishes_only_confident_fixes_and_relocalizes(ros, model_and_map, synth_root, tmp_path):
    """Tracking on (the default) over real rclpy, with the shipped model and its shipped tracking
    calibration: ~/match carries the filter's state, fix and each hit's posterior for every frame;
    ~/place only the fixes the filter is confident in (right ones, with the belief's covariance);
    ~/relocalize (std_srvs/Trigger) resets the belief. A model without a calibration fails
    configure with the reason."""
    from std_srvs.srv import Trigger

    from attnlink_ros.data.bags import kitti_records
    from attnlink_ros.retrieval.build import build_map_from_sequence

    from .conftest import replay_through_node

    model, map_dir, seq = model_and_map
    common = [Parameter("backend", value="onnxruntime"), Parameter("mode", value="lidar"),
              Parameter("lidar_to_camera", value=seq.calib.T_cam_lidar.reshape(-1).tolist()), Parameter("reliability", value="reliable")]
    node = AttnLinkNode(node_name="attnlink_nocal", parameter_overrides=common + [
        Parameter("model", value=str(model)), Parameter("map", value=str(map_dir))])  # a test model: no calibration beside it
    assert node.outputs is None and node.tracking is None  # configure failed (its log says why)
    node.destroy_node()
    pm, _ = build_map_from_sequence(PlaceRecognizer(None, None, backend="onnxruntime"), seq, progress=False)
    pm.save(tmp_path / "map")
    node = AttnLinkNode(parameter_overrides=common + [Parameter("map", value=str(tmp_path / "map"))])
    assert node.tracking is not None
    io = rclpy.create_node("tracking_listener")
    places, matches, answers = [], [], []
    io.create_subscription(PoseWithCovarianceStamped, "/attnlink/place", places.append, 50)
    io.create_subscription(PlaceMatches, "/attnlink/match", matches.append, 50)
    client = io.create_client(Trigger, "/attnlink/relocalize")
    calls = []

    def relocalize_done() -> bool:
        if not calls:
            calls.append(client.call_async(Trigger.Request()))
        if calls[0].done():
            answers.append(calls[0].result())
            return True
        return False

    stats, counters = replay_through_node(node, io, kitti_records(synth_root, "00"), until=relocalize_done)
    assert len(matches) == len(seq)
    states = [m.tracking_state for m in matches]
    assert set(states) <= {"tracking", "relocalising", "lost"} and states[-1] == "tracking", states
    assert all(np.isfinite(h.posterior) and 0 <= h.posterior <= 1 for m in matches for h in m.hits)
    assert len(matches[-1].hits) == 5  # ~/match keeps k (the filter observed its own 10)
    tracked = [m for m in matches if m.tracking_state == "tracking"]
    assert len(places) == len(tracked) > 0  # ~/place: the confident fixes only
    for p in places:
        t = stamp_to_sec(p.header.stamp)
        i = int(np.argmin(np.abs(seq.times - t)))
        pos = p.pose.pose.position
        assert np.hypot(pos.x - seq.poses[i][0, 3], pos.z - seq.poses[i][2, 3]) <= 10.0  # right, within 10 m
        cov = np.asarray(p.pose.covariance).reshape(6, 6)
        assert cov[0, 0] >= 9.0 and cov[2, 2] >= 9.0 and np.allclose(cov, cov.T)  # belief spread + 3 m sigma
    m = tracked[-1]
    assert node.cfg.min_confidence < 0 and node.tracking.threshold("lidar") <= m.confidence <= 1.0 and m.fix_index >= 0
    # the shipped calibration found no precise threshold for image-only belief fixes: ~/place stays silent there
    assert node.tracking.threshold("lidar") == 0.8 and node.tracking.threshold("image") is None
    assert answers and answers[0].success and counters["relocalize_requests"] == 1
    assert node.tracking.tracker.lost == 0.5 and len(node.tracking.tracker.idx) == 0  # the belief starts over
    node.destroy_node()
    io.destroy_node()


def test_image_node_with_odometry_publishes_the_aligned_drive(ros, tmp_path):
    """Image-only queries, whose belief the shipped calibration never publishes, with odometry on
    pose_topic (nav_msgs/Odometry, real rclpy): the drive's odometry aligned onto the map
    (localization/alignment.py) gives ~/place right fixes, the same frames as the core's
    MapTracking offline with the same hits, poses and odometry drift (the node's
    track_odometry_drift); /diagnostics-side source "aligned"."""
    from dataclasses import replace

    from nav_msgs.msg import Odometry

    from attnlink_ros.data.bags import kitti_records
    from attnlink_ros.localization.alignment import AlignConfig
    from attnlink_ros.localization.calibration import load_for_model
    from attnlink_ros.localization.session import MapTracking
    from attnlink_ros.localization.tracker import TrackerConfig
    from attnlink_ros.ros.messages import pose_msg

    from .conftest import image_drive_with_map, replay_through_node

    seq, pm, rec = image_drive_with_map(tmp_path)
    # offline: the core's tracking with the same hits and odometry
    drift = 0.02
    mt = MapTracking(pm, load_for_model(None, None, rec.fingerprint), replace(TrackerConfig(), align=AlignConfig(drift_per_m=drift)))
    offline = [i for i in range(len(seq)) if mt.step(float(seq.times[i]), rec.query(Frame(float(seq.times[i]), seq.calib, seq.read_image(i)), 10, "image").hits,
                                                     "image", seq.poses[i]).published]
    assert len(offline) >= 40 and offline[-1] == len(seq) - 1
    Tr = seq.calib.T_cam_lidar
    node = AttnLinkNode(parameter_overrides=[
        Parameter("backend", value="onnxruntime"), Parameter("mode", value="image"), Parameter("map", value=str(tmp_path / "map")),
        Parameter("calib_file", value=str(seq.dir / "calib.txt")), Parameter("reliability", value="reliable"),
        Parameter("pose_topic", value="/vehicle/odometry"), Parameter("track_odometry_drift", value=drift)])
    assert node.tracking is not None and node.tracking.threshold("image") is None  # the belief alone: silent
    assert node.tracking.cfg.align.drift_per_m == drift
    io = rclpy.create_node("odometry_source")
    odom = io.create_publisher(Odometry, "/vehicle/odometry", 200)
    places = []
    io.create_subscription(PoseWithCovarianceStamped, "/attnlink/place", places.append, 200)

    def settle():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and node.count_publishers("/vehicle/odometry") < 1:
            time.sleep(0.05)
        time.sleep(0.5)
        for i in range(len(seq)):  # the LiDAR's pose in the odometry's world frame, paced (the node keeps a queue of 100)
            m = Odometry()
            m.header.stamp = sec_to_stamp(float(seq.times[i]))
            m.header.frame_id, m.child_frame_id = "odom", "velodyne"
            m.pose.pose = pose_msg(seq.poses[i] @ Tr)
            odom.publish(m)
            time.sleep(0.01)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(node._poses) < len(seq):
            time.sleep(0.05)

    replay_through_node(node, io, kitti_records(seq.dataset.parent, "00"), lockstep_timeout=20.0, settle=settle)
    got = [int(np.argmin(np.abs(seq.times - stamp_to_sec(p.header.stamp)))) for p in places]
    assert got == offline, (got, offline)
    for i, p in zip(got, places):
        pos = p.pose.pose.position
        assert np.hypot(pos.x - seq.poses[i][0, 3], pos.z - seq.poses[i][2, 3]) <= 10.0  # right, within 10 m
    assert node._last_fix.source == "aligned" and node._last_fix.published and node.counters["odometry_missing"] == 0
    node.destroy_node()
    io.destroy_node()


def test_image_node_with_visual_odometry_publishes_the_aligned_drive(ros, tmp_path):
    """Image-only queries and no odometry topic: with visual_odometry the node measures its own
    motion from the camera frames it receives (localization/visual_odometry.py) and ~/place carries
    the aligned drive's right fixes (checked within 10 m offline), the same frames as the core
    offline; every frame after the first measured a step (counter visual_odometry_unknown 0)."""
    from attnlink_ros.data.bags import kitti_records

    from .conftest import image_drive_with_map, replay_through_node, visual_tracking_offline

    seq, pm, rec = image_drive_with_map(tmp_path)
    offline = visual_tracking_offline(seq, pm, rec)
    assert len(offline) >= 40
    node = AttnLinkNode(parameter_overrides=[
        Parameter("backend", value="onnxruntime"), Parameter("mode", value="image"), Parameter("map", value=str(tmp_path / "map")),
        Parameter("calib_file", value=str(seq.dir / "calib.txt")), Parameter("reliability", value="reliable"),
        Parameter("visual_odometry", value=True)])
    assert node._vo is not None and node._poses is None and node.tracking.cfg.align.window_m == 100.0
    io = rclpy.create_node("vo_listener")
    places = []
    io.create_subscription(PoseWithCovarianceStamped, "/attnlink/place", places.append, 200)
    replay_through_node(node, io, kitti_records(seq.dataset.parent, "00"), lockstep_timeout=20.0)
    got = [int(np.argmin(np.abs(seq.times - stamp_to_sec(p.header.stamp)))) for p in places]
    assert got == offline, (got, offline)
    assert node._vo.steps == len(seq) - 1 and node.counters["visual_odometry_unknown"] == 0


def test_visual_odometry_that_loses_the_camera_breaks_the_chain_and_the_node_goes_on(ros, tmp_path):
    """Five frames of a uniform grey image late in the drive (a covered lens): visual
    odometry repeats the last step for three, then the motion is unknown (the grey frames after
    them and the first real frame after the gap: nothing to track from); the node counts each
    (visual_odometry_unknown), breaks the odometry chain (the alignment starts over instead of
    taking a step across the gap) and goes on answering every frame: ~/place carries exactly the
    fixes the core gives offline with the same gap, and all of them right."""
    from dataclasses import replace

    from attnlink_ros.data.bags import kitti_records

    from .conftest import blanked, image_drive_with_map, replay_through_node, visual_tracking_offline

    seq, pm, rec = image_drive_with_map(tmp_path)
    blank = frozenset(range(95, 100))  # the drive's alignment is published from frame 62 on
    stats = {}
    offline = visual_tracking_offline(seq, pm, rec, blank, stats)
    # published up to the last repeated step; from the first unknown one the alignment starts over
    # (the 20 frames left cannot gather 50 agreeing ones): nothing is carried across the gap
    assert stats["unknown"] == 3 and offline and min(offline) < 95 and max(offline) == 97, offline
    node = AttnLinkNode(parameter_overrides=[
        Parameter("backend", value="onnxruntime"), Parameter("mode", value="image"), Parameter("map", value=str(tmp_path / "map")),
        Parameter("calib_file", value=str(seq.dir / "calib.txt")), Parameter("reliability", value="reliable"),
        Parameter("visual_odometry", value=True)])
    io = rclpy.create_node("vo_gap_listener")
    places = []
    io.create_subscription(PoseWithCovarianceStamped, "/attnlink/place", places.append, 200)
    index = {float(t): i for i, t in enumerate(seq.times)}
    records = [replace(r, data=blanked(r.data, index[r.stamp], blank)) if r.kind == "image" else r
               for r in kitti_records(seq.dataset.parent, "00")]
    replay_through_node(node, io, records, lockstep_timeout=20.0)
    got = [int(np.argmin(np.abs(seq.times - stamp_to_sec(p.header.stamp)))) for p in places]
    assert got == offline, (got, offline)
    assert node.counters["visual_odometry_unknown"] == 3 and node._vo.repeated == 3
    assert node.counters["frames_processed"] == len(seq)  # every frame answered, the grey ones too


def test_vehicle_node_runs_the_camera_network_on_real_kitti(ros, kitti_root, tmp_path):
    """A vehicle's node (image_domain: camera) on real KITTI images, ONNX Runtime: the shipped
    mixture's camera network alone answers every frame (its own ONNX, NAME.image.camera.onnx),
    the same places and scores as the pipeline gives offline with that domain, and not the
    rendered-town network's answers."""
    import shutil

    from attnlink_ros.inference.export import onnx_path
    from attnlink_ros.model.io import default_model_path
    from attnlink_ros.retrieval.views import view_offsets, view_yaws

    src = default_model_path()
    for f in src.parent.glob(f"{src.stem}.*"):  # a copy: the ONNX files are written beside the model
        if f.suffix in (".json", ".safetensors"):
            shutil.copy(f, tmp_path / f.name)
    model = tmp_path / src.name
    seq = KittiSequence(kitti_root, "00")
    frames = [i for i in range(len(seq)) if seq.scan_path(i).is_file()]  # the frames shipped (poses cover the whole drive)
    rec = PlaceRecognizer(model, None, backend="torch")
    yaws = view_yaws(2)
    desc = np.stack([rec.encode_views(seq.read_scan(i), seq.calib, yaws, offsets=view_offsets(yaws)) for i in frames])
    table = PlaceTable(seq.poses[frames], seq.times[frames], np.full(len(frames), "00"), np.asarray(frames), seq.xy[frames])
    PlaceMap.build(desc, table, rec.fingerprint, view_yaws_deg=yaws, view_offsets_m=view_offsets(yaws)).save(tmp_path / "map")
    node = AttnLinkNode(parameter_overrides=[
        Parameter("model", value=str(model)), Parameter("map", value=str(tmp_path / "map")), Parameter("backend", value="onnxruntime"),
        Parameter("mode", value="image"), Parameter("image_domain", value="camera"), Parameter("tracking", value=False),
        Parameter("calib_file", value=str(kitti_root / "dataset" / "sequences" / "00" / "calib.txt")),
        Parameter("reliability", value="reliable")])
    assert node.recognizer.image_domain == "camera"
    io = rclpy.create_node("camera")
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    pub_img, pub_info = io.create_publisher(Image, "image", qos), io.create_publisher(CameraInfo, "camera_info", qos)
    matches = []
    io.create_subscription(PlaceMatches, "/attnlink/match", matches.append, 20)
    ex, spin = _spinning(node, io)
    try:
        _wait_for_readers((pub_img, pub_info))
        for n, i in enumerate(frames):
            h = Header(stamp=sec_to_stamp(100.0 + float(seq.times[i])), frame_id="camera")
            pub_info.publish(calibration_to_camera_info(seq.calib, h))
            pub_img.publish(bgr_to_image(seq.read_image(i), h))
            wait = time.monotonic() + 20  # lock step: the first frame exports the camera graph
            while time.monotonic() < wait and len(matches) <= n:
                time.sleep(0.02)
    finally:
        ex.shutdown()
        spin.join(timeout=5)
    node.destroy_node()
    io.destroy_node()
    assert len(matches) == len(frames) and all(m.mode == "image" for m in matches)
    assert onnx_path(model, "image", "camera").is_file() and not onnx_path(model, "image").exists()
    offline = {d: PlaceRecognizer(model, tmp_path / "map", backend="onnxruntime", image_domain=d) for d in ("camera", "render")}
    differ = 0
    for i, m in zip(frames, matches):
        got = parse_matches(m)
        frame = Frame(float(seq.times[i]), seq.calib, image=seq.read_image(i))
        want = offline["camera"].query(frame, 5, "image").hits
        assert [x["map_index"] for x in got] == [x["index"] for x in want]
        assert [x["score"] for x in got] == pytest.approx([x["score"] for x in want], abs=1e-4)
        differ += abs(offline["render"].query(frame, 5, "image").hits[0]["score"] - got[0]["score"]) > 1e-3
    assert differ >= len(frames) // 2  # the rendered-town network answers otherwise
