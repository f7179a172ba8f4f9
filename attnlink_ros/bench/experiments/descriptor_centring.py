"""Experiment (session 15, issue 20): does a modality gap hold real image queries back? Each fold network
(PATTERN with {fold}) on the "which drive" protocol with the image and LiDAR descriptors centred in
several ways (means from the map or the training folds only). Prints per fold and pooled."""
import numpy as np, sys
from attnlink_ros.data.real import RealFolds, load_real_frames
from attnlink_ros.model.io import load_model
from attnlink_ros.train.real_image import first_halves
from attnlink_ros.train.real_image import _descriptors
pattern = sys.argv[1]
folds = RealFolds.load("attnlink_ros/config/real_folds.yaml")
frames = None
tot = {}
def norm(x): return x / np.linalg.norm(x, axis=1, keepdims=True)
for name, drives in folds.folds.items():
    model, _ = load_model(pattern.format(fold=name))
    if model.cfg.mono_encoder == "mixture": model.set_image_domain("camera")
    if frames is None:
        frames = load_real_frames(folds.roots, model.cfg.input_height, model.cfg.input_width, sequences=folds.drives, views=2, fov_deg=model.cfg.input_fov_deg)
    first = first_halves(frames)
    K = frames.views.shape[1]
    mapf = frames.subset(first)
    db = _descriptors(model, depth=mapf.views.reshape(-1, *mapf.views.shape[2:]))
    db_drive = np.repeat(mapf.drive, K)
    q = frames.subset(~first & np.isin(frames.drive, list(drives)))
    qd = _descriptors(model, rgb=q.rgb)
    train = frames.subset(~np.isin(frames.drive, list(drives)))
    tr_img = _descriptors(model, rgb=train.rgb)
    tr_lid = _descriptors(model, depth=train.depth)
    variants = {
        "plain": (qd, db),
        "map mean": (norm(qd - db.mean(0)), norm(db - db.mean(0))),
        "each own mean (train img, map)": (norm(qd - tr_img.mean(0)), norm(db - db.mean(0))),
        "gap shift (train img-lidar)": (norm(qd - (tr_img.mean(0) - tr_lid.mean(0))), db),
    }
    for k, (a, b) in variants.items():
        ok = db_drive[np.argmax(a @ b.T, 1)] == q.drive
        t = tot.setdefault(k, [0, 0]); t[0] += ok.sum(); t[1] += len(ok)
        print(name, k, f"{ok.mean():.3f}", flush=True)
    print(name, "cos own-frame img vs lidar median", np.median(np.sum(tr_img * tr_lid, 1)))
for k, (h, n) in tot.items(): print("pooled", k, f"{h}/{n} = {h/n:.3f}")
