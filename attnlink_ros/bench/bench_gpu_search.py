"""Exact place-map search on a CUDA GPU through PyTorch (fp16 matrix product + top-k), against the
same search on this machine's CPU (fp32, one thread) in the same run. faiss-gpu does the same on
a vehicle that has it (`PlaceMap.to_gpu()`); this measures what the GPU gives without it.

    python bench/bench_gpu_search.py [--sizes 5000 100000 1000000 10000000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def cpu_ms(db: torch.Tensor, q: torch.Tensor, k: int, repeats: int) -> float:
    t = []
    for i in range(repeats):
        s = time.perf_counter()
        torch.topk(db @ q[i % len(q)], k)
        t.append(time.perf_counter() - s)
    return float(np.median(t)) * 1e3


def gpu_ms(db: torch.Tensor, q: torch.Tensor, k: int, repeats: int) -> tuple[float, float]:
    """Median and p99 of one query: host vector in, top-k indices back on the host."""
    for i in range(5):
        torch.topk(db @ q[i].to(db.device, db.dtype), k)[1].cpu()
    t = []
    for i in range(repeats):
        s = time.perf_counter()
        torch.topk(db @ q[i % len(q)].to(db.device, db.dtype, non_blocking=False), k)[1].cpu()
        t.append(time.perf_counter() - s)
    return float(np.median(t)) * 1e3, float(np.percentile(t, 99)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 100000, 1000000, 10000000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--cpu-max", type=int, default=1000000, help="largest map also searched on the CPU")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu_search: needs a CUDA GPU")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(args.repeats, args.dim, generator=g), dim=1)
    rows = []
    print(f"exact search, one query, top-5, {torch.cuda.get_device_name()} vs CPU (1 thread)")
    print(f"{'places':>10s} {'gpu fp16 ms':>12s} {'p99':>8s} {'cpu fp32 ms':>12s} {'speed-up':>9s} {'top-1 agree':>12s}")
    for n in args.sizes:
        db = torch.nn.functional.normalize(torch.randn(n, args.dim, generator=g), dim=1)
        dbg = db.cuda().half()
        med, p99 = gpu_ms(dbg, q, 5, args.repeats)
        cpu = cpu_ms(db, q, 5, min(args.repeats, 20)) if n <= args.cpu_max else float("nan")
        agree = float((torch.topk(dbg @ q[:50].T.cuda().half(), 1, dim=0)[1].cpu()[0] == torch.topk(db @ q[:50].T, 1, dim=0)[1][0]).float().mean())
        rows.append({"places": n, "gpu_fp16_median_ms": round(med, 4), "gpu_p99_ms": round(p99, 4), "cpu_fp32_median_ms": round(cpu, 3),
                     "speedup": round(cpu / med, 1) if cpu == cpu else None, "top1_agreement_fp16_vs_fp32": agree})
        print(f"{n:10d} {med:12.3f} {p99:8.3f} {cpu:12.3f} {cpu / med:8.1f}x {agree:12.3f}")
        del dbg
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
