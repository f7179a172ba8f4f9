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


def test_a_busy_consumer_keeps_pairing():
    """Arrival gaps far beyond the timeout (a node busy for seconds per frame, a lockstep replay
    waiting for it) while the stamps run at 10 Hz: still pairs, never a single (the flake of the
    online-node test: images went alone and their clouds were lost)."""
    s = ApproximateSync(slop=0.05, timeout=1.0)
    now = 0.0
    for k in range(20):
        t = 100.0 + 0.1 * k
        first, second = ("image", "points") if k % 2 else ("points", "image")
        assert s.add(first, t, f"{first}{k}", now=now) is None
        now += 2.5  # the consumer was busy
        f = s.add(second, t, f"{second}{k}", now=now)
        assert f == {"image": (t, f"image{k}"), "points": (t, f"points{k}")}
        now += 2.5
    assert s.stats.pairs == 20 and s.stats.singles == 0 and s.stats.dropped == {"image": 0, "points": 0}
    assert s.silent("points", now) and not s.behind("points", 100.0 + 1.9)  # diagnostics go by arrival


def test_a_sensor_dead_in_message_time_lets_the_other_pass_at_any_arrival_rate():
    s = ApproximateSync(slop=0.05, timeout=0.5)
    s.add("image", 10.0, "i0", now=0.0)
    assert s.add("points", 10.0, "p0", now=0.001) is not None
    singles = [s.add("image", 10.0 + 0.1 * k, f"i{k}", now=0.001 + 1e-4 * k) for k in range(1, 12)]
    # the cloud stream stopped at 10.0: images wait until their stamps run 0.5 s past it, then pass alone
    assert [f is not None for f in singles] == [False] * 5 + [True] * 6
    assert all(f["points"] is None for f in singles[5:]) and s.stats.dropped["image"] == 5  # i1-i5 waited in vain


def test_a_gap_in_both_streams_is_not_a_lost_sensor():
    """A replay of every 20th frame (or a paused recording): both streams jump by far more than the
    timeout; the first message after the jump waits for its partner instead of passing alone."""
    s = ApproximateSync(slop=0.05, timeout=1.0)
    for k, t in enumerate([0.0, 0.5, 1.0, 20.0, 43.6, 45.6, 47.6]):
        first, second = ("image", "points") if k % 2 else ("points", "image")
        assert s.add(first, t, first, now=t) is None
        assert s.add(second, t, second, now=t) == {"image": (t, "image"), "points": (t, "points")}
    assert s.stats.pairs == 7 and s.stats.singles == 0
