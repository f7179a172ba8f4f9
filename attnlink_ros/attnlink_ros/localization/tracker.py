"""Tracking over a map's places: a hidden Markov model whose states are the map's (place, heading
view) pairs plus one "not on the map" state, updated every frame.

Why an HMM over places and not a particle filter over poses: the map is a discrete set of places
with descriptors, and every observation is a ranked list of those places; the belief lives where
the observations are, needs no resampling, is deterministic (the same drive gives the same fixes,
as tests and evaluation need), and a "lost" state is one more state. Sequence matching in the
SeqSLAM line is the special case with a fixed speed. A particle filter would add continuous poses
the observations cannot tell apart below the place spacing.

- Motion (predict): each state moves to the places it can reach since the last frame. With
  odometry (the relative motion between the two frames), to the places near the predicted
  position and heading; without it, from the map's own geometry: forward along the state's heading
  by 0 to ``max_speed * dt``, a little to the side, heading kept. The map's edges leak to "lost"
  through the observations, not by hand.
- Observation (update): the query's top-K hits; a hit's features (its score, its margin over the
  K-th score, its rank) give the probability that it is the vehicle's place by a logistic model
  fitted on validation towns (:class:`ObservationModel`, ``attnlink eval --track --calibrate``),
  turned into a likelihood ratio against "lost" (whose likelihood is 1); a state not in the top-K
  gets the calibrated chance of a true place being missed. A GICP-verified hit is a strong
  observation (``verified_lr``).
- The belief is sparse: up to ``max_states`` explicit states plus a uniform floor for all others,
  so a frame costs O(max_states x neighbours), independent of the map's size.

With GICP verification (LiDAR queries against a map with scans) a verified hit is near-certain
and a refused candidate is evidence against its place (``refused_ratio``, fitted); fixes are then
published only while a verification within ``anchor_s`` agrees with them (``require_anchor``): on
validation town 601 this took LiDAR precision from 0.94 to 0.99-1.00 at the same recall, because
unverified evidence alone cannot tell a look-alike street off the map from the mapped one.

With odometry and no verification (image queries), the recent drive aligned onto the map as one
rigid shape (alignment.py) gives the fix where the belief gives none (source "aligned"); with no
odometry given, the camera's own motion can stand in for it (visual_odometry.py).

Output per frame (:class:`Fix`): the most probable place and view, its posterior mass within
``cluster_radius_m`` (the confidence), the covariance from the belief's spread (plus the place
spacing's own error), and the state: ``tracking`` (confidence >= the mode's threshold,
:meth:`PlaceTracker.threshold`), ``relocalising``
or ``lost`` (P(not on the map) >= 0.5).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AttnLinkError, DataError
from .alignment import AlignConfig, TrajectoryAligner

FEATURES = ("bias", "score", "margin", "log_rank")  # logistic features of one hit
DEFAULT_MIN_CONFIDENCE = 0.8  # where the calibration measured none (validation town 601, LiDAR with verification, session 8)
PRECISE = 0.99  # the precision a mode's belief must reach on every calibration drive to publish unverified fixes
_BIN_M = 0.5  # distance bins of the neighbour counts (PlaceTracker._within)


@dataclass(frozen=True)
class TrackerConfig:
    """The filter's parameters (defaults measured on validation towns; see docs/deployment.md)."""

    k: int = 10  # hits per query the observation uses
    max_speed_mps: float = 25.0  # without odometry: the farthest a vehicle moves between frames is this x dt
    odometry_jump_m: float = 5.0  # an odometry step longer than max_speed_mps x dt + this is a jump, not motion
    lateral_sigma_m: float = 2.5  # across the heading (lanes, place spacing)
    along_sigma_m: float = 2.0  # soft edges of the along-heading band (no odometry) / odometry's error floor
    odom_sigma_fraction: float = 0.1  # odometry's error per metre travelled
    heading_sigma_deg: float = 30.0
    p_leave: float = 0.01  # per frame: a tracked vehicle leaves the map
    p_enter: float = 0.02  # per frame: a lost vehicle enters the map (spread over every state)
    max_states: int = 64  # validation 601 / 602: the same precision and recall as 256 (within 0.006), a quarter of the cost
    neighbour_radius_m: float = 40.0  # places considered reachable in one step (>= max_speed x the longest dt)
    max_dt_s: float = 1.0  # a longer gap between frames is treated as this one (and spreads the belief)
    spatial_prior: bool = False  # a supported state is evidence in proportion to how few states the hits support
    support_radius_m: float = 10.0  # a hit speaks for the states within this of its place (its heading)
    cluster_radius_m: float = 10.0  # the fix's confidence: posterior mass within this of the best place
    # a fix is published (state tracking) at or above this; None: per query mode, the threshold the
    # calibration measured (ObservationModel.min_confidence; a mode whose belief was never precise
    # there publishes only verified and carried poses), else DEFAULT_MIN_CONFIDENCE. A number
    # overrides every mode (and lets an imprecise mode's belief publish: the user's choice)
    min_confidence: float | None = None
    base_sigma_m: float = 3.0  # position error of a correct fix beyond the belief's spread (place spacing, view offsets)
    verified_lr: float = 1e4  # likelihood ratio of a GICP-verified hit
    # with GICP verification available (LiDAR, a map with scans): a fix is published only while a
    # verification within anchor_s seconds agrees with it (its place within reach of the fix)
    require_anchor: bool = False
    anchor_s: float = 2.0
    # with odometry: the last GICP-verified pose carried forward by odometry; while it has moved at
    # most dead_reckoning_m since, it is the fix (its nearest place within on_map_m, at the view
    # facing its way), or "lost" when no place is that near (the vehicle left the mapped area)
    dead_reckoning_m: float = 30.0  # 0: off. Validation 601 / 602, LiDAR + odometry: 10 m -> recall 0.963 / 0.930, 30 m 0.972 / 0.970 = 60 = 100 m, precision 1.000
    on_map_m: float = 9.0  # the fix's place must lie within this of the carried pose (below the 10 m a right fix allows)
    dead_reckoning_sigma_m: float = 0.2  # position error of a verified pose (GICP at 0.5 m voxels, the map's own pose)
    dead_reckoning_sigma_per_m: float = 0.03  # and its growth per metre carried by odometry
    # without odometry: the verified pose carried at the velocity of the last two verified poses
    # (at most 1 s apart) for at most this long since the last verification (0: off)
    constant_velocity_s: float = 3.0  # validation 601 / 602, LiDAR, no odometry: 0 -> recall 0.898 / 0.823; 1 s 0.961 / 0.912; 2 s 0.974 / 0.960; 3 s 0.974 / 0.967 = 5 s; precision 1.000
    constant_velocity_sigma_mps: float = 1.0  # its position error grows by this per second carried
    # with odometry and no GICP verification (require_anchor false: image queries, maps without
    # scans): the recent drive aligned onto the map as one rigid shape (alignment.py); its pose is
    # the fix when no confident belief fix is (source "aligned"), and "lost" when it lies off the
    # map. With verification the anchors decide: on test town 85288 the alignment's fill-in took
    # LiDAR precision from 1.000 to 0.986 (a map entry, session 16). None: off
    align: AlignConfig | None = AlignConfig()


@dataclass(frozen=True)
class ObservationModel:
    """P(hit is the vehicle's place) = sigmoid(w . features(hit)), per query mode, fitted on
    validation towns; ``prior`` is the positive share of the fitting data and ``hit_rate`` the
    share of answerable queries whose true place was among the top-K."""

    weights: tuple[float, ...]
    prior: float
    hit_rate: float
    k: int
    fitted_on: tuple[str, ...] = ()
    samples: int = 0
    # GICP verification (LiDAR queries against a map with scans): a candidate that verification
    # tried and refused is this much likelier at the vehicle's place than off the map
    # (P(refused | right) / P(refused | off the map), fitted; 1 = no verification data)
    refused_ratio: float = 1.0
    # measured on the calibration drives for a mode without GICP verification (eval --track
    # --calibrate): the smallest confidence threshold from which on every drive, with and without
    # odometry, the belief's published fixes were precise (>= PRECISE); None: not measured (files
    # before session 14, verified modes: TrackerConfig's default applies)
    min_confidence: float | None = None
    belief_publishes: bool = True  # False: no threshold was precise there; the belief alone never publishes
    # where a right hit's place lies from the camera that asked, (along, left) metres in the hit's
    # heading (median over the calibration drives; alignment.py corrects its votes by it)
    hit_offset: tuple[float, float] = (0.0, 0.0)

    def probability(self, scores: np.ndarray) -> np.ndarray:
        """(k,) P(correct) of one query's hits, ``scores`` best first (-inf pads)."""
        x = hit_features(scores[None])[0]
        return 1.0 / (1.0 + np.exp(-(x @ np.asarray(self.weights))))

    def likelihood_ratio(self, scores: np.ndarray) -> np.ndarray:
        """(k,) p(hits | vehicle at this hit's state) / p(hits | not on the map)."""
        p = np.clip(self.probability(scores), 1e-6, 1 - 1e-6)
        return self.hit_rate * (p / (1 - p)) / (self.prior / (1 - self.prior))

    @property
    def miss_ratio(self) -> float:
        """Likelihood ratio of a state that is not among the top-K."""
        return max(1.0 - self.hit_rate, 1e-3)


def hit_features(scores: np.ndarray) -> np.ndarray:
    """(Q, k, F) features of ranked hits: bias, score, margin over the K-th score, log rank."""
    s = np.where(np.isfinite(scores), scores, np.nan)
    kth = np.nanmin(s, axis=1, keepdims=True)
    rank = np.broadcast_to(np.log1p(np.arange(s.shape[1], dtype=np.float64)), s.shape)
    out = np.stack([np.ones_like(s), s, s - kth, rank], -1)
    return np.nan_to_num(out, nan=0.0)


def checked_mask(verified: np.ndarray, candidates: int = 6) -> np.ndarray:
    """(Q, k) the hits GICP verification tried, from (Q, k) ``verified`` in hit order: the best
    ``candidates`` until the first that verified (the node's verify_hits stops there)."""
    ranks = np.arange(verified.shape[1])[None, :]
    first = np.where(verified.any(1), verified.argmax(1), candidates - 1)[:, None]
    return ranks <= np.minimum(first, candidates - 1)


def fit_observation_model(scores: np.ndarray, correct: np.ndarray, answerable: np.ndarray, fitted_on=(),
                          l2: float = 1e-3, iterations: int = 50, verified: np.ndarray | None = None) -> ObservationModel:
    """Logistic regression (Newton's method, a small ridge) of right hits against the hits of
    queries off the map, on the hits' features; ``scores`` (Q, k) best first, ``correct`` (Q, k)
    bool, ``answerable`` (Q,) queries with a true state. The odds it gives, over its prior odds,
    are the density ratio f(hit | it is the vehicle's place) / f(hit | the vehicle is off the map):
    what the filter weighs a state against "not on the map" with. (Wrong hits of queries on the
    map are left out: they speak for wrong states, which the filter tells apart by motion.)"""
    X = hit_features(scores).reshape(-1, len(FEATURES))
    y = correct.reshape(-1).astype(np.float64)
    off = np.broadcast_to(~np.asarray(answerable, bool)[:, None], correct.shape).reshape(-1)
    keep = np.isfinite(scores.reshape(-1)) & ((y > 0) | off)
    X, y = X[keep], y[keep]
    if y.sum() == 0 or y.sum() == len(y):
        raise AttnLinkError("calibration needs both correct and wrong hits")
    w = np.zeros(X.shape[1])
    w[0] = math.log(y.mean() / (1 - y.mean()))
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(X @ w)))
        g = X.T @ (p - y) + l2 * w
        H = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(len(w))
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    hit_rate = float(correct[answerable].any(1).mean()) if answerable.any() else 0.5
    refused = 1.0
    if verified is not None:
        tried = checked_mask(verified) & np.isfinite(scores)
        right_tried = tried & correct
        off_tried = tried & ~np.asarray(answerable, bool)[:, None]
        if right_tried.sum() and off_tried.sum():
            p_right = float((right_tried & ~verified).sum() / right_tried.sum())
            p_off = float((off_tried & ~verified).sum() / off_tried.sum())
            refused = float(np.clip(p_right / max(p_off, 1e-6), 1e-3, 1.0))
    return ObservationModel(tuple(float(v) for v in w), float(y.mean()), hit_rate, scores.shape[1], tuple(fitted_on), int(len(y)),
                            refused)


def save_calibration(models: dict[str, ObservationModel], path: str | Path, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": "attnlink-tracking-calibration/1", "features": list(FEATURES),
            "modes": {m: asdict(o) for m, o in models.items()}, **(extra or {})}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_calibration(path: str | Path) -> dict[str, ObservationModel]:
    """The per-mode observation models of a calibration file (written by ``eval --track --calibrate``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != "attnlink-tracking-calibration/1" or list(data["features"]) != list(FEATURES):
            raise ValueError("not an attnlink tracking calibration (format/features)")
        return {m: ObservationModel(**{**o, "weights": tuple(o["weights"]), "fitted_on": tuple(o["fitted_on"]),
                                       "hit_offset": tuple(o.get("hit_offset", (0.0, 0.0)))})
                for m, o in data["modes"].items()}
    except FileNotFoundError as exc:
        raise DataError(path, "tracking calibration not found (attnlink eval --track --calibrate writes one)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"unreadable tracking calibration: {exc}") from exc


@dataclass
class Fix:
    """One frame's answer of the filter."""

    state: str  # "tracking" | "relocalising" | "lost"
    place: int = -1
    view: int = -1
    confidence: float = 0.0  # posterior mass within cluster_radius_m of the place (and its heading)
    p_lost: float = 1.0
    xy: np.ndarray | None = None  # (2,) the belief's mean position in the cluster (map ground plane)
    covariance_xy: np.ndarray | None = None  # (2, 2) m^2
    heading_deg: float = 0.0
    hit_posteriors: list[float] = field(default_factory=list)  # per query hit, the posterior of its state
    source: str = "belief"  # "belief" (the filter's posterior) | "verified" (this frame's registration) | "carried" (a verified pose carried forward by odometry or at its velocity) | "aligned" (the recent drive's odometry aligned onto the map, alignment.py)

    @property
    def published(self) -> bool:
        return self.state == "tracking"


class PlaceTracker:
    """The filter over one map's places. ``xy`` (N, 2) and ``heading_deg`` (N,) are the places'
    ground-plane positions and driving directions; ``view_yaws_deg`` (K,) the map's views (a
    state's heading is its place's heading minus the view's yaw)."""

    def __init__(self, xy: np.ndarray, heading_deg: np.ndarray, view_yaws_deg, obs: ObservationModel,
                 cfg: TrackerConfig = TrackerConfig()) -> None:
        self.cfg, self.obs = cfg, obs
        self.xy = np.asarray(xy, np.float64)
        self.N = len(self.xy)
        self.yaws = np.asarray(view_yaws_deg, np.float64)
        self.K = len(self.yaws)
        self.S = self.N * self.K
        h = np.radians(np.asarray(heading_deg, np.float64))[:, None] - np.radians(self.yaws)[None, :]
        self.state_heading = np.arctan2(np.sin(h), np.cos(h)).reshape(-1)  # (S,) radians
        self._cos_sin = np.stack([np.cos(h), np.sin(h)], -1)  # (N, K, 2): heading unit vectors
        self.state_xy = np.repeat(self.xy, self.K, axis=0)  # (S, 2)
        ph = np.radians(np.asarray(heading_deg, np.float64))
        self._place_c, self._place_s = np.cos(ph), np.sin(ph)  # (N,) the places' driving directions
        self._x, self._y = self.xy[:, 0].copy(), self.xy[:, 1].copy()
        self._yaw_cs = np.stack([np.cos(np.radians(self.yaws)), np.sin(np.radians(self.yaws))], -1)  # (K, 2)
        self._neighbour_lists(cfg.neighbour_radius_m)
        self.aligner = None if cfg.align is None else TrajectoryAligner(self.xy, self.state_heading, self.K, cfg.on_map_m, cfg.align)
        self.reset()

    # -- set-up ---------------------------------------------------------------------------------
    def _neighbour_lists(self, radius: float) -> None:
        """The places within ``radius`` of each place, nearest first, by a grid hash, stored flat
        (CSR: place i's neighbours are ``_nb[_nb_ptr[i]:_nb_ptr[i + 1]]``, their distances in
        ``_nb_d``), with ``_nb_count[i, b]``: how many lie within (b + 1) x ``_BIN_M``. (Padded
        (N, most neighbours) arrays took 87 MB at 5k places, most of it padding; this, 40 MB.)"""
        cell = radius
        keys = np.floor(self.xy / cell).astype(np.int64)
        buckets: dict = {}
        for i, k in enumerate(map(tuple, keys)):
            buckets.setdefault(k, []).append(i)
        edges = np.arange(1, int(math.ceil(radius / _BIN_M)) + 1) * _BIN_M
        lists, dists = [], []
        self._nb_count = np.zeros((self.N, len(edges)), np.int32)
        for i, (kx, ky) in enumerate(keys):
            cand = np.asarray([j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in buckets.get((kx + dx, ky + dy), ())], np.int64)
            d = np.linalg.norm(self.xy[cand] - self.xy[i], axis=1)
            order = np.argsort(d, kind="stable")
            keep = order[d[order] <= radius]
            lists.append(cand[keep])
            dists.append(d[keep])
            self._nb_count[i] = np.searchsorted(dists[-1], edges, side="right")
        self._nb_ptr = np.zeros(self.N + 1, np.int64)
        self._nb_ptr[1:] = np.cumsum([len(v) for v in lists])
        self._nb = (np.concatenate(lists) if lists else np.zeros(0)).astype(np.int32)  # 4 bytes an entry: millions of them
        self._nb_d = np.concatenate(dists) if dists else np.zeros(0)

    def _within(self, places: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """The neighbours within ``radius`` of each of ``places`` (M,), flat: (row into ``places``,
        neighbour place), rows ascending, each row's neighbours by distance. Only the pairs that
        exist are touched (no padding to the most crowded place: a crossing of several passes
        has twice the average), so a step costs what the belief can reach."""
        b = min(max(int(math.ceil(radius / _BIN_M)) - 1, 0), self._nb_count.shape[1] - 1)
        cnt = self._nb_count[places, b]  # an upper bound: the bin's far edge
        row = np.repeat(np.arange(len(places)), cnt)
        pos = np.arange(len(row)) + np.repeat(self._nb_ptr[places] - (np.cumsum(cnt) - cnt), cnt)
        keep = self._nb_d[pos] <= radius
        return row[keep], self._nb[pos[keep]]

    def _best_views(self, nb: np.ndarray, hc: np.ndarray, hs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per pair: the view of neighbour place ``nb`` whose heading is closest to the heading whose
        cosine and sine are ``hc``, ``hs``, and the cosine of the angle between them. A view's
        heading is its place's driving direction minus the view's yaw. (1-D gathers and a loop over
        the few views: a quarter of the cost of (P, K, 2) arrays.)"""
        pc, ps = self._place_c[nb], self._place_s[nb]
        c = pc * hc + ps * hs  # cos(place heading - heading)
        s = ps * hc - pc * hs  # sin(place heading - heading)
        best = np.zeros(len(nb), np.int64)
        cos_best = c * self._yaw_cs[0, 0] + s * self._yaw_cs[0, 1]
        for k in range(1, self.K):
            cos_k = c * self._yaw_cs[k, 0] + s * self._yaw_cs[k, 1]  # cos(place heading - yaw_k - heading)
            better = cos_k > cos_best
            best[better] = k
            np.maximum(cos_best, cos_k, out=cos_best)
        return best, cos_best

    def reset(self) -> None:
        """Forgets everything (relocalisation): every state equally likely, "lost" as likely as the map."""
        self.idx = np.zeros(0, np.int64)  # explicit states
        self.w = np.zeros(0)
        self.lost = 0.5
        self.floor = 0.5 / self.S  # mass of every state not in idx
        self.last_stamp: float | None = None
        self.anchor: tuple[float, np.ndarray] | None = None  # (stamp, place xy) of the last GICP-verified hit
        self.carried: np.ndarray | None = None  # (x, z, heading rad, metres carried) the last verified pose, moved by odometry
        self.carried_sigma = 0.0  # its position error beyond the registration's (m)
        self.last_verified: tuple[float, np.ndarray] | None = None  # (stamp, (x, z, heading rad))
        self.velocity: np.ndarray | None = None  # (vx, vz, yaw rate) from the last two verified poses
        self.odometry_jumps = 0  # odometry steps farther than a vehicle drives in the time (taken as no odometry)
        if self.aligner is not None:
            self.aligner.reset()

    # -- one frame ------------------------------------------------------------------------------
    def _predict(self, dt: float, odom: np.ndarray | None) -> None:
        c = self.cfg
        S, M = self.S, len(self.idx)
        rest = max(S - M, 0)
        enter = c.p_enter * self.lost
        self.lost = self.lost * (1 - c.p_enter) + c.p_leave * (self.w.sum() + self.floor * rest)
        self.floor = self.floor * (1 - c.p_leave) + enter / S
        if M == 0:
            return
        place = self.idx // self.K
        # only the neighbours this step can reach
        if odom is None:
            need = c.max_speed_mps * dt + 3 * max(c.along_sigma_m, c.lateral_sigma_m)
        else:
            need = math.hypot(odom[0], odom[1]) + 3 * (c.along_sigma_m + c.odom_sigma_fraction * math.hypot(odom[0], odom[1]))
        row, nb = self._within(place, need)  # (P,) pairs (source state, neighbour place)
        # targets: the neighbour place's view whose heading is closest to the source state's (after odometry's turn)
        h0 = self.state_heading[self.idx]  # (M,)
        dyaw = 0.0 if odom is None else odom[2]
        v_best, cos_best = self._best_views(nb, np.cos(h0 + dyaw)[row], np.sin(h0 + dyaw)[row])
        dx, dy = self._x[nb] - self._x[place][row], self._y[nb] - self._y[place][row]
        fx, fy = np.cos(h0)[row], np.sin(h0)[row]
        along = dx * fx + dy * fy
        lateral = dy * fx - dx * fy  # to the left (counter-clockwise seen from above)
        if odom is None:  # forward by 0 .. max_speed * dt, soft edges
            reach = c.max_speed_mps * dt
            below = np.minimum(along, 0.0)
            above = np.maximum(along - reach, 0.0)
            la = -0.5 * (below ** 2 + above ** 2) / c.along_sigma_m ** 2 - 0.5 * lateral ** 2 / c.lateral_sigma_m ** 2
        else:  # to where odometry says, with its error
            fwd_m, lat_m = odom[0], odom[1]
            sig = c.along_sigma_m + c.odom_sigma_fraction * math.hypot(fwd_m, lat_m)
            la = -0.5 * ((along - fwd_m) ** 2 + (lateral - lat_m) ** 2) / sig ** 2
        la = la + (cos_best - 1.0) / math.radians(c.heading_sigma_deg) ** 2  # von Mises: ~ -dh^2 / (2 sigma^2)
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])  # every state reaches its own place (distance 0)
        k = np.exp(la - np.maximum.reduceat(la, starts)[row])
        k = k / np.add.reduceat(k, starts)[row]  # each state's mass moves, none is created
        mass = (self.w * (1 - c.p_leave))[row] * k
        tgt = nb * self.K + v_best
        if self.S <= 4 * len(tgt):  # a small map: summed over all its states (no sort)
            dense = np.bincount(tgt, weights=mass, minlength=self.S)
            self.idx = np.flatnonzero(np.bincount(tgt, minlength=self.S))
            self.w = dense[self.idx] + self.floor
        else:
            self.idx, inv = np.unique(tgt, return_inverse=True)
            self.w = np.bincount(inv, weights=mass, minlength=len(self.idx)) + self.floor

    def update(self, stamp: float, places: np.ndarray, views: np.ndarray, scores: np.ndarray,
               odom: np.ndarray | None = None, verified: np.ndarray | None = None, checked: np.ndarray | None = None,
               verified_pose: np.ndarray | None = None, catch_up: np.ndarray | None = None) -> Fix:
        """One frame: ``places``, ``views``, ``scores`` (k,) the query's hits best first (place -1
        pads); ``odom`` (forward m, left m, yaw rad) of the vehicle since the previous frame, in its
        own frame, or None; ``verified`` (k,) bool where GICP verified a hit, ``checked`` (k,) bool
        where it tried (a refused candidate is evidence against its place); ``verified_pose`` (x, z,
        heading rad): the vehicle's ground-plane pose in the map from the verified hit's registration;
        ``catch_up``: for a late frame (older than the last one), the odometry from it to the last
        frame, which carries its verified pose up to now."""
        c = self.cfg
        at_stamp = None
        late = self.last_stamp is not None and stamp < self.last_stamp  # answered after a newer frame: observed, no motion
        if odom is not None and not late and self.last_stamp is not None and \
                math.hypot(float(odom[0]), float(odom[1])) > c.max_speed_mps * (stamp - self.last_stamp) + c.odometry_jump_m:
            # farther than a vehicle drives in the time: the odometry jumped (a SLAM pose corrected at a
            # loop closure, a reset), not motion; this frame moves as without odometry and the drive's
            # alignment starts over (its dead-reckoned shape broke)
            self.odometry_jumps += 1
            odom = None
        if not late:
            dt = c.max_dt_s if self.last_stamp is None else float(min(stamp - self.last_stamp, c.max_dt_s))
            self.last_stamp = stamp
            self._predict(dt, None if odom is None else np.asarray(odom, np.float64))
            self._carry(None if odom is None else np.asarray(odom, np.float64), dt)
        if verified_pose is not None and c.dead_reckoning_m and np.isfinite(verified_pose).all() and \
                (self.last_verified is None or stamp > self.last_verified[0]):
            self._verified(float(stamp), np.asarray(verified_pose, np.float64)[:3])
            if late:  # a verification answered after newer frames (the node's verifier process): carried up to now,
                at_stamp = self.carried.copy()  # while this frame's own fix is the pose at its stamp
                self._carry(None if catch_up is None else np.asarray(catch_up, np.float64), float(self.last_stamp - stamp))
        if self.aligner is not None and not late and not c.require_anchor:  # with verification, its anchors decide (see align)
            if odom is None:  # the dead-reckoned drive breaks without odometry: start over
                if self.aligner.frames:
                    self.aligner.reset()
            else:
                self.aligner.hit_offset = np.asarray(self.obs.hit_offset, np.float64)
                pl = np.asarray(places, np.int64)
                self.aligner.step(odom, np.where(pl >= 0, pl * self.K + np.asarray(views, np.int64), -1))
        # observation
        valid = np.asarray(places) >= 0
        hp = np.asarray(places)[valid].astype(np.int64)
        hs = hp * self.K + np.asarray(views)[valid].astype(np.int64)
        lr = self.obs.likelihood_ratio(np.asarray(scores, np.float64))[valid]
        if checked is not None:
            refused = np.asarray(checked)[valid] & ~(np.asarray(verified)[valid] if verified is not None else False)
            lr = np.where(refused, lr * self.obs.refused_ratio, lr)
        if verified is not None:
            ver = np.asarray(verified)[valid]
            lr = np.where(ver, np.maximum(lr, c.verified_lr), lr)
            if ver.any():
                self.anchor = (float(stamp), self.xy[hp[np.argmax(ver)]].copy())
        hs, lr = self._support(hs, lr)
        # under "not on the map" the hits land anywhere: a state is supported by chance with
        # probability q (the supported share of the map's states); at the vehicle's true state,
        # with the calibrated hit rate. The ratios below are against "not on the map" (ratio 1).
        q = min(max(len(hs) / self.S, 1.0 / self.S), 0.5)
        lr = lr / q if c.spatial_prior else lr
        miss = self.obs.miss_ratio / (1.0 - q) if c.spatial_prior else self.obs.miss_ratio
        all_idx = np.union1d(self.idx, hs)
        w = np.full(len(all_idx), self.floor)
        w[np.searchsorted(all_idx, self.idx)] = self.w
        ratio = np.full(len(all_idx), miss)
        ratio[np.searchsorted(all_idx, hs)] = lr
        w = w * ratio
        rest = self.S - len(all_idx)
        floor = self.floor * miss
        total = w.sum() + floor * rest + self.lost
        w, floor, self.lost = w / total, floor / total, self.lost / total
        # prune to the strongest states; the pruned mass joins the floor
        keep = np.flatnonzero(w > floor)
        if len(keep) > c.max_states:
            keep = keep[np.argpartition(-w[keep], c.max_states - 1)[: c.max_states]]
        dropped = w.sum() - w[keep].sum()
        self.idx, self.w = all_idx[keep], w[keep]
        rest = self.S - len(self.idx)
        self.floor = floor + (dropped - floor * (len(all_idx) - len(keep))) / max(rest, 1) if rest else 0.0
        self.floor = max(self.floor, 0.0)
        fix = self._carried_fix(at_stamp)
        if fix is None:
            fix = self._fix()
            if not fix.published and self.aligner is not None and not late and not c.require_anchor:
                fix = self._aligned_fix() or fix
        post = dict(zip(self.idx.tolist(), self.w.tolist()))
        fix.hit_posteriors = [float(post.get(int(p) * self.K + int(v), self.floor)) if p >= 0 else 0.0
                              for p, v in zip(places, views)]
        return fix

    def _support(self, hit_states: np.ndarray, lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The states each hit speaks for: every place within ``support_radius_m`` of the hit's
        place, at its view facing the hit's heading (within 90 degrees); a state takes the best
        ratio of the hits that speak for it. (Places lie about a metre apart: the vehicle is as
        likely at the hit's neighbour as at the hit, and "right" means within 10 m.)"""
        if len(hit_states) == 0:
            return hit_states, lr
        places = hit_states // self.K
        row, nb = self._within(places, self.cfg.support_radius_m)
        h = self.state_heading[hit_states]
        v, cos_best = self._best_views(nb, np.cos(h)[row], np.sin(h)[row])
        ok = cos_best > 0.0  # within 90 degrees of the hit's heading
        states = (nb * self.K + v)[ok]
        ratio = lr[row][ok]
        order = np.argsort(-ratio, kind="stable")
        states, first = np.unique(states[order], return_index=True)  # the best ratio per state
        return states, ratio[order][first]

    def _verified(self, stamp: float, pose: np.ndarray) -> None:
        """A verified pose: carried from here on; with the previous one (at most 1 s older) it gives the velocity."""
        lv = self.last_verified
        self.velocity = None
        if lv is not None and 0.0 < stamp - lv[0] <= 1.0:
            dt = stamp - lv[0]
            dh = math.atan2(math.sin(pose[2] - lv[1][2]), math.cos(pose[2] - lv[1][2]))
            self.velocity = np.array([(pose[0] - lv[1][0]) / dt, (pose[1] - lv[1][1]) / dt, dh / dt])
        self.last_verified = (stamp, pose.copy())
        self.carried = np.array([*pose, 0.0])
        self.carried_sigma = 0.0

    def _carry(self, odom: np.ndarray | None, dt: float) -> None:
        """Moves the carried pose by this frame's odometry (forward, left, yaw in the vehicle's
        frame); without odometry at the last verified velocity for up to ``constant_velocity_s``,
        else it is dropped."""
        c = self.cfg
        if self.carried is None:
            return
        x, z, h, m = self.carried
        if odom is not None and c.dead_reckoning_m:
            fwd, left, dyaw = odom
            co, si = math.cos(h), math.sin(h)
            step = math.hypot(fwd, left)
            self.carried = np.array([x + fwd * co - left * si, z + fwd * si + left * co, h + dyaw, m + step])
            self.carried_sigma += c.dead_reckoning_sigma_per_m * step
        elif (odom is None and c.constant_velocity_s and self.velocity is not None and self.last_stamp is not None
              and self.last_stamp - self.last_verified[0] <= c.constant_velocity_s):
            vx, vz, w = self.velocity
            self.carried = np.array([x + vx * dt, z + vz * dt, h + w * dt, m + math.hypot(vx, vz) * dt])
            self.carried_sigma += c.constant_velocity_sigma_mps * dt
        else:
            self.carried = None
            return
        if self.carried[3] > c.dead_reckoning_m:
            self.carried = None

    def _carried_fix(self, pose: np.ndarray | None = None) -> Fix | None:
        """The fix of a verified pose (this frame's, or one carried by odometry), else None.
        ``pose``: (x, z, heading, metres carried) instead of the carried one (a late frame's own)."""
        c = self.cfg
        pose = self.carried if pose is None else pose
        if pose is None or not c.dead_reckoning_m:
            return None
        x, z, h, m = pose
        d = np.hypot(self.xy[:, 0] - x, self.xy[:, 1] - z)
        cos_v = self._cos_sin @ np.array([math.cos(h), math.sin(h)])  # (N, K) the views' heading against the pose's
        view = cos_v.argmax(1)
        ok = d <= c.on_map_m  # a place that near is the vehicle's whichever way it faces (a crossing)
        source = "verified" if m == 0 else "carried"
        if not ok.any():
            return Fix("lost", p_lost=1.0, heading_deg=float(np.degrees(h)), source=source)
        place = int(np.flatnonzero(ok)[np.argmin(d[ok])])
        sigma = c.dead_reckoning_sigma_m + (self.carried_sigma if pose is self.carried else 0.0)
        return Fix("tracking", place, int(view[place]), 1.0, 0.0, np.array([x, z]), np.eye(2) * sigma ** 2,
                   float(np.degrees(h)), source=source)

    def _aligned_fix(self) -> Fix | None:
        """The aligned pose's fix (alignment.py): its nearest place within ``on_map_m`` at the view
        facing its heading, or "lost" when it lies off the map; None while no alignment is held."""
        pose = self.aligner.pose()
        if pose is None:
            return None
        x, z, h = pose
        d = np.hypot(self._x - x, self._y - z)
        place = int(np.argmin(d))
        if d[place] > self.cfg.on_map_m:
            return Fix("lost", p_lost=1.0, xy=np.array([x, z]), heading_deg=float(np.degrees(h)), source="aligned")
        view = int((self._cos_sin[place] @ np.array([math.cos(h), math.sin(h)])).argmax())
        sigma = self.aligner.sigma_m()
        # a fix is right when its place lies within 10 m of the vehicle: published when the place lies
        # that near even if the aligned pose is one sigma off (at the map's edge: not yet)
        state = "tracking" if d[place] + sigma <= self.aligner.cfg.publish_m else "relocalising"
        if state == "relocalising" and self.aligner.cfg.hit_fix:
            # too uncertain alone: this frame's own hit within sigma of the aligned pose, facing its way,
            # is published at its place (AlignConfig.hit_fix), its sigma the agreeing hits' spread
            hit = self.aligner.agreeing_hit(min(sigma, self.aligner.cfg.hit_fix_m))
            if hit is not None:
                dh = np.hypot(self._x - hit[0], self._y - hit[1])
                p = int(np.argmin(dh))
                if dh[p] <= self.cfg.on_map_m:
                    s = self.aligner.residual + 1.0
                    view = int((self._cos_sin[p] @ np.array([math.cos(h), math.sin(h)])).argmax())
                    return Fix("tracking", p, view, 1.0, 0.0, hit, np.eye(2) * s ** 2, float(np.degrees(h)), source="aligned")
        return Fix(state, place, view, 1.0, 0.0, np.array([x, z]), np.eye(2) * sigma ** 2, float(np.degrees(h)), source="aligned")

    def threshold(self) -> float | None:
        """The confidence from which the belief's fix is published in the current mode (its
        observation model), or None: this mode's belief is not published (only verified and
        carried poses are)."""
        if self.cfg.min_confidence is not None:
            return float(self.cfg.min_confidence)
        if not self.obs.belief_publishes:
            return None
        return DEFAULT_MIN_CONFIDENCE if self.obs.min_confidence is None else float(self.obs.min_confidence)

    def _fix(self) -> Fix:
        c = self.cfg
        if len(self.idx) == 0:
            return Fix("lost", p_lost=float(self.lost))
        best = int(self.idx[np.argmax(self.w)])
        d = np.linalg.norm(self.state_xy[self.idx] - self.state_xy[best], axis=1)
        cs = self._cos_sin.reshape(-1, 2)
        near = (d <= c.cluster_radius_m) & (cs[self.idx] @ cs[best] > 0.0)  # within 10 m, heading within 90 degrees
        wn = self.w[near]
        conf = float(wn.sum())
        mean = (self.state_xy[self.idx[near]] * wn[:, None]).sum(0) / max(conf, 1e-12)
        diff = self.state_xy[self.idx[near]] - mean
        cov = (diff * wn[:, None]).T @ diff / max(conf, 1e-12) + np.eye(2) * c.base_sigma_m ** 2
        anchored = True
        if c.require_anchor:
            a = self.anchor
            age = None if a is None or self.last_stamp is None else self.last_stamp - a[0]
            anchored = age is not None and age <= c.anchor_s and \
                float(np.linalg.norm(a[1] - self.state_xy[best])) <= c.cluster_radius_m + c.max_speed_mps * max(age, 0.0)
        threshold = self.threshold()
        if self.lost >= 0.5:
            state = "lost"
        elif threshold is not None and conf >= threshold and anchored:
            state = "tracking"
        else:
            state = "relocalising"
        return Fix(state, best // self.K, best % self.K, conf, float(self.lost), mean, cov, float(np.degrees(self.state_heading[best])))


def odometry_delta(T_prev: np.ndarray, T_cur: np.ndarray) -> np.ndarray:
    """(forward m, left m, yaw rad) of camera-frame poses (KITTI camera 0: z forward, x right,
    y down) from ``T_prev`` to ``T_cur``, as the tracker's ``odom`` takes it."""
    rel = np.linalg.inv(T_prev) @ T_cur
    fwd, left = rel[2, 3], -rel[0, 3]
    # heading as protocols.headings_deg measures it (angle of the forward axis from x towards z)
    dh = math.atan2(rel[2, 2], rel[0, 2]) - math.pi / 2
    return np.array([fwd, left, math.atan2(math.sin(dh), math.cos(dh))])
