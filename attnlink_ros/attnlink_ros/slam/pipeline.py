"""``attnlink slam``: KISS-ICP odometry, the project's online loop detector on the same drive, a
GTSAM pose graph (iSAM2) that takes each published loop as it comes; the error of both
trajectories (odometry only, with loops) by evo against the ground truth.

Frames: graph nodes are LiDAR poses in the first scan's LiDAR frame (KISS-ICP's and the loop
registrations' frame); trajectories are written and scored as the ground truth's camera poses
(KITTI's convention: T_cam = Tr T_lidar inv(Tr), Tr = T_cam_lidar), starting at identity.
"""

from __future__ import annotations

import dataclasses
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..retrieval.loops import Loop, LoopConfig
from .frontend import FrontSpec
from .graph import GraphConfig, PoseGraph
from .odometry import LidarOdometry, OdometryConfig


@dataclass
class SlamRun:
    frames: np.ndarray
    stamps: np.ndarray
    odometry: np.ndarray  # (N, 4, 4) LiDAR poses, KISS-ICP
    with_loops: np.ndarray  # (N, 4, 4) LiDAR poses, the pose graph's final estimate (after the scale refinement)
    loops: list[tuple[int, Loop]] = field(default_factory=list)  # (frame, loop) of every query
    keyframes: list = field(default_factory=list)  # frame of each keyframe index
    seconds: dict = field(default_factory=dict)  # wall time by stage
    online: np.ndarray | None = None  # (N, 4, 4) the iSAM2 estimate at the end of the drive (before the refinement)
    odometry_scale: float | None = None  # estimated by the final refinement


@dataclass(frozen=True)
class PriorConfig:
    """SLAM's own estimate as a prior on loop candidates: a keyframe is a candidate only when the
    current estimate puts it within the loop radius plus ``drift_share`` of the path driven since
    (KISS-ICP drifts 0.2-0.5 %; 5 % leaves a wide margin), and GICP starts from the estimate's
    relative pose. Off: every keyframe is a candidate, GICP starts from the view's yaw guesses."""

    enabled: bool = True
    drift_share: float = 0.05


class _Prior:
    """Keeps the keyframes' current estimates (refreshed when a loop moved the graph) and the path."""

    def __init__(self, cfg: PriorConfig, loop_cfg: LoopConfig) -> None:
        self.cfg = cfg
        self.point = np.append(np.asarray(loop_cfg.distance_point, np.float64), 1.0)
        self.radius = loop_cfg.max_distance_m
        self.key_nodes: list[int] = []
        self.key_est = np.zeros((0, 4, 4))
        self.path = [0.0]

    def moved(self, odom_rel: np.ndarray) -> None:
        self.path.append(self.path[-1] + float(np.linalg.norm(odom_rel[:3, 3])))

    def refresh(self, graph: PoseGraph) -> None:
        self.key_est = graph.estimates(self.key_nodes)

    def add_keyframe(self, node: int, estimate: np.ndarray) -> None:
        self.key_nodes.append(node)
        self.key_est = np.concatenate([self.key_est, estimate[None]])

    def __call__(self, node: int, estimate: np.ndarray):
        from ..retrieval.loops import LoopPrior

        starts = np.linalg.inv(self.key_est) @ estimate  # T_keyframe_query, (M, 4, 4)
        dist = np.linalg.norm((starts @ self.point - self.point)[:, :3], axis=1)
        since = self.path[node] - np.asarray([self.path[k] for k in self.key_nodes])
        return LoopPrior(dist <= self.radius + self.cfg.drift_share * since, starts)


LOOP_LAG = 10  # scans between a scan's odometry and the pose graph taking its loop answer (1 s at 10 Hz)


def run_slam(seq, frames: np.ndarray, spec: FrontSpec, odo_cfg: OdometryConfig = OdometryConfig(),
             graph_cfg: GraphConfig = GraphConfig(), loops: bool = True, progress: bool = False, front: "SlamRun | None" = None,
             prior_cfg: PriorConfig = PriorConfig(), worker: bool = True, lag: int = LOOP_LAG) -> SlamRun:
    """One pass over the drive's ``frames``: each scan registered by the odometry and added to the
    graph, then handed to the loop front end (slam/frontend.py: its descriptor, the search over
    the drive's keyframes, GICP; in a process of its own with ``worker``) with SLAM's current
    estimate as the prior. The graph takes scan j's answer when the odometry reaches scan j +
    ``lag`` (waiting for it if the front end is behind): the two sides overlap, and the same drive
    gives the same loops and trajectory however fast either side runs (``worker`` spawns a process:
    a script that calls this needs multiprocessing's ``if __name__ == "__main__":`` guard). ``front``: an earlier run's
    odometry and loops (the front end does not depend on the graph at a fixed lag), replayed into
    a new graph in the same order."""
    from collections import deque

    from tqdm import tqdm

    from ..evaluation.loops import keyframe_mask
    from .frontend import LoopFrontEnd, LoopWorker

    cfg = spec.loop_cfg
    graph = PoseGraph(graph_cfg)
    fe = None
    t_start = time.perf_counter()
    if front is None:
        odo = LidarOdometry(odo_cfg)
        if loops:
            fe = LoopWorker(spec) if worker else LoopFrontEnd(spec, seq.calib)
    else:
        cached = dict(front.loops)
    prior = _Prior(prior_cfg, cfg) if prior_cfg.enabled and loops and front is None else None
    # which scans the worker's online map takes as keyframes: its own due rule over the stamps
    is_key = keyframe_mask(np.asarray(seq.times)[np.asarray(frames)], cfg.keyframe_interval_s)
    keyframes: list[int] = []
    node_of: dict[int, int] = {}
    odom, results = [], []
    secs = {"read": 0.0, "odometry": 0.0, "graph": 0.0, "wait": 0.0}
    pending: deque = deque()

    def take(job: int) -> int:
        """The loop answer to scan ``job`` into the graph; iSAM2 extra iterations it asks for."""
        f = int(frames[job])
        if front is None:
            t = time.perf_counter()
            got, loop = fe.result()
            secs["wait"] += time.perf_counter() - t
            if got != job:
                raise RuntimeError(f"loop front end answered scan {got} where scan {job} was due")
        else:
            loop = cached[f]
        results.append((f, loop))
        if loop.published and loop.T is not None:
            graph.add_loop(node_of[keyframes[loop.index]], node_of[f], loop.T, loop.covariance)
            return 2
        return 0

    def settle(extra: int) -> None:
        t = time.perf_counter()
        graph.update(extra)
        if extra and prior is not None:
            prior.refresh(graph)
        secs["graph"] += time.perf_counter() - t

    prev = None
    try:
        for j, f in enumerate(tqdm(frames, desc="slam", disable=not progress)):
            scan = None
            if front is None:
                t = time.perf_counter()
                scan = seq.read_scan(int(f))
                secs["read"] += time.perf_counter() - t
                t = time.perf_counter()
                pose = odo.register(scan)
                secs["odometry"] += time.perf_counter() - t
            else:
                pose = front.odometry[j]
            t = time.perf_counter()
            node = node_of[int(f)] = graph.add_scan(pose, prev)
            if prior is not None and prev is not None:
                prior.moved(np.linalg.inv(prev) @ pose)
            prev = pose
            odom.append(pose)
            extra = 0
            if loops:
                stamp = float(seq.times[f])
                estimate = graph.last_estimate
                if fe is not None:
                    fe.submit(j, int(f), stamp, scan if not worker else None,
                              None if prior is None or not prior.key_nodes else prior(node, estimate))
                if is_key[j]:
                    keyframes.append(int(f))
                    if prior is not None:
                        prior.add_keyframe(node, estimate)
                pending.append(j)
            secs["graph"] += time.perf_counter() - t
            if len(pending) > lag:
                extra = take(pending.popleft())
            settle(extra)
        while pending:
            settle(take(pending.popleft()))
    finally:
        closed = fe.close() if fe is not None else {"seconds": {}, "keyframes": keyframes}
    if fe is not None and closed["keyframes"] != keyframes:
        raise RuntimeError("the loop front end's keyframes disagree with the graph's")
    t = time.perf_counter()
    online = graph.poses()
    final, scale = graph.refine_with_odometry_scale() if graph_cfg.refine_scale and graph.loops else (online, None)
    secs["graph"] += time.perf_counter() - t
    if front is not None:
        secs = {**front.seconds, "graph": secs["graph"]}
    else:
        secs.update({f"loops_{k}" if k == "read" else k: v for k, v in closed["seconds"].items()})
        secs["total"] = time.perf_counter() - t_start
    return SlamRun(np.asarray(frames), np.asarray(seq.times)[frames], np.asarray(odom), final, results, keyframes,
                   {k: round(v, 2) for k, v in secs.items()}, online, scale)


_LOOP_FLOATS = ("t_query", "t_match", "score", "view_yaw_deg", "inlier_ratio", "error_per_inlier")


def save_front(run: SlamRun, path: Path) -> Path:
    """The front end of a run (odometry poses, every query's loop, keyframes, timings) as one npz (no pickle)."""
    import json

    lp = [loop for _, loop in run.loops]
    nan44, nan66 = np.full((4, 4), np.nan), np.full((6, 6), np.nan)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, frames=run.frames, odometry=run.odometry, keyframes=np.asarray(run.keyframes, np.int64),
             loop_frames=np.asarray([f for f, _ in run.loops], np.int64), index=np.asarray([x.index for x in lp], np.int64),
             verified=np.asarray([x.verified for x in lp], bool), published=np.asarray([x.published for x in lp], bool),
             checked=np.asarray([len(x.checked) for x in lp], np.int64), reason=np.asarray([x.reason for x in lp], dtype=np.str_),
             T=np.asarray([x.T if x.T is not None else nan44 for x in lp]).reshape(-1, 4, 4),
             cov=np.asarray([x.covariance if x.covariance is not None else nan66 for x in lp]).reshape(-1, 6, 6),
             seconds=np.asarray(json.dumps(run.seconds)),
             **{k: np.asarray([getattr(x, k) for x in lp], np.float64) for k in _LOOP_FLOATS})
    return path


def load_front(path: Path, seq) -> SlamRun:
    import json

    with np.load(path, allow_pickle=False) as npz:
        z = {k: npz[k] for k in npz.files}  # each npz[k] reads and parses the member again
        loops = []
        for i, f in enumerate(z["loop_frames"]):
            T, cov = z["T"][i], z["cov"][i]
            loop = Loop(**{k: float(z[k][i]) for k in _LOOP_FLOATS}, index=int(z["index"][i]), verified=bool(z["verified"][i]),
                        published=bool(z["published"][i]), reason=str(z["reason"][i]),
                        T=None if np.isnan(T).any() else T, covariance=None if np.isnan(cov).any() else cov)
            loop.checked = [None] * int(z["checked"][i])
            loops.append((int(f), loop))
        frames = z["frames"]
        return SlamRun(frames, np.asarray(seq.times)[frames], z["odometry"], z["odometry"], loops, [int(k) for k in z["keyframes"]],
                       json.loads(str(z["seconds"])))


def loop_consistency(run: SlamRun, seq) -> dict | None:
    """How well the published loops' covariances describe their errors against the ground truth:
    NEES = e' inv(C) e per loop (e: the 6-dof error, GTSAM order, of the registered relative pose;
    C its covariance); a consistent covariance gives a median near 5.35 (chi-square, 6 dof)."""
    import gtsam

    from ..evaluation.loops import _gt_relative
    from .graph import ros_to_gtsam_cov

    nees, t_err = [], []
    for f, lp in run.loops:
        if not (lp.published and lp.T is not None and lp.covariance is not None):
            continue
        gt = _gt_relative(seq, run.keyframes[lp.index], f)
        e = gtsam.Pose3.Logmap(gtsam.Pose3(gt).between(gtsam.Pose3(lp.T)))
        C = ros_to_gtsam_cov(lp.covariance)
        try:
            nees.append(float(e @ np.linalg.solve(C, e)))
        except np.linalg.LinAlgError:
            continue
        t_err.append(float(np.linalg.norm(lp.T[:3, 3] - gt[:3, 3])))
    if not nees:
        return None
    return {"loops": len(nees), "nees_median": round(float(np.median(nees)), 3), "nees_p90": round(float(np.percentile(nees, 90)), 3),
            "chi2_6dof_median": 5.348, "translation_error_median_m": round(float(np.median(t_err)), 4)}


def to_camera(lidar_poses: np.ndarray, T_cam_lidar: np.ndarray) -> np.ndarray:
    """LiDAR poses in the first scan's LiDAR frame -> the camera's poses in the first camera's frame."""
    Tr = np.asarray(T_cam_lidar, np.float64)
    return Tr @ np.asarray(lidar_poses) @ np.linalg.inv(Tr)


def truth(seq, frames: np.ndarray) -> np.ndarray:
    """Ground-truth camera poses of ``frames`` relative to the first one."""
    return np.linalg.inv(seq.poses[frames[0]]) @ seq.poses[frames]


def evaluate_slam(model_path, root, sequence: str = "00", out: str | Path | None = None, cache_dir=None, views: int = 4,
                  loop_cfg: LoopConfig = LoopConfig(), odo_cfg: OdometryConfig = OdometryConfig(),
                  graph_cfg: GraphConfig = GraphConfig(), reverse_offset_m: float | None = None, progress: bool = False,
                  peer: bool = True, peer_python: str | None = None, prior_cfg: PriorConfig = PriorConfig(),
                  worker: bool = True, lag: int = LOOP_LAG) -> dict:
    """The whole ``attnlink slam`` job on one sequence (``model_path`` None: the shipped model);
    writes trajectories (and a plot) under ``out``. ``cache_dir``: the front end (odometry and
    every scan's loop answer) is kept there and reused when nothing it depends on changed."""
    import hashlib
    import json

    from ..data.kitti import KittiSequence
    from ..evaluation.loops import LOOP_THRESHOLDS, drive_truth, loop_radius_config, score_loops
    from ..model.io import load_model
    from .metrics import errors, write_trajectories

    _, meta = load_model(model_path)  # a missing or corrupt model fails here, before any work
    seq = KittiSequence(root, sequence)
    if not seq.has_poses:
        raise ValueError(f"{seq.dir}: attnlink slam scores against ground-truth poses; {seq.dir.name} has none")
    frames = np.asarray(seq.available_frames())
    cfg = loop_radius_config(loop_cfg, seq.calib.T_cam_lidar)
    spec = FrontSpec(None if model_path is None else str(model_path), str(root), sequence, cfg, views, reverse_offset_m)
    front = None
    if cache_dir is not None:  # the front end (odometry + loops) is reused when nothing it depends on changed
        key = hashlib.sha1(json.dumps([meta["fingerprint"], dataclasses.asdict(cfg), dataclasses.asdict(odo_cfg), views, reverse_offset_m,
                                       len(frames), dataclasses.asdict(prior_cfg), lag], sort_keys=True, default=str).encode()).hexdigest()[:12]
        front_path = Path(cache_dir) / f"{Path(root).resolve().name}_{sequence}_slam_front_{key}.npz"
        if front_path.is_file():
            try:
                front = load_front(front_path, seq)
            except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
                front = None  # a truncated or corrupt cache: computed again (and rewritten)
            if front is not None and len(front.frames) != len(frames):
                front = None
    run = run_slam(seq, frames, spec, odo_cfg, graph_cfg, progress=progress, front=front, prior_cfg=prior_cfg, worker=worker, lag=lag)
    if cache_dir is not None and front is None:
        save_front(run, front_path)
    revisits, heading = drive_truth(seq, run.frames)
    Tr = seq.calib.T_cam_lidar
    gt = truth(seq, run.frames)
    est = {"odometry": to_camera(run.odometry, Tr), "with_loops": to_camera(run.with_loops, Tr)}
    if run.odometry_scale is not None:
        est["with_loops_online"] = to_camera(run.online, Tr)
    result: dict = {"sequence": sequence, "frames": int(len(run.frames)),
                    "path_length_m": round(float(np.sum(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1))), 1)}
    if peer:
        from .peer import run_kiss_slam

        ks = run_kiss_slam(seq, run.frames, peer_python, odometry=odo_cfg)
        if "poses" in ks and len(ks["poses"]) != len(run.frames):
            ks = {"skipped": f"KISS-SLAM returned {len(ks['poses'])} poses for {len(run.frames)} scans"}
        if "poses" in ks:
            est["kiss_slam"] = to_camera(ks["poses"], Tr)
    for name, poses in est.items():
        result[name] = errors(poses, gt, run.stamps)
    if peer:
        result["kiss_slam"] = {**result["kiss_slam"], "closures": ks["closures"], "seconds": round(ks["seconds"], 1)} if "poses" in ks else \
            {"skipped": ks["skipped"]}
    result["odometry_scale"] = round(run.odometry_scale, 6) if run.odometry_scale is not None else None
    sc = score_loops(seq, run.loops, run.keyframes, revisits, LOOP_THRESHOLDS, heading)
    result["loops"] = {"published": sc["loops_published"], "precision": round(sc["precision"], 4), "recall": round(sc["recall"], 4),
                       "false_in_graph": len(sc["false_loops"]), "revisit_queries": sc["revisit_queries"],
                       "by_heading": sc["by_heading"], "pose_error_median_m": sc["pose_error_median_m"],
                       "covariance_consistency": loop_consistency(run, seq)}
    result["seconds"] = run.seconds  # main process: read, odometry, graph, wait (for loop answers); loop worker: loops_read, descriptors, loops
    result["front_end_cached"] = front is not None
    result["scans_per_second"] = round(len(run.frames) / run.seconds["total"], 2) if run.seconds.get("total") else None
    result["config"] = {"loops": dataclasses.asdict(cfg), "odometry": dataclasses.asdict(odo_cfg), "graph": dataclasses.asdict(graph_cfg),
                        "prior": dataclasses.asdict(prior_cfg), "views": views, "worker": worker, "lag": lag}
    if out:
        out = Path(out)
        name = f"{Path(root).resolve().name}_{sequence}"
        result["trajectories"] = {k: write_trajectories(v, run.stamps, out / f"{name}_{k}") for k, v in est.items()}
        result["trajectories"]["truth"] = write_trajectories(gt, run.stamps, out / f"{name}_truth")
        result["plot"] = str(plot_trajectories(gt, est, run, result, out / f"{name}_trajectories.png",
                                               f"{name}: KISS-ICP odometry vs. with attnlink loops (GTSAM)"))
    return result


def plot_trajectories(gt: np.ndarray, est: dict, run: SlamRun, result: dict, path, title: str = "") -> Path:
    from ..evaluation.plots import _pyplot, _save
    from ..geometry.poses import ground_xy

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 7))
    g = ground_xy(gt)
    ax.plot(g[:, 0], g[:, 1], color="0.3", lw=2.5, alpha=0.5, label="ground truth")
    styles = {"odometry": ("tab:red", "--"), "with_loops": ("tab:blue", "-"), "kiss_slam": ("tab:green", ":")}
    for name, poses in est.items():
        if name not in styles:
            continue
        xy = ground_xy(poses)
        c, ls = styles.get(name, ("k", "-"))
        ax.plot(xy[:, 0], xy[:, 1], color=c, ls=ls, lw=1.2, label=f"{name}: APE {result[name]['ape_rmse_m']:.2f} m")
    if "with_loops" in est:
        xy = ground_xy(est["with_loops"])
        idx = {int(f): i for i, f in enumerate(run.frames)}
        for f, lp in run.loops:
            if lp.published:
                a, b = idx[run.keyframes[lp.index]], idx[f]
                ax.plot([xy[a, 0], xy[b, 0]], [xy[a, 1], xy[b, 1]], color="tab:orange", lw=0.6, alpha=0.6)
        ax.plot([], [], color="tab:orange", lw=0.6, label=f"loops in the graph ({result['loops']['published']})")
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("z (m)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
