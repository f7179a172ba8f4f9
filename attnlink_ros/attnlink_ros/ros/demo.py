"""``attnlink demo``: a drive's first part becomes a LiDAR place map (shipped model); its later part
is replayed over ROS 2 through the real ``attnlink`` node; a listener prints the live hits and
measures recall, frame rate and latency; a PNG shows the trajectory with the matches."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def run_demo(seq, out: Path, model=None, mode: str = "fused", backend: str = "auto", map_frames=None, query_frames=None,
             rate: float = 0.0, radius_m: float = 10.0, progress: bool = True, print_every: int = 10, views: int = 4,
             scans: bool = True) -> dict:
    from ..evaluation.plots import plot_matches
    from ..pipeline import PlaceRecognizer
    from ..retrieval.build import build_map_from_sequence
    from .transport import apply_transport_profile

    out.mkdir(parents=True, exist_ok=True)
    n = len(seq)
    map_frames = list(range(n // 2)) if map_frames is None else list(map_frames)
    query_frames = list(range(n // 2, n)) if query_frames is None else list(query_frames)
    rec = PlaceRecognizer(model, None, backend=backend)
    pm, stats = build_map_from_sequence(rec, seq, map_frames, progress=progress, views=views, scan_voxel=0.5 if scans else None)
    map_dir = pm.save(out / "map")
    print(f"map: {stats['places']} places x {pm.views} heading views of frames {map_frames[0]}-{map_frames[-1]} "
          f"({stats['frames_per_second']:.0f} frames/s, {stats['backend']})" + (", stored scans: the node GICP-verifies its best hits" if scans else ""))
    del rec
    # ground truth: a query counts when a map place lies within radius_m; its heading class says
    # whether such a place was mapped driving the same way (same), only the other way (reverse) or across (other)
    from ..evaluation.protocols import heading_class
    from ..geometry.poses import headings_deg
    from ..retrieval.views import wrap_deg

    xy = seq.xy
    mxy = xy[map_frames]
    heading = headings_deg(seq.poses)
    answerable, query_class = {}, {}
    for q in query_frames:
        t = round(float(seq.times[q]), 6)
        near = np.linalg.norm(mxy - xy[q], axis=1) <= radius_m
        answerable[t] = bool(near.any())
        query_class[t] = heading_class(wrap_deg(heading[map_frames][near] - heading[q]))
    truth_xy = {round(float(seq.times[q]), 6): xy[q] for q in query_frames}

    apply_transport_profile()
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from attnlink_msgs.msg import PlaceMatches

    from .messages import parse_matches
    from .node import AttnLinkNode
    from .replay import ReplayStats

    rclpy.init()
    try:
        node = AttnLinkNode(parameter_overrides=[
            Parameter("model", value=str(model) if model else ""), Parameter("map", value=str(map_dir)),
            Parameter("backend", value=backend), Parameter("mode", value=mode),
            Parameter("lidar_to_camera", value=seq.calib.T_cam_lidar.reshape(-1).tolist()),
            Parameter("autostart", value=True), Parameter("reliability", value="reliable")])
        if node.outputs is None:
            raise RuntimeError("the node did not configure (see its log)")
        listener = rclpy.create_node("attnlink_demo_listener")
        results: dict[float, tuple[dict, float]] = {}
        fixes: dict[float, tuple[str, int, float]] = {}  # the node's tracking filter: state, fix place, confidence

        def on_match(msg) -> None:
            hits = parse_matches(msg)
            if not hits:
                return
            t = round(hits[0]["query_stamp"], 6)
            results[t] = (hits[0], time.monotonic())
            fixes[t] = (msg.tracking_state, int(msg.fix_index), float(msg.confidence))
            top = hits[0]
            d = float(np.hypot(top["place_x"] - truth_xy[t][0], top["place_z"] - truth_xy[t][1])) if t in truth_xy else float("nan")
            if len(results) % print_every == 1 or print_every == 1:
                ok = "ok" if d <= radius_m else ("--" if not answerable.get(t, False) else "WRONG")
                how = f"{query_class.get(t, '?')} heading" if answerable.get(t, False) else "no place near"
                print(f"  t={t:7.1f} s  top-1 place {int(top['map_index']):4d} (t={top['place_stamp']:6.1f} s)  "
                      f"view {top['view_yaw_deg']:+4.0f} deg  score {top['score']:.3f}  {d:6.1f} m from truth  {ok:5s} ({how})", flush=True)

        listener.create_subscription(PlaceMatches, "/attnlink/match", on_match, 50)
        ex = MultiThreadedExecutor(num_threads=2)
        ex.add_node(node)
        ex.add_node(listener)
        spin = threading.Thread(target=ex.spin, daemon=True)
        spin.start()
        print(f"replaying {len(query_frames)} frames through the attnlink node ({mode} queries, "
              f"{'as fast as the node answers' if rate <= 0 else f'{rate}x real time'}) from an `attnlink replay` process; "
              f"every {print_every}th hit:", flush=True)
        # the replay runs in its own process, as a driver or a bag player does on a robot
        cmd = [sys.executable, "-m", "attnlink_ros", "replay", "--data", str(seq.dataset.parent), "--sequence", seq.name,
               "--frames", str(query_frames[0]), str(query_frames[-1] + 1), "--rate", str(rate), "--wait-subscribers", "15",
               "--quiet", "--json", str(out / "replay.json")] + (["--lockstep", "/attnlink/match", "--lockstep-timeout", "10"] if rate <= 0 else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"attnlink replay failed: {proc.stderr.strip()[-500:]}")
        rep = json.loads((out / "replay.json").read_text())
        rstats = ReplayStats(published=rep["published"], frames=rep["frames"], wall_s=rep["wall_s"], data_s=rep["data_s"])
        sent_at = {round(float(k), 6): v for k, v in rep["sent_at"].items()}  # CLOCK_MONOTONIC: one clock for every process
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and len(results) < len(query_frames):
            time.sleep(0.05)
        node_latency = np.asarray(node._latency) if node._latency else np.zeros(1)
        stage_ms = {k: round(float(np.percentile(v, 50)), 2) for k, v in sorted(node.stage_ms.items()) if v}
        verify_candidates = int(node.cfg.verify_candidates)
        counters = dict(node.counters)
        backend_desc = ", ".join(dict.fromkeys(b.describe() for b in node.recognizer._backends.values()))
        ex.shutdown()
        spin.join(timeout=5)
        listener.destroy_node()
        node.destroy_node()
    finally:
        if rclpy.ok():
            rclpy.shutdown()
    e2e = np.asarray([results[t][1] - sent_at[t] for t in results if t in sent_at]) * 1e3
    qs = [t for t in results if answerable.get(t)]
    correct = [float(np.hypot(results[t][0]["place_x"] - truth_xy[t][0], results[t][0]["place_z"] - truth_xy[t][1])) <= radius_m for t in qs]
    r1 = float(np.mean(correct)) if qs else float("nan")
    by_heading = {}
    for c in ("same", "reverse", "other"):
        ok_c = [ok for t, ok in zip(qs, correct) if query_class[t] == c]
        if ok_c:
            by_heading[c] = {"recall@1": round(float(np.mean(ok_c)), 4), "queries": len(ok_c)}
    tracking = _score_tracking(fixes, results, answerable, truth_xy, mxy, radius_m)
    # plot: query positions, their top-1 places, green when right
    tq = np.array(sorted(qs))
    qi = np.array([int(np.argmin(np.abs(seq.times - t))) for t in tq], dtype=int)
    top_frame = np.array([map_frames[int(results[t][0]["map_index"])] for t in tq], dtype=int)
    plot = plot_matches(xy, qi, top_frame, np.asarray(correct, bool), out / "matches.png",
                        title=f"{seq.dir.name}: live {mode} queries through the node, recall@1 {r1:.3f}") if len(qi) else None
    result = {
        "mode": mode, "map_places": int(len(map_frames)), "frames_replayed": int(rstats.frames), "answers": len(results),
        "lockstep_timeouts": int(rep.get("lockstep_timeouts", 0)),
        "queries_with_a_place_within_%gm" % radius_m: len(qs), "recall@1": round(r1, 4) if qs else None,
        "map_views": int(views), "recall@1_by_heading": by_heading,
        "frame_rate_hz": round(rstats.frames / rstats.wall_s, 2) if rstats.wall_s else 0.0,
        "latency_ms_end_to_end_p50": round(float(np.percentile(e2e, 50)), 2) if len(e2e) else None,
        "latency_ms_end_to_end_p99": round(float(np.percentile(e2e, 99)), 2) if len(e2e) else None,
        "latency_ms_node_p50": round(float(np.percentile(node_latency, 50)), 2), "stage_ms_node_p50": stage_ms,
        "backend": backend_desc, "node_counters": counters, "plot": str(plot) if plot else None,
        **tracking,
    }
    if tracking.get("track"):
        result["fixes_plot"] = str(_plot_fixes(seq, xy, map_frames, fixes, truth_xy, mxy, radius_m, out / "fixes.png", mode))
    print(f"{len(results)}/{rstats.frames} frames answered at {result['frame_rate_hz']:.1f} Hz; "
          f"recall@1 {r1:.3f} over {len(qs)} queries with a map place within {radius_m:g} m; "
          f"latency (publish -> ~/match) p50 {result['latency_ms_end_to_end_p50']} ms, p99 {result['latency_ms_end_to_end_p99']} ms "
          f"(node {result['latency_ms_node_p50']} ms); {backend_desc}")
    if scans and rate <= 0:
        rest = sum(v for k, v in stage_ms.items() if k != "verify")
        print(f"  (lockstep replay: each frame waits for its answer, and a frame the verifier takes waits for its GICP "
              f"registrations of up to {verify_candidates} best hits, one after another: the node's p50 a frame here "
              f"{stage_ms.get('verify', float('nan')):.0f} ms verifying, {rest:.0f} ms the other stages (their p50s summed); with sensors at "
              f"their own rate the node answers every frame at once and verifies the ones it can, "
              f"attnlink_ros/bench/bench_reloc_node.py)")
    print("recall@1 by the heading the place was mapped in: " + ", ".join(
        f"{c} {v['recall@1']:.3f} ({v['queries']} queries)" for c, v in by_heading.items()) + f"  [map of {views} heading views]")
    sf, tk = tracking.get("single_frame"), tracking.get("track")
    if tk:
        print(f"~/place, single frame (every frame's top place, tracking off): precision {sf['precision']:.3f}, recall {sf['recall']:.3f}, "
              f"{sf['off_map_published']} of {sf['off_map']} off-map frames published")
        print(f"~/place, tracking filter (published when confidence >= the mode's threshold): precision "
              f"{'-' if tk['precision'] is None else format(tk['precision'], '.3f')}, recall {tk['recall']:.3f}, "
              f"{tk['off_map_published']} of {tk['off_map']} off-map frames published; states {tk['states']}")
    if plot:
        print(f"trajectory with matches: {plot}")
    if result.get("fixes_plot"):
        print(f"trajectory with the filter's fixes: {result['fixes_plot']}")
    return result


def _score_tracking(fixes: dict, results: dict, answerable: dict, truth_xy: dict, mxy: np.ndarray, radius_m: float) -> dict:
    """Precision and recall of what ~/place would carry: every frame's top place (single frame)
    and the node's filter's published fixes (tracking), over the frames answered."""
    if not fixes or all(st == "" for st, _, _ in fixes.values()):
        return {}
    ts = sorted(fixes)
    ans = np.array([answerable.get(t, False) for t in ts])
    out = {}
    for key in ("single_frame", "track"):
        if key == "single_frame":
            place = np.array([int(results[t][0]["map_index"]) for t in ts])
            pub = np.ones(len(ts), bool)
        else:
            place = np.array([fixes[t][1] for t in ts])
            pub = np.array([fixes[t][0] == "tracking" for t in ts]) & (place >= 0)
        right = np.array([p >= 0 and float(np.hypot(*(mxy[p] - truth_xy[t]))) <= radius_m for p, t in zip(place, ts)])
        n = int(pub.sum())
        out[key] = {"precision": round(float((pub & right).sum() / n), 4) if n else None,
                    "recall": round(float((pub & right & ans).sum() / max(ans.sum(), 1)), 4), "published": n,
                    "off_map": int((~ans).sum()), "off_map_published": int((pub & ~ans).sum())}
    out["track"]["states"] = {st: int(sum(f[0] == st for f in fixes.values())) for st in ("tracking", "relocalising", "lost")}
    return out


def _plot_fixes(seq, xy, map_frames, fixes, truth_xy, mxy, radius_m, path: Path, mode: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = sorted(fixes)
    q = np.array([truth_xy[t] for t in ts])
    pub = np.array([fixes[t][0] == "tracking" and fixes[t][1] >= 0 for t in ts])
    right = np.array([p and float(np.hypot(*(mxy[fixes[t][1]] - truth_xy[t]))) <= radius_m for p, t in zip(pub, ts)])
    lost = np.array([fixes[t][0] == "lost" for t in ts])
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.plot(xy[:, 0], xy[:, 1], color="0.85", lw=1, label="drive")
    ax.plot(mxy[:, 0], mxy[:, 1], color="0.45", lw=2.5, label="map")
    ax.scatter(q[pub & right, 0], q[pub & right, 1], s=6, c="tab:green", label=f"fix published, right ({int((pub & right).sum())})")
    ax.scatter(q[pub & ~right, 0], q[pub & ~right, 1], s=14, c="tab:red", marker="x", label=f"fix published, wrong ({int((pub & ~right).sum())})")
    ax.scatter(q[lost, 0], q[lost, 1], s=4, c="tab:blue", alpha=0.4, label=f"lost: nothing published ({int(lost.sum())})")
    ax.set_aspect("equal")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{seq.dir.name}: the node's tracked fixes ({mode} queries)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
