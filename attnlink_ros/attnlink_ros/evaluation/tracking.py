"""``attnlink eval --track``: a drive replayed frame by frame against a map of its first part, the
tracking filter beside today's single-frame top-1, with and without odometry.

The map holds the first ``map_fraction`` of the drive's frames (two heading views a place, as the
product builds it); every later frame is a query, in order, so the vehicle leaves the mapped area
and comes back to it, driving either way. A query is answerable when a map place lies within 10 m;
a published fix is right when its place lies within 10 m of the truth. Per mode and sequence:
precision of published fixes, recall over answerable frames, frames published off the map, frames
from entering the map to the first right fix, frames from leaving it to "lost", and the
precision-recall curve over the confidence threshold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from pathlib import Path

import numpy as np

from ..localization.alignment import AlignConfig
from ..localization.visual_odometry import visual_align
from ..localization.tracker import PRECISE, ObservationModel, PlaceTracker, TrackerConfig, checked_mask, fit_observation_model, odometry_delta
from ..geometry.poses import headings_deg
from .protocols import SUCCESS_RADIUS

VISUAL_MODES = ("image", "fused")  # query modes with a camera: visual odometry evaluated for them
VISUAL_ODOMETRY_VERSION = "1"  # part of the cached steps' name: change it when visual_odometry.py's method changes
ODOMETRY_NOISE = (0.02, 0.002)  # simulated odometry: 2% of the step's length, 0.002 rad a frame (seeded)


def _ground_truth(q_xy, q_heading, map_xy, map_heading, yaws):
    """answerable (Q,), and for labelling hits: a function (query, place, view) -> right state."""
    d = np.linalg.norm(q_xy[:, None, :] - map_xy[None, :, :], axis=2)  # (Q, N)
    answerable = d.min(1) <= SUCCESS_RADIUS
    return answerable, d


def _state_right(d_row, q_h, places, views, map_heading, yaws) -> np.ndarray:
    ok = places >= 0
    p = np.maximum(places, 0)
    h_state = map_heading[p] - yaws[np.maximum(views, 0)]
    dh = np.abs((q_h - h_state + 180.0) % 360.0 - 180.0)
    return ok & (d_row[p] <= SUCCESS_RADIUS) & (dh < 90.0)


def run_filter(scores, places, views, stamps, tracker: PlaceTracker, odom=None, verified=None, verified_poses=None,
               checked=None) -> list:
    tracker.reset()
    fixes = []
    checked = checked if checked is not None or verified is None else checked_mask(verified)
    for i in range(len(stamps)):
        od = None if odom is None or not np.isfinite(odom[i]).all() else odom[i]  # NaN: motion unknown (visual odometry failed)
        fixes.append(tracker.update(float(stamps[i]), places[i], views[i], scores[i], od,
                                    None if verified is None else verified[i], None if checked is None else checked[i],
                                    None if verified_poses is None else verified_poses[i]))
    return fixes


def _episodes(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of the runs of True in ``flags`` (end exclusive)."""
    f = np.concatenate([[False], flags.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(f.astype(np.int8)))
    return list(zip(edges[::2], edges[1::2]))


def score_fixes(published: np.ndarray, right: np.ndarray, answerable: np.ndarray, lost: np.ndarray | None) -> dict:
    """The issue's metrics from per-frame arrays: published (fix given), right (the fix's place
    within 10 m), answerable (a map place within 10 m), lost (state "lost"; None for single frame)."""
    pub = published.astype(bool)
    n_pub = int(pub.sum())
    first = []
    for s, e in _episodes(answerable):
        hit = np.flatnonzero(pub[s:e] & right[s:e])
        first.append(int(hit[0]) if len(hit) else int(e - s))  # never fixed: the whole visit
    lost_after = []
    if lost is not None:
        for s, e in _episodes(~answerable):
            if s == 0:
                continue  # the drive starts off the map: nothing was left
            hit = np.flatnonzero(lost[s:e])
            lost_after.append(int(hit[0]) if len(hit) else None)
    out = {
        "precision": round(float((pub & right).sum() / n_pub), 4) if n_pub else None,
        "recall": round(float((pub & right & answerable).sum() / max(answerable.sum(), 1)), 4),
        "published": n_pub, "answerable": int(answerable.sum()), "off_map": int((~answerable).sum()),
        "off_map_published": int((pub & ~answerable).sum()),
        "off_map_published_share": round(float((pub & ~answerable).sum() / max((~answerable).sum(), 1)), 4),
        "first_fix_frames": {"visits": len(first), "median": float(np.median(first)) if first else None,
                             "max": int(max(first)) if first else None, "each": first},
    }
    if lost is not None:
        got = [v for v in lost_after if v is not None]
        out["lost_frames"] = {"exits": len(lost_after), "median": float(np.median(got)) if got else None,
                              "max": int(max(got)) if got else None, "never": int(sum(v is None for v in lost_after)), "each": lost_after}
    return out


def pr_curve(conf: np.ndarray, right: np.ndarray, answerable: np.ndarray, not_lost: np.ndarray,
             thresholds=np.round(np.arange(0.05, 1.0, 0.05).tolist() + [0.97, 0.99, 0.995, 0.999], 4)) -> list[dict]:
    out = []
    for t in thresholds:
        pub = not_lost & (conf >= t)
        n = int(pub.sum())
        out.append({"min_confidence": float(t), "precision": round(float((pub & right).sum() / n), 4) if n else None,
                    "recall": round(float((pub & right & answerable).sum() / max(answerable.sum(), 1)), 4), "published": n})
    return out


def simulated_odometry(poses: np.ndarray, seed: int = 0, noise=ODOMETRY_NOISE) -> np.ndarray:
    """(Q, 3) odometry steps between consecutive query poses (first row zero), with seeded noise."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(poses), 3))
    for i in range(1, len(poses)):
        d = odometry_delta(poses[i - 1], poses[i])
        step = math.hypot(d[0], d[1])
        out[i] = d + np.array([rng.normal(0, noise[0] * step + 1e-3), rng.normal(0, noise[0] * step + 1e-3), rng.normal(0, noise[1])])
    return out


class TrackData:
    """One drive's queries against a map of its first part: descriptors searched in FAISS once per
    mode (the filter and the single-frame path see the same hits)."""

    def __init__(self, model, root, sequence: str, cache_dir, map_fraction: float = 0.375, views: int = 2,
                 modes=("image", "lidar", "fused"), k: int = 10, progress: bool = False, verify: bool = False) -> None:
        from ..data.cache import model_cache
        from ..data.kitti import KittiSequence
        from ..retrieval.place_map import PlaceMap, PlaceTable
        from ..retrieval.views import view_offsets, view_yaws
        from .recall import encode_cache, encode_views

        cache_dir = Path(cache_dir)
        from .recall import model_key

        cache = model_cache(root, sequence, cache_dir, model.cfg, progress)
        path = cache.path
        seq = KittiSequence(root, sequence)
        if not seq.has_poses:
            raise ValueError(f"{root} {sequence}: tracking evaluation needs ground-truth poses")
        yaws = view_yaws(views)
        n = len(cache)
        self.map_end = m = int(round(n * map_fraction))
        self.poses = seq.poses[cache.frames]
        self.xy, self.heading = cache.xy, headings_deg(self.poses)
        self.stamps = cache.times
        self.yaws = np.asarray(yaws, np.float64)
        self.q = np.arange(m, n)
        self.answerable, self.dist = _ground_truth(self.xy[self.q], self.heading[self.q], self.xy[:m], self.heading[:m], self.yaws)
        self.name = f"{Path(root).name}/{sequence}"
        self._seq, self._frames, self._cache_path = seq, np.asarray(cache.frames), path
        self.visual: np.ndarray | None = None  # (Q, 3) visual odometry steps of the queries (visual_odometry())
        # the hits of every query (FAISS over the map's views) are kept in the cache folder, per model and map
        stored = path / f"track_hits_{model_key(model)}_m{m}_v{views}_k{k}.npz"
        self.hits = {}
        if stored.is_file():
            with np.load(stored, allow_pickle=False) as z:
                self.hits = {mode: (z[f"{mode}_s"], z[f"{mode}_p"], z[f"{mode}_v"]) for mode in modes if f"{mode}_s" in z.files}
        todo = [mode for mode in modes if mode not in self.hits]
        # per mode, a digest of the descriptors the hits come from (queries and map views): another
        # model whose descriptors of a mode are the same (a new camera half leaves LiDAR and fused
        # as they were) finds that mode's hits and GICP verifications in a file of that name
        self.content: dict[str, Path] = {}
        if todo:
            desc = encode_cache(model, cache, modes=tuple(dict.fromkeys(tuple(todo) + ("lidar",))), progress=progress)
            db = encode_views(model, cache, seq, yaws, progress=progress, lidar=desc["lidar"])  # (N, K, D)
            table = PlaceTable(self.poses[:m], cache.times[:m], np.full(m, sequence), cache.frames[:m].astype(np.int64), cache.xy[:m])
            pm = PlaceMap.build(db[:m], table, "eval", view_yaws_deg=yaws, view_offsets_m=view_offsets(yaws))
            map_digest = hashlib.sha256(np.ascontiguousarray(db[:m], np.float32).tobytes())
            for mode in todo:
                digest = map_digest.copy()
                digest.update(np.ascontiguousarray(desc[mode][self.q], np.float32).tobytes())
                self.content[mode] = path / f"track_content_{mode}_{digest.hexdigest()[:16]}_m{m}_v{views}_k{k}.npz"
                s, p, v = pm.search_views(desc[mode][self.q], k)
                self.hits[mode] = (s.astype(np.float64), p, v)
            self._store(stored, fresh=todo)
        # GICP verification of the hits (modes with the LiDAR), as the node runs it against a map
        # built with --scans: the first of the best candidates that registers is verified
        self.verified, self.registered = {}, {}
        self.T_cam_lidar = np.asarray(seq.calib.T_cam_lidar, np.float64)
        if verify:
            with np.load(stored, allow_pickle=False) as z:  # files of session 8 hold no registrations: verified again
                self.verified = {m: z[f"{m}_ver"] for m in modes if f"{m}_ver" in z.files and f"{m}_T" in z.files}
                self.registered = {m: z[f"{m}_T"] for m in self.verified}
            todo = [m for m in modes if m != "image" and m not in self.verified]
            for mode in list(todo):  # verified before for the same descriptors (under another model's name)
                c = self.content.get(mode)
                if c is not None and c.is_file():
                    with np.load(c, allow_pickle=False) as z:
                        self.verified[mode], self.registered[mode] = z["ver"], z["T"]
                    todo.remove(mode)
            if todo:
                self._verify(seq, cache, todo, progress)
            for mode, c in self.content.items():
                if mode in self.verified and not c.is_file():
                    tmp = c.with_name(c.stem + ".tmp.npz")
                    np.savez(tmp, ver=self.verified[mode], T=self.registered[mode])
                    tmp.replace(c)
            self._store(stored)

    def visual_odometry(self, cfg=None, progress: bool = False) -> np.ndarray:
        """(Q, 3) the queries' steps by monocular visual odometry from the drive's camera images
        (localization/visual_odometry.py), NaN where motion is unknown; kept in the cache folder."""
        from ..localization.visual_odometry import VisualOdometry, VisualOdometryConfig

        cfg = cfg or VisualOdometryConfig()
        key = hashlib.sha256((repr(cfg) + VISUAL_ODOMETRY_VERSION).encode()).hexdigest()[:12]
        stored = self._cache_path / f"track_vo_{key}_m{self.map_end}.npz"
        if stored.is_file():
            with np.load(stored, allow_pickle=False) as z:
                self.visual = z["steps"]
            return self.visual
        vo, K = VisualOdometry(cfg), self._seq.calib.P[:3, :3]
        out = np.full((len(self.q), 3), np.nan)
        frames = self._frames[self.q]
        it = range(len(frames))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"visual odometry {self.name}", unit="frame")
        for i in it:
            if i and frames[i] != frames[i - 1] + 1:
                vo.reset()  # not consecutive camera frames: motion unknown
            step = vo.step(self._seq.read_image(int(frames[i])), K)
            if step is not None:
                out[i] = step
        out[0] = 0.0
        tmp = stored.with_name(stored.stem + ".tmp.npz")
        np.savez(tmp, steps=out)
        tmp.replace(stored)
        self.visual = out
        return out

    def _store(self, stored: Path, fresh=()) -> None:
        """Writes this object's hits and verifications into ``stored``, keeping what the file holds
        of other modes (a run over fewer modes must not drop them)."""
        arrays = {}
        if stored.is_file():
            try:
                with np.load(stored, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError, EOFError):
                arrays = {}
        arrays.update({f"{mode}_{c}": a for mode, hv in self.hits.items() for c, a in zip("spv", hv)})
        arrays.update({f"{mode}_ver": a for mode, a in getattr(self, "verified", {}).items()})
        arrays.update({f"{mode}_T": a for mode, a in getattr(self, "registered", {}).items()})
        for mode in fresh:  # new hits of a mode: its old verifications were of other hits
            arrays.pop(f"{mode}_ver", None), arrays.pop(f"{mode}_T", None)
        tmp = stored.with_name(stored.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(stored)

    def _verify(self, seq, cache, modes, progress: bool) -> None:
        from tqdm import tqdm

        from ..retrieval.loops import RELOCALIZE_YAWS_DEG, LoopConfig, ScanStore, verify_hits
        from ..retrieval.views import DEFAULT_REVERSE_OFFSET_M, view_offsets

        m = self.map_end
        store = ScanStore(voxel=0.5)
        for i in range(m):
            store.add(seq.read_scan(int(cache.frames[i])))
        camera = tuple(float(v) for v in np.linalg.inv(seq.calib.T_cam_lidar)[:3, 3])
        cfg = LoopConfig(min_score=-1.0, candidates=6, voxel_m=0.5, yaw_guesses_deg=RELOCALIZE_YAWS_DEG, distance_point=camera)
        offsets = view_offsets(self.yaws, DEFAULT_REVERSE_OFFSET_M)
        done: dict = {}  # (query, place, view) -> relative pose (T_place_query, LiDAR frames) or None, shared by the modes
        for mode in modes:
            s, p, v = self.hits[mode]
            ver = np.zeros(p.shape, bool)
            reg = np.full((len(p), 4, 4), np.nan)
            for i in tqdm(range(len(self.q)), desc=f"verify {mode}", disable=not progress):
                pts = None
                for r in range(min(cfg.candidates, p.shape[1])):
                    key = (i, int(p[i, r]), int(v[i, r]))
                    if p[i, r] < 0:
                        break
                    if key not in done:
                        pts = seq.read_scan(int(cache.frames[self.q[i]])) if pts is None else pts
                        hit = {"index": int(p[i, r]), "score": 1.0, "view_yaw_deg": float(self.yaws[v[i, r]]),
                               "view_offset_m": offsets[v[i, r]]}
                        out, _ = verify_hits([hit], pts, store, cfg)
                        done[key] = out[0]["relative_pose"] if out[0]["verified"] else None
                    if done[key] is not None:
                        ver[i, r] = True
                        reg[i] = done[key]
                        break  # the node stops at the first verified candidate
            self.verified[mode] = ver
            self.registered[mode] = reg

    def right_states(self, mode: str) -> np.ndarray:
        """(Q, k) bool: the hit is the vehicle's state (place within 10 m, heading within 90 deg)."""
        s, p, v = self.hits[mode]
        return np.stack([_state_right(self.dist[i], self.heading[self.q[i]], p[i], v[i], self.heading[: self.map_end], self.yaws)
                         for i in range(len(self.q))])

    def verified_poses(self, mode: str) -> np.ndarray | None:
        """(Q, 3) the vehicle's ground-plane pose (x, z, heading rad) at each verified query, from its
        registration onto the verified place (as the node's ``vehicle_pose``); NaN rows elsewhere."""
        from ..geometry.poses import ground_xy
        from ..pipeline import vehicle_pose

        ver, reg = self.verified.get(mode), self.registered.get(mode)
        if ver is None:
            return None
        out = np.full((len(ver), 3), np.nan)
        places = self.hits[mode][1]
        for i in np.flatnonzero(ver.any(1)):
            T = vehicle_pose(self.poses[places[i, ver[i].argmax()]], reg[i], self.T_cam_lidar)
            out[i, :2] = ground_xy(T[None])[0]
            out[i, 2] = np.radians(headings_deg(T[None])[0])
        return out

    def fix_right(self, places: np.ndarray) -> np.ndarray:
        """(Q,) bool: the given place (-1: none) lies within 10 m of the query's truth."""
        ok = places >= 0
        return ok & (self.dist[np.arange(len(self.q)), np.maximum(places, 0)] <= SUCCESS_RADIUS)


def calibrate(datasets: list[TrackData], modes) -> dict[str, ObservationModel]:
    """Fits the observation model per mode on (validation) drives."""
    out = {}
    for m in modes:
        scores = np.concatenate([d.hits[m][0] for d in datasets])
        right = np.concatenate([d.right_states(m) for d in datasets])
        ans = np.concatenate([d.answerable for d in datasets])
        ver = np.concatenate([d.verified[m] for d in datasets]) if all(m in d.verified for d in datasets) else None
        obs = fit_observation_model(scores, right, ans, fitted_on=[d.name for d in datasets], verified=ver)
        out[m] = dataclasses.replace(obs, hit_offset=hit_offset(datasets, m))
    return out


def hit_offset(datasets: list[TrackData], mode: str, votes: int = AlignConfig().votes) -> tuple[float, float]:
    """Median (along, left) metres of right hits' places (the first ``votes`` hits) from the
    camera that asked, in the hit's heading: what the alignment corrects its votes by."""
    along, left = [], []
    for d in datasets:
        s, p, v = d.hits[mode]
        p, v = p[:, :votes], v[:, :votes]
        right = d.right_states(mode)[:, :votes] & (p >= 0)
        qi, hi = np.nonzero(right)
        pl, vw = p[qi, hi], v[qi, hi]
        h = np.radians(d.heading[pl] - d.yaws[vw])
        off = d.xy[pl] - d.xy[d.q[qi]]
        along.append(off[:, 0] * np.cos(h) + off[:, 1] * np.sin(h))
        left.append(off[:, 1] * np.cos(h) - off[:, 0] * np.sin(h))
    a, lft = np.concatenate(along), np.concatenate(left)
    if len(a) == 0:
        return (0.0, 0.0)
    return (round(float(np.median(a)), 3), round(float(np.median(lft)), 3))


def measure_threshold(results: list[dict], mode: str, precision: float = PRECISE) -> float | None:
    """The smallest confidence threshold of the PR curves from which, on every drive of
    ``results`` (evaluate_tracking's) with and without odometry, the belief's published fixes are
    at least ``precision`` right at that threshold and every higher one, and some are published;
    None: no such threshold (the mode's belief is not precise on these drives)."""
    curves = [r[key][mode]["pr_curve"] for r in results for key in ("track", "track_odometry")]
    thresholds = [p["min_confidence"] for p in curves[0]]
    ok = [all(c[i]["published"] == 0 or c[i]["precision"] >= precision for c in curves) for i in range(len(thresholds))]
    for i, t in enumerate(thresholds):
        if all(ok[i:]) and any(c[i]["published"] for c in curves):
            return float(t)
    return None


def measured_thresholds(obs: dict[str, ObservationModel], results: list[dict], data: list[TrackData], modes) -> dict[str, ObservationModel]:
    """The observation models with each unverified mode's publishing threshold measured on the
    calibration drives (:func:`measure_threshold`); modes with GICP verification keep the default
    (their fixes are anchored by verifications, which the PR curve does not model)."""
    out = dict(obs)
    for m in modes:
        if any(m in d.verified for d in data):
            continue
        t = measure_threshold(results, m)
        out[m] = dataclasses.replace(obs[m], min_confidence=t, belief_publishes=t is not None)
    return out


def evaluate_tracking(data: TrackData, obs: dict[str, ObservationModel], cfg: TrackerConfig, modes, odometry_seed: int = 0,
                      verify_every: int = 1) -> dict:
    """Per mode: ``single_frame``, ``track`` (no odometry) and ``track_odometry`` metrics, PR curves,
    and the filter's cost per frame. ``verify_every`` N: the filter sees GICP verification on every
    N-th frame only (the others answered unverified, nothing tried: the node's verifier process at
    sensor rate verifies some frames, ~4 a second at 10 Hz input)."""
    res = {"map_places": int(data.map_end), "queries": int(len(data.q)), "views": int(len(data.yaws)), "verify_every": int(verify_every)}
    every = (np.arange(len(data.q)) % max(int(verify_every), 1)) == 0
    odom = simulated_odometry(data.poses[data.q], odometry_seed)
    for m in modes:
        s, p, v = data.hits[m]
        right1 = data.fix_right(p[:, 0])
        res.setdefault("single_frame", {})[m] = score_fixes(p[:, 0] >= 0, right1, data.answerable, None)
        ver = data.verified.get(m)
        if ver is not None:
            res.setdefault("single_frame_verified", {})[m] = score_fixes(ver.any(1), data.fix_right(np.where(ver.any(1), p[np.arange(len(p)), ver.argmax(1)], -1)),
                                                                         data.answerable, None)
        mcfg = dataclasses.replace(cfg, require_anchor=cfg.require_anchor and ver is not None)
        fver = fchecked = fposes = None
        if ver is not None:
            fver, fchecked = ver & every[:, None], checked_mask(ver) & every[:, None]
            fposes = data.verified_poses(m)
            fposes[~every] = np.nan
        paths = [("track", None, mcfg), ("track_odometry", odom, mcfg)]
        if data.visual is not None and m in VISUAL_MODES:  # the camera's own motion, no odometry given
            paths.append(("track_visual", data.visual, dataclasses.replace(mcfg, align=None if mcfg.align is None else visual_align(mcfg.align))))
        for key, od, mcfg in paths:
            tracker = PlaceTracker(data.xy[: data.map_end], data.heading[: data.map_end], data.yaws, obs[m], mcfg)
            t0 = time.perf_counter()
            fixes = run_filter(s, p, v, data.stamps[data.q], tracker, od, fver, fposes, fchecked)
            ms = 1e3 * (time.perf_counter() - t0) / max(len(fixes), 1)
            places = np.array([f.place if f.published else -1 for f in fixes])
            best = np.array([f.place for f in fixes])
            lost = np.array([f.state == "lost" for f in fixes])
            conf = np.array([f.confidence for f in fixes])
            r = score_fixes(places >= 0, data.fix_right(places), data.answerable, lost)
            if od is not None and mcfg.align is not None:  # the curve is the belief's (its threshold): the same run without the alignment
                belief = run_filter(s, p, v, data.stamps[data.q], PlaceTracker(data.xy[: data.map_end], data.heading[: data.map_end], data.yaws,
                                                                               obs[m], dataclasses.replace(mcfg, align=None)), od, fver, fposes, fchecked)
                conf, best = np.array([f.confidence for f in belief]), np.array([f.place for f in belief])
                lost = np.array([f.state == "lost" for f in belief])
            r["pr_curve"] = pr_curve(conf, data.fix_right(best), data.answerable, ~lost)
            r["filter_ms_per_frame"] = round(ms, 3)
            r["states"] = {st: int(sum(f.state == st for f in fixes)) for st in ("tracking", "relocalising", "lost")}
            r["published_by_source"] = {src: int(sum(f.published and f.source == src for f in fixes))
                                        for src in ("belief", "verified", "carried", "aligned")}
            r["_fixes"] = fixes
            res.setdefault(key, {})[m] = r
    return res


def print_tracking(name: str, r: dict, modes, echo=print) -> None:
    echo(f"{name}: map {r['map_places']} places x {r['views']} views, {r['queries']} queries in drive order")
    echo(f"  {'mode':6s} {'path':16s} {'precision':>9s} {'recall':>7s} {'published':>9s} {'off-map pub':>11s} "
         f"{'first fix (med/max)':>19s} {'to lost (med/max)':>17s} {'ms/frame':>8s}")
    for m in modes:
        for key, label in (("single_frame", "single frame"), ("track", "filter"), ("track_odometry", "filter + odom"),
                           ("track_visual", "filter + VO")):
            if m not in r.get(key, {}):
                continue
            x = r[key][m]
            ff = x["first_fix_frames"]
            lf = x.get("lost_frames")
            prec = "-" if x["precision"] is None else f"{x['precision']:.3f}"
            lost = f"{lf['median']}/{lf['max']}" + (f" ({lf['never']} never)" if lf["never"] else "") if lf and lf["exits"] else "-"
            echo(f"  {m:6s} {label:16s} {prec:>9s} {x['recall']:7.3f} {x['published']:9d} {x['off_map_published']:5d}/{x['off_map']:<5d} "
                 f"{str(ff['median']) + '/' + str(ff['max']):>19s} {lost:>17s} {x.get('filter_ms_per_frame', 0):8.2f}")


def plot_tracking(data: TrackData, r: dict, modes, out: Path) -> list[str]:
    """Per mode, the drive with the map's part, right and wrong published fixes (filter, no
    odometry) and the single frame's wrong answers; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    xy = data.xy
    for m in modes:
        fig, axes = plt.subplots(1, 2, figsize=(14, 6), sharex=True, sharey=True)
        fixes = r["track"][m]["_fixes"]
        pub = np.array([f.published for f in fixes])
        places = np.array([f.place if f.published else -1 for f in fixes])
        right = data.fix_right(places)
        s, p, v = data.hits[m]
        right1 = data.fix_right(p[:, 0])
        qxy = xy[data.q]
        for ax, title, shown, ok in ((axes[0], "single frame (every frame published)", np.ones(len(p), bool), right1),
                                     (axes[1], "tracking filter (published fixes only)", pub, right)):
            ax.plot(xy[:, 0], xy[:, 1], color="0.85", lw=1, label="drive")
            ax.plot(xy[: data.map_end, 0], xy[: data.map_end, 1], color="0.45", lw=2.5, label="map (first part)")
            ax.scatter(qxy[shown & ok, 0], qxy[shown & ok, 1], s=6, c="tab:green", label=f"right ({int((shown & ok).sum())})")
            ax.scatter(qxy[shown & ~ok, 0], qxy[shown & ~ok, 1], s=10, c="tab:red", marker="x", label=f"wrong ({int((shown & ~ok).sum())})")
            ax.set_title(f"{data.name} {m}: {title}")
            ax.set_aspect("equal")
            ax.legend(loc="best", fontsize=8)
        path = out / f"track_{data.name.replace('/', '_')}_{m}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(str(path))
    return paths
