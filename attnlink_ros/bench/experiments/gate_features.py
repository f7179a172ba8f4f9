"""Exploration (session 14): does a gate on richer encoder statistics (channel means AND standard
deviations of every Lite0 level) resist changed light better than the shipped means-only gate?
Offline: the frozen ImageNet encoder's features of renders (towns 1201-1208, 1301-1303, every 3rd
frame), of all 77 real frames, each with 2 seeded photometric variants (train/mixture.py), and of
the held-out frames under the PROBE perturbations; per fold a logistic gate (fit_gate) on the
training folds' real frames against the renders; the probe on the held-out fold.

    python attnlink_ros/bench/experiments/gate_features.py [--stats mean|mean_std] [--photometric 2]
"""
import argparse
import json

import numpy as np
import torch

from attnlink_ros.data.real import RealFolds, load_real_frames
from attnlink_ros.model.io import load_model
from attnlink_ros.train.mixture import PROBE, fit_gate, photometric_variants, probe_images

ap = argparse.ArgumentParser()
ap.add_argument("--stats", default="mean_std")
ap.add_argument("--photometric", type=int, default=2)
ap.add_argument("--json")
a = ap.parse_args()
torch.set_num_threads(2)
model, _ = load_model(None)
enc = model.mono.camera.encoder.eval()
H, W, fov = model.cfg.input_height, model.cfg.input_width, model.cfg.input_fov_deg


@torch.no_grad()
def feats(rgb, mirror=True):
    out = []
    for i in range(0, len(rgb), 32):
        x = (torch.from_numpy(np.ascontiguousarray(rgb[i:i + 32])) - model.rgb_mean) / model.rgb_std
        for im in ((x, x.flip(-1)) if mirror else (x,)):
            fs = enc(im)
            parts = [f.mean(dim=(2, 3)) for f in fs]
            if a.stats == "mean_std":
                parts += [f.std(dim=(2, 3)) for f in fs]
            out.append(torch.cat(parts, 1).numpy())
    return np.concatenate(out)


def with_variants(rgb, seed):
    return np.concatenate([rgb, photometric_variants(rgb, a.photometric, seed)]) if a.photometric else rgb


towns = [f"out/towns/s{t}" for t in (1201, 1202, 1203, 1204, 1205, 1206, 1207, 1208, 1301, 1302, 1303)]
R = np.concatenate([feats(with_variants(load_real_frames([t], H, W, sequences=["00"], stride=3, fov_deg=fov).rgb, 1 + i))
                    for i, t in enumerate(towns)])
folds = RealFolds.load("attnlink_ros/config/real_folds.yaml")
real = load_real_frames(folds.roots, H, W, sequences=folds.drives, fov_deg=fov)
tot = {k: 0 for k in ("as_is", *PROBE)}
towns_fresh = {t: feats(load_real_frames([f"out/towns/{t}"], H, W, sequences=["00"], fov_deg=fov).rgb, mirror=False) for t in ("s1401", "s1402")}
fresh_bad = {t: 0 for t in towns_fresh}
for name, drives in folds.folds.items():
    train = ~np.isin(real.drive, drives)
    Xr = feats(with_variants(real.rgb[train], 0))
    X = np.concatenate([Xr, R])
    y = np.concatenate([np.zeros(len(Xr)), np.ones(len(R))])
    gate = torch.nn.Linear(X.shape[1], 1)
    mean, std = torch.zeros(X.shape[1]), torch.ones(X.shape[1])
    fit = fit_gate(gate, mean, std, X.astype(np.float32), y, 0.01, 200)
    held = np.isin(real.drive, drives)
    # the held-out frames as they are and perturbed, as train/mixture.py's fold runs probe them
    P = {"as_is": feats(real.rgb[held], mirror=False),
         **{k: feats(v, mirror=False) for k, v in probe_images(real.rgb[held]).items()}}
    with torch.no_grad():
        for k, F_ in P.items():
            p = torch.sigmoid(gate((torch.from_numpy(F_) - mean) / std)[:, 0]).numpy()
            tot[k] += int((p > 0.5).sum())
        for t, F_ in towns_fresh.items():
            p = torch.sigmoid(gate((torch.from_numpy(F_) - mean) / std)[:, 0]).numpy()
            fresh_bad[t] += int((p <= 0.5).sum())
    print(name, fit, flush=True)
res = {"stats": a.stats, "photometric": a.photometric, "held_out_above_0.5_of_77": tot, "fresh_renders_called_camera": fresh_bad}
print(json.dumps(res))
if a.json:
    open(a.json, "w").write(json.dumps(res, indent=2) + "\n")
