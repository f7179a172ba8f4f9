from attnlink_ros.ros.sync import ApproximateSync


def test_pairs_within_slop_in_either_order():
    s = ApproximateSync(slop=0.05, timeout=1.0)
    s.last_seen = {"image": 0.0, "points": 0.0}  # both streams alive
    assert s.add("image", 1.00, "i1", now=1.0) is None
    f = s.add("points", 1.03, "p1", now=1.03)
    assert f == {"image": (1.00, "i1"), "points": (1.03, "p1")}
    assert s.add("points", 1.10, "p2", now=1.1) is None
    f = s.add("image", 1.12, "i2", now=1.12)
    assert f["points"] == (1.10, "p2") and s.stats.pairs == 2


def test_newest_only_drops_and_counts():
    s = ApproximateSync(slop=0.02, timeout=5.0)
    s.last_seen = {"image": 0.0, "points": 0.0}
    s.add("image", 1.0, "i1", now=1.0)
    s.add("image", 1.1, "i2", now=1.1)  # i1 superseded
    s.add("image", 1.2, "i3", now=1.2)  # i2 superseded
    f = s.add("points", 1.21, "p", now=1.21)
    assert f["image"] == (1.2, "i3") and s.stats.dropped["image"] == 2
    s.add("points", 2.0, "p_old", now=2.0)
    s.add("image", 2.5, "i_new", now=2.5)  # p_old can never match any more: stale
    assert s.stats.dropped["points"] == 1 and s.pending["points"] is None


def test_silent_stream_lets_the_other_pass():
    s = ApproximateSync(slop=0.05, timeout=0.5)
    assert s.add("points", 1.0, "p1", now=1.0) is None  # start-up: the camera gets `timeout` to appear
    f = s.add("points", 1.6, "p2", now=1.6)  # camera still never seen after the timeout: points alone
    assert f == {"points": (1.6, "p2"), "image": None} and s.stats.singles == 1 and s.stats.dropped["points"] == 1
    s.add("image", 2.0, "i1", now=2.0)  # camera appears: pairs resume
    f = s.add("points", 2.02, "p3", now=2.02)
    assert f["image"] == (2.0, "i1")


def test_single_stream_node_passes_every_message():
    s = ApproximateSync(slop=0.05, timeout=0.5, streams=("points",))
    assert s.add("points", 1.0, "p1", now=1.0) == {"points": (1.0, "p1"), "image": None}
    assert s.add("points", 1.1, "p2", now=1.1) == {"points": (1.1, "p2"), "image": None}
    assert s.stats.singles == 2 and s.stats.dropped["points"] == 0
