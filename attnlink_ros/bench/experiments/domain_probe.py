"""What the image domain (model/mixture.py: "camera" fixes the route a vehicle's camera takes)
buys on held-out real frames under the gate probe's perturbations (train/mixture.PROBE: darkened,
camera looks, blurred): for each fold, that fold's model on its held-out frames, as they are and
perturbed, with the gate ("auto") and with the camera network fixed ("camera"): pseudo-depth
AbsRel / delta<1.25 against the projected LiDAR, and image-only "which drive" Recall@1 (the
queries perturbed, the LiDAR map not). Pooled over the folds (each frame answered by a model that
never trained on it). A model with one pseudo-LiDAR network (a real_image run: the camera network
alone) fills the "camera" column only. Prints a table, writes JSON.

    python attnlink_ros/bench/experiments/domain_probe.py 'runs/mixhard-{fold}/model' --json out/eval/domain_probe_mixhard.json
"""
import argparse
import dataclasses
import json

import numpy as np

from attnlink_ros.data.real import RealFolds, load_real_frames
from attnlink_ros.evaluation.depth import depth_sums, metrics, predict_depth
from attnlink_ros.model.io import load_model
from attnlink_ros.train.mixture import probe_images
from attnlink_ros.train.real_image import which_drive

ap = argparse.ArgumentParser()
ap.add_argument("pattern")
ap.add_argument("--folds", default="attnlink_ros/config/real_folds.yaml")
ap.add_argument("--json")
a = ap.parse_args()
folds = RealFolds.load(a.folds)
DOMAINS = ("auto", "camera")
out = {"folds": {}}
single = load_model(a.pattern.format(fold=next(iter(folds.folds))))[0].cfg.mono_encoder != "mixture"
if single:
    DOMAINS = ("camera",)
pooled = {}  # (condition, domain) -> [depth sums, hits, queries]
frames = None
for name, drives in folds.folds.items():
    model, _ = load_model(a.pattern.format(fold=name))
    if frames is None:
        frames = load_real_frames(folds.roots, model.cfg.input_height, model.cfg.input_width, sequences=folds.drives, views=2,
                                  fov_deg=model.cfg.input_fov_deg)
    held = np.isin(frames.drive, list(drives))
    conditions = {"as_is": frames.rgb[held], **probe_images(frames.rgb[held])}
    row = {}
    for cond, rgb in conditions.items():
        full = frames.rgb.copy()
        full[held] = rgb
        perturbed = dataclasses.replace(frames, rgb=full)
        for dom in DOMAINS:
            if not single:
                model.set_image_domain(dom)
            pred = predict_depth(model, rgb)
            s = sum(depth_sums(p, t) for p, t in zip(pred, frames.depth[held]))
            wd = which_drive(model, perturbed, drives, modes=("image",))
            row[f"{cond}/{dom}"] = {"depth": metrics(s), "which_drive_image": wd["image"]["recall@1"], "queries": wd["queries"]}
            p = pooled.setdefault((cond, dom), [np.zeros(4), 0.0, 0])
            p[0] += s
            p[1] += wd["image"]["recall@1"] * wd["queries"]
            p[2] += wd["queries"]
        if not single:
            model.set_image_domain("auto")
        print(name, cond, {d: (row[f"{cond}/{d}"]["depth"]["abs_rel"], row[f"{cond}/{d}"]["which_drive_image"]) for d in DOMAINS}, flush=True)
    out["folds"][name] = row
out["pooled"] = {f"{c}/{d}": {"depth": metrics(s), "which_drive_image": round(h / max(q, 1), 4), "queries": q}
                 for (c, d), (s, h, q) in pooled.items()}
print(f"{'condition':12s} | " + " | ".join(f"{d + ': AbsRel':>14s} {'d<1.25':>7s} {'image R@1':>9s}" for d in DOMAINS))
for c in conditions:
    r = [out["pooled"][f"{c}/{d}"] for d in DOMAINS]
    print(f"{c:12s} | " + " | ".join(f"{x['depth']['abs_rel']:14.3f} {x['depth']['delta1']:7.3f} {x['which_drive_image']:9.3f}" for x in r))
out["perturbed_mean_which_drive_image"] = {d: round(float(np.mean([out["pooled"][f"{c}/{d}"]["which_drive_image"] for c in conditions
                                                                   if c != "as_is"])), 4) for d in DOMAINS}
print("mean image R@1 over the perturbations:", out["perturbed_mean_which_drive_image"])
if a.json:
    open(a.json, "w").write(json.dumps(out, indent=2) + "\n")
