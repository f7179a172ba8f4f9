"""Place-map search benchmark: latency of exact and approximate search, one query, one core.

Latency uses random unit vectors; the recall of the approximate indexes against exact search is
measured on descriptors with real structure: a model's map descriptors of a synthetic drive (or
of --data), plus perturbed copies of them up to the map size.

    .venv/bin/python bench/bench_search.py [--sizes 5000 100000 1000000] [--model M] [--data ROOT] [--json FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def structured(base: np.ndarray, n: int, rng) -> np.ndarray:
    """``n`` descriptors: the real ones, then perturbed copies (noise of ~the local spread)."""
    reps = int(np.ceil(n / len(base)))
    out = [base]
    for _ in range(reps - 1):
        out.append(unit(base + rng.normal(0, 0.08, base.shape).astype(np.float32)))
    return np.concatenate(out)[:n]


def latency(index, queries: np.ndarray, k: int = 5) -> tuple[float, float]:
    index.search(queries[:5], k)
    t = []
    for q in queries:
        s = time.perf_counter()
        index.search(q[None], k)
        t.append(time.perf_counter() - s)
    t = np.asarray(t) * 1e3
    return float(np.median(t)), float(np.percentile(t, 99))


def main() -> None:
    import faiss

    from attnlink_ros.retrieval.place_map import make_index

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 100000, 1000000])
    ap.add_argument("--model", help="model for the structured descriptors (default: shipped)")
    ap.add_argument("--data", help="KITTI-layout root of a drive to encode (default: a synthetic drive)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--indexes", nargs="+", default=["flat", "ivf", "ivfpq", "hnsw"])
    ap.add_argument("--hnsw-max", type=int, default=100000, help="largest map HNSW is built for (its build is slow on one core)")
    ap.add_argument("--build-threads", type=int, default=2, help="threads for building (search is timed on one)")
    ap.add_argument("--json")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    base = None
    try:
        import tempfile

        import torch

        from attnlink_ros.data.cache import FrameCache, build_cache
        from attnlink_ros.data.synth import SynthConfig, write_synthetic_sequence
        from attnlink_ros.evaluation.recall import encode_cache
        from attnlink_ros.model.io import load_model

        torch.set_num_threads(2)
        model, meta = load_model(args.model)
        tmp = Path(tempfile.mkdtemp())
        root = args.data
        if root is None:
            write_synthetic_sequence(tmp / "town", SynthConfig(frames=600, seed=404), workers=2, progress=False)
            root = tmp / "town"
        cache = FrameCache.open(build_cache(root, "00", tmp / "cache", model.cfg.input_height, model.cfg.input_width, progress=False))
        base = encode_cache(model, cache, modes=("lidar",))["lidar"]
        source = f"{len(base)} lidar descriptors of {root} by model {meta['fingerprint'][:12]} + perturbed copies"
    except Exception as exc:  # no model yet: structure from clustered random vectors
        centres = unit(rng.normal(size=(600, 256)))
        base = unit(centres + rng.normal(0, 0.1, centres.shape))
        source = f"clustered random vectors (no model: {exc})"
    d = base.shape[1]
    rows = []
    print(f"search latency, one query, top-5, one core; recall@1 of approximate vs exact on {source}")
    print(f"{'places':>9s} {'index':8s} {'build s':>8s} {'median ms':>10s} {'p99 ms':>8s} {'recall@1 vs exact':>18s}")
    for n in args.sizes:
        latency_db = unit(rng.normal(size=(n, d)))
        lat_q = unit(rng.normal(size=(args.queries, d)))
        struct_db = structured(base, n, rng)
        struct_q = unit(struct_db[rng.choice(n, args.queries, replace=False)] + rng.normal(0, 0.03, (args.queries, d)).astype(np.float32))
        exact = faiss.IndexFlatIP(d)
        exact.add(struct_db)
        _, truth = exact.search(struct_q, 1)
        for kind in args.indexes:
            if kind == "hnsw" and n > args.hnsw_max:
                continue
            faiss.omp_set_num_threads(args.build_threads)
            t = time.perf_counter()
            idx_lat = make_index(latency_db, kind)
            build = time.perf_counter() - t
            idx_s = make_index(struct_db, kind)
            faiss.omp_set_num_threads(1)
            med, p99 = latency(idx_lat, lat_q)
            _, got = idx_s.search(struct_q, 1)
            rec = float(np.mean(got[:, 0] == truth[:, 0]))
            rows.append({"places": n, "index": kind, "build_s": round(build, 2), "median_ms": round(med, 4), "p99_ms": round(p99, 4),
                         "recall_at_1_vs_exact": rec})
            print(f"{n:9d} {kind:8s} {build:8.2f} {med:10.3f} {p99:8.3f} {rec:18.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"source": source, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
