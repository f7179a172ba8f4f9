"""What heading views cost: map build time, map size on disk and search latency for K views a place,
against today's one-view map (K = 1) measured in the same run.

* build: ``build_map_from_sequence`` over the first ``--places`` frames of a KITTI-layout drive
  (default: a synthetic drive rendered here), ONNX Runtime, wall time and ratio to K = 1.
* size: the map directory on disk (index + place table), ratio to K = 1.
* search: ``PlaceMap.search_views`` (exact, fp16, deduplicated to places) at ``--search-places``
  places x K views of random unit descriptors, one query at a time, one FAISS thread.

    .venv/bin/python bench/bench_views.py [--data ROOT] [--places 300] [--views 1 2 4 8] [--json FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file())


def search_latency(pm, queries: np.ndarray, k: int = 5) -> tuple[float, float]:
    """(p50, p99) ms of the map's place search (views deduplicated), one query at a time."""
    from types import SimpleNamespace

    from bench_search import latency  # bench/ is this script's folder

    return latency(SimpleNamespace(search=pm.search_views), queries, k)


def main() -> None:
    import faiss

    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.pipeline import PlaceRecognizer
    from attnlink_ros.retrieval.build import build_map_from_sequence
    from attnlink_ros.retrieval.place_map import PlaceMap, PlaceTable

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="KITTI-layout root (default: a 300-frame synthetic drive rendered into a temporary folder)")
    ap.add_argument("--sequence", default="00")
    ap.add_argument("--places", type=int, default=300, help="frames mapped for the build timing (default 300)")
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--search-places", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--json", help="write the table as JSON")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_views_"))
    try:
        root = args.data
        if root is None:
            from attnlink_ros.data.synth import SynthConfig, write_synthetic_sequence

            root = tmp / "town"
            write_synthetic_sequence(root, SynthConfig(frames=args.places, seed=11), workers=2, progress=True)
        seq = KittiSequence(root, args.sequence)
        frames = [i for i in range(min(args.places, len(seq))) if seq.scan_path(i).is_file()]
        rec = PlaceRecognizer(None, None, backend="onnxruntime")
        rec.backend("lidar").encode(depth=np.zeros((1, 1, rec.cfg.input_height, rec.cfg.input_width), np.float32))  # warm-up
        rng = np.random.default_rng(0)
        d = rec.cfg.descriptor_dim
        queries = rng.normal(size=(args.queries, d)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        n = args.search_places
        table = PlaceTable(np.tile(np.eye(4), (n, 1, 1)), np.arange(n) * 0.1, np.full(n, "00"), np.arange(n), np.zeros((n, 2)))
        rows = []
        for K in args.views:
            pm, stats = build_map_from_sequence(rec, seq, frames, progress=False, views=K)
            size = dir_size(pm.save(tmp / f"map{K}"))
            t0 = time.perf_counter()
            PlaceMap.load(tmp / f"map{K}")
            load_ms = 1e3 * (time.perf_counter() - t0)
            db = rng.normal(size=(n, K, d)).astype(np.float32)
            db /= np.linalg.norm(db, axis=2, keepdims=True)
            p50, p99 = search_latency(PlaceMap.build(db, table, "0" * 64, "flat", "fp16"), queries)
            rows.append({"views": K, "build_s": stats["seconds"], "map_bytes": size, "load_ms": round(load_ms, 2),
                         "search_p50_ms": round(p50, 4), "search_p99_ms": round(p99, 4)})
        base = next((r for r in rows if r["views"] == 1), rows[0])
        print(f"heading views: map of {len(frames)} places ({seq.dir}), ONNX Runtime; search at {n} places x K views "
              f"(exact fp16, one thread), {args.queries} queries; ratios against K = {base['views']} in this run")
        print(f"{'K':>3} {'build s':>8} {'x':>6} {'map KiB':>9} {'x':>6} {'load ms':>8} {'search p50 ms':>14} {'x':>6} {'p99 ms':>8}")
        for r in rows:
            r["build_ratio"] = round(r["build_s"] / base["build_s"], 2)
            r["size_ratio"] = round(r["map_bytes"] / base["map_bytes"], 2)
            r["search_ratio"] = round(r["search_p50_ms"] / base["search_p50_ms"], 2)
            print(f"{r['views']:>3} {r['build_s']:>8.2f} {r['build_ratio']:>6.2f} {r['map_bytes'] / 1024:>9.0f} {r['size_ratio']:>6.2f} "
                  f"{r['load_ms']:>8.1f} {r['search_p50_ms']:>14.4f} {r['search_ratio']:>6.2f} {r['search_p99_ms']:>8.4f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"places": len(frames), "search_places": n, "rows": rows}, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
