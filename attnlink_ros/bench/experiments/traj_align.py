"""Prototype (session 16, issue 19): image-only localisation WITH odometry by aligning the recent
odometry trajectory to the map (Hough vote over SE(2), distinct frames as support), instead of a
filter over places. Off-map frames are those whose aligned pose lies far from every place.

    python attnlink_ros/bench/experiments/traj_align.py s601 [L_m] [k_votes]

Needs out/exp/img_TOWN.npz (img_track_dump.py). Prints precision / recall / off-map published per
support threshold."""
import math
import sys

import numpy as np

sys.path.insert(0, ".")
from attnlink_ros.evaluation.tracking import simulated_odometry, odometry_delta  # noqa: E402


def wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def dead_reckon(odom):
    P = np.zeros((len(odom), 3))
    for i in range(1, len(odom)):
        x, y, h = P[i - 1]
        f, l, dh = odom[i]
        P[i] = (x + f * math.cos(h) - l * math.sin(h), y + f * math.sin(h) + l * math.cos(h), h + dh)
    return P


def load(town, k=10):
    z = np.load(f"out/exp/img_{town}.npz")
    q, db, xy, hd, m, yaws = z["q_" + MODE], z["db"], z["xy"], z["heading"], int(z["m"]), z["yaws"]
    N, K, D = db.shape
    S = q @ db.reshape(N * K, D).T
    top = np.argsort(-S, axis=1)[:, :k]
    hp, hv = top // K, top % K
    hsc = np.take_along_axis(S, top, 1)
    sh = wrap(np.radians(hd[:m, None] - yaws[None, :]))  # (N, K) state headings
    poses = z["poses"]
    qxy = xy[m:]
    d = np.linalg.norm(qxy[:, None] - xy[None, :m], axis=2)
    return dict(hp=hp, hv=hv, hsc=hsc, sh=sh, xy=xy[:m], qxy=qxy, d=d, ans=d.min(1) <= 10, poses=poses[m:],
                qh=np.radians(hd[m:]))


def align(P, W, votes_xy, votes_h, votes_s, t, rot_step=np.radians(5), tbin=5.0, head_tol=np.radians(30)):
    """Best SE(2) (theta, tx, ty) taking odometry poses of window frames to their hits; support in
    distinct frames; the second best whose current pose lies > 20 m from the best's."""
    ps = P[votes_s, :2]
    hs = P[votes_s, 2]
    best = []
    for th in np.arange(-np.pi, np.pi, rot_step):
        ok = np.abs(wrap(votes_h - hs - th)) < head_tol
        if ok.sum() < 3:
            continue
        c, s = math.cos(th), math.sin(th)
        tr = votes_xy[ok] - np.c_[c * ps[ok, 0] - s * ps[ok, 1], s * ps[ok, 0] + c * ps[ok, 1]]
        for off in (0.0, tbin / 2):
            b = np.floor((tr + off) / tbin).astype(np.int64) + 100000
            key = np.unique((b[:, 0] * 200000 + b[:, 1]) * 4096 + (votes_s[ok] % 4096))  # one vote a frame a bin
            bins, cnt = np.unique(key // 4096, return_counts=True)
            j = np.argmax(cnt)
            centre = (np.array([bins[j] // 200000, bins[j] % 200000]) - 100000 + 0.5) * tbin - off
            best.append((int(cnt[j]), th, centre))
    if not best:
        return None
    best.sort(key=lambda r: -r[0])
    return best


def run(data, odom, L=150.0, kv=5, maxw=400):
    P = dead_reckon(odom)
    Q = len(P)
    step = np.r_[0, np.hypot(*np.diff(P[:, :2], axis=0).T)]
    cum = np.cumsum(step)
    hp, hv, sh, xy = data["hp"][:, :kv], data["hv"][:, :kv], data["sh"], data["xy"]
    vxy = xy[hp]  # (Q, kv, 2)
    vh = sh[hp, hv]
    out = []
    for t in range(Q):
        s0 = max(0, t - maxw)
        W = np.arange(s0, t + 1)
        W = W[cum[t] - cum[W] <= L]
        vs = np.repeat(W, kv)
        res = align(P, W, vxy[W].reshape(-1, 2), vh[W].reshape(-1), vs, t)
        if res is None:
            out.append((0, 0, np.array([np.nan, np.nan])))
            continue
        c1, th, center = res[0]
        c, s = math.cos(th), math.sin(th)
        ps = P[vs, :2]
        tr = vxy[W].reshape(-1, 2) - np.c_[c * ps[:, 0] - s * ps[:, 1], s * ps[:, 0] + c * ps[:, 1]]
        okh = np.abs(wrap(vh[W].reshape(-1) - P[vs, 2] - th)) < np.radians(30)
        inl = okh & (np.linalg.norm(tr - center, axis=1) <= 6.0)
        T = tr[inl].mean(0)
        cur = np.array([c * P[t, 0] - s * P[t, 1], s * P[t, 0] + c * P[t, 1]]) + T
        # second best: a hypothesis whose current pose lies > 20 m away
        c2 = 0
        for cnt, th2, T2 in res[1:]:
            cur2 = np.array([math.cos(th2) * P[t, 0] - math.sin(th2) * P[t, 1], math.sin(th2) * P[t, 0] + math.cos(th2) * P[t, 1]]) + T2
            if np.linalg.norm(cur2 - cur) > 20:
                c2 = cnt
                break
        out.append((c1, c2, cur))
    return out


def score(data, out):
    xy, d, ans = data["xy"], data["d"], data["ans"]
    c1 = np.array([o[0] for o in out])
    c2 = np.array([o[1] for o in out])
    cur = np.array([o[2] for o in out])
    dm = np.linalg.norm(cur[:, None] - xy[None], axis=2)
    place = np.nanargmin(np.where(np.isfinite(dm), dm, np.inf), axis=1)
    onmap = dm[np.arange(len(dm)), place] <= 9.0
    right = d[np.arange(len(d)), place] <= 10
    err = np.linalg.norm(cur - data["qxy"], axis=1)
    rows = []
    for a in (10, 15, 20, 30, 40, 60):
        for r in (1.0, 1.5, 2.0, 3.0):
            pub = (c1 >= a) & (c1 >= r * c2) & onmap
            n = pub.sum()
            rows.append((a, r, int(n), round(float((pub & right).sum() / max(n, 1)), 3),
                         round(float((pub & right & ans).sum() / ans.sum()), 3), int((pub & ~ans).sum())))
    return rows, err, c1, c2


def refit(T, P, W, vxy, vh, radius=6.0, iters=2):
    """Least-squares SE(2) (2-D Umeyama) on each window frame's nearest agreeing vote, twice."""
    for _ in range(iters):
        pw = apply(T, P[W, :2])
        dist = np.linalg.norm(vxy[W] - pw[:, None], axis=2)
        dist[np.abs(wrap(vh[W] - (P[W, 2] + T[0])[:, None])) >= np.radians(30)] = np.inf
        j = dist.argmin(1)
        keep = dist[np.arange(len(W)), j] <= radius
        if keep.sum() < 3:
            return T, int(keep.sum())
        a, b = P[W[keep], :2], vxy[W[keep], j[keep]]
        ca, cb = a.mean(0), b.mean(0)
        a0, b0 = a - ca, b - cb
        th = math.atan2((a0[:, 0] * b0[:, 1] - a0[:, 1] * b0[:, 0]).sum(), (a0 * b0).sum())
        c, s = math.cos(th), math.sin(th)
        T = (th, cb[0] - (c * ca[0] - s * ca[1]), cb[1] - (s * ca[0] + c * ca[1]))
    return T, int(keep.sum())


def apply(T, P):
    th, tx, ty = T
    c, s = math.cos(th), math.sin(th)
    return np.c_[c * P[..., 0] - s * P[..., 1] + tx, s * P[..., 0] + c * P[..., 1] + ty]


REFIT = True
import os
MODE = os.environ.get("MODE", "img")
BIAS = (0.0, 0.0)  # (along, left) m: where a right image hit's place lies from the camera, in the hit's heading frame


def hit_bias(data, kv=5):
    """Median (along, left) offset of right hits (place within 10 m) from the true camera position."""
    hp, hv = data["hp"][:, :kv], data["hv"][:, :kv]
    vh = data["sh"][hp, hv]
    off = data["xy"][hp] - data["qxy"][:, None]
    along = off[..., 0] * np.cos(vh) + off[..., 1] * np.sin(vh)
    left = off[..., 1] * np.cos(vh) - off[..., 0] * np.sin(vh)
    right = np.linalg.norm(off, axis=2) <= 10
    return float(np.median(along[right])), float(np.median(left[right]))


def run_tracked(data, odom, L=150.0, kv=5, maxw=400, A=40, ratio=1.5, confirm_m=10.0, drift=0.03, dmax=600.0,
                contradicted=0.2, min_on=40, sup_r=6.0):
    """Continuity: a tracked alignment T is kept (dead reckoning) while nothing contradicts it; a
    frame T places off the map is expected to have no agreeing votes. A new alignment replaces T
    when it agrees with T (re-confirmation, within confirm_m + drift x metres carried) or when T is
    contradicted (of >= min_on window frames T places on the map, < contradicted agree)."""
    P = dead_reckon(odom)
    Q = len(P)
    step = np.r_[0, np.hypot(*np.diff(P[:, :2], axis=0).T)]
    cum = np.cumsum(step)
    hp, hv, sh, xy = data["hp"][:, :kv], data["hv"][:, :kv], data["sh"], data["xy"]
    vh = sh[hp, hv]
    vxy = xy[hp] - np.stack([np.cos(vh) * BIAS[0] - np.sin(vh) * BIAS[1], np.sin(vh) * BIAS[0] + np.cos(vh) * BIAS[1]], -1)
    T, carried = None, 0.0
    out = []
    for t in range(Q):
        carried += step[t]
        W = np.arange(max(0, t - maxw), t + 1)
        W = W[cum[t] - cum[W] <= L]
        vs = np.repeat(W, kv)
        res = align(P, W, vxy[W].reshape(-1, 2), vh[W].reshape(-1), vs, t)
        H, c1, c2 = None, 0, 0
        if res is not None:
            c1, th, centre = res[0]
            c, s = math.cos(th), math.sin(th)
            ps = P[vs, :2]
            tr = vxy[W].reshape(-1, 2) - np.c_[c * ps[:, 0] - s * ps[:, 1], s * ps[:, 0] + c * ps[:, 1]]
            okh = np.abs(wrap(vh[W].reshape(-1) - P[vs, 2] - th)) < np.radians(30)
            inl = okh & (np.linalg.norm(tr - centre, axis=1) <= 6.0)
            H = (th, *tr[inl].mean(0))
            if REFIT:
                H, _ = refit(H, P, W, vxy, vh)
            curH = apply(H, P[t, :2])[0]
            for cnt, th2, T2 in res[1:]:
                cur2 = apply((th2, *T2), P[t, :2])[0]
                if np.linalg.norm(cur2 - curH) > 20:
                    c2 = cnt
                    break
        n_on = n_sup = 0
        if T is not None:
            pw = apply(T, P[W, :2])
            on = np.linalg.norm(pw[:, None] - xy[None], axis=2).min(1) <= 9.0
            hw = P[W, 2] + T[0]
            sup = ((np.linalg.norm(vxy[W] - pw[:, None], axis=2) <= sup_r + drift * carried) &
                   (np.abs(wrap(vh[W] - hw[:, None])) < np.radians(30))).any(1)
            n_on, n_sup = int(on.sum()), int((sup & on).sum())
        strong = H is not None and c1 >= A and c1 >= ratio * max(c2, 1)
        if T is None:
            if strong:
                T, carried = H, 0.0
        else:
            curT = apply(T, P[t, :2])[0]
            if H is not None and np.linalg.norm(curH - curT) <= confirm_m + drift * carried and c1 >= A / 2:
                T, carried = H, 0.0  # re-confirmed (refit)
            elif n_on >= min_on and n_sup < contradicted * n_on:
                T, carried = (H, 0.0) if strong else (None, 0.0)
            elif carried > dmax:
                T = None
        cur = apply(T, P[t, :2])[0] if T is not None else np.array([np.nan, np.nan])
        out.append((c1, c2, cur, n_on, n_sup))
    return out


def score_tracked(data, out, on_map=9.0):
    xy, d, ans = data["xy"], data["d"], data["ans"]
    cur = np.array([o[2] for o in out])
    ok = np.isfinite(cur[:, 0])
    dm = np.linalg.norm(np.nan_to_num(cur, nan=1e9)[:, None] - xy[None], axis=2)
    place = dm.argmin(1)
    pub = ok & (dm[np.arange(len(dm)), place] <= on_map)
    right = d[np.arange(len(d)), place] <= 10
    n = pub.sum()
    return dict(published=int(n), precision=round(float((pub & right).sum() / max(n, 1)), 3),
                recall=round(float((pub & right & ans).sum() / ans.sum()), 3), off_map_published=int((pub & ~ans).sum()),
                wrong=int((pub & ~right).sum()))


if __name__ == "__main__":
    town = sys.argv[1]
    fit = sys.argv[2] if len(sys.argv) > 2 else None  # the town whose hit offset corrects the votes
    data = load(town)
    odom = simulated_odometry(data["poses"], 0)
    print(town, "answerable", int(data["ans"].sum()), "of", len(data["ans"]))
    rows, err, c1, c2 = score(data, run(data, odom))
    print("recomputed every frame, no memory: aligned position error median / p90", np.round(np.nanpercentile(err, [50, 90]), 1))
    for r in rows:
        print("  support>=%d ratio>=%.1f published %d precision %.3f recall %.3f off-map published %d" % r)
    globals()["REFIT"] = False
    print("held while uncontradicted, no refit:", score_tracked(data, run_tracked(data, odom, A=60)))
    globals()["REFIT"] = True
    print("held, refit:", score_tracked(data, run_tracked(data, odom, A=60)))
    if fit:
        globals()["BIAS"] = hit_bias(load(fit))
        print(f"held, refit, hit offset of {fit} {np.round(BIAS, 2)}:", score_tracked(data, run_tracked(data, odom, A=40, ratio=2)))
