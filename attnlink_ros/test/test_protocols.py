import math

import numpy as np
import pytest

from attnlink_ros.evaluation.protocols import (
    cotemporal_queries,
    make_protocol,
    one_percent,
    recall_curve,
    revisit_queries,
    revisit_summary,
)
from attnlink_ros.geometry.poses import ground_xy, load_poses, load_times


def _brute_revisits(xy, t, gap=30.0, radius=10.0):
    out = []
    for i in range(len(xy)):
        for j in range(len(xy)):
            if t[j] <= t[i] - gap and np.hypot(*(xy[i] - xy[j])) <= radius:
                out.append(i)
                break
    return np.array(out)


def test_revisits_match_brute_force():
    rng = np.random.default_rng(0)
    # a random walk on a small square keeps coming back
    xy = np.cumsum(rng.normal(0, 3, (700, 2)), axis=0) % 60
    t = np.arange(700) * 0.1 + rng.uniform(0, 0.02, 700)
    t.sort()
    proto = revisit_queries(xy, t)
    np.testing.assert_array_equal(proto.queries, _brute_revisits(xy, t))
    for q, end in zip(proto.queries, proto.db_end):
        assert t[end - 1] <= t[q] - 30 and (end == len(t) or t[end] > t[q] - 30)


def test_revisits_on_kitti_ground_truth(kitti_root):
    base = kitti_root / "dataset"
    s00 = revisit_summary(ground_xy(load_poses(base / "poses/00.txt")), load_times(base / "sequences/00/times.txt"))
    assert s00["frames"] == 4541 and 3700 < s00["path_length_m"] < 3750
    assert 850 < s00["revisit_queries"] < 1000
    s01 = revisit_summary(ground_xy(load_poses(base / "poses/01.txt")), load_times(base / "sequences/01/times.txt"))
    assert s01["revisit_queries"] == 0  # the highway drive never comes back


def test_height_column_is_not_used(kitti_root):
    """Using column 7 (height) instead of 11 would change the answer: guard the convention."""
    poses = load_poses(kitti_root / "dataset/poses/00.txt")
    times = load_times(kitti_root / "dataset/sequences/00/times.txt")
    right = len(revisit_queries(ground_xy(poses), times).queries)
    wrong = len(revisit_queries(poses[:, [0, 1], 3], times).queries)
    assert right != wrong


def test_recall_curve_by_hand():
    db = np.array([[0, 0], [20, 0], [40, 0], [60, 0]], float)
    q = np.array([[1, 0], [41, 0], [100, 0]], float)
    ranked = np.array([[0, 1, 2], [1, 2, 0], [3, 2, 1]])
    r = recall_curve(q, db, ranked)
    assert r["recall@N"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert r["recall@1"] == pytest.approx(1 / 3)
    assert r["recall@1%"] == pytest.approx(1 / 3)  # 4 places: top ceil(0.04) = 1
    assert r["queries"] == 3


def test_recall_pads_and_one_percent():
    assert one_percent(1) == 1 and one_percent(100) == 1 and one_percent(101) == 2 and one_percent(4541) == 46
    db = np.zeros((250, 2))
    db[:, 0] = np.arange(250) * 20.0
    q = np.array([[40.0, 0.0]])
    ranked = np.array([[0, 1, 2, -1]])  # the correct place (2) at rank 3, then padding
    r = recall_curve(q, db, ranked, db_sizes=np.array([250]))
    assert r["recall@N"] == [0.0, 0.0, 1.0, 1.0]
    assert r["recall@1%"] == 1.0  # ceil(2.5) = 3
    with pytest.raises(ValueError, match="needs top-"):
        recall_curve(q, db, ranked[:, :2], db_sizes=np.array([250]))


def test_cotemporal_and_unknown():
    p = cotemporal_queries(5)
    assert list(p.queries) == [0, 1, 2, 3, 4] and list(p.db_end) == [5] * 5
    with pytest.raises(ValueError, match="unknown protocol"):
        make_protocol("nearby", np.zeros((3, 2)), np.arange(3.0))
    assert math.isnan(recall_curve(np.zeros((0, 2)), np.zeros((3, 2)), np.zeros((0, 1), int))["recall@1"])
