import sys, numpy as np
for town in sys.argv[1:]:
    z = np.load(f"out/exp/img_{town}.npz")
    q, db, xy, hd, m = z["q_img"], z["db"], z["xy"], z["heading"], int(z["m"])
    yaws = z["yaws"]
    N, K, D = db.shape
    S = q @ db.reshape(N * K, D).T  # (Q, N*K)
    qxy, qh = xy[m:], hd[m:]
    d = np.linalg.norm(qxy[:, None] - xy[None, :m], axis=2)  # Q,N
    sh = (hd[:m, None] - yaws[None, :]).reshape(-1)  # state heading
    dh = np.abs((qh[:, None] - sh[None, :] + 180) % 360 - 180)
    right = (np.repeat(d, K, axis=1) <= 10) & (dh < 90)
    ans = right.any(1)
    # which view is right for the nearest place: same heading (view 0) or reverse
    near = d.argmin(1)
    same = np.abs((qh - hd[near] + 180) % 360 - 180) < 90
    order = np.argsort(-S, axis=1)
    rank = np.array([np.flatnonzero(right[i, order[i]])[0] if ans[i] else -1 for i in range(len(q))])
    zs = (S - S.mean(1, keepdims=True)) / S.std(1, keepdims=True)
    print(town, "queries", len(q), "answerable", ans.sum(), "same", (ans & same).sum(), "reverse", (ans & ~same).sum())
    for name, sel in (("same", ans & same), ("reverse", ans & ~same)):
        r = rank[sel]
        print(f"  {name}: top1 {np.mean(r==0):.3f} top5 {np.mean(r<5):.3f} top10 {np.mean(r<10):.3f} top50 {np.mean(r<50):.3f} median rank {np.median(r)}")
        zt = np.array([zs[i][right[i]].max() for i in np.flatnonzero(sel)])
        print(f"  {name}: z of the best true state: median {np.median(zt):.2f} p10 {np.percentile(zt,10):.2f}")
    top = zs.max(1)
    print(f"  top z: on-map median {np.median(top[ans]):.2f}, off-map median {np.median(top[~ans]):.2f}; top score on {np.median(S.max(1)[ans]):.3f} off {np.median(S.max(1)[~ans]):.3f}")
