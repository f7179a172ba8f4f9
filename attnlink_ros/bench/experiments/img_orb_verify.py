"""Experiment (session 15): ORB + essential-matrix RANSAC between the image query and each same-heading top-6
candidate place's own image (the map drive's camera). Labels: right (place within 10 m), wrong on
the map, query off the map."""
import sys, numpy as np, cv2, time
from attnlink_ros.data.kitti import KittiSequence
town, step = sys.argv[1], int(sys.argv[2])
root = f"out/towns/{town}"
seq = KittiSequence(root, "00")
z = np.load(f"out/exp/img_{town}.npz")
q, db, m, xy = z["q_img"], z["db"], int(z["m"]), z["xy"]
N, K, D = db.shape
S = q @ db.reshape(N * K, D).T

Kc = np.asarray(seq.calib.K, np.float64)
orb = cv2.ORB_create(nfeatures=1000)
feat = {}
def features(i):
    if i not in feat:
        img = cv2.cvtColor(seq.read_image(i), cv2.COLOR_BGR2GRAY)
        feat[i] = orb.detectAndCompute(img, None)
    return feat[i]
bf = cv2.BFMatcher(cv2.NORM_HAMMING)
rows = []
t0 = time.time()
for n, i in enumerate(range(0, len(q), step)):
    f = m + i
    kq, dq = features(f)
    dmin = np.min(np.linalg.norm(xy[:m] - xy[f], axis=1))
    top = np.argsort(-S[i])[:6]
    for r, s_ in enumerate(top):
        p, vw = divmod(int(s_), K)
        dist = np.linalg.norm(xy[p] - xy[f])
        inl = good = -1
        if vw == 0 and dq is not None:
            kp, dp = features(p)
            if dp is not None and len(dp) > 8:
                ms = bf.knnMatch(dq, dp, k=2)
                g = [a for a, b in (x for x in ms if len(x) == 2) if a.distance < 0.8 * b.distance]
                good = len(g)
                if good >= 8:
                    p1 = np.float64([kq[a.queryIdx].pt for a in g]); p2 = np.float64([kp[a.trainIdx].pt for a in g])
                    E, mask = cv2.findEssentialMat(p1, p2, Kc, cv2.RANSAC, 0.999, 1.0)
                    inl = int(mask.sum()) if mask is not None else 0
                else:
                    inl = 0
        rows.append((i, r, p, vw, S[i, s_], dist, dmin, good, inl))
    if n % 50 == 0:
        print(n, f"{time.time() - t0:.0f}s", flush=True)
rows = np.array(rows)
np.save(f"out/exp/orb_{town}.npy", rows)
v0 = rows[rows[:, 3] == 0]
on = v0[:, 6] <= 10
right = on & (v0[:, 5] <= 10)
for name, sel in (("right", right), ("wrong on map", on & ~right), ("off map", ~on)):
    x = v0[sel, 8]
    print(name, len(x), "inliers median", np.median(x), "p90", np.percentile(x, 90), "p99", np.percentile(x, 99), "max", x.max(),
          "good median", np.median(v0[sel, 7]))
