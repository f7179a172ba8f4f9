import sys, numpy as np
town = sys.argv[1]
import os
R = np.load('out/exp/imgver_' + town + os.environ.get('SUF', '') + '.npy')
z = np.load(f"out/exp/img_{town}.npz")
xy, hd, m, yaws = z["xy"], z["heading"], int(z["m"]), z["yaws"]
qi, r, p, vw, s, ok, ratio, per, npts = R.T
qi = qi.astype(int); p = p.astype(int); vw = vw.astype(int)
d = np.linalg.norm(xy[m + qi] - xy[p], axis=1)
ans_all = np.linalg.norm(xy[m:, None] - xy[None, :m], axis=2).min(1) <= 10
ans = ans_all[qi]
sh = hd[p] - yaws[vw]
dh = np.abs((hd[m + qi] - sh + 180) % 360 - 180)
right = (d <= 10) & (dh < 90)
ok = ok > 0
print(f"{town}: {len(np.unique(qi))} queries, {ans_all[np.unique(qi)].sum()} answerable")
print("verified: right", (ok & right).sum(), "wrong on-map", (ok & ~right & ans).sum(), "off-map", (ok & ~ans).sum())
first = {}
for k in range(len(R)):
    if ok[k] and qi[k] not in first:
        first[qi[k]] = k
fq = np.array(list(first.values()), int)
print("first verified per query:", len(fq), "right", right[fq].sum(), "answerable queries verified right", len({qi[k] for k in fq if right[k]}))
for name, sel in (("right", right), ("wrong on-map", ~right & ans), ("off-map", ~ans)):
    print(f"  inlier ratio {name}: median {np.median(ratio[sel]):.3f} p90 {np.percentile(ratio[sel],90):.3f} p99 {np.percentile(ratio[sel],99):.3f} max {ratio[sel].max():.3f}; err/inlier median {np.nanmedian(per[sel]):.3f}")
for th in (0.3, 0.4, 0.5, 0.6, 0.7):
    a = ratio >= th
    print(f"  ratio>={th}: right {int((a&right).sum())} (queries {len(np.unique(qi[a&right]))}) wrong-on {int((a&~right&ans).sum())} off {int((a&~ans).sum())}")
