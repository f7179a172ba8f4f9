"""``attnlink eval --loop-closure``: a drive replayed frame by frame in online mode; the loops the
detector publishes are scored against ground truth (true when the two places lie within 10 m).

precision = true published loops / published loops; recall = revisit queries (a place >= 30 s
older within 10 m, the revisit protocol) that got a true published loop / revisit queries. Run
with and without GICP verification; the precision-recall curve sweeps the descriptor-score
threshold; verified loops also get their relative-pose error against ground truth."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..retrieval.loops import Loop, LoopConfig, LoopDetector
from .protocols import SUCCESS_RADIUS, revisit_queries


def _gt_relative(seq, place: int, query: int) -> np.ndarray:
    """Ground-truth pose of the query's LiDAR in the place's LiDAR frame."""
    Tr = seq.calib.T_cam_lidar
    return np.linalg.inv(Tr) @ np.linalg.inv(seq.poses[place]) @ seq.poses[query] @ Tr


def run_online(seq, desc: np.ndarray, frames: np.ndarray, cfg: LoopConfig, progress: bool = False,
               key_desc: np.ndarray | None = None, reverse_offset_m: float | None = None) -> tuple[list[tuple[int, Loop]], list[int]]:
    """(frame, loop) per frame of the drive, in time order, through one :class:`LoopDetector`;
    and the frame of each keyframe index. ``key_desc`` (N, K, D): each frame's heading views, what
    it holds as a keyframe (default: its query descriptor, one view)."""
    from tqdm import tqdm

    import time

    views = 1 if key_desc is None else key_desc.shape[1]
    det = LoopDetector(desc.shape[1], cfg, views=views, reverse_offset_m=reverse_offset_m)
    out = []
    t0 = time.perf_counter()
    for j, f in enumerate(tqdm(frames, desc=f"loops {'verified' if cfg.verify else 'descriptor'} K={views}", disable=not progress)):
        scan = seq.read_scan(int(f))
        out.append((int(f), det.step(float(seq.times[f]), desc[j], scan, frame=int(f), key_desc=None if key_desc is None else key_desc[j])))
    run_online.last_seconds = time.perf_counter() - t0  # scan reading + search + verification, the whole drive
    return out, list(det.map.frames)



def score_loops(seq, results: list[tuple[int, Loop]], keyframes: list, revisits: dict, thresholds: np.ndarray,
                heading: np.ndarray | None = None) -> dict:
    """Precision / recall / pose error of published loops, and the curve over score thresholds.

    ``revisits``: revisit query frame -> its heading class. Precision is split by the heading
    between the query and the matched place (``by_heading``), recall by the query's class; every
    false loop is listed with its query, match, distance and registration figures."""
    from ..retrieval.views import wrap_deg
    from .protocols import HEADING_CLASSES, heading_class

    published, true_pub, errors, rot_errors = 0, 0, [], []
    true_fit = []  # (inlier ratio, error per inlier) of true verified loops
    rows = []  # (score, is_true, is_revisit) of published loops
    recalled = set()
    pub_by = {c: [0, 0] for c in HEADING_CLASSES}  # published, true
    false_loops = []
    for f, loop in results:
        if not loop.published:
            continue
        place = keyframes[loop.index]
        dist = float(np.linalg.norm(seq.xy[place] - seq.xy[f]))
        ok = dist <= SUCCESS_RADIUS
        published += 1
        true_pub += ok
        rows.append((loop.score, ok, f in revisits))
        if ok and f in revisits:
            recalled.add(f)
        dh = float(wrap_deg(heading[place] - heading[f])) if heading is not None else 0.0
        c = heading_class(dh)
        pub_by[c][0] += 1
        pub_by[c][1] += ok
        if ok and loop.verified:
            true_fit.append((loop.inlier_ratio, loop.error_per_inlier))
        if not ok:
            false_loops.append({"query_frame": int(f), "match_frame": int(place), "distance_m": round(dist, 2),
                                "heading_difference_deg": round(dh, 1), "score": round(float(loop.score), 4),
                                "view_yaw_deg": float(loop.view_yaw_deg), "verified": bool(loop.verified),
                                "inlier_ratio": round(float(loop.inlier_ratio), 4),
                                "error_per_inlier": round(float(loop.error_per_inlier), 5),
                                "registered_offset_m": round(float(np.linalg.norm(loop.T[:3, 3])), 2) if loop.T is not None else None,
                                "revisit_query": f in revisits})
        if loop.verified and loop.T is not None and seq.has_poses:
            gt = _gt_relative(seq, place, f)
            errors.append(float(np.linalg.norm(loop.T[:3, 3] - gt[:3, 3])))
            dR = loop.T[:3, :3].T @ gt[:3, :3]
            rot_errors.append(float(np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1, 1)))))
    curve = []
    for th in thresholds:
        sel = [r for r in rows if r[0] >= th]
        p = float(np.mean([r[1] for r in sel])) if sel else 1.0
        rec = len({f for (f, loop) in results if loop.published and loop.score >= th and f in revisits
                   and np.linalg.norm(seq.xy[keyframes[loop.index]] - seq.xy[f]) <= SUCCESS_RADIUS}) / max(1, len(revisits))
        curve.append({"threshold": float(th), "precision": p, "recall": rec, "published": len(sel)})
    by_heading = {c: {"published": pub_by[c][0], "precision": pub_by[c][1] / pub_by[c][0] if pub_by[c][0] else None,
                      "revisit_queries": sum(1 for v in revisits.values() if v == c),
                      "recall": (sum(1 for f in recalled if revisits[f] == c) / max(1, sum(1 for v in revisits.values() if v == c)))
                      if any(v == c for v in revisits.values()) else None} for c in HEADING_CLASSES}
    return {"precision": true_pub / published if published else 1.0, "recall": len(recalled) / max(1, len(revisits)),
            "by_heading": by_heading, "false_loops": false_loops,
            "true_loop_registration": {"inlier_ratio_p5": float(np.percentile([f[0] for f in true_fit], 5)),
                                       "error_per_inlier_p50": float(np.percentile([f[1] for f in true_fit], 50)),
                                       "error_per_inlier_p95": float(np.percentile([f[1] for f in true_fit], 95)),
                                       "error_per_inlier_p99": float(np.percentile([f[1] for f in true_fit], 99)),
                                       "error_per_inlier_max": float(np.max([f[1] for f in true_fit]))} if true_fit else None,
            "loops_published": published, "true_loops_published": int(true_pub), "revisit_queries": len(revisits),
            "pose_error_median_m": float(np.median(errors)) if errors else None,
            "pose_error_p90_m": float(np.percentile(errors, 90)) if errors else None,
            "rotation_error_median_deg": float(np.median(rot_errors)) if rot_errors else None, "curve": curve}


@dataclasses.dataclass
class LoopDrive:
    """A drive ready for online loop detection: its frames, each frame's query descriptor and
    keyframe views (LiDAR), the revisit queries (frame -> heading class) and headings."""

    seq: object
    frames: np.ndarray
    desc: np.ndarray  # (N, D) query descriptors (``mode``)
    key_desc: np.ndarray  # (N, K, D) keyframe heading views (LiDAR)
    revisits: dict
    heading: np.ndarray  # (len(seq),) degrees

    def config(self, cfg: LoopConfig) -> LoopConfig:
        """``cfg`` with the loop radius measured between camera centres, as the ground truth (unless set)."""
        return loop_radius_config(cfg, self.seq.calib.T_cam_lidar)


def keyframe_mask(stamps: np.ndarray, interval_s: float) -> np.ndarray:
    """Which of a drive's frames an :class:`~..retrieval.loops.OnlineMap` takes as keyframes (its
    ``due`` rule over the stamps, in order)."""
    mask = np.zeros(len(stamps), bool)
    last = None
    for i, t in enumerate(np.asarray(stamps, np.float64)):
        if last is None or t - last >= interval_s - 1e-3:
            mask[i], last = True, t
    return mask


def prepare_drive(model, root, sequence: str = "00", mode: str = "lidar", cache_dir=None, views: int = 1,
                  reverse_offset_m: float | None = None, progress: bool = False, keyframe_interval_s: float | None = None) -> LoopDrive:
    """Encodes a drive with ground-truth poses (a frame cache under ``cache_dir``, reused).
    ``keyframe_interval_s``: encode the heading views only for the frames an online map with
    that interval takes as keyframes (the others' views are never read; zeros)."""
    import tempfile

    from ..data.cache import model_cache
    from ..data.kitti import KittiSequence
    from ..retrieval.views import view_yaws
    from .recall import encode_cache, encode_views

    seq = KittiSequence(root, sequence)
    if not seq.has_poses:
        raise ValueError(f"{seq.dir}: loop-closure evaluation needs ground-truth poses")
    cache_dir = Path(cache_dir or tempfile.mkdtemp())
    cache = model_cache(root, sequence, cache_dir, model.cfg, progress)
    enc = encode_cache(model, cache, modes=tuple(dict.fromkeys((mode, "lidar"))), progress=progress)
    frames = np.asarray(cache.frames) if hasattr(cache, "frames") else np.arange(len(cache))
    only = None if keyframe_interval_s is None else keyframe_mask(seq.times[frames], keyframe_interval_s)
    key_desc = encode_views(model, cache, seq, view_yaws(views), progress=progress, lidar=enc["lidar"],
                            reverse_offset_m=reverse_offset_m, only=only)  # keyframes are LiDAR
    revisits, heading = drive_truth(seq, frames)
    return LoopDrive(seq, frames, enc[mode], key_desc, revisits, heading)


def drive_truth(seq, frames: np.ndarray) -> tuple[dict, np.ndarray]:
    """What the ground truth says of a drive's ``frames``: its revisit queries (frame -> heading
    class) and every frame's heading (degrees, indexed by frame)."""
    from ..geometry.poses import headings_deg
    from .protocols import heading_classes

    frames = np.asarray(frames)
    heading = np.zeros(len(seq.poses))
    heading[frames] = headings_deg(seq.poses[frames])
    proto = revisit_queries(seq.xy[frames], seq.times[frames])
    cls = heading_classes(seq.xy[frames], heading[frames], proto)
    return {int(frames[q]): str(c) for q, c in zip(proto.queries, cls)}, heading


def loop_radius_config(cfg: LoopConfig, T_cam_lidar: np.ndarray) -> LoopConfig:
    """``cfg`` with the loop radius measured between camera centres, as the ground truth (unless set)."""
    if cfg.distance_point == (0.0, 0.0, 0.0):
        return dataclasses.replace(cfg, distance_point=tuple(float(v) for v in np.linalg.inv(T_cam_lidar)[:3, 3]))
    return cfg


LOOP_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 41), 3)


def evaluate_loop_closure(model, root, sequence: str = "00", mode: str = "lidar", cfg: LoopConfig = LoopConfig(), cache_dir=None,
                          plot: str | Path | None = None, progress: bool = False, echo=print, views: int = 1,
                          unverified: bool = True, reverse_offset_m: float | None = None) -> dict:
    """Online loop closure over one drive (keyframes of ``views`` heading views), verified and
    (``unverified``) without verification."""
    drive = prepare_drive(model, root, sequence, mode, cache_dir, views, reverse_offset_m, progress)
    seq, frames, desc, key_desc, revisits, heading = drive.seq, drive.frames, drive.desc, drive.key_desc, drive.revisits, drive.heading
    thresholds = LOOP_THRESHOLDS
    cfg = drive.config(cfg)
    out = {"sequence": sequence, "mode": mode, "views": int(views), "config": dataclasses.asdict(cfg)}
    for name, verify in (("verified", True), ("unverified", False)):
        if not verify and not unverified:
            continue
        c = dataclasses.replace(cfg, verify=verify)
        det_results, keyframes = run_online(seq, desc, frames, c, progress, key_desc=key_desc, reverse_offset_m=reverse_offset_m)
        out[name] = score_loops(seq, det_results, keyframes, revisits, thresholds, heading)
        r = out[name]
        r["registrations_per_query"] = round(sum(len(lp.checked) for _, lp in det_results) / max(1, len(det_results)), 3)
        r["ms_per_query"] = round(1e3 * run_online.last_seconds / max(1, len(det_results)), 1)
        split = ", ".join(f"{k}: P {v['precision']:.3f} R {v['recall']:.3f}" if v["precision"] is not None and v["recall"] is not None
                          else f"{k}: {v['published']} published, {v['revisit_queries']} queries" for k, v in r["by_heading"].items())
        echo(f"{sequence} {mode} K={views} {name}: precision {r['precision']:.3f}, recall {r['recall']:.3f} of {r['revisit_queries']} revisit "
             f"queries, {r['loops_published']} loops published"
             + (f", pose error median {r['pose_error_median_m']:.3f} m" if r["pose_error_median_m"] is not None else "") + f" [{split}]"
             + f"; {r['registrations_per_query']} registrations, {r['ms_per_query']} ms a query")
        for fl in r["false_loops"][:20]:
            echo(f"  false loop: query {fl['query_frame']} -> {fl['match_frame']} ({fl['distance_m']} m apart, heading {fl['heading_difference_deg']:+.0f} deg), "
                 f"score {fl['score']}, view {fl['view_yaw_deg']:+.0f}, inliers {fl['inlier_ratio']}, error/inlier {fl['error_per_inlier']}")
    top = out["verified"]
    out.update({k: top[k] for k in ("precision", "recall", "loops_published", "pose_error_median_m", "by_heading")})
    if plot and "unverified" in out:
        out["plot"] = str(plot_pr(out, plot, f"{Path(root).resolve().name} {sequence}: loop closures ({mode})"))
    return out


def plot_pr(result: dict, out, title: str = "") -> Path:
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, style in (("unverified", "--"), ("verified", "-")):
        c = result[name]["curve"]
        ax.plot([p["recall"] for p in c], [p["precision"] for p in c], style, marker=".", label=f"{name} (threshold sweep)")
        ax.scatter([result[name]["recall"]], [result[name]["precision"]], s=60, zorder=3,
                   label=f"{name} at min_score {result['config']['min_score']}: P {result[name]['precision']:.3f} R {result[name]['recall']:.3f}")
    ax.axhline(0.99, color="0.6", lw=0.8, ls=":")
    ax.axvline(0.8, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("recall (of revisit queries)")
    ax.set_ylabel("precision (of published loops)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    return _save(plt, fig, out)
