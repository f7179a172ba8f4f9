"""Experiment (session 15, issue 20): is the far band what keeps real image queries from their LiDAR? Map LiDAR
views and queries with the grid's top 0 / 10 / 21 rows removed; the image's pseudo-LiDAR also run as a sparse scan
through the LiDAR path (returns where the predicted return probability > 0.5). Each fold network (PATTERN with {fold})
on the "which drive" protocol. Prints per fold and pooled."""
import numpy as np, sys, torch
from attnlink_ros.data.real import RealFolds, load_real_frames
from attnlink_ros.model.io import load_model
from attnlink_ros.train.real_image import first_halves
pattern = sys.argv[1]
folds = RealFolds.load("attnlink_ros/config/real_folds.yaml")
frames = None
tot = {}
def desc(model, depth):
    out = []
    with torch.no_grad():
        for i in range(0, len(depth), 16):
            out.append(model(depth=torch.from_numpy(np.ascontiguousarray(depth[i:i+16]))).descriptor.numpy())
    return np.concatenate(out)
for name, drives in folds.folds.items():
    model, _ = load_model(pattern.format(fold=name))
    if model.cfg.mono_encoder == "mixture": model.set_image_domain("camera")
    if frames is None:
        frames = load_real_frames(folds.roots, 64, 256, sequences=folds.drives, views=2, fov_deg=model.cfg.input_fov_deg)
    H = 64
    first = first_halves(frames)
    mapf = frames.subset(first)
    views = mapf.views.reshape(-1, *mapf.views.shape[2:]).copy()
    db_drive = np.repeat(mapf.drive, 2)
    q = frames.subset(~first & np.isin(frames.drive, list(drives)))
    with torch.no_grad():
        x = (torch.from_numpy(q.rgb) - model.rgb_mean) / model.rgb_std
        d, lg = model.mono(x)
        pseudo = (d * (torch.sigmoid(lg) > 0.5)).numpy()
        img = model(rgb=torch.from_numpy(q.rgb)).descriptor.numpy()
    res = {}
    for cut in (0, H // 6, H // 3):
        v = views.copy(); v[:, :, :cut] = 0
        p = pseudo.copy(); p[:, :, :cut] = 0
        s = q.depth.copy(); s[:, :, :cut] = 0
        db = desc(model, v)
        for k, qd in (("product image", img if cut == 0 else None), ("pseudo as LiDAR", desc(model, p)), ("LiDAR", desc(model, s))):
            if qd is None: continue
            ok = db_drive[np.argmax(qd @ db.T, 1)] == q.drive
            key = f"top {cut} rows cut: {k}"
            t = tot.setdefault(key, [0, 0]); t[0] += ok.sum(); t[1] += len(ok)
            res[key] = round(float(ok.mean()), 3)
    print(name, res, flush=True)
for k, (h, n) in tot.items(): print("pooled", k, f"{h}/{n} = {h/n:.3f}")
