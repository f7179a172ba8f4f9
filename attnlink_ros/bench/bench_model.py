"""Encoder benchmark: ms per frame of both variants, each query mode, batch 1, on the CPU
(2 threads by default) through PyTorch and ONNX Runtime; on CUDA too when present.

The baseline of the ratio column is the paper's variant (attnlink) through PyTorch, measured in
the same run.

    .venv/bin/python bench/bench_model.py [--threads 2] [--repeats 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, repeats: int) -> float:
    fn()
    fn()
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        fn()
        t.append(time.perf_counter() - s)
    return float(np.median(t)) * 1e3


def main() -> None:
    from attnlink_ros.inference.backends import OnnxRuntimeBackend, TorchBackend
    from attnlink_ros.inference.export import example_inputs
    from attnlink_ros.model import AttnLink, variant
    from attnlink_ros.model.io import save_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    rows = []
    # (label, variant, overrides, modes): "+pseudo-lidar" = image_depth, whose image-only query
    # runs the image's depth U-Net and the depth branch (its LiDAR and fused queries are the plain ones)
    variants = [("attnlink", "attnlink", {}, ("image", "lidar", "fused")),
                ("attnlink-lite", "attnlink-lite", {}, ("image", "lidar", "fused")),
                ("lite+pseudo-lidar", "attnlink-lite", {"image_depth": True}, ("image",))]
    for name, vname, overrides, modes in variants:
        torch.manual_seed(0)
        model = AttnLink(variant(vname, **overrides)).eval()
        path = save_model(model, tmp / name).with_suffix("")
        params = sum(p.numel() for p in model.parameters()) / 1e6
        for mode in modes:
            x = [a.numpy() for a in example_inputs(model, mode)]
            feeds = dict(zip(("rgb", "depth") if mode == "fused" else (("rgb",) if mode == "image" else ("depth",)), x))
            backends = [TorchBackend(path, mode, device="cpu"), OnnxRuntimeBackend(path, mode, threads=args.threads)]
            if torch.cuda.is_available():
                backends += [TorchBackend(path, mode, device="cuda"), TorchBackend(path, mode, device="cuda", fp16=True),
                             TorchBackend(path, mode, device="cuda", fp16=True, cuda_graph=True)]
            for b in backends:
                ms = timed(lambda: b.encode(**feeds), args.repeats)
                rows.append({"variant": name, "input": f"{model.cfg.input_height}x{model.cfg.input_width}", "params_M": round(params, 2),
                             "mode": mode, "backend": b.describe(), "ms": round(ms, 2)})
    base = {r["mode"]: r["ms"] for r in rows if r["variant"] == "attnlink" and r["backend"].startswith("torch (cpu")}
    print(f"encoder ms per frame, batch 1, {args.threads} CPU threads (median of {args.repeats}); ratio vs attnlink/torch-cpu")
    print(f"{'variant':17s} {'input':8s} {'params':>7s} {'mode':6s} {'backend':36s} {'ms':>8s} {'speed-up':>8s}")
    for r in rows:
        r["speedup_vs_attnlink_torch_cpu"] = round(base[r["mode"]] / r["ms"], 2)
        print(f"{r['variant']:17s} {r['input']:8s} {r['params_M']:6.2f}M {r['mode']:6s} {r['backend']:36s} {r['ms']:8.2f} {r['speedup_vs_attnlink_torch_cpu']:7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
