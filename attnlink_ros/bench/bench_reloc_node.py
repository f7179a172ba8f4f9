"""The relocalize node with GICP verification at the sensor's rate: verification in the sensor
callback (`verify_async: false`, the baseline) against verification in a process of its own
(`verify_async: true`), measured in one run through real ROS 2.

The drive's first half is the map (built with stored scans, as `build-map --scans`); frames of
the second half with a map place within 10 m are published from this process at the recorded
rate (x ``--rate``) to the node, which runs in its own process, as on a robot. Per
configuration: frames answered (~/match) and how many per second, verified answers and how many
per second, latency from publishing to the answer, and the position error of verified answers.

    .venv/bin/python bench/bench_reloc_node.py --data out/towns/s301 [--queries 150] [--rate 1.0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def run_node(spec, pubs, messages, answers: dict, places: dict, rate: float, io) -> dict:
    """Starts the node, publishes ``messages`` [(stamp, info, cloud, image|None)] at their
    recorded spacing / rate, waits for stragglers, stops the node; returns publish times."""
    node = subprocess.Popen(spec.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sent = {}
    try:
        while io.count_publishers("/attnlink/match") == 0 or io.count_subscribers("points") == 0:
            time.sleep(0.1)
        time.sleep(1.5)
        t0, s0 = time.monotonic(), messages[0][0]
        for stamp, info, cloud, image in messages:
            delay = t0 + (stamp - s0) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pubs["info"].publish(info)
            sent[round(stamp, 6)] = time.monotonic()
            if image is not None:
                pubs["image"].publish(image)
            pubs["points"].publish(cloud)
        end = time.monotonic() + 5.0
        while time.monotonic() < end and len(answers) < len(messages):
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        node.terminate()
        node.wait()
    return sent


def summarise(sent: dict, answers: dict, places: dict, truth: dict) -> dict:
    got = {k: v for k, v in answers.items() if k in sent}
    ver = [k for k, (_, verified) in got.items() if verified]
    t_first = min(sent.values())
    t_last = max(t for t, _ in got.values()) if got else t_first
    span = max(t_last - t_first, 1e-9)
    lat = np.array([1e3 * (got[k][0] - sent[k]) for k in got])
    lat_v = np.array([1e3 * (got[k][0] - sent[k]) for k in ver])
    err = np.array([np.linalg.norm(places[k] - truth[k]) for k in ver if k in places])
    pct = lambda a, p: round(float(np.percentile(a, p)), 1) if len(a) else None  # noqa: E731
    return {
        "published": len(sent), "answered": len(got), "answered_per_s": round(len(got) / span, 2),
        "verified": len(ver), "verified_per_s": round(len(ver) / span, 2),
        "latency_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99)},
        "latency_verified_ms": {"p50": pct(lat_v, 50), "p99": pct(lat_v, 99)},
        "verified_position_error_m": {"median": round(float(np.median(err)), 3) if len(err) else None,
                                      "max": round(float(np.max(err)), 3) if len(err) else None},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="KITTI-layout root of one drive with poses")
    ap.add_argument("--sequence", default="00")
    ap.add_argument("--model", default="")
    ap.add_argument("--mode", choices=["lidar", "fused"], default="lidar")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--queries", type=int, default=150, help="frames published per configuration")
    ap.add_argument("--rate", type=float, default=1.0, help="multiple of the recorded rate (1.0: the sensor's 10 Hz)")
    ap.add_argument("--json")
    args = ap.parse_args()

    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from attnlink_msgs.msg import PlaceMatches
    from std_msgs.msg import Header

    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.launch_logic import attnlink_nodes
    from attnlink_ros.ros.conversions import (bgr_to_image, calibration_to_camera_info, sec_to_stamp, stamp_to_sec,
                                              xyzi_to_pointcloud2)
    from attnlink_ros.ros.messages import parse_matches
    from attnlink_ros.ros.transport import apply_transport_profile
    from bench_relocalize import first_half_map  # bench/ is this script's folder

    apply_transport_profile()
    seq = KittiSequence(args.data, args.sequence)
    map_dir, split, _, queries = first_half_map(seq, args.model or None, args.backend, Path(tempfile.mkdtemp()), progress=False)
    queries = queries[: args.queries]
    calib = seq.calib.with_image_size(*seq.image_size)
    messages, truth = [], {}
    for q in queries:  # built before the clock starts
        t = float(seq.times[q])
        h = Header(stamp=sec_to_stamp(t), frame_id="sensor")
        messages.append((t, calibration_to_camera_info(calib, h), xyzi_to_pointcloud2(seq.read_scan(q), h),
                         bgr_to_image(seq.read_image(q), h) if args.mode == "fused" else None))
        truth[round(t, 6)] = seq.poses[q][:3, 3]

    rclpy.init()
    io = rclpy.create_node("bench_reloc_node")
    pubs = {"image": io.create_publisher(Image, "image", qos_profile_sensor_data),
            "points": io.create_publisher(PointCloud2, "points", qos_profile_sensor_data),
            "info": io.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)}
    answers: dict = {}
    places: dict = {}

    def on_match(m) -> None:
        top = parse_matches(m)[0]
        answers[round(top["query_stamp"], 6)] = (time.monotonic(), top["verified"])

    def on_place(m) -> None:
        p = m.pose.pose.position
        places[round(stamp_to_sec(m.header.stamp), 6)] = np.array([p.x, p.y, p.z])

    io.create_subscription(PlaceMatches, "/attnlink/match", on_match, 200)
    io.create_subscription(PoseWithCovarianceStamped, "/attnlink/place", on_place, 200)
    ex = SingleThreadedExecutor()
    ex.add_node(io)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    results = {}
    try:
        for name, asynchronous in (("in the callback (verify_async false)", False), ("own process (verify_async true)", True)):
            (spec,) = attnlink_nodes(map=str(map_dir), backend=args.backend, mode=args.mode, model=args.model,
                                     calib_file=str(seq.dir / "calib.txt"))
            spec.parameters.update(markers=False, verify_async=asynchronous, tracking=False)  # ~/place: verified poses (and every top place)
            answers.clear()
            places.clear()
            sent = run_node(spec, pubs, messages, answers, places, args.rate, io)
            results[name] = summarise(sent, dict(answers), dict(places), truth)
    finally:
        ex.shutdown()
        spin.join(timeout=5)
        io.destroy_node()
        rclpy.shutdown()
    spacing = float(np.median(np.diff([m[0] for m in messages]))) / args.rate
    base, new = results.values()
    out = {"data": f"{args.data} (map: first {split} frames with scans; {len(messages)} query frames, one per "
                   f"{1e3 * spacing:.0f} ms)", "mode": args.mode, "backend": args.backend, "configurations": results,
           "ratio_answered_per_s": round(new["answered_per_s"] / max(base["answered_per_s"], 1e-9), 2),
           "ratio_verified_per_s": round(new["verified_per_s"] / max(base["verified_per_s"], 1e-9), 2),
           "date": time.strftime("%Y-%m-%d")}
    print(f"relocalize node, {out['data']}, {args.mode} queries, {args.backend}")
    print("| verification | answered | answered/s | verified | verified/s | latency p50 / p99 ms | verified: latency p50 ms, error median / max m |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        e = r["verified_position_error_m"]
        print(f"| {name} | {r['answered']}/{r['published']} | {r['answered_per_s']} | {r['verified']} | {r['verified_per_s']} | "
              f"{r['latency_ms']['p50']} / {r['latency_ms']['p99']} | {r['latency_verified_ms']['p50']}, {e['median']} / {e['max']} |")
    print(f"own process / in the callback: answered per s {out['ratio_answered_per_s']}x, verified per s {out['ratio_verified_per_s']}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
