"""Validation score of the image descriptor mix ``image_rgb_weight`` w for one model: image->LiDAR
revisit Recall@1 averaged over validation towns and image-noise levels (as ``train.val_noise``
scores checkpoints), for each w of a grid, from one encoding of each image path per town and
noise level (the mix has no weights: descriptor = normalize((1 - w) pseudo-LiDAR + w RGB tokens)).

    .venv/bin/python bench/image_mix_weight.py --model models/attnlink-lite.json --cache out/cache \\
        --towns s201_00_64x256 s202_00_64x256 [--weights 0,0.1,...] --json out/mix.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def main() -> None:
    import torch

    from attnlink_ros.data.cache import FrameCache
    from attnlink_ros.evaluation.protocols import make_protocol
    from attnlink_ros.evaluation.recall import encode_cache
    from attnlink_ros.evaluation.robustness import _recall, image_noise
    from attnlink_ros.model.io import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", default="out/cache")
    ap.add_argument("--towns", nargs="+", default=["s201_00_64x256", "s202_00_64x256"], help="frame caches (validation towns)")
    ap.add_argument("--weights", default="0,0.1,0.2,0.3,0.4,0.5,0.6")
    ap.add_argument("--sigmas", default="0,0.05,0.10,0.15")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    W = [float(w) for w in args.weights.split(",")]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    model, meta = load_model(args.model)
    if model.mono is None:
        raise SystemExit("image_mix_weight: the model has no pseudo-LiDAR network (image_depth)")
    model.cfg = dataclasses.replace(model.cfg, image_rgb_weight=0.0)  # the pseudo-LiDAR descriptor alone
    res = {str(w): {} for w in W}
    for town in args.towns:
        c = FrameCache.open(Path(args.cache) / town)
        proto = make_protocol("revisit", c.xy, c.times)
        db = encode_cache(model, c, modes=("lidar",))["lidar"]
        for sigma in sigmas:
            p = encode_cache(model, c, modes=("image",), frames=proto.queries, degrade=image_noise(sigma))["image"]
            mono, model.mono = model.mono, None  # the RGB tokens' descriptor
            r = encode_cache(model, c, modes=("image",), frames=proto.queries, degrade=image_noise(sigma))["image"]
            model.mono = mono
            for w in W:
                x = (1 - w) * p + w * r
                x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
                res[str(w)][f"{town}/{sigma}"] = _recall(x, db, proto, c.xy)["recall@1"]
        print(town, {w: [round(v, 3) for k, v in res[w].items() if k.startswith(town + "/")] for w in res}, flush=True)
    score = {w: float(np.mean(list(v.values()))) for w, v in res.items()}
    clean = {w: float(np.mean([v[f"{t}/{sigmas[0]}"] for t in args.towns])) for w, v in res.items()}
    print("| w | score (mean over towns and sigmas) | clean (sigma 0) |\n| ---: | ---: | ---: |")
    for w in res:
        print(f"| {w} | {score[w]:.4f} | {clean[w]:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model or "shipped", "fingerprint": meta["fingerprint"],
                                               "recall@1": res, "score": score, "clean": clean}, indent=1))


if __name__ == "__main__":
    main()
