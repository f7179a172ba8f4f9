"""Prototype: dense HMM over all (place, view) states with z-normalised image scores."""
import sys, os, math, numpy as np
MODE = os.environ.get("MODE", "img")
sys.path.insert(0, ".")
from attnlink_ros.evaluation.tracking import simulated_odometry

def load(town):
    z = np.load(f"out/exp/img_{town}.npz")
    q, db, xy, hd, m = z["q_" + MODE], z["db"], z["xy"], z["heading"], int(z["m"])
    yaws = z["yaws"]; N, K, D = db.shape
    S = q @ db.reshape(N * K, D).T
    qxy, qh = xy[m:], hd[m:]
    d = np.linalg.norm(qxy[:, None] - xy[None, :m], axis=2)
    sh = (hd[:m, None] - yaws[None, :]).reshape(-1)
    dh = np.abs((qh[:, None] - sh[None, :] + 180) % 360 - 180)
    right = (np.repeat(d, K, axis=1) <= 10) & (dh < 90)
    ans = d.min(1) <= 10
    return dict(S=S, right=right, ans=ans, d=d, xy=xy[:m], sh=np.radians(sh), K=K, N=N, poses=z["poses"][m:], stamps=z["stamps"][m:])

def zs(S):
    return (S - S.mean(1, keepdims=True)) / S.std(1, keepdims=True)

def fit_llr(data, bins=np.linspace(-4, 8, 49)):
    """log f1(z)/f0(z): f1 = z of right states of answerable queries, f0 = z of all states of off-map queries; logistic in z."""
    Z = zs(data["S"])
    z1 = Z[data["right"]]
    z0 = Z[~data["ans"]].reshape(-1)
    # fit log-density ratio as a quadratic-free logistic: Newton on features (1, z)
    X = np.r_[z1, z0[::7]]; y = np.r_[np.ones(len(z1)), np.zeros(len(z0[::7]))]
    F = np.stack([np.ones_like(X), X], 1)
    w = np.zeros(2)
    for _ in range(50):
        p = 1 / (1 + np.exp(-F @ w)); g = F.T @ (p - y); H = (F * (p * (1 - p))[:, None]).T @ F + 1e-6 * np.eye(2)
        w -= np.linalg.solve(H, g)
    prior = y.mean()
    return w, math.log(prior / (1 - prior))

def transitions(xy, sh, K, odom, cfg):
    """(S, S) row-stochastic: from state j to i."""
    N = len(xy); S = N * K
    sxy = np.repeat(xy, K, axis=0)
    c, s = np.cos(sh), np.sin(sh)
    if odom is None:
        dx = sxy[None, :, 0] - sxy[:, None, 0]; dy = sxy[None, :, 1] - sxy[:, None, 1]
        along = dx * c[:, None] + dy * s[:, None]; lat = dy * c[:, None] - dx * s[:, None]
        reach = cfg["vmax"] * 0.1
        la = -0.5 * (np.minimum(along, 0) ** 2 + np.maximum(along - reach, 0) ** 2) / 2.0 ** 2 - 0.5 * lat ** 2 / 2.5 ** 2
        dyaw = 0.0
    else:
        fwd, left, dyaw = odom
        px = sxy[:, 0] + fwd * c - left * s; py = sxy[:, 1] + fwd * s + left * c
        sig = cfg["sig"] + 0.1 * math.hypot(fwd, left)
        la = -0.5 * ((sxy[None, :, 0] - px[:, None]) ** 2 + (sxy[None, :, 1] - py[:, None]) ** 2) / sig ** 2
    hc = np.cos(sh[None, :] - sh[:, None] - dyaw)
    la = la + (hc - 1) / math.radians(30) ** 2
    T = np.exp(la - la.max(1, keepdims=True))
    T = T / T.sum(1, keepdims=True)
    if odom is not None and cfg.get("edge"):
        dmin = np.sqrt(((sxy[None, :, 0] - px[:, None]) ** 2 + (sxy[None, :, 1] - py[:, None]) ** 2).min(1))
        stay = 1 / (1 + np.exp((dmin - cfg["edge"]) / 1.0))
        T = T * stay[:, None]
    return T

def run(data, w, cfg, odom=None):
    S, K = data["S"], data["K"]
    Z = zs(S)
    nS = S.shape[1]
    b = np.full(nS, 0.5 / nS); lost = 0.5
    sxy = np.repeat(data["xy"], K, axis=0)
    T0 = None if odom is not None else transitions(data["xy"], data["sh"], K, None, cfg)
    best, conf, plost = [], [], []
    for t in range(len(S)):
        T = T0 if odom is None else transitions(data["xy"], data["sh"], K, odom[t], cfg)
        on = b.sum()
        moved = (b * (1 - cfg["p_leave"])) @ T
        leaked = on * (1 - cfg["p_leave"]) - moved.sum()
        b = moved + cfg["p_enter"] * lost / nS
        lost = lost * (1 - cfg["p_enter"]) + cfg["p_leave"] * on + leaked
        llr = cfg["tau"] * (w[0] + w[1] * Z[t] - cfg["prior_logit"])
        b = b * np.exp(np.minimum(llr, 50))
        tot = b.sum() + lost
        b, lost = b / tot, lost / tot
        j = int(b.argmax())
        near = (np.linalg.norm(sxy - sxy[j], axis=1) <= 10) & (np.cos(data["sh"] - data["sh"][j]) > 0)
        best.append(j // K); conf.append(b[near].sum()); plost.append(lost)
    return np.array(best), np.array(conf), np.array(plost)

def score(data, best, conf, plost):
    ans = data["ans"]
    rightfix = data["d"][np.arange(len(best)), best] <= 10
    out = []
    for th in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        pub = (conf >= th) & (plost < 0.5)
        n = pub.sum()
        out.append((th, round((pub & rightfix).sum() / max(n, 1), 3), round((pub & rightfix & ans).sum() / ans.sum(), 3), int((pub & ~ans).sum())))
    return out

if __name__ == "__main__":
    fit_town, test_town = sys.argv[1], sys.argv[2]
    tau = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    fd, td = load(fit_town), load(test_town)
    w, pl = fit_llr(fd)
    print("llr fit", w, "prior logit", pl)
    odom = simulated_odometry(td["poses"], 0)
    for tau in [float(x) for x in sys.argv[3:]] or [1.0]:
        cfg = dict(edge=float(os.environ.get("EDGE", 0)), vmax=25.0, sig=2.0, p_leave=0.01, p_enter=0.02, tau=tau, prior_logit=pl)
        for name, od in (("no odom", None), ("odom", odom)):
            r = run(td, w, cfg, od)
            print(test_town, f"tau {tau}", name, score(td, *r), flush=True)
