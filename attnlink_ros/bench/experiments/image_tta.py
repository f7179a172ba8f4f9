"""Experiment (session 15, issue 20): test-time photometric averaging of real image queries (brightness 0.7 / 1.3,
gamma 0.8 / 1.25 beside the image): descriptors averaged, or log-depths averaged before the depth branch; each fold
network (PATTERN with {fold}) on the "which drive" protocol and the depth table. Prints per fold and pooled."""
import numpy as np, sys, torch
from attnlink_ros.data.real import RealFolds, load_real_frames
from attnlink_ros.model.io import load_model
from attnlink_ros.train.real_image import first_halves
from attnlink_ros.evaluation.depth import depth_sums, metrics
pattern = sys.argv[1]
folds = RealFolds.load("attnlink_ros/config/real_folds.yaml")
frames = None
def norm(x): return x / np.linalg.norm(x, axis=1, keepdims=True)
VARS = {"id": lambda x: x, "b0.7": lambda x: x * 0.7, "b1.3": lambda x: np.clip(x * 1.3, 0, 1),
        "g0.8": lambda x: x ** 0.8, "g1.25": lambda x: x ** 1.25}
tot = {}
for name, drives in folds.folds.items():
    model, _ = load_model(pattern.format(fold=name))
    if model.cfg.mono_encoder == "mixture": model.set_image_domain("camera")
    if frames is None:
        frames = load_real_frames(folds.roots, 64, 256, sequences=folds.drives, views=2, fov_deg=model.cfg.input_fov_deg)
    first = first_halves(frames)
    K = 2
    mapf = frames.subset(first)
    with torch.no_grad():
        db = model(depth=torch.from_numpy(mapf.views.reshape(-1, *mapf.views.shape[2:]))).descriptor.numpy()
        db_drive = np.repeat(mapf.drive, K)
        q = frames.subset(~first & np.isin(frames.drive, list(drives)))
        x = (lambda a: (torch.from_numpy(a) - model.rgb_mean) / model.rgb_std)
        outs = {k: model.mono(x(f(q.rgb).astype(np.float32))) for k, f in VARS.items()}
        descs = {k: model(rgb=torch.from_numpy(f(q.rgb).astype(np.float32))).descriptor.numpy() for k, f in VARS.items()}
        logd = torch.stack([torch.log(o[0].clamp_min(1e-3)) for o in outs.values()]).mean(0)
        lg = torch.stack([o[1] for o in outs.values()]).mean(0)
        fused_depth = model.fuse(model.pseudo_lidar_tokens(torch.exp(logd), lg))[0].numpy()
    held = frames.of_drives(drives)
    with torch.no_grad():
        hx = x(held.rgb)
        ho = [model.mono(x(f(held.rgb).astype(np.float32))) for f in VARS.values()]
        hd = torch.exp(torch.stack([torch.log(o[0].clamp_min(1e-3)) for o in ho]).mean(0)).numpy()
        h0 = ho[0][0].numpy()
    variants = {"plain": descs["id"], "desc mean": norm(np.mean(list(descs.values()), 0)), "depth mean": fused_depth}
    for k, a in variants.items():
        ok = db_drive[np.argmax(a @ db.T, 1)] == q.drive
        t = tot.setdefault(k, [0, 0]); t[0] += ok.sum(); t[1] += len(ok)
    for k, p in (("plain", h0), ("depth mean", hd)):
        t = tot.setdefault("depth " + k, np.zeros(4)); t += sum(depth_sums(pp, tt) for pp, tt in zip(p, held.depth))
    print(name, {k: round(float((db_drive[np.argmax(a @ db.T, 1)] == q.drive).mean()), 3) for k, a in variants.items()}, flush=True)
for k, v in tot.items():
    print("pooled", k, f"{v[0]}/{v[1]} = {v[0]/v[1]:.3f}" if isinstance(v, list) else metrics(v))
