"""Bags (rosbags: a ROS 1 bag written as kitti2bag writes one, ROS 2 mcap and sqlite3 from
`to-bag`) and the replay tool publishing over real rclpy to a real subscriber."""

import threading
import time

import numpy as np
import pytest

from attnlink_ros.data.bags import DEFAULT_TOPICS, bag_records, kitti_records, write_bag
from attnlink_ros.data.kitti import KittiSequence
from attnlink_ros.errors import DataError


def write_kitti2bag_ros1(path, seq: KittiSequence, frames):
    """A ROS 1 bag laid out like kitti2bag's: velodyne cloud with field ``i``, color camera rgb8."""
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    T = ts.types
    with Writer(path) as w:
        c_img = w.add_connection("/kitti/camera_color_left/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        c_info = w.add_connection("/kitti/camera_color_left/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_velo = w.add_connection("/kitti/velo/pointcloud", "sensor_msgs/msg/PointCloud2", typestore=ts)
        for i in frames:
            t = 1317000000.0 + float(seq.times[i])
            sec = int(t)
            ns = int(round((t - sec) * 1e9))

            def hdr(fid):
                return T["std_msgs/msg/Header"](seq=i, stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=ns), frame_id=fid)

            rgb = np.ascontiguousarray(seq.read_image(i)[..., ::-1])
            img = T["sensor_msgs/msg/Image"](header=hdr("camera_color_left"), height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                                             is_bigendian=0, step=rgb.shape[1] * 3, data=rgb.reshape(-1))
            c = seq.calib.with_image_size(*seq.image_size)
            roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            info = T["sensor_msgs/msg/CameraInfo"](header=hdr("camera_color_left"), height=rgb.shape[0], width=rgb.shape[1],
                                                   distortion_model="plumb_bob", D=np.zeros(5), K=c.K.reshape(-1), R=np.eye(3).reshape(-1),
                                                   P=c.P.reshape(-1), binning_x=0, binning_y=0, roi=roi)
            pts = seq.read_scan(i).astype(np.float32)
            PF = T["sensor_msgs/msg/PointField"]
            fields = [PF(name=n, offset=4 * k, datatype=7, count=1) for k, n in enumerate("xyzi")]
            cloud = T["sensor_msgs/msg/PointCloud2"](header=hdr("velo_link"), height=1, width=len(pts), fields=fields, is_bigendian=False,
                                                     point_step=16, row_step=16 * len(pts), data=pts.view(np.uint8).reshape(-1), is_dense=True)
            tn = int(round(t * 1e9))
            w.write(c_info, tn, ts.serialize_ros1(info, "sensor_msgs/msg/CameraInfo"))
            w.write(c_velo, tn, ts.serialize_ros1(cloud, "sensor_msgs/msg/PointCloud2"))
            w.write(c_img, tn, ts.serialize_ros1(img, "sensor_msgs/msg/Image"))


def test_ros1_kitti2bag_layout_reads_back(kitti_root, tmp_path):
    seq = KittiSequence(kitti_root, "00")
    write_kitti2bag_ros1(tmp_path / "k.bag", seq, [0, 1, 2])
    recs = list(bag_records(tmp_path / "k.bag"))
    assert [r.kind for r in recs].count("points") == 3 and [r.kind for r in recs].count("image") == 3
    pts = [r for r in recs if r.kind == "points"]
    assert np.array_equal(pts[1].data, seq.read_scan(1))  # field "i" read as intensity, nothing lost
    img = [r for r in recs if r.kind == "image"][2]
    assert np.array_equal(img.data, seq.read_image(2))  # rgb8 -> BGR
    info = [r for r in recs if r.kind == "camera_info"][0]
    assert np.allclose(info.data["P"], seq.calib.P) and info.data["width"] == seq.image_size[0]
    assert pts[0].stamp == pytest.approx(1317000000.0 + float(seq.times[0]), abs=1e-6)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_to_bag_round_trip(kitti_root, tmp_path, storage):
    from attnlink_ros.cli import main

    out = tmp_path / f"b_{storage}"
    assert main(["to-bag", "--data", str(kitti_root), "--sequence", "00", "--frames", "0", "3", "--out", str(out),
                 "--storage", storage, "--quiet"]) == 0
    seq = KittiSequence(kitti_root, "00")
    recs = list(bag_records(out))
    want = list(kitti_records(kitti_root, "00", [0, 1, 2]))
    assert [(r.kind, round(r.stamp, 6)) for r in recs] == [(r.kind, round(r.stamp, 6)) for r in want]
    for a, b in zip(recs, want):
        if a.kind == "camera_info":
            assert np.allclose(a.data["P"], b.data["P"]) and np.allclose(a.data["K"], b.data["K"])
        else:
            assert np.array_equal(a.data, b.data)
    assert main(["to-bag", "--data", str(kitti_root), "--out", str(out), "--quiet"]) == 1  # exists: refused, one line
    del seq


def test_bag_topic_choice_and_errors(kitti_root, tmp_path):
    recs = list(kitti_records(kitti_root, "00", [0, 1]))
    write_bag(recs, tmp_path / "custom", topics={"points": "/kitti/velodyne_points", "image": "/cam/image"})
    got = list(bag_records(tmp_path / "custom"))  # topics found by type: the only Image / PointCloud2
    assert {r.kind for r in got} == {"image", "points", "camera_info"}
    with pytest.raises(DataError, match="topic /nope not in the bag"):
        list(bag_records(tmp_path / "custom", {"points": "/nope"}))
    with pytest.raises(DataError, match="bag not found"):
        list(bag_records(tmp_path / "missing"))
    (tmp_path / "junk.bag").write_bytes(b"not a bag at all")
    with pytest.raises(DataError, match="not a readable"):
        list(bag_records(tmp_path / "junk.bag"))
    assert DEFAULT_TOPICS["points"] == "/kitti/velo/pointcloud"


def test_replay_publishes_stamps_and_clock(kitti_root):
    """The replayer's frames reach a real subscriber with the original stamps, /clock follows."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from attnlink_ros.ros.conversions import image_to_bgr, pointcloud2_to_xyzi, stamp_to_sec
    from attnlink_ros.ros.replay import Replayer

    rclpy.init()
    try:
        sub = rclpy.create_node("replay_listener")
        got = {"image": [], "points": [], "camera_info": [], "clock": []}
        sub.create_subscription(Image, "image", got["image"].append, qos_profile_sensor_data)
        sub.create_subscription(PointCloud2, "points", got["points"].append, qos_profile_sensor_data)
        sub.create_subscription(CameraInfo, "camera_info", got["camera_info"].append, qos_profile_sensor_data)
        sub.create_subscription(Clock, "/clock", got["clock"].append, 10)
        ex = SingleThreadedExecutor()
        ex.add_node(sub)
        spin = threading.Thread(target=ex.spin, daemon=True)
        spin.start()
        rp = Replayer(clock=True)
        assert rp.wait_for_subscribers(5.0, ("image", "points", "camera_info"))
        seq = KittiSequence(kitti_root, "00")
        recs = list(kitti_records(kitti_root, "00", [0, 1, 2, 3]))
        t0 = time.monotonic()
        stats = rp.run(recs, rate=1.0, progress=False)
        wall = time.monotonic() - t0
        time.sleep(0.5)
        ex.shutdown()
        spin.join(timeout=5)
        rp.close()
        sub.destroy_node()
    finally:
        rclpy.shutdown()
    span = float(seq.times[3] - seq.times[0])
    assert wall >= span * 0.9  # paced at real time
    assert stats.frames == 4 and stats.published == {"camera_info": 4, "points": 4, "image": 4}
    stamps = [stamp_to_sec(m.header.stamp) for m in got["points"]]
    assert stamps == pytest.approx([float(t) for t in seq.times[:4]], abs=1e-6)
    assert np.array_equal(pointcloud2_to_xyzi(got["points"][2]), seq.read_scan(2))
    assert np.array_equal(image_to_bgr(got["image"][1]), seq.read_image(1))
    assert [stamp_to_sec(c.clock) for c in got["clock"]] == pytest.approx(stamps, abs=1e-6)
