"""Relocalisation against a map with stored scans (``build-map --scans``): how often the best
hit is a true place, how often GICP verifies it, and how far the published pose lies from the
truth, with verification (the vehicle's registered pose) against without (the place's pose), in
one run on one drive.

The drive's first half is the map; every frame of the second half with a map place within 10 m
is a query (LiDAR or fused mode). Times per query: encode, search, verify.

    .venv/bin/python bench/bench_relocalize.py --data out/towns/s301 [--mode lidar] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def first_half_map(seq, model: str | None, backend: str, out_dir: Path, progress: bool = True):
    """The drive's first half saved as a map with stored scans (as `build-map --scans`) under
    ``out_dir/map``; returns (map dir, map size, build stats, queries): the second half's frames
    with a map place within 10 m (bench_reloc_node.py uses the same split)."""
    from attnlink_ros.pipeline import PlaceRecognizer
    from attnlink_ros.retrieval.build import build_map_from_sequence

    n = len(seq)
    split = n // 2
    pm, stats = build_map_from_sequence(PlaceRecognizer(model, None, backend=backend), seq, list(range(split)),
                                        scan_voxel=0.5, progress=progress)
    pm.save(Path(out_dir) / "map")
    xy = seq.xy
    queries = [q for q in range(split, n) if np.min(np.linalg.norm(xy[:split] - xy[q], axis=1)) <= 10.0]
    return Path(out_dir) / "map", split, stats, queries


def main() -> None:
    from tqdm import tqdm

    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.pipeline import Frame, PlaceRecognizer
    from attnlink_ros.retrieval.loops import RELOCALIZE_YAWS_DEG, LoopConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="KITTI-layout root of one drive with poses")
    ap.add_argument("--sequence", default="00")
    ap.add_argument("--model", help="model artifact; default: the shipped model")
    ap.add_argument("--mode", choices=["lidar", "fused"], default="lidar")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--candidates", type=int, default=3, help="hits verified per query (the node's verify_candidates)")
    ap.add_argument("--yaws", default=",".join(f"{y:g}" for y in RELOCALIZE_YAWS_DEG),
                    help="GICP coarse yaw starts, degrees (default: the relocalize node's; the loop closures use 0,30,-30,90,-90)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import faiss

    faiss.omp_set_num_threads(1)  # as the node does: FAISS's OpenMP team otherwise fights the encoder's threads
    seq = KittiSequence(args.data, args.sequence)
    with tempfile.TemporaryDirectory() as tmp:  # through the files, as the node loads it
        map_dir, split, stats, queries = first_half_map(seq, args.model, args.backend, Path(tmp))
        rec = PlaceRecognizer(args.model, map_dir, backend=args.backend)
    xy = seq.xy
    cfg = LoopConfig(min_score=-1.0, candidates=args.candidates, yaw_guesses_deg=tuple(float(y) for y in args.yaws.split(",")))
    rows = []
    for q in tqdm(queries, desc="relocalize"):
        frame = Frame(float(seq.times[q]), seq.calib, seq.read_image(q) if args.mode == "fused" else None, seq.read_scan(q))
        res = rec.query(frame, 5, args.mode, verify=cfg)
        top = res.hits[0]
        truth = seq.poses[q][:3, 3]
        place = np.asarray(top["pose"])[:3, 3]
        unverified_top = max(res.hits, key=lambda h: h["score"])  # what the map alone answers
        rows.append({
            "query": q,
            "descriptor_top1_correct": bool(np.linalg.norm(xy[unverified_top["frame"]] - xy[q]) <= 10.0),
            "verified": bool(top["verified"]),
            "published_correct": bool(np.linalg.norm(xy[top["frame"]] - xy[q]) <= 10.0),
            "place_error_m": float(np.linalg.norm(place - truth)),
            "vehicle_error_m": float(np.linalg.norm(top["vehicle_pose"][:3, 3] - truth)) if top["verified"] else None,
            "registrations": res.registrations,
            **{f"{k}_ms": v for k, v in res.timings_ms.items()},
        })
    ver = [r for r in rows if r["verified"]]
    verr = np.array([r["vehicle_error_m"] for r in ver]) if ver else np.zeros(0)
    perr = np.array([r["place_error_m"] for r in rows])
    pct = lambda a, p: round(float(np.percentile(a, p)), 3) if len(a) else None  # noqa: E731
    out = {
        "data": str(args.data), "mode": args.mode, "backend": rec.backend(args.mode).describe(), "map_places": split,
        "queries": len(rows), "candidates": args.candidates, "yaw_starts_deg": list(cfg.yaw_guesses_deg),
        "stored_points_per_place": round(stats["stored_scan_points"] / split), "map_build_frames_per_s": stats["frames_per_second"],
        "descriptor_recall@1": round(float(np.mean([r["descriptor_top1_correct"] for r in rows])), 3),
        "verified_share": round(len(ver) / len(rows), 3),
        "verified_precision": round(float(np.mean([r["published_correct"] for r in ver])), 3) if ver else None,
        "vehicle_error_m": {"median": pct(verr, 50), "p90": pct(verr, 90), "max": pct(verr, 100)},
        "place_error_m_all_queries": {"median": pct(perr, 50), "p90": pct(perr, 90)},
        "place_error_m_verified_queries": {"median": pct(perr[[r["verified"] for r in rows]], 50)},
        "ms_median": {k: round(float(np.median([r[k] for r in rows if k in r])), 2)
                      for k in ("prepare_ms", "encode_ms", "search_ms", "verify_ms")},
        "registrations_mean": round(float(np.mean([r["registrations"] for r in rows])), 2),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"{out['queries']} queries ({args.mode}, map = first {split} frames of {args.data}):")
    print("| | value |\n| --- | ---: |")
    print(f"| descriptor Recall@1 (best score, 10 m) | {out['descriptor_recall@1']:.3f} |")
    print(f"| verified by GICP (top {args.candidates}) | {out['verified_share']:.3f} |")
    print(f"| verified hits that are true places | {out['verified_precision']} |")
    print(f"| position error, verified: vehicle pose median / p90 / max m | {out['vehicle_error_m']['median']} / "
          f"{out['vehicle_error_m']['p90']} / {out['vehicle_error_m']['max']} |")
    print(f"| position error, the place's pose (no verification), same queries: median m | "
          f"{out['place_error_m_verified_queries']['median']} |")
    print(f"| ms per query (median): encode / search / verify | {out['ms_median']['encode_ms']} / "
          f"{out['ms_median']['search_ms']} / {out['ms_median']['verify_ms']} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": out, "queries": rows}, indent=1))


if __name__ == "__main__":
    main()
