"""Experiment: GICP-verify image hits with the image's pseudo-LiDAR (the U-Net's depth back-projected
into the LiDAR frame) against the map's scans. Records per (query, hit) the registration stats."""
import sys, numpy as np, torch, time
from attnlink_ros.model.io import load_model
from attnlink_ros.data.cache import model_cache
from attnlink_ros.data.kitti import KittiSequence
from attnlink_ros.evaluation.depth import predict_depth
from attnlink_ros.retrieval.loops import RELOCALIZE_YAWS_DEG, LoopConfig, ScanStore, verify, prepare, downsample
from attnlink_ros.retrieval.views import DEFAULT_REVERSE_OFFSET_M, view_offsets
torch.set_num_threads(1)
town, step = sys.argv[1], int(sys.argv[2])
maxd = float(sys.argv[3]) if len(sys.argv) > 3 else 40.0
import os
SPARSE = os.environ.get("SPARSE") == "1"
model, _ = load_model(None)
root = f"out/towns/{town}"
cache = model_cache(root, "00", "out/cache", model.cfg, False)
seq = KittiSequence(root, "00")
z = np.load(f"out/exp/img_{town}.npz")
q, db, m, yaws = z["q_img"], z["db"], int(z["m"]), z["yaws"]
N, K, D = db.shape
S = q @ db.reshape(N * K, D).T
g = cache.grid
M = np.asarray(cache.calib.lidar_to_image, np.float64)
Minv = np.linalg.inv(M[:, :3])
sx, sy = g.scale
rr, cc = np.mgrid[0:g.out_h, 0:g.out_w]
u = (cc + 0.5) / sx + g.left - 0.5
v = (rr + 0.5) / sy + g.top - 0.5
def pseudo_points(i):
    rgb = cache.images[i].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    if SPARSE:
        from attnlink_ros.geometry.projection import sparse_depth
        d = sparse_depth(seq.read_scan(int(cache.frames[i])), cache.calib, g)
    else:
        d = predict_depth(model, rgb)[0, 0]
    ok = (d > 1.0) & (d < maxd)
    zc = d[ok]
    pix = np.stack([u[ok] * zc, v[ok] * zc, zc], 0)  # 3, n
    X = Minv @ (pix - M[:, 3:4])
    return np.c_[X.T, np.zeros(len(zc))].astype(np.float32)
store = ScanStore(voxel=0.5)
for i in range(m):
    store.add(seq.read_scan(int(cache.frames[i])))
camera = tuple(float(x) for x in np.linalg.inv(seq.calib.T_cam_lidar)[:3, 3])
cfg = LoopConfig(min_score=-1.0, candidates=6, voxel_m=0.5, yaw_guesses_deg=RELOCALIZE_YAWS_DEG, distance_point=camera)
offsets = view_offsets(yaws, DEFAULT_REVERSE_OFFSET_M)
rows = []
qi = np.arange(0, len(q), step)
t0 = time.time()
for n, i in enumerate(qi):
    pts = pseudo_points(m + i)
    qs = prepare(downsample(pts, cfg.voxel_m), cfg.voxel_m)
    top = np.argsort(-S[i])[:6]
    for r, s_ in enumerate(top):
        p, vw = divmod(int(s_), K)
        ver = verify(qs, store[p], cfg, float(yaws[vw]), offsets[vw])
        rows.append((i, r, p, vw, S[i, s_], ver.ok, ver.inlier_ratio, ver.error_per_inlier if hasattr(ver, "error_per_inlier") else np.nan, len(pts)))
    if n % 20 == 0:
        print(n, len(qi), f"{time.time() - t0:.0f}s", flush=True)
fields = [f.name for f in __import__("dataclasses").fields(type(ver))]
print(fields)
np.save(f"out/exp/imgver_{town}{'_sparse' if SPARSE else ''}.npy", np.array(rows, dtype=np.float64))
