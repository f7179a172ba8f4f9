"""Loop closures: the online map, GICP verification and consistency (real small_gicp on synthetic
scans), and the node in online mode with a LIO-SAM-like subscriber."""

import time

import numpy as np
import pytest

from attnlink_ros.data.kitti import KittiSequence
from attnlink_ros.data.synth import SynthConfig, write_synthetic_sequence
from attnlink_ros.errors import DataError
from attnlink_ros.retrieval.loops import RELOCALIZE_YAWS_DEG, LoopConfig, LoopDetector, OnlineMap, ScanStore, downsample, verify

# town 301: the drive passes its start again ~41 s later (frame 436 is 3.5 m from frame 23)
MAP_FRAMES = list(range(0, 205, 5))
QUERY_FRAMES = [436, 456, 476, 496, 516, 536, 556]


@pytest.fixture(scope="module")
def loop_drive(tmp_path_factory):
    root = tmp_path_factory.mktemp("loops")
    write_synthetic_sequence(root, SynthConfig(frames=560, seed=301), workers=2, progress=False, only=MAP_FRAMES + QUERY_FRAMES)
    return KittiSequence(root, "00")


def gt_rel(seq, place, query):
    Tr = seq.calib.T_cam_lidar
    return np.linalg.inv(Tr) @ np.linalg.inv(seq.poses[place]) @ seq.poses[query] @ Tr


def test_downsample_is_the_voxel_centroids():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-20, 20, (5000, 4)).astype(np.float32)
    pts[7] = np.nan  # a non-finite point is skipped
    got = downsample(pts, 2.0)
    p = pts[np.isfinite(pts).all(1), :3].astype(np.float64)
    keys, inv = np.unique(np.floor(p / 2.0).astype(np.int64), axis=0, return_inverse=True)
    want = np.zeros((len(keys), 3))
    np.add.at(want, inv.reshape(-1), p)
    want /= np.bincount(inv.reshape(-1))[:, None]
    got_by_key = {tuple(k): g for k, g in zip(np.floor(got / 2.0).astype(np.int64), got)}
    assert got.dtype == np.float32 and len(got) == len(keys) == len(got_by_key)
    assert max(np.abs(got_by_key[tuple(k)] - w).max() for k, w in zip(keys, want)) < 1e-4
    assert downsample(np.zeros((0, 3), np.float32), 0.5).shape == (0, 3)


def test_verify_accepts_the_revisit_and_rejects_another_place(loop_drive):
    seq = loop_drive
    q, p, wrong = 436, 25, 150
    assert np.linalg.norm(seq.xy[q] - seq.xy[p]) < 10 and np.linalg.norm(seq.xy[q] - seq.xy[wrong]) > 50
    qs, ps, ws = (downsample(seq.read_scan(i), 0.5) for i in (q, p, wrong))
    v = verify(qs, ps)
    assert v.ok and v.inlier_ratio >= 0.7
    assert np.linalg.norm(v.T[:3, 3] - gt_rel(seq, p, q)[:3, 3]) < 0.2
    assert np.all(np.isfinite(v.covariance)) and np.all(np.diag(v.covariance) > 0)
    assert not verify(qs, ws).ok
    assert not verify(qs[:10], ps).ok  # too few points: refused, not guessed


def test_online_map_exclusion_and_keyframes():
    m = OnlineMap(4, LoopConfig(exclusion_s=30.0, keyframe_interval_s=1.0))
    rng = np.random.default_rng(0)
    d = rng.normal(size=(80, 4)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    added = [m.maybe_add(0.5 * i, d[i], None, frame=i) for i in range(80)]
    assert sum(added) == 40 and m.frames[:3] == [0, 2, 4]
    assert m.search(d[0], 29.0, 3) == []  # nothing is 30 s older yet
    hits = m.search(d[0], 39.0, 3)
    assert hits[0][0] == 0 and all(m.stamps[i] <= 9.0 for i, *_ in hits)  # only keyframes <= t - 30 s


def test_online_map_answers_keyframes_at_their_best_view():
    """K = 4 views a keyframe: a query like keyframe 3's rear view finds keyframe 3 with yaw 180."""
    rng = np.random.default_rng(1)
    d = rng.normal(size=(10, 4, 16)).astype(np.float32)
    d /= np.linalg.norm(d, axis=2, keepdims=True)
    m = OnlineMap(16, LoopConfig(exclusion_s=0.0, keyframe_interval_s=1.0), views=4)
    for i in range(10):
        assert m.maybe_add(float(i), d[i], None, frame=i)
    hits = m.search(d[3, 2], 100.0, 3)
    assert hits[0][0] == 3 and hits[0][1] == pytest.approx(1.0) and m.view_yaws[hits[0][2]] == 180.0
    assert list(m.view_offsets[:, 1]) == [0.0, 0.0, 3.5, 0.0]  # the rear view from the reverse lane's side
    assert len({h[0] for h in hits}) == 3
    with pytest.raises(ValueError, match="2 view descriptors"):
        m.maybe_add(20.0, d[0, :2], None)


def test_verify_registers_a_reverse_revisit_from_the_view_yaw(loop_drive):
    """The same place passed the other way round (the live scan turned 180 degrees, 1.5 m across):
    from the rear view's yaw GICP finds the true pose; from the forward starts it does not."""
    from attnlink_ros.retrieval.views import rotate_scan

    ps = downsample(loop_drive.read_scan(25), 0.5)
    qs = rotate_scan(ps, 180.0) + np.array([1.5, 0.3, 0.0], np.float32)
    truth = np.linalg.inv(np.array([[-1, 0, 0, 1.5], [0, -1, 0, 0.3], [0, 0, 1, 0], [0, 0, 0, 1]]))  # query LiDAR in the place frame
    cfg = LoopConfig(yaw_guesses_deg=RELOCALIZE_YAWS_DEG)
    v = verify(qs, ps, cfg, yaw_deg=180.0)
    assert v.ok and np.linalg.norm(v.T[:3, 3] - truth[:3, 3]) < 0.05 and abs(v.T[0, 0] + 1) < 1e-3
    assert not verify(qs, ps, cfg).ok


def test_scan_store_round_trip_and_corruption(tmp_path):
    s = ScanStore([np.ones((5, 3), np.float32), np.zeros((0, 3), np.float32), np.arange(9, dtype=np.float32).reshape(3, 3)])
    s.save(tmp_path / "scans.npz")
    t = ScanStore.load(tmp_path / "scans.npz")
    assert [len(x) for x in t.scans] == [5, 0, 3] and np.array_equal(t[2], s[2])
    np.savez(tmp_path / "bad.npz", points=np.zeros((4, 3), np.float32), offsets=np.array([0, 9]), voxel=0.5)
    with pytest.raises(DataError, match="disagree"):
        ScanStore.load(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="unreadable"):
        ScanStore.load(tmp_path / "junk.npz")


def test_detector_with_real_descriptors(loop_drive):
    """Shipped model's LiDAR descriptors: the revisit frames find verified loops to the start,
    with relative poses near the truth; consistency 2 holds the first detection back."""
    from attnlink_ros.pipeline import Frame, PlaceRecognizer

    seq = loop_drive
    rec = PlaceRecognizer(None, None, backend="onnxruntime")
    desc = {i: rec.encode(Frame(float(seq.times[i]), seq.calib, points=seq.read_scan(i)), "lidar").descriptor for i in MAP_FRAMES + QUERY_FRAMES}
    for consistency in (1, 2):
        det = LoopDetector(256, LoopConfig(keyframe_interval_s=0.5, consistency=consistency))
        for i in MAP_FRAMES:
            assert not det.step(float(seq.times[i]), desc[i], seq.read_scan(i), frame=i).published  # < 30 s: never a loop
        loops = [(q, det.step(float(seq.times[q]), desc[q], seq.read_scan(q), frame=q)) for q in QUERY_FRAMES]
        published = [(q, lp) for q, lp in loops if lp.published]
        assert len(published) >= (5 if consistency == 1 else 4)
        for q, lp in published:
            place = det.map.frames[lp.index]
            assert lp.verified and np.linalg.norm(seq.xy[place] - seq.xy[q]) <= 10.0
            assert np.linalg.norm(lp.T[:3, 3] - gt_rel(seq, place, q)[:3, 3]) < 0.3
        if consistency == 2:
            first = next(lp for q, lp in loops if lp.index >= 0)
            assert not first.published and "consistency" in first.reason


def test_node_online_mode_feeds_lio_sam(loop_drive):
    """The node in online mode over real rclpy; a subscriber listening like LIO-SAM receives
    [t_query, t_match] pairs for the revisit frames, each a true loop (<= 10 m), >= 30 s apart."""
    import rclpy
    from rclpy.parameter import Parameter
    from attnlink_msgs.msg import LoopClosure, PlaceMatches
    from std_msgs.msg import Float64MultiArray

    from attnlink_ros.data.bags import kitti_records
    from attnlink_ros.ros.conversions import stamp_to_sec
    from attnlink_ros.ros.messages import LOOP_TOPIC, parse_matches
    from attnlink_ros.ros.node import AttnLinkNode

    from .conftest import replay_through_node

    seq = loop_drive
    rclpy.init()
    try:
        node = AttnLinkNode(parameter_overrides=[
            Parameter("map_mode", value="online"), Parameter("backend", value="onnxruntime"), Parameter("mode", value="fused"),
            Parameter("calib_file", value=str(seq.dir / "calib.txt")), Parameter("keyframe_interval", value=0.5),
            Parameter("reliability", value="reliable")])  # every frame whole: the test counts keyframes
        assert node.detector is not None
        lio = rclpy.create_node("lio_sam_like")
        pairs, matches, typed = [], [], []
        lio.create_subscription(Float64MultiArray, "/" + LOOP_TOPIC, pairs.append, 20)
        lio.create_subscription(LoopClosure, "/attnlink/loop", typed.append, 20)
        lio.create_subscription(PlaceMatches, "/attnlink/match", matches.append, 100)
        def settle():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (node.outputs.match.get_subscription_count() < 2 or node.outputs.loop.get_subscription_count() < 1):
                time.sleep(0.05)  # the listener and the replayer both matched ~/match
            time.sleep(1.0)  # and the node's readers matched the replayer's writers (discovery is not symmetric)

        stats, counters = replay_through_node(node, lio, kitti_records(seq.dataset.parent, "00", MAP_FRAMES + QUERY_FRAMES),
                                              lockstep_timeout=20.0, settle=settle)
    finally:
        rclpy.shutdown()
    got_t = sorted(round(stamp_to_sec(m.header.stamp), 3) for m in matches)
    assert all(m.map_mode == "online" and len(m.hits) <= 1 for m in matches)
    n = len(MAP_FRAMES) + len(QUERY_FRAMES)
    assert stats.lockstep_timeouts == 0 and len(matches) == n, (got_t, counters)
    # every frame answered and every scan a keyframe: under reliable lockstep nothing may be lost
    # (session 3's flake: the synchroniser judged the LiDAR silent by arrival time while the node
    # was busy, let images pass alone and their clouds were dropped; it now judges by message time)
    assert counters["points_in"] == n and counters["keyframes"] == n and "fallback_image" not in counters, counters
    assert len(pairs) >= 4, f"{len(pairs)} loops; counters {counters}"
    t2f = {round(float(seq.times[i]), 6): i for i in MAP_FRAMES + QUERY_FRAMES}
    for m in pairs:
        tq, tm = m.data
        assert tq - tm >= 30.0
        q, p = t2f[round(tq, 6)], t2f[round(tm, 6)]
        assert q in QUERY_FRAMES and np.linalg.norm(seq.xy[q] - seq.xy[p]) <= 10.0
    verified = [h for m in matches for h in parse_matches(m) if h["verified"]]
    assert len(verified) >= len(pairs) and all(np.isfinite(h["rel_x"]) for h in verified)
    assert all(h["place_pose"] is None and 0.0 < h["inlier_ratio"] <= 1.0 for h in verified)  # keyframes: no map pose
    # the typed loops: the same pairs, each verified with its relative pose and a covariance
    assert [(round(stamp_to_sec(m.header.stamp), 6), round(stamp_to_sec(m.match_stamp), 6)) for m in typed] == \
        [(round(m.data[0], 6), round(m.data[1], 6)) for m in pairs]
    for m in typed:
        q, p = t2f[round(stamp_to_sec(m.header.stamp), 6)], t2f[round(stamp_to_sec(m.match_stamp), 6)]
        pos = m.relative_pose.pose.position
        assert m.verified and m.inlier_ratio >= 0.7 and np.linalg.norm([pos.x, pos.y, pos.z] - gt_rel(seq, p, q)[:3, 3]) < 0.3
        C = np.asarray(m.relative_pose.covariance).reshape(6, 6)
        assert np.allclose(C, C.T) and (np.diag(C) > 0).all()


def test_eval_loop_closure_cli(loop_drive, tmp_path):
    """`attnlink eval --loop-closure` over the drive: the JSON keys of the issue, both variants,
    the PR curve, the PNG; verified loops are all true here and their poses near the truth."""
    import json

    from attnlink_ros.cli import main

    root = loop_drive.dataset.parent
    assert main(["eval", "--loop-closure", "--data", str(root), "--sequences", "00", "--plots", str(tmp_path),
                 "--json", str(tmp_path / "l.json"), "--quiet"]) == 0
    r = json.loads((tmp_path / "l.json").read_text())
    for k in ("precision", "recall", "loops_published", "pose_error_median_m", "by_heading"):
        assert k in r and k in r["00"]
    v, u = r["00"]["verified"], r["00"]["unverified"]
    assert r["00"]["views"] == 2 and v["by_heading"]["same"]["revisit_queries"] == len(QUERY_FRAMES)
    assert set(v["by_heading"]) == {"same", "reverse", "other"} and v["false_loops"] == []
    assert v["registrations_per_query"] > 0 and v["ms_per_query"] > 0 and v["true_loop_registration"]["error_per_inlier_max"] <= 1.5
    # without verification a false loop gets through, and it is listed with its figures
    assert u["precision"] < 1.0 and {"query_frame", "match_frame", "distance_m", "score", "inlier_ratio"} <= set(u["false_loops"][0])
    assert v["revisit_queries"] == len(QUERY_FRAMES) and v["loops_published"] >= 5
    assert v["precision"] == 1.0 and v["recall"] >= 0.7 and v["pose_error_median_m"] < 0.2
    assert u["pose_error_median_m"] is None and len(v["curve"]) == 41
    assert (tmp_path / f"loops_{root.name}_00_lidar_K2.png").stat().st_size > 10_000
    assert main(["eval", "--loop-closure", "--data", str(root), "--mode", "image", "--mode", "lidar", "--quiet"]) == 1


def test_no_unverified_loop_without_a_scan():
    det = LoopDetector(2, LoopConfig(exclusion_s=1.0, keyframe_interval_s=0.0))
    det.step(0.0, np.array([1.0, 0.0]), np.random.default_rng(0).normal(size=(500, 3)) * 10)
    loop = det.step(5.0, np.array([1.0, 0.0]), None)  # an image-only frame: a candidate, nothing to verify it with
    assert loop.index == 0 and not loop.published and "no live scan" in loop.reason
    assert LoopDetector(2, LoopConfig(exclusion_s=1.0, verify=False), det.map).step(6.0, np.array([1.0, 0.0]), None, add=False).published


@pytest.fixture(scope="module")
def scans_map(loop_drive, tmp_path_factory):
    """`attnlink build-map --scans` of the first pass (shipped model)."""
    from attnlink_ros.cli import main

    out = tmp_path_factory.mktemp("smap") / "map"
    root = loop_drive.dataset.parent
    assert main(["build-map", "--data", str(root), "--sequence", "00", "--frames", "0", "300", "--out", str(out), "--scans",
                 "--backend", "onnxruntime", "--quiet"]) == 0
    return out


def test_map_with_scans_round_trip_and_refusals(scans_map, tmp_path, capsys):
    import json
    import shutil

    from attnlink_ros.cli import main
    from attnlink_ros.retrieval.place_map import PlaceMap

    pm = PlaceMap.load(scans_map)
    assert pm.manifest["scan_voxel_m"] == 0.5 and len(pm.scans) == len(pm) == len(MAP_FRAMES)
    assert all(1000 < len(s) for s in pm.scans.scans)
    bad = tmp_path / "bad"
    shutil.copytree(scans_map, bad)
    raw = (bad / "scans.npz").read_bytes()
    (bad / "scans.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="scans.npz: stored scans does not match its sha256"):
        PlaceMap.load(bad)
    (bad / "scans.npz").unlink()
    with pytest.raises(DataError, match="stored scans not found"):
        PlaceMap.load(bad)
    # a miscounted scan file (its checksum made to match) is still refused, after the checksum
    from attnlink_ros.retrieval.place_map import sha256_file

    ScanStore(pm.scans.scans[:-1]).save(bad / "scans.npz")
    man = json.loads((bad / "manifest.json").read_text())
    man["files"]["scans.npz"] = sha256_file(bad / "scans.npz")
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match=f"{len(MAP_FRAMES) - 1} stored scans for {len(MAP_FRAMES)} places"):
        PlaceMap.load(bad)
    # a map without scans still loads (relocalisation then publishes place poses, unverified)
    del man["scan_voxel_m"]
    (bad / "manifest.json").write_text(json.dumps(man))
    assert PlaceMap.load(bad).scans is None
    capsys.readouterr()
    assert main(["build-map", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--scans", "--scan-voxel", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scan-voxel" in err[0]


def test_verified_relocalization_gives_the_vehicles_pose(loop_drive, scans_map):
    """Revisit queries against the first pass: the first verified hit is a true place (<= 10 m)
    and the vehicle's pose from it lies within 0.3 m of the truth, metres closer than the place."""
    from attnlink_ros.pipeline import Frame, PlaceRecognizer

    seq = loop_drive
    rec = PlaceRecognizer(None, scans_map, backend="onnxruntime")
    cfg = LoopConfig(min_score=-1.0)
    errors, place_errors = [], []
    for q in QUERY_FRAMES:
        frame = Frame(float(seq.times[q]), seq.calib, points=seq.read_scan(q))
        res = rec.query(frame, 5, "lidar", verify=cfg)
        plain = rec.query(frame, 5, "lidar")
        assert sorted(h["index"] for h in res.hits) == sorted(h["index"] for h in plain.hits)  # same hits, reordered
        assert 1 <= res.registrations <= cfg.candidates and "verify" in res.timings_ms
        top = res.hits[0]
        if not top["verified"]:
            continue
        assert np.linalg.norm(seq.xy[q] - seq.xy[top["frame"]]) <= 10.0
        truth = seq.poses[q]
        errors.append(np.linalg.norm(top["vehicle_pose"][:3, 3] - truth[:3, 3]))
        place_errors.append(np.linalg.norm(np.asarray(top["pose"])[:3, 3] - truth[:3, 3]))
        R_err = top["vehicle_pose"][:3, :3].T @ truth[:3, :3]
        assert np.degrees(np.arccos(np.clip((np.trace(R_err) - 1) / 2, -1, 1))) < 1.0
        C = top["vehicle_covariance"]
        assert C.shape == (6, 6) and np.allclose(C, C.T) and np.all(np.diag(C)[:3] >= 0.01 - 1e-12)
    assert len(errors) >= len(QUERY_FRAMES) - 1, (errors, place_errors)
    assert max(errors) < 0.3 and np.median(place_errors) > 1.0, (errors, place_errors)
    # an image-only query has no scan: nothing verified, the place's pose as before
    img = rec.query(Frame(float(seq.times[436]), seq.calib, image=seq.read_image(436)), 5, "image", verify=cfg)
    assert img.registrations == 0 and "vehicle_pose" not in img.hits[0]


def _relocalize_node(seq, scans_map):
    """The node relocalising (fused) against the map with scans, and a listener collecting
    ~/place, ~/match and the loop topic (rclpy initialised by the caller)."""
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.parameter import Parameter
    from attnlink_msgs.msg import PlaceMatches
    from std_msgs.msg import Float64MultiArray

    from attnlink_ros.ros.messages import LOOP_TOPIC
    from attnlink_ros.ros.node import AttnLinkNode

    node = AttnLinkNode(parameter_overrides=[
        Parameter("map", value=str(scans_map)), Parameter("backend", value="onnxruntime"), Parameter("mode", value="fused"),
        Parameter("calib_file", value=str(seq.dir / "calib.txt")), Parameter("reliability", value="reliable")])
    io = rclpy.create_node("listener")
    got = ([], [], [])
    for msg_type, topic, store in ((PoseWithCovarianceStamped, "/attnlink/place", got[0]),
                                   (PlaceMatches, "/attnlink/match", got[1]), (Float64MultiArray, "/" + LOOP_TOPIC, got[2])):
        io.create_subscription(msg_type, topic, store.append, 50)
    return node, io, got


def _check_tracked_fix(place, err: float, top: dict) -> None:
    """An unverified frame's fix on ~/place: the filter's belief (within 10 m, its spread + 3 m
    sigma) or a verified pose carried forward (no odometry here: at the last verified velocity),
    whose error lies within three of its sigmas."""
    assert top["tracking_state"] == "tracking", top["tracking_state"]
    cov = np.asarray(place.pose.covariance)
    if cov[0] >= 9.0:
        assert err <= 10.0, err
    else:
        assert err <= max(3.0 * np.sqrt(max(cov[0], cov[14])), 0.5), (err, cov[0], cov[14])


def test_relocalize_node_publishes_the_verified_pose(loop_drive, scans_map):
    """The node in relocalize mode on a map with scans: ~/place is the vehicle's registered pose,
    ~/match marks the hit verified with its relative pose, loops go out verified only."""
    import rclpy

    from attnlink_ros.data.bags import kitti_records
    from attnlink_ros.ros.messages import parse_matches

    from .conftest import replay_through_node

    seq = loop_drive
    rclpy.init()
    try:
        node, io, (places, matches, loops) = _relocalize_node(seq, scans_map)
        assert node._verify is not None and node._verify.yaw_guesses_deg == RELOCALIZE_YAWS_DEG  # same-direction starts
        stats, counters = replay_through_node(node, io, kitti_records(seq.dataset.parent, "00", QUERY_FRAMES), lockstep_timeout=20.0)
    finally:
        rclpy.shutdown()
    assert stats.lockstep_timeouts == 0 and len(matches) == len(places) == len(QUERY_FRAMES), counters
    assert counters.get("relocalized_verified", 0) >= len(QUERY_FRAMES) - 1, counters
    t2f = {round(float(seq.times[i]), 6): i for i in QUERY_FRAMES}
    for place, match in zip(places, matches):
        top = parse_matches(match)[0]
        q = t2f[round(top["query_stamp"], 6)]
        p = place.pose.pose.position
        err = np.linalg.norm(np.array([p.x, p.y, p.z]) - seq.poses[q][:3, 3])
        if top["verified"]:
            assert err < 0.3 and np.isfinite(top["rel_x"]) and place.pose.covariance[0] < 1.0, (q, err)
        else:
            _check_tracked_fix(place, err, top)
    assert len(loops) == counters.get("loops_published", 0) <= counters.get("relocalized_verified", 0)


def test_relocalize_node_verifies_in_its_own_process(loop_drive, scans_map):
    """verify_async (default): GICP runs in a process of its own, so frames that arrive while it
    registers are answered at once, unverified (counted verify_busy), and none is lost or
    answered twice; verified answers still carry the vehicle's pose; loops go out verified only;
    the process ends with the node. The frames enter through the node's own sensor callback,
    back to back (faster than a registration), so what is tested does not hang on how many
    messages DDS drops on a loaded machine; the answers go out over real rclpy."""
    import time

    import rclpy
    from std_msgs.msg import Header

    from attnlink_ros.ros.conversions import bgr_to_image, calibration_to_camera_info, sec_to_stamp, stamp_to_sec, xyzi_to_pointcloud2
    from attnlink_ros.ros.messages import parse_matches

    from .conftest import spinning

    seq = loop_drive
    rclpy.init()
    try:
        node, io, (places, matches, loops) = _relocalize_node(seq, scans_map)
        verifier = node._verifier
        assert verifier is not None and verifier.alive
        with spinning(node, io) as done:
            time.sleep(1.0)  # discovery of the listener
            for i in QUERY_FRAMES:
                h = Header(stamp=sec_to_stamp(float(seq.times[i])), frame_id="sensor")
                node.front.on_info(calibration_to_camera_info(seq.calib, h))
                node._on_sensor("image", bgr_to_image(seq.read_image(i), h))
                node._on_sensor("points", xyzi_to_pointcloud2(seq.read_scan(i), h))
                time.sleep(0.02)  # the next frame arrives while GICP still registers the last one
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline and (verifier.busy or len(matches) < len(QUERY_FRAMES)):
                time.sleep(0.05)
            time.sleep(0.3)
        counters = done["counters"]
    finally:
        rclpy.shutdown()
    assert not verifier.alive  # destroy_node closed it
    answered = [parse_matches(m)[0]["query_stamp"] for m in matches]
    assert len(set(answered)) == len(answered) == counters["frames_processed"] == len(QUERY_FRAMES), counters
    assert set(np.round(answered, 6)) == {round(float(seq.times[i]), 6) for i in QUERY_FRAMES}
    assert counters.get("verify_busy", 0) >= 1 and counters.get("relocalized_verified", 0) >= 1, counters
    assert counters["verify_busy"] + counters.get("relocalized_verified", 0) + counters.get("relocalized_unverified", 0) \
        == counters["frames_processed"], counters
    t2f = {round(float(seq.times[i]), 6): i for i in QUERY_FRAMES}
    by_stamp = {round(parse_matches(m)[0]["query_stamp"], 6): parse_matches(m)[0] for m in matches}
    # ~/place: every verified answer (the vehicle's registered pose) and the tracking filter's
    # anchored fixes in between (within 10 m, the belief's covariance); nothing else
    assert len(places) >= counters.get("relocalized_verified", 0) >= 1
    for place in places:
        t = round(stamp_to_sec(place.header.stamp), 6)
        top = by_stamp[t]
        p = place.pose.pose.position
        err = np.linalg.norm(np.array([p.x, p.y, p.z]) - seq.poses[t2f[t]][:3, 3])
        if top["verified"]:
            assert err < 0.3, err
        else:
            _check_tracked_fix(place, err, top)
    assert len(loops) == counters.get("loops_published", 0) <= counters.get("relocalized_verified", 0)


def test_drive_saved_with_save_map_relocalizes_the_second_pass(loop_drive, tmp_path):
    """Online mode with a pose topic (SLAM's odometry of the LiDAR): drive the first pass, call
    ~/save_map (std_srvs/Trigger) over real rclpy, restart in relocalize mode on the saved map:
    the second pass is found (top-1 within 10 m), verified against the saved scans, with the
    vehicle's pose from the saved poses."""
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from nav_msgs.msg import Odometry
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    from attnlink_msgs.msg import PlaceMatches
    from attnlink_ros.data.bags import kitti_records
    from attnlink_ros.retrieval.place_map import PlaceMap
    from attnlink_ros.ros.conversions import sec_to_stamp
    from attnlink_ros.ros.messages import parse_matches, pose_msg
    from attnlink_ros.ros.node import AttnLinkNode

    from .conftest import replay_through_node

    seq = loop_drive
    saved = tmp_path / "drive_map"
    Tr = seq.calib.T_cam_lidar
    common = [Parameter("backend", value="onnxruntime"), Parameter("mode", value="fused"),
              Parameter("calib_file", value=str(seq.dir / "calib.txt")), Parameter("reliability", value="reliable")]
    rclpy.init()
    try:
        node = AttnLinkNode(parameter_overrides=common + [
            Parameter("map_mode", value="online"), Parameter("keyframe_interval", value=0.5),
            Parameter("pose_topic", value="/slam/odometry"), Parameter("saved_map", value=str(saved))])
        io = rclpy.create_node("slam_like")
        odom = io.create_publisher(Odometry, "/slam/odometry", 100)
        client = io.create_client(Trigger, "/attnlink/save_map")
        answers = []

        def save():  # the service call, as `ros2 service call /attnlink/save_map std_srvs/srv/Trigger`
            assert client.wait_for_service(timeout_sec=10.0)
            fut = client.call_async(Trigger.Request())
            deadline = time.monotonic() + 60
            while not fut.done() and time.monotonic() < deadline:
                time.sleep(0.05)
            answers.append(fut.result())

        def settle():
            save()  # before any keyframe: refused, nothing written
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and node.count_publishers("/slam/odometry") < 1:
                time.sleep(0.05)
            time.sleep(1.0)
            for i in MAP_FRAMES:  # SLAM's odometry: the LiDAR's pose in its world frame
                m = Odometry()
                m.header.stamp = sec_to_stamp(float(seq.times[i]))
                m.header.frame_id, m.child_frame_id = "odom", "velodyne"
                m.pose.pose = pose_msg(seq.poses[i] @ Tr)
                odom.publish(m)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(node._poses) < len(MAP_FRAMES):
                time.sleep(0.05)

        replay_through_node(node, io, kitti_records(seq.dataset.parent, "00", MAP_FRAMES), lockstep_timeout=20.0, settle=settle,
                            until=lambda: save() or True)
    finally:
        rclpy.shutdown()
    refused, ok = answers[0], answers[-1]
    assert not refused.success and "no keyframes" in refused.message
    assert ok.success and str(saved) in ok.message and f"saved {len(MAP_FRAMES)} places" in ok.message, ok.message
    pm = PlaceMap.load(saved)
    assert len(pm) == len(MAP_FRAMES) and pm.views == 2 and pm.scans is not None and pm.poses_known.all()
    assert pm.manifest["poses"].startswith("odometry /slam/odometry") and pm.manifest["source"].startswith("online drive")
    np.testing.assert_allclose(pm.table.poses, seq.poses[MAP_FRAMES], atol=1e-6)  # camera-0 poses, as build-map's
    np.testing.assert_allclose(pm.table.stamps, seq.times[MAP_FRAMES])

    rclpy.init()
    try:
        node = AttnLinkNode(parameter_overrides=common + [Parameter("map", value=str(saved)), Parameter("tracking", value=False)])
        assert node._verify is not None  # the saved scans: matches are GICP-verified
        io = rclpy.create_node("listener")
        places, matches = [], []
        io.create_subscription(PoseWithCovarianceStamped, "/attnlink/place", places.append, 50)
        io.create_subscription(PlaceMatches, "/attnlink/match", matches.append, 50)
        stats, counters = replay_through_node(node, io, kitti_records(seq.dataset.parent, "00", QUERY_FRAMES), lockstep_timeout=20.0)
    finally:
        rclpy.shutdown()
    assert stats.lockstep_timeouts == 0 and len(matches) == len(QUERY_FRAMES), counters
    t2f = {round(float(seq.times[i]), 6): i for i in QUERY_FRAMES}
    found = verified = 0
    for place, match in zip(places, matches):
        top = parse_matches(match)[0]
        q = t2f[round(top["query_stamp"], 6)]
        assert top["sequence"] == "drive"
        found += np.linalg.norm(seq.xy[MAP_FRAMES[top["map_index"]]] - seq.xy[q]) <= 10.0
        if top["verified"]:
            verified += 1
            p = place.pose.pose.position
            assert np.linalg.norm(np.array([p.x, p.y, p.z]) - seq.poses[q][:3, 3]) < 0.3
    assert found >= len(QUERY_FRAMES) - 1 and verified >= len(QUERY_FRAMES) - 2, (found, verified, counters)


def test_drive_map_without_poses_says_so(tmp_path):
    """A drive saved without a pose topic: the manifest says poses none, hits carry no pose."""
    from attnlink_ros.retrieval.drive_map import PoseTrack, drive_place_map
    from attnlink_ros.retrieval.loops import LoopConfig, OnlineMap
    from attnlink_ros.retrieval.place_map import PlaceMap

    rng = np.random.default_rng(0)
    om = OnlineMap(8, LoopConfig(keyframe_interval_s=1.0), views=2)
    with pytest.raises(ValueError, match="no keyframes"):
        drive_place_map(om, "f" * 64)
    for t in range(5):
        d = rng.normal(size=(2, 8)).astype(np.float32)
        om.maybe_add(float(t), d / np.linalg.norm(d, axis=1, keepdims=True), rng.uniform(-20, 20, (500, 3)).astype(np.float32))
    pm = drive_place_map(om, "f" * 64)
    pm.save(tmp_path / "m")
    back = PlaceMap.load(tmp_path / "m", model_fingerprint="f" * 64)
    assert back.manifest["poses"] == "none" and back.manifest["poses_known"] == 0 and not back.poses_known.any()
    hit = back.hits(om.desc[3, 1][None], 2)[0][0]
    assert hit["index"] == 3 and hit["view"] == 1 and hit["pose"] is None and hit["stamp"] == 3.0
    # poses looked up at the keyframes' stamps: interpolated between neighbours, NaN beyond the tolerance
    track = PoseTrack()
    for t in [*np.arange(10) / 10, 3.0]:  # 10 Hz for a second, a gap, one more pose
        T = np.eye(4)
        T[0, 3] = 10 * t
        track.add(float(t), T)
    P = track.at([0.15, 2.0, 3.05], tolerance_s=0.1)
    assert P[0, 0, 3] == pytest.approx(1.5) and np.isnan(P[1]).all() and P[2, 0, 3] == pytest.approx(30.0)
    with pytest.raises(ValueError):
        track.add(5.0, np.full((4, 4), np.nan))
    small = PoseTrack(max_poses=20)  # a full track drops its oldest poses, keeps the newest
    for t in range(25):
        small.add(float(t), np.eye(4))
    assert 18 <= len(small) <= 20 and np.isfinite(small.at([24.0])).all() and np.isnan(small.at([0.0])).all()


def test_eval_table_over_several_roots(loop_drive, tmp_path):
    """`attnlink eval --data A B`: the model card's table (a row per root, same-heading / all
    revisit Recall@1 per mode, mean and worst) and its JSON; the same drive twice gives the same
    rows, so mean = worst."""
    import json

    from attnlink_ros.cli import main

    root = loop_drive.dataset.parent
    for name in ("town_a", "town_b"):
        (tmp_path / name).symlink_to(root, target_is_directory=True)
    assert main(["eval", "--data", str(tmp_path / "town_a"), str(tmp_path / "town_b"), "--mode", "image", "--mode", "lidar",
                 "--cache", str(tmp_path / "cache"), "--json", str(tmp_path / "t.json"), "--quiet"]) == 0
    r = json.loads((tmp_path / "t.json").read_text())
    a, b = r["towns"]["town_a"], r["towns"]["town_b"]
    assert a == b and a["same_heading_queries"] == len(QUERY_FRAMES) and r["views"] == 2
    for m in ("image", "lidar"):
        s = r["summary"][m]["same_heading_recall@1"]
        assert s["mean"] == s["worst"] == a[m]["same_heading_recall@1"] and 0.0 <= s["mean"] <= 1.0
    assert a["lidar"]["same_heading_recall@1"] >= 0.8  # the second pass of a drive, LiDAR: found
    assert "| **mean** |" in r["table"] and "| town_a |" in r["table"]
    assert main(["eval", "--quiet"]) == 1  # neither --data nor --test-set: one clear line


def test_test_set_config_is_test_only(tmp_path):
    """The card's test set: purpose 'test: report only', >= 6 towns (three of 900 frames, three of
    1500), none of them a training or validation town of any config."""
    import re

    from attnlink_ros.config import ConfigError
    from attnlink_ros.evaluation.testset import TestSet

    from .conftest import PKG

    test_seeds = set()
    for path in sorted(PKG.glob("config/test_set*.yaml")):  # the card's set and session 13's fresh one
        ts = TestSet.load(path)
        assert len(ts.towns) >= 6 and sorted(t.frames for t in ts.towns)[:3] == [900] * 3 and [t.frames for t in ts.towns].count(1500) >= 3
        assert not (test_seeds & {t.seed for t in ts.towns})  # each set's towns are its own
        test_seeds |= {t.seed for t in ts.towns}
        assert {301, 401} <= {t.seed for t in ts.validation}  # the old card's test towns now make choices
    assert len(test_seeds) >= 12
    used = set()
    for cfg in [*PKG.glob("config/train_*.yaml"), *PKG.glob("config/*/*.yaml")]:
        used |= {int(s) for s in re.findall(r"towns/s(\d+)", cfg.read_text())}
    assert used and not (used & test_seeds), used & test_seeds
    bad = tmp_path / "bad.yaml"
    bad.write_text("purpose: validation\ntowns:\n  - {seed: 1, frames: 900}\n")
    with pytest.raises(ConfigError, match="test: report only"):
        TestSet.load(bad)
    bad.write_text("purpose: 'test: report only'\ntowns:\n  - {seed: 1, frames: 900}\nvalidation:\n  - {seed: 1, frames: 900}\n")
    with pytest.raises(ConfigError, match="both test and validation"):
        TestSet.load(bad)
