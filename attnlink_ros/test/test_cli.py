"""The console script, run as a user runs it (a subprocess of the installed `attnlink`)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ATTNLINK = str(Path(sys.executable).parent / "attnlink")
SUBCOMMANDS = ["synth", "project", "revisits", "train", "eval", "export", "build-map", "query", "replay", "to-bag", "demo"]


def run(*args, check=True):
    p = subprocess.run([ATTNLINK, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"attnlink {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help(sub):
    p = run(sub, "--help")
    assert "usage: attnlink " + sub in p.stdout and "--json" in p.stdout


def test_top_level_help_lists_subcommands():
    out = run("--help").stdout
    for sub in SUBCOMMANDS:
        assert sub in out


def test_project_real_frame(kitti_root, tmp_path):
    seq = kitti_root / "dataset/sequences/00"
    out = tmp_path / "d.npy"
    run("project", "--calib", seq / "calib.txt", "--scan", seq / "velodyne/000000.bin", "--image", seq / "image_2/000000.png",
        "--out", out, "--json", tmp_path / "r.json", "--preview", tmp_path / "p.png")
    depth = np.load(out)
    assert depth.shape == (376, 1241) and depth.dtype == np.float32
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["filled_pixels"] == int((depth > 0).sum()) and 18_000 <= r["filled_pixels"] <= 21_500
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_project_bad_scan_is_one_line(kitti_root, tmp_path):
    seq = kitti_root / "dataset/sequences/00"
    bad = tmp_path / "bad.bin"
    bad.write_bytes((seq / "velodyne/000000.bin").read_bytes()[:1000])
    p = run("project", "--calib", seq / "calib.txt", "--scan", bad, "--image", seq / "image_2/000000.png", "--out", tmp_path / "o.npy", check=False)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.bin" in lines[0] and "multiple of 16" in lines[0]
    assert not (tmp_path / "o.npy").exists()


def test_project_missing_calib_key(kitti_root, tmp_path):
    seq = kitti_root / "dataset/sequences/00"
    calib = tmp_path / "calib.txt"
    calib.write_text("".join(l for l in (seq / "calib.txt").read_text().splitlines(True) if not l.startswith("Tr")))
    p = run("project", "--calib", calib, "--scan", seq / "velodyne/000000.bin", "--image", seq / "image_2/000000.png", "--out", tmp_path / "o.npy", check=False)
    assert p.returncode == 1 and "missing calibration key 'Tr'" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_revisits(kitti_root, tmp_path):
    base = kitti_root / "dataset"
    run("revisits", "--poses", base / "poses/00.txt", "--times", base / "sequences/00/times.txt", "--json", tmp_path / "r.json", "--plot", tmp_path / "r.png")
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["frames"] == 4541 and r["revisit_queries"] > 800 and 3700 < r["path_length_m"] < 3750
    assert (tmp_path / "r.png").stat().st_size > 10_000
    p = run("revisits", "--poses", base / "poses/00.txt", "--times", base / "sequences/08/times.txt", check=False)
    assert p.returncode == 1 and "4541 pose rows but 4071 timestamps" in p.stderr


def test_usage_error_exit_code():
    assert run("synth", check=False).returncode == 2  # --out missing
    p = run("synth", "--out", "/tmp/x", "--frames", "0", check=False)
    assert p.returncode == 1 and "--frames must be positive" in p.stderr


def test_synth_and_demo_on_it(tmp_path):
    run("synth", "--out", tmp_path / "t", "--seed", "11", "--frames", "12", "--quiet", "--json", tmp_path / "s.json")
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames"] == 12 and s["seed"] == 11
    assert len(list((tmp_path / "t/dataset/sequences/00/velodyne").glob("*.bin"))) == 12
    p = run("demo", "--data", tmp_path / "t", "--out", tmp_path / "demo", "--mode", "lidar", "--print-every", "1", "--json", tmp_path / "d.json")
    d = json.loads((tmp_path / "d.json").read_text())
    # 6 map places, 6 frames replayed through the node, every one answered (lockstep) and printed live
    assert d["frames"] == 12 and d["map_places"] == 6 and d["frames_replayed"] == 6 and d["answers"] == 6
    assert p.stdout.count("top-1 place") == 6 and "recall@1" in p.stdout
    assert d["node_counters"]["frames_processed"] == 6 and d["latency_ms_end_to_end_p50"] > 0
    assert (tmp_path / "demo/trajectory.png").exists() and (tmp_path / "demo/matches.png").exists()
    # the node's tracking filter beside the single-frame answers, and its fixes on the trajectory
    assert d["single_frame"]["published"] == 6 and 0 <= d["track"]["published"] <= 6
    assert sum(d["track"]["states"].values()) == 6 and "tracking filter" in p.stdout
    assert Path(d["fixes_plot"]).exists()


def test_demo_default_path_small(tmp_path):
    run("demo", "--out", tmp_path / "demo", "--frames", "20", "--workers", "1", "--quiet", "--json", tmp_path / "d.json")
    d = json.loads((tmp_path / "d.json").read_text())
    # the map is the drive's first 3/8 (7 frames), the live queries its second half (10 frames); only those are rendered
    assert d["frames"] == 17 and d["map_places"] == 7 and d["answers"] == d["frames_replayed"] == 10 and d["mode"] == "fused"
    assert d["map_views"] == 2 and len(list((tmp_path / "demo/town/dataset/sequences/00/velodyne").glob("*.bin"))) == 17


@pytest.fixture(scope="module")
def lite_model(tmp_path_factory):
    import torch

    from attnlink_ros.model import AttnLink, variant
    from attnlink_ros.model.io import save_model

    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("m") / "lite"
    save_model(AttnLink(variant("attnlink-lite")).eval(), p)
    return p


def test_export_build_map_query(lite_model, synth_root, tmp_path):
    r = json.loads(run("export", "--model", lite_model.with_suffix(".json"), "--no-tensorrt", "--json", tmp_path / "e.json").stdout and
                   (tmp_path / "e.json").read_text())
    assert set(r["onnx"]) == {"image", "lidar", "fused"} and all(v["max_abs_error_vs_torch"] <= 1e-4 for v in r["onnx"].values())
    run("build-map", "--model", lite_model, "--data", synth_root, "--out", tmp_path / "map", "--backend", "onnxruntime", "--quiet",
        "--json", tmp_path / "b.json")
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["places"] == 24 and b["descriptor_dim"] == 256 and b["index_type"] == "flat"
    assert b["views"] == 2 and b["vectors"] == 48 and b["view_yaws_deg"] == [0.0, 180.0] and b["format_version"] == 2
    run("query", "--map", tmp_path / "map", "--model", lite_model, "--data", synth_root, "--frame", "5", "--k", "4",
        "--mode", "lidar", "--backend", "torch", "--json", tmp_path / "q.json")
    hits = json.loads((tmp_path / "q.json").read_text())
    assert len(hits) == 4 and set(hits[0]) == {"index", "sequence", "frame", "stamp", "pose", "score", "view", "view_yaw_deg", "view_offset_m"}
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(s <= 1.001 for s in scores) and len(hits[0]["pose"]) == 4
    # an untrained model is not discriminative; that its own scan scores ~1 is checked with the trained one


def test_map_from_another_model_is_refused(lite_model, synth_root, tmp_path):
    import torch

    from attnlink_ros.model import AttnLink, variant
    from attnlink_ros.model.io import save_model

    run("build-map", "--model", lite_model, "--data", synth_root, "--out", tmp_path / "map", "--backend", "torch", "--quiet")
    torch.manual_seed(9)
    save_model(AttnLink(variant("attnlink-lite")).eval(), tmp_path / "other")
    p = run("query", "--map", tmp_path / "map", "--model", tmp_path / "other", "--data", synth_root, "--frame", "1", check=False)
    assert p.returncode == 1 and "rebuild the map with this model" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_shipped_model_finds_a_scans_own_place(synth_root, tmp_path):
    """With the shipped (trained) model, a LiDAR query of a mapped frame returns that frame."""
    run("build-map", "--data", synth_root, "--out", tmp_path / "map", "--backend", "onnxruntime", "--quiet")
    for frame in (3, 17):
        run("query", "--map", tmp_path / "map", "--data", synth_root, "--frame", frame, "--mode", "lidar", "--k", "3",
            "--backend", "onnxruntime", "--json", tmp_path / "q.json")
        hits = json.loads((tmp_path / "q.json").read_text())
        assert abs(hits[0]["frame"] - frame) <= 1 and hits[0]["score"] > 0.99


def test_views_1_map_is_the_camera_view_map(synth_root, tmp_path):
    """build-map --views 1 holds exactly the one-view descriptors (each frame's FoV LiDAR
    descriptor, as before heading views), and view 0 of a 4-view map is the same vectors."""
    import numpy as np

    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.pipeline import Frame, PlaceRecognizer
    from attnlink_ros.retrieval.place_map import PlaceMap

    for k in (1, 4):
        run("build-map", "--data", synth_root, "--out", tmp_path / f"m{k}", "--views", k, "--backend", "onnxruntime", "--quiet")
    m1, m4 = PlaceMap.load(tmp_path / "m1"), PlaceMap.load(tmp_path / "m4")
    v1 = m1.index.reconstruct_n(0, m1.index.ntotal)  # fp16 storage
    v4 = m4.index.reconstruct_n(0, m4.index.ntotal).reshape(24, 4, -1)
    seq = KittiSequence(synth_root, "00")
    rec = PlaceRecognizer(None, None, backend="onnxruntime")
    ref = np.stack([rec.encode(Frame(0.0, seq.calib, points=seq.read_scan(i)), "lidar").descriptor for i in range(24)])
    assert m1.views == 1 and m1.manifest["view_yaws_deg"] == [0.0]
    np.testing.assert_allclose(v1, ref, atol=1e-3)  # fp16 rounding of the stored vectors
    np.testing.assert_allclose(v4[:, 0], v1, atol=1e-3)
    assert np.abs(v4[:, 2] - v1).max() > 0.1  # the rear view is another descriptor
    p = run("build-map", "--data", synth_root, "--out", tmp_path / "bad", "--views", 0, check=False)
    assert p.returncode == 1 and "--views must be >= 1" in p.stderr


def test_a_place_is_found_from_behind(synth_root, tmp_path):
    """The shipped model and a 4-view map: a scan turned 180 degrees (the place driven the other way)
    finds its own place through the rear view (yaw 180); the one-view map does not."""
    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.pipeline import Frame, PlaceRecognizer
    from attnlink_ros.retrieval.views import rotate_scan, vertical_axis

    seq = KittiSequence(synth_root, "00")
    up = vertical_axis(seq.calib.T_cam_lidar)
    run("build-map", "--data", synth_root, "--out", tmp_path / "m4", "--views", "4", "--backend", "onnxruntime", "--quiet")
    run("build-map", "--data", synth_root, "--out", tmp_path / "m1", "--views", "1", "--backend", "onnxruntime", "--quiet")
    rec4 = PlaceRecognizer(None, tmp_path / "m4", backend="onnxruntime")
    rec1 = PlaceRecognizer(None, tmp_path / "m1", backend="onnxruntime")
    for frame in (4, 20):
        # the vehicle the other way round, on the other side of the road (the rear view's offset)
        f = Frame(0.0, seq.calib, points=rotate_scan(seq.read_scan(frame), 180.0, up, (0.0, 3.5)))
        top = rec4.query(f, 3, "lidar").hits[0]
        assert abs(top["frame"] - frame) <= 1 and top["view_yaw_deg"] == 180.0 and top["score"] > 0.95
        assert top["view_offset_m"] == [0.0, 3.5]
        assert rec1.query(f, 3, "lidar").hits[0]["score"] < 0.9


def test_eval_track_keys_and_leaving_the_map(synth_root, tmp_path):
    """`attnlink eval --track --verify` on a straight street mapped over its first 3/8 (the rest
    drives off the map): the issue's JSON keys per mode beside the single frame's; the filter's
    published fixes are right, none off the map, "lost" within 2 s of leaving; --verify-every is
    recorded."""
    out = tmp_path / "t.json"
    run("eval", "--track", "--verify", "--verify-every", "2", "--mode", "lidar", "--data", synth_root, "--cache", tmp_path / "c",
        "--quiet", "--json", out)
    r = json.loads(out.read_text())
    (name,) = [k for k in r if not k.startswith("_")]
    res = r[name]
    assert res["verify_every"] == 2 and r["_tracker"]["dead_reckoning_m"] > 0
    keys = {"precision", "recall", "published", "answerable", "off_map", "off_map_published", "first_fix_frames"}
    for path in ("single_frame", "track", "track_odometry"):
        assert keys <= set(res[path]["lidar"]), path
    for path in ("track", "track_odometry"):
        t = res[path]["lidar"]
        assert "lost_frames" in t and t["answerable"] > 0 and t["off_map"] > 0
        assert t["published"] > 0 and t["precision"] == 1.0 and t["off_map_published"] == 0, (path, t)
        assert t["lost_frames"]["exits"] == 1 and t["lost_frames"]["never"] == 0 and t["lost_frames"]["max"] <= 20, (path, t["lost_frames"])
    assert res["single_frame"]["lidar"]["off_map_published"] == res["single_frame"]["lidar"]["off_map"]  # every frame answered


def test_eval_track_calibration_measures_each_unverified_modes_threshold(synth_root, tmp_path):
    """`eval --track --calibrate` writes, for a mode without verification, the publishing threshold
    measured on the drives it fits on (or "never"), and the run's published fixes obey it;
    `--min-confidence` overrides it for every mode."""
    from attnlink_ros.evaluation.tracking import measure_threshold
    from attnlink_ros.localization.tracker import load_calibration

    cal, out = tmp_path / "m.tracking.json", tmp_path / "t.json"
    p = run("eval", "--track", "--mode", "image", "--data", synth_root, "--cache", tmp_path / "c", "--quiet",
            "--calibrate", cal, "--json", out, "--visual-odometry")
    obs = load_calibration(cal)["image"]
    r = json.loads(out.read_text())
    (name,) = [k for k in r if not k.startswith("_") and k != "calibration"]
    res = r[name]
    assert obs.min_confidence == measure_threshold([res], "image") and obs.belief_publishes == (obs.min_confidence is not None)
    assert "image: the belief's fixes" in p.stdout
    for path in ("track", "track_odometry"):
        t = res[path]["image"]
        curve = {c["min_confidence"]: c for c in t["pr_curve"]}
        expect = curve[obs.min_confidence]["published"] if obs.belief_publishes else 0
        # the curve is the belief's; with odometry the aligned drive's fixes (alignment.py) come on top where it publishes none
        assert t["published_by_source"]["belief"] == expect and t["published"] == sum(t["published_by_source"].values()), (path, t, obs)
        assert path == "track_odometry" or t["published_by_source"]["aligned"] == 0
    # --visual-odometry: the filter with the drive's own visual odometry beside them (key track_visual)
    vis = res["track_visual"]["image"]
    assert {"precision", "recall", "published", "answerable", "off_map", "off_map_published", "first_fix_frames"} <= set(vis)
    assert vis["published"] == sum(vis["published_by_source"].values()) and vis["answerable"] == res["track"]["image"]["answerable"]
    assert list(tmp_path.glob("c/*/track_vo_*.npz"))  # the steps kept in the cache
    run("eval", "--track", "--mode", "image", "--data", synth_root, "--cache", tmp_path / "c", "--quiet",
        "--calibration", cal, "--min-confidence", "0.05", "--json", out)
    low = json.loads(out.read_text())[name]["track"]["image"]
    assert low["published"] == {c["min_confidence"]: c for c in low["pr_curve"]}[0.05]["published"] > 0
    bad = subprocess.run([sys.executable, "-m", "attnlink_ros", "eval", "--track", "--data", str(synth_root), "--min-confidence", "2"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "--min-confidence" in bad.stderr and bad.stderr.count("\n") == 1


def test_track_verifications_are_kept_by_descriptor_content(synth_root, tmp_path, monkeypatch):
    """GICP verification of the tracking evaluation is stored under a digest of the descriptors: a
    model that differs only in its pseudo-LiDAR network (a new camera half) finds the LiDAR hits'
    verifications of the model before it and registers nothing again."""
    import torch

    from attnlink_ros.evaluation.tracking import TrackData
    from attnlink_ros.model.io import load_model, save_model

    model, _ = load_model(None)
    first = TrackData(model, synth_root, "00", tmp_path / "c", modes=("lidar",), verify=True)
    assert first.verified["lidar"].any() and first.content["lidar"].is_file()
    other, _ = load_model(None)
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if n.startswith("mono.")).add_(0.01)
    save_model(other, tmp_path / "other", {"provenance": "another camera half"})
    other, _ = load_model(tmp_path / "other")

    def no_gicp(*args, **kwargs):
        raise AssertionError("verified again")

    monkeypatch.setattr(TrackData, "_verify", no_gicp)
    second = TrackData(other, synth_root, "00", tmp_path / "c", modes=("lidar",), verify=True)
    assert second.content["lidar"] == first.content["lidar"]
    assert np.array_equal(second.verified["lidar"], first.verified["lidar"])
    assert np.array_equal(second.hits["lidar"][1], first.hits["lidar"][1])
    assert np.array_equal(second.registered["lidar"], first.registered["lidar"], equal_nan=True)
    with pytest.raises(AssertionError, match="verified again"):  # the LiDAR branch changed: its hits are new, verified again
        with torch.no_grad():
            next(p for n, p in other.named_parameters() if n.startswith("trunk.") and "depth" in n).add_(0.01)
        save_model(other, tmp_path / "third", {"provenance": "another trunk"})
        TrackData(load_model(tmp_path / "third")[0], synth_root, "00", tmp_path / "c", modes=("lidar",), verify=True)
