"""Image-only query time of two model artifacts in one run (ONNX Runtime, batch 1): the shipped
model against another one (default: the previous shipped model, given by path). Prints a table
and the ratio; medians of ``--repeats`` calls after a warm-up.

    .venv/bin/python bench/bench_image_query.py --baseline OLD.json [--model NEW.json] [--threads 2] [--json FILE]
        [--domains auto camera]

``--domains``: the model's rows, one per image domain (model/mixture.py; a mixture model only):
"camera" runs the camera network alone (what a vehicle sets), "auto" both networks and the gate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from attnlink_ros.config import IMAGE_DOMAINS


def time_image_query(model_path: str | None, threads: int, repeats: int, image_domain: str = "auto") -> dict:
    from attnlink_ros.inference.backends import OnnxRuntimeBackend
    from attnlink_ros.model.io import load_model

    model, meta = load_model(model_path)
    cfg = model.cfg
    be = OnnxRuntimeBackend(model_path, "image", threads=threads, image_domain=image_domain)
    rgb = np.random.default_rng(0).random((1, 3, cfg.input_height, cfg.input_width), dtype=np.float32)
    for _ in range(5):
        be.encode(rgb=rgb)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        be.encode(rgb=rgb)
        ts.append(1e3 * (time.perf_counter() - t))
    return {"model": str(model_path or "shipped"), "fingerprint": meta["fingerprint"][:12], "mono_widths": list(cfg.mono_widths), "mono": cfg.mono_encoder, "image_domain": image_domain,
            "image_rgb_weight": cfg.image_rgb_weight, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "ms_median": round(float(np.median(ts)), 2), "ms_p90": round(float(np.percentile(ts, 90)), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model artifact (default: the shipped one)")
    ap.add_argument("--baseline", required=True, help="model artifact to compare with")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--domains", nargs="+", default=["auto"], choices=IMAGE_DOMAINS,
                    help="the model's image domains, one row each (default: auto)")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = [time_image_query(args.baseline, args.threads, args.repeats)]
    rows += [time_image_query(args.model, args.threads, args.repeats, d) for d in args.domains]
    print(f"image-only query, ONNX Runtime CPU, {args.threads} threads, batch 1, median of {args.repeats}")

    def net(r):
        if r["mono"] == "unet":
            return "U-Net " + "-".join(map(str, r["mono_widths"]))
        return r["mono"] + (f", image domain {r['image_domain']}" if r["mono"] == "mixture" else "")

    print("| model | pseudo-LiDAR network | params M | ms median | ms p90 |\n| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} ({r['fingerprint']}) | {net(r)} | {r['params_M']} | {r['ms_median']} | {r['ms_p90']} |")
    ratios = {r["image_domain"]: round(r["ms_median"] / rows[0]["ms_median"], 3) for r in rows[1:]}
    print("model / baseline: " + ", ".join(f"{d} {v:.2f}x" for d, v in ratios.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio": ratios, "threads": args.threads,
                                               "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
