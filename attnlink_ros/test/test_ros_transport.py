"""KITTI-size frames across processes at 10 Hz: `attnlink replay` in its own process publishes
real KITTI images (1241x376 bgr8, 1.4 MB) and clouds (~120k points, 1.9 MB); a real subscriber
here must receive every one (the shipped Fast DDS profile on both sides)."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2

from attnlink_ros.data.kitti import KittiSequence
from attnlink_ros.ros.conversions import image_to_bgr, pointcloud2_to_xyzi, stamp_to_sec
from attnlink_ros.ros.transport import PROFILE_VARS, profile_path, transport_env


def test_profile_is_shipped_and_applied():
    assert profile_path().is_file()
    assert all(os.environ.get(v) == str(profile_path()) for v in PROFILE_VARS)  # conftest applied it
    assert transport_env({}) == {v: str(profile_path()) for v in PROFILE_VARS}
    assert transport_env({"FASTRTPS_DEFAULT_PROFILES_FILE": "/mine.xml"}) == {}  # a user's own profile wins
    text = profile_path().read_text()
    assert "<segment_size>67108864</segment_size>" in text and "is_default_profile=\"true\"" in text


def test_real_size_frames_cross_process_at_10hz(kitti_root):
    seq = KittiSequence(kitti_root, "00")
    n = len(seq.available_frames())
    rclpy.init()
    node = rclpy.create_node("transport_listener")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=20, reliability=ReliabilityPolicy.RELIABLE)
    got = {"image": [], "points": []}
    node.create_subscription(Image, "image", lambda m: got["image"].append((time.monotonic(), m)), qos)
    node.create_subscription(PointCloud2, "points", lambda m: got["points"].append((time.monotonic(), m)), qos)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "attnlink_ros", "replay", "--data", str(kitti_root), "--sequence", "00",
                               "--rate", "1", "--wait-subscribers", "15", "--quiet"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (len(got["image"]) < n or len(got["points"]) < n):
            time.sleep(0.05)
    finally:
        ex.shutdown()
        spin.join(timeout=5)
        node.destroy_node()
        rclpy.shutdown()
    assert len(got["image"]) == n and len(got["points"]) == n, f"received {len(got['image'])} images, {len(got['points'])} clouds of {n}"
    stamps = [stamp_to_sec(m.header.stamp) for _, m in got["points"]]
    assert stamps == pytest.approx([float(seq.times[i]) for i in range(n)], abs=1e-6)
    assert np.array_equal(image_to_bgr(got["image"][-1][1]), seq.read_image(n - 1))
    assert len(pointcloud2_to_xyzi(got["points"][0][1])) == len(seq.read_scan(0))
    arrivals = np.diff([t for t, _ in got["points"]])
    assert np.median(arrivals) > 0.05  # paced at the sensor's 10 Hz, not dumped at once
