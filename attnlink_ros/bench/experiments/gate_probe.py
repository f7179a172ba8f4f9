"""The mixture gate's robustness probe on held-out real folds: for each fold, that fold's model (PATTERN
with {fold}) on its held-out frames, as they are and under train/mixture.PROBE's perturbations; and
fresh rendered towns (all their frames) with the all-folds model. Prints a table, writes JSON.

    python attnlink_ros/bench/experiments/gate_probe.py 'runs/mixhard-{fold}/model' --towns out/towns/s1401 out/towns/s1402 --json out/eval/gate_probe_mixhard.json
"""
import argparse
import json

from attnlink_ros.data.real import RealFolds, load_real_frames
from attnlink_ros.model.io import load_model
from attnlink_ros.train.mixture import PROBE, _summary, perturbation_probe, render_probability

ap = argparse.ArgumentParser()
ap.add_argument("pattern")
ap.add_argument("--folds", default="attnlink_ros/config/real_folds.yaml")
ap.add_argument("--towns", nargs="*", default=[])
ap.add_argument("--json")
a = ap.parse_args()
folds = RealFolds.load(a.folds)
out, tot = {"folds": {}, "towns": {}}, {}
frames = None
for name, drives in folds.folds.items():
    model, _ = load_model(a.pattern.format(fold=name))
    if frames is None:  # every fold's model sees the frames on the same (level) grid
        frames = load_real_frames(folds.roots, model.cfg.input_height, model.cfg.input_width, sequences=folds.drives,
                                  fov_deg=model.cfg.input_fov_deg)
    fr = frames.of_drives(drives)
    row = {"as_is": _summary(render_probability(model, fr.rgb)), **perturbation_probe(model, fr.rgb)}
    out["folds"][name] = row
    for k, v in row.items():
        t = tot.setdefault(k, [0, 0])
        t[0] += v["above_0.5"]
        t[1] += v["frames"]
out["pooled_above_0.5"] = {k: f"{a_}/{n}" for k, (a_, n) in tot.items()}
print("held-out real frames called renders (p > 0.5), per perturbation:", json.dumps(out["pooled_above_0.5"]))
if a.towns:
    model, _ = load_model(a.pattern.format(fold="all"))
    for t in a.towns:
        fr = load_real_frames([t], model.cfg.input_height, model.cfg.input_width, sequences=["00"], fov_deg=model.cfg.input_fov_deg)
        out["towns"][t] = _summary(render_probability(model, fr.rgb))
        print(t, out["towns"][t])
if a.json:
    open(a.json, "w").write(json.dumps(out, indent=2) + "\n")
