"""Dumps full image-query x map-view cosine scores for tracking experiments (601/602, shipped model)."""
import sys, numpy as np
from pathlib import Path
from attnlink_ros.model.io import load_model
from attnlink_ros.data.cache import model_cache
from attnlink_ros.data.kitti import KittiSequence
from attnlink_ros.evaluation.recall import encode_cache, encode_views
from attnlink_ros.retrieval.views import view_yaws
from attnlink_ros.geometry.poses import headings_deg
import torch
torch.set_num_threads(1)
model, _ = load_model(None)
for town in sys.argv[1:]:
    root = f"out/towns/{town}"
    cache = model_cache(root, "00", "out/cache", model.cfg, False)
    seq = KittiSequence(root, "00")
    yaws = view_yaws(2)
    n = len(cache); m = int(round(n * 0.375))
    desc = encode_cache(model, cache, modes=("image", "lidar"), progress=False)
    db = encode_views(model, cache, seq, yaws, progress=False, lidar=desc["lidar"])
    poses = seq.poses[cache.frames]
    np.savez(f"out/exp/img_{town}.npz", q_img=desc["image"][m:], q_lidar=desc["lidar"][m:], db=db[:m], xy=cache.xy, heading=headings_deg(poses),
             stamps=cache.times, m=m, poses=poses, yaws=np.asarray(yaws))
    print(town, n, m, desc["image"].shape, db.shape, flush=True)
