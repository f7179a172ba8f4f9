"""End-to-end latency through real ROS 2, across processes: camera image + LiDAR cloud published
here -> the attnlink node (its own process) -> ~/match received here (every frame's answer; ~/place
carries only the tracking filter's confident fixes); against the floor of
transporting the same messages, measured in the same run with a relay process that answers as
soon as it holds both (no model).

Per stage (the node's /diagnostics medians): message conversion, network-input preparation,
encoder forward, search, publishing. Overhead = end-to-end - encoder forward; target <= 2x the
transport floor.

    .venv/bin/python bench/bench_ros_e2e.py [--data ROOT] [--frames 100] [--mode fused] [--backend onnxruntime] [--json FILE]

Default data: real KITTI frames of ../shared/data/kitti (sequence 00), looped to --frames.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ANSWERED = threading.Event()


def _answer(store: dict, key: float) -> None:
    store[key] = time.monotonic()
    ANSWERED.set()


def relay() -> None:
    """The floor: answers [stamp] on /bench/pair as soon as an image and a cloud of one stamp arrived."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, PointCloud2
    from std_msgs.msg import Float64MultiArray

    from attnlink_ros.ros.conversions import stamp_to_sec
    from attnlink_ros.ros.transport import apply_transport_profile

    from attnlink_ros.ros.lifecycle import spin_node

    def make_relay():
        node = rclpy.create_node("bench_relay")
        pub = node.create_publisher(Float64MultiArray, "/bench/pair", 10)
        seen: dict[float, int] = {}

        def got(msg) -> None:
            t = round(stamp_to_sec(msg.header.stamp), 6)
            seen[t] = seen.get(t, 0) + 1
            if seen[t] == 2:
                pub.publish(Float64MultiArray(data=[t]))
                del seen[t]

        node.create_subscription(Image, "image", got, qos_profile_sensor_data)
        node.create_subscription(PointCloud2, "points", got, qos_profile_sensor_data)
        return node

    apply_transport_profile()
    spin_node(make_relay)  # until SIGTERM from the bench, then an orderly teardown


def wait_until(cond, timeout: float, what: str) -> None:
    """Polls ``cond`` until true; a clear error (not a hang) when ``timeout`` s pass."""
    import rclpy

    end = time.monotonic() + timeout
    while not cond():
        if not rclpy.ok():
            raise RuntimeError(f"ROS 2 shut down while waiting for {what}")
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen | None) -> None:
    """Ends a child process: SIGTERM (its rclpy shuts down cleanly), SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(pubs, answers: dict, frames: list, topic_ready, n: int, timeout: float = 5.0) -> np.ndarray:
    """Publishes n frames one at a time (next after the answer); returns latencies in ms."""
    from std_msgs.msg import Header

    from attnlink_ros.ros.conversions import bgr_to_image, calibration_to_camera_info, sec_to_stamp, xyzi_to_pointcloud2

    lat = []
    for k in range(n):
        calib, img, pts = frames[k % len(frames)]
        t = 1000.0 + 0.1 * k
        h = Header(stamp=sec_to_stamp(t), frame_id="sensor")
        key = round(t, 6)
        info = calibration_to_camera_info(calib, h)
        im, cl = bgr_to_image(img, h), xyzi_to_pointcloud2(pts, h)  # messages built before the clock starts
        answers.pop(key, None)  # a stamp of an earlier round (the warm-up reuses the stamps) is no answer
        pubs["info"].publish(info)
        t0 = time.monotonic()
        pubs["image"].publish(im)
        pubs["points"].publish(cl)
        end = time.monotonic() + timeout
        while key not in answers and time.monotonic() < end:  # block like a driver does (no busy polling,
            ANSWERED.wait(0.05)                                  # which keeps cores awake and flatters the numbers)
            ANSWERED.clear()
        if key in answers:
            lat.append(1e3 * (answers[key] - t0))
        time.sleep(0.02)
    return np.asarray(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", default=str(REPO.parents[1] / "shared" / "data" / "kitti"))
    ap.add_argument("--sequence", default="00")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--mode", default="fused", choices=["image", "lidar", "fused"])
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--model", default="")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.relay:
        relay()
        return
    import rclpy
    from attnlink_msgs.msg import PlaceMatches
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import Float64MultiArray
    from diagnostic_msgs.msg import DiagnosticArray

    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.launch_logic import attnlink_nodes
    from attnlink_ros.pipeline import PlaceRecognizer
    from attnlink_ros.retrieval.build import build_map_from_sequence
    from attnlink_ros.ros.conversions import stamp_to_sec
    from attnlink_ros.ros.transport import apply_transport_profile

    apply_transport_profile()
    seq = KittiSequence(args.data, args.sequence)
    idx = [int(i) for i in seq.available_frames()]
    calib = seq.calib.with_image_size(*seq.image_size)
    frames = [(calib, seq.read_image(i), seq.read_scan(i)) for i in idx]
    tmp = Path(tempfile.mkdtemp())
    pm, _ = build_map_from_sequence(PlaceRecognizer(args.model or None, None, backend=args.backend), seq, idx, progress=False)
    pm.save(tmp / "map")
    (spec,) = attnlink_nodes(map=str(tmp / "map"), backend=args.backend, mode=args.mode, model=args.model,
                             calib_file=str(seq.dir / "calib.txt"))
    spec.parameters["markers"] = False
    # rclpy's own signal handlers would invalidate the context under a running wait (Ctrl-C:
    # "RCLError: context is not valid" from count_subscribers); here Ctrl-C is a plain
    # KeyboardInterrupt and the finally below tears down in order, every time
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    io = ex = spin = rel = node = None
    try:
        io = rclpy.create_node("bench_e2e")
        pubs = {"image": io.create_publisher(Image, "image", qos_profile_sensor_data),
                "points": io.create_publisher(PointCloud2, "points", qos_profile_sensor_data),
                "info": io.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)}
        place, pair, diags = {}, {}, []
        io.create_subscription(PlaceMatches, "/attnlink/match", lambda m: _answer(place, round(stamp_to_sec(m.header.stamp), 6)), 50)
        io.create_subscription(Float64MultiArray, "/bench/pair", lambda m: _answer(pair, round(m.data[0], 6)), 50)
        io.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        ex = SingleThreadedExecutor()
        ex.add_node(io)
        spin = threading.Thread(target=ex.spin, daemon=True)
        spin.start()
        # 1. transport floor (relay process)
        rel = subprocess.Popen([sys.executable, __file__, "--relay"])
        wait_until(lambda: io.count_subscribers("points") > 0, 60, "the relay process")
        time.sleep(1.0)
        floor = measure(pubs, pair, frames, None, args.frames)
        stop(rel)
        wait_until(lambda: io.count_subscribers("points") == 0, 30, "the relay to leave the graph")
        # 2. the node
        node = subprocess.Popen(spec.command())
        wait_until(lambda: io.count_publishers("/attnlink/match") > 0, 120, "the attnlink node to start")
        time.sleep(1.0)
        measure(pubs, place, frames, None, 10)  # warm-up
        e2e = measure(pubs, place, frames, None, args.frames)
        time.sleep(1.5)
    finally:
        stop(rel)
        stop(node)
        if ex is not None:
            ex.shutdown(timeout_sec=5)  # bounded: an interrupted run must end (a fresh clone's run once hung past 60 s here)
            spin.join(timeout=5)
        if io is not None:
            io.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    if not len(floor) or not len(e2e):
        raise SystemExit(f"no answers: transport floor {len(floor)}, node {len(e2e)} of {args.frames} frames")
    values = {kv.key: kv.value for kv in diags[-1].status[0].values} if diags else {}
    stages = {k[len("stage_ms_"):-len("_p50")]: float(v) for k, v in values.items() if k.startswith("stage_ms_")}
    fwd = stages.get("encode", float("nan"))
    overhead = float(np.percentile(e2e, 50)) - fwd
    fl50 = float(np.percentile(floor, 50))
    rows = {"data": f"{seq.dir} ({len(frames)} frames looped, image {seq.image_size[0]}x{seq.image_size[1]}, "
                    f"{int(np.mean([len(f[2]) for f in frames]))} points)",
            "mode": args.mode, "backend": values.get("backend", args.backend),
            "transport_floor_ms": {"p50": round(fl50, 2), "p99": round(float(np.percentile(floor, 99)), 2), "n": int(len(floor))},
            "end_to_end_ms": {"p50": round(float(np.percentile(e2e, 50)), 2), "p99": round(float(np.percentile(e2e, 99)), 2), "n": int(len(e2e))},
            "node_stage_ms_p50": stages, "overhead_beyond_forward_ms_p50": round(overhead, 2),
            "overhead_over_floor": round(overhead / fl50, 2), "target_overhead_over_floor": 2.0}
    print(f"end-to-end through ROS 2 across processes, {rows['data']}, {args.mode} queries, {rows['backend']}")
    print(f"{'stage':28s} {'p50 ms':>8s} {'p99 ms':>8s}")
    print(f"{'transport floor (relay)':28s} {fl50:8.2f} {np.percentile(floor, 99):8.2f}")
    for k, v in stages.items():
        print(f"{'node: ' + k:28s} {v:8.2f}")
    print(f"{'end to end (in -> ~/match)':28s} {np.percentile(e2e, 50):8.2f} {np.percentile(e2e, 99):8.2f}")
    print(f"overhead beyond the forward pass: {overhead:.2f} ms = {overhead / fl50:.2f}x the transport floor (target <= 2x)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: the children and the ROS context were closed in main's finally
        print("interrupted", file=sys.stderr)
        sys.exit(130)
