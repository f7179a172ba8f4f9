"""A pose graph in GTSAM, optimised incrementally with iSAM2 as factors arrive.

One node per scan (its LiDAR pose), an odometry factor between consecutive scans and one factor
per loop. Conventions (GTSAM's): a between factor (a, b, T) measures T = inv(x_a) x_b, i.e. x_b
in x_a's frame; a noise model's covariance is in Pose3's tangent order (rx, ry, rz, x, y, z), on
the right (T exp(d)). The loop detector's covariances are in ROS order (x, y, z, rx, ry, rz):
:func:`ros_to_gtsam_cov` reorders them. Loops pass through a robust kernel (Huber), so one
wrong loop that slipped past verification pulls less; odometry factors are plain Gaussians.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROS_TO_GTSAM = [3, 4, 5, 0, 1, 2]  # a GTSAM tangent index -> the ROS index holding it


def ros_to_gtsam_cov(cov_ros: np.ndarray) -> np.ndarray:
    c = np.asarray(cov_ros, np.float64)
    return c[np.ix_(ROS_TO_GTSAM, ROS_TO_GTSAM)]


@dataclass(frozen=True)
class GraphConfig:
    # odometry factor sigmas: a floor plus a share of the step's length (KISS-ICP gives no covariance).
    # Chosen with the loop floors below on validation town 601 (session 10, KISS-ICP at 5 points a
    # voxel, front end cached, 12 pairs): APE with loops 0.079 m at (2 cm + 1 %, floors 2 cm /
    # 0.05 deg) -> 0.062 m here; the neighbours 0.060-0.067 m (a flat optimum: what matters is the
    # odometry's weight against the loops'; KISS-ICP's step errors are jitter, ~3.5 cm along the
    # street a step that does not add up over ten steps, so independent per-step sigmas overstate drift)
    odom_sigma_m: float = 0.01
    odom_sigma_per_m: float = 0.005
    odom_sigma_deg: float = 0.05
    odom_sigma_deg_per_m: float = 0.02
    # the LiDAR's forward axis (x) gets this many times the translation sigma: scan matching on a
    # street constrains the along-track motion least (straight facades look alike along it)
    odom_forward_factor: float = 1.0
    loop_kernel: str = "huber"  # "huber", "cauchy" or "none"
    loop_kernel_k: float = 1.0  # on the whitened error
    min_loop_sigma_m: float = 0.1  # floors on a loop's sigmas (a registration's Hessian can claim mm)
    min_loop_sigma_deg: float = 0.2
    relinearize_threshold: float = 0.01
    # the final refinement's prior on the odometry's scale (1 +- this): loops between passes see
    # a scale error that a once-driven block's own closure cannot (validation town 601: KISS-ICP
    # drove 0.28 % short on the synthetic streets, a bias that stays inside such a block otherwise)
    scale_prior_sigma: float = 0.01
    refine_scale: bool = True  # run that refinement at the end of the drive


class PoseGraph:
    def __init__(self, cfg: GraphConfig = GraphConfig()) -> None:
        import gtsam

        self.cfg = cfg
        self._g = gtsam
        p = gtsam.ISAM2Params()
        p.setRelinearizeThreshold(cfg.relinearize_threshold)
        p.relinearizeSkip = 1
        self.isam = gtsam.ISAM2(p)
        self._new = gtsam.NonlinearFactorGraph()
        self._values = gtsam.Values()
        self._last: np.ndarray | None = None  # the newest node's current estimate
        self.n = 0
        self.loops: list[tuple[int, int]] = []
        self._odom: list[tuple[np.ndarray, object]] = []  # (relative pose, noise) of edge i-1 -> i
        self._loop_factors: list = []
        self._prior = None

    def add_scan(self, odom_pose: np.ndarray, prev_odom_pose: np.ndarray | None) -> int:
        """Adds the next node, from the odometry's pose of this scan and of the previous one;
        returns its index."""
        g = self._g
        i = self.n
        if i == 0:
            prior = g.noiseModel.Diagonal.Sigmas(np.full(6, 1e-6))
            self._prior = g.PriorFactorPose3(i, g.Pose3(odom_pose), prior)
            self._new.add(self._prior)
            self._values.insert(i, g.Pose3(odom_pose))
            self._last = np.array(odom_pose, np.float64)
        else:
            rel = np.linalg.inv(prev_odom_pose) @ odom_pose
            d = float(np.linalg.norm(rel[:3, 3]))
            c = self.cfg
            st, sr = c.odom_sigma_m + c.odom_sigma_per_m * d, np.radians(c.odom_sigma_deg + c.odom_sigma_deg_per_m * d)
            noise = g.noiseModel.Diagonal.Sigmas(np.array([sr, sr, sr, st * c.odom_forward_factor, st, st]))
            self._new.add(g.BetweenFactorPose3(i - 1, i, g.Pose3(rel), noise))
            self._odom.append((rel, noise))
            self._last = self._last @ rel
            self._values.insert(i, g.Pose3(self._last))
        self.n += 1
        return i

    def add_loop(self, a: int, b: int, T_a_b: np.ndarray, cov_ros: np.ndarray) -> None:
        """A loop: node ``b``'s pose in node ``a``'s frame with its 6x6 covariance (ROS order)."""
        g = self._g
        cov = ros_to_gtsam_cov(cov_ros)
        # floors on the sigmas: scale the matrix so its diagonal reaches them (keeps correlations);
        # in the loop's own frame (the same loop given backwards, with Ad C Ad', floors differently)
        floor = np.r_[np.full(3, np.radians(self.cfg.min_loop_sigma_deg)), np.full(3, self.cfg.min_loop_sigma_m)] ** 2
        sd = np.sqrt(np.maximum(np.diag(cov), floor) / np.maximum(np.diag(cov), 1e-18))
        cov = cov * np.outer(sd, sd)
        base = g.noiseModel.Gaussian.Covariance(cov)
        k = self.cfg.loop_kernel
        if k != "none":
            est = (g.noiseModel.mEstimator.Cauchy if k == "cauchy" else g.noiseModel.mEstimator.Huber).Create(self.cfg.loop_kernel_k)
            base = g.noiseModel.Robust.Create(est, base)
        f = g.BetweenFactorPose3(a, b, g.Pose3(np.asarray(T_a_b, np.float64)), base)
        self._new.add(f)
        self._loop_factors.append(f)
        self.loops.append((a, b))

    @property
    def last_estimate(self) -> np.ndarray:
        """The newest node's estimate (after the last update, or its odometry-chained guess)."""
        return self._last.copy()

    def update(self, extra_iterations: int = 0) -> None:
        """Hands the new factors to iSAM2 (a loop: a few more iterations settle the graph)."""
        self.isam.update(self._new, self._values)
        for _ in range(extra_iterations):
            self.isam.update()
        self._new = self._g.NonlinearFactorGraph()
        self._values = self._g.Values()
        if self.n:
            self._last = self.isam.calculateEstimatePose3(self.n - 1).matrix()

    def estimates(self, nodes) -> np.ndarray:
        """(len(nodes), 4, 4) current estimate of these nodes."""
        est = self.isam.calculateEstimate()
        return np.array([est.atPose3(int(i)).matrix() for i in nodes]).reshape(-1, 4, 4)

    def poses(self) -> np.ndarray:
        """(n, 4, 4) current estimate of every node."""
        est = self.isam.calculateEstimate()
        return np.array([est.atPose3(i).matrix() for i in range(self.n)])

    def refine_with_odometry_scale(self, max_iterations: int = 30) -> tuple[np.ndarray, float]:
        """A final batch optimisation (Levenberg-Marquardt) of the same graph with one more unknown,
        the odometry's scale s: each odometry factor measures (R, s t) instead of (R, t). Starts
        from the iSAM2 estimate and s = 1 (prior sigma ``scale_prior_sigma``). Returns the poses and s."""
        g = self._g
        S = g.symbol("s", 0)

        def odom_error(rel, k0, k1):
            R, t = rel[:3, :3], rel[:3, 3]

            def err(s: float, a, b) -> np.ndarray:
                m = g.Pose3(g.Rot3(R), s * t)
                return g.Pose3.Logmap(m.between(a.between(b)))

            def f(this, v, H):
                a, b, s = v.atPose3(k0), v.atPose3(k1), float(v.atVector(S)[0])
                e = err(s, a, b)
                if H is not None:
                    r = a.between(b)
                    H[0] = -r.inverse().AdjointMap()  # e(a Exp(da)) ~ e - Ad(inv(r)) da (small residuals)
                    H[1] = np.eye(6)
                    h = 1e-6
                    H[2] = ((err(s + h, a, b) - err(s - h, a, b)) / (2 * h)).reshape(6, 1)
                return e

            return f

        graph = g.NonlinearFactorGraph()
        graph.add(self._prior)
        for i, (rel, noise) in enumerate(self._odom, start=1):
            graph.add(g.CustomFactor(noise, [i - 1, i, S], odom_error(rel, i - 1, i)))
        for f in self._loop_factors:
            graph.add(f)
        graph.add(g.PriorFactorVector(S, np.array([1.0]), g.noiseModel.Isotropic.Sigma(1, self.cfg.scale_prior_sigma)))
        init = self.isam.calculateEstimate()
        init.insert(S, np.array([1.0]))
        params = g.LevenbergMarquardtParams()
        params.setMaxIterations(max_iterations)
        est = g.LevenbergMarquardtOptimizer(graph, init, params).optimize()
        return np.array([est.atPose3(i).matrix() for i in range(self.n)]), float(est.atVector(S)[0])
