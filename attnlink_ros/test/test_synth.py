import numpy as np
import pytest

from attnlink_ros.data.kitti import KittiSequence
from attnlink_ros.data.synth import LIDAR_ELEVATIONS_DEG, SynthConfig, SyntheticDrive, appearance_at, write_synthetic_sequence
from attnlink_ros.evaluation.protocols import revisit_queries
from attnlink_ros.geometry.poses import ground_xy
from attnlink_ros.geometry.projection import sparse_depth_full


def test_written_in_kitti_layout(synth_root):
    seq = KittiSequence(synth_root, "00")
    assert len(seq) == 24
    assert list(seq.available_frames()) == list(range(24))
    assert seq.image_size == (1241, 376)
    assert seq.poses.shape == (24, 4, 4)
    np.testing.assert_allclose(seq.poses[0], np.eye(4), atol=1e-6)
    np.testing.assert_allclose(np.diff(seq.times), 0.1, atol=1e-6)
    # the calibration is KITTI sequence 00's
    assert seq.calib.P[0, 0] == pytest.approx(718.856)
    assert seq.calib.T_cam_lidar[0, 3] == pytest.approx(-1.198459927713e-02)
    img = seq.read_image(5)
    assert img.shape == (376, 1241, 3) and 20 < img.mean() < 235 and img.std() > 15
    # marked as rendered (a town's drive is named "00" like KITTI's real one)
    from attnlink_ros.data.kitti import is_synthetic

    assert is_synthetic(synth_root, "00") and not is_synthetic(synth_root, "01") and not is_synthetic(synth_root / "nowhere", "00")


def test_scans_project_into_images_like_kitti(synth_root):
    seq = KittiSequence(synth_root, "00")
    drive = SyntheticDrive(SynthConfig(frames=24, seed=3))
    for i in (0, 17):
        pts = seq.read_scan(i)
        assert 100_000 < len(pts) < 135_000  # HDL-64E: ~120k points a sweep
        depth = sparse_depth_full(pts, seq.calib, 1241, 376)
        filled = depth > 0
        assert 14_000 < filled.sum() < 22_000  # KITTI: ~18-21k points inside the image
        # the projected LiDAR depth agrees with the depth the camera was rendered with
        _, _, cam_depth = drive.render(i, with_depth=True)
        both = filled & (cam_depth > 0)
        rel = np.abs(depth[both] - cam_depth[both]) / cam_depth[both]
        assert np.median(rel) < 0.01 and np.mean(rel > 0.05) < 0.03


def test_lidar_geometry(synth_root):
    pts = KittiSequence(synth_root, "00").read_scan(3)
    r = np.linalg.norm(pts[:, :3], axis=1)
    elev = np.degrees(np.arcsin(pts[:, 2] / r))
    tilt = 0.6  # Tr's rotation tilts the LiDAR by ~0.5 deg against the level camera
    assert elev.max() <= LIDAR_ELEVATIONS_DEG.max() + tilt and elev.min() >= LIDAR_ELEVATIONS_DEG.min() - tilt
    assert elev.min() < -23 and r.max() <= 120.1 and r.min() >= 2.4
    assert pts[:, 3].min() >= 0 and pts[:, 3].max() < 1 and pts[:, 3].std() > 0.05
    # ground returns lie ~1.73 m below the LiDAR (KITTI's mounting height)
    near_ground = pts[(r < 15) & (elev < -10)]
    assert np.median(near_ground[:, 2]) == pytest.approx(-1.70, abs=0.08)


def test_deterministic_per_seed_and_workers(synth_root, tmp_path):
    write_synthetic_sequence(tmp_path, SynthConfig(frames=24, seed=3), workers=2, progress=False)
    for sub in ("image_2/000011.png", "velodyne/000011.bin", "velodyne/000023.bin", "calib.txt", "times.txt"):
        a = (synth_root / "dataset/sequences/00" / sub).read_bytes()
        b = (tmp_path / "dataset/sequences/00" / sub).read_bytes()
        assert a == b, sub
    assert (synth_root / "dataset/poses/00.txt").read_bytes() == (tmp_path / "dataset/poses/00.txt").read_bytes()


def test_different_seeds_give_different_towns():
    a = SyntheticDrive(SynthConfig(frames=50, seed=1))
    b = SyntheticDrive(SynthConfig(frames=50, seed=2))
    assert not np.allclose(a.town.xs, b.town.xs)
    assert len(a.town.solids) != len(b.town.solids) or not np.allclose(a.town.solids.zmax, b.town.solids.zmax)
    img_a, _ = a.render(10)
    img_b, _ = b.render(10)
    assert np.abs(img_a.astype(int) - img_b.astype(int)).mean() > 10


def test_one_minute_already_revisits():
    drive = SyntheticDrive(SynthConfig(frames=600, seed=5))
    xy = ground_xy(drive.kitti_poses())
    proto = revisit_queries(xy, drive.drive.t)
    assert len(proto.queries) >= 60
    speed = np.linalg.norm(np.diff(xy, axis=0), axis=1) * 10
    assert 5.0 < speed.mean() < 10.0 and speed.max() < 10.0  # KITTI-like speeds


def test_poses_follow_kitti_camera_convention():
    drive = SyntheticDrive(SynthConfig(frames=300, seed=4))
    P = drive.kitti_poses()
    assert np.abs(P[:, 1, 3]).max() < 1e-6  # height constant on flat ground (y is down)
    motion = np.diff(P[:, :3, 3], axis=0)
    motion /= np.linalg.norm(motion, axis=1, keepdims=True)
    forward = P[:-1, :3, 2]  # camera z axis
    assert np.median(np.sum(motion * forward, axis=1)) > 0.99
    np.testing.assert_allclose(P[:, :3, :3] @ P[:, :3, :3].transpose(0, 2, 1), np.broadcast_to(np.eye(3), (300, 3, 3)), atol=1e-9)


def test_revisits_in_both_directions_and_other_lane():
    drive = SyntheticDrive(SynthConfig(frames=2500, seed=6))
    P = drive.kitti_poses()
    xy = ground_xy(P)
    proto = revisit_queries(xy, drive.drive.t)
    heading = np.arctan2(P[:, 0, 2], P[:, 2, 2])
    opposite = same = other_lane = 0
    for q, end in zip(proto.queries, proto.db_end):
        d = np.linalg.norm(xy[:end] - xy[q], axis=1)
        m = int(d.argmin())
        dh = abs((heading[q] - heading[m] + np.pi) % (2 * np.pi) - np.pi)
        opposite += dh > 2.5
        same += dh < 0.5
        other_lane += (dh < 0.5) and 2.5 < d[m] < 4.5
    assert opposite > 50 and same > 50 and other_lane > 20


def test_appearance_changes_between_visits():
    a, b = appearance_at(0, 10.0), appearance_at(0, 45.0)
    assert abs(a.brightness - b.brightness) > 0.02 or np.abs(a.gains - b.gains).max() > 0.02
    assert appearance_at(0, 10.0).brightness == appearance_at(0, 10.0).brightness


def test_camera_effects_are_a_real_cameras_response_and_deterministic():
    """SynthConfig.camera_effects: the image goes through the town's camera (data/camera.py),
    the same every render, the scan untouched; towns differ in their camera, frames in their
    exposure; the renderer without it is unchanged."""
    import cv2

    from attnlink_ros.data.camera import camera_look, camera_response
    from attnlink_ros.data.synth import SynthConfig, SyntheticDrive

    plain = SyntheticDrive(SynthConfig(frames=40, seed=5))
    cam = SyntheticDrive(SynthConfig(frames=40, seed=5, camera_effects=True))
    a, pa = plain.render(20)
    b, pb = cam.render(20)
    assert np.array_equal(pa, pb) and np.array_equal(b, cam.render(20)[0])  # deterministic; LiDAR unchanged
    assert np.array_equal(a, SyntheticDrive(SynthConfig(frames=40, seed=5)).render(20)[0])
    assert b.shape == a.shape and b.dtype == np.uint8 and np.abs(a.astype(int) - b).mean() > 3.0
    # vignetting darkens the corners relative to the centre; JPEG leaves 8x8 block edges
    look = camera_look(5)
    flat = np.full((376, 1241, 3), 160, np.uint8)
    out = camera_response(flat, look, np.random.default_rng(0)).astype(float)
    centre, corner = out[170:200, 600:640].mean(), out[:20, :20].mean()
    assert corner < centre * (1 - 0.5 * look.vignette)
    looks = {camera_look(s) for s in range(20)}
    assert len(looks) == 20 and np.ptp([lk.gamma for lk in looks]) > 0.3 and np.ptp([lk.vignette for lk in looks]) > 0.2
    exposures = [camera_response(flat, look, np.random.default_rng(s))[170:200, 600:640].mean() for s in range(8)]
    assert np.std(exposures) > 2.0  # auto-exposure error differs a frame
    small = camera_response(cv2.resize(a, (512, 128)), look, np.random.default_rng(1))  # any size (training crops)
    assert small.shape == (128, 512, 3)
    with pytest.raises(ValueError, match="uint8"):
        camera_response(a.astype(np.float32), look, np.random.default_rng(0))


def test_scene_variety_clouds_car_paint_and_shadows_camera_only():
    """SynthConfig.scene_variety: clouds over the sky, car paint and cast shadows change the image
    only (the scan is untouched), the same every render; towns differ in cloud cover; a box's
    shadow falls where the sun puts it."""
    from attnlink_ros.data.synth import SynthConfig, SyntheticDrive

    plain = SyntheticDrive(SynthConfig(frames=40, seed=5))
    var = SyntheticDrive(SynthConfig(frames=40, seed=5, scene_variety=True))
    a, pa, da = plain.render(20, with_depth=True)
    b, pb = var.render(20)
    assert np.array_equal(pa, pb) and np.array_equal(b, var.render(20)[0])
    sky = da == 0  # the renderer's depth is 0 on the sky
    assert sky.sum() > 10_000 and np.abs(a[sky].astype(int) - b[sky]).mean() > 3.0
    lit_or_shade = b[~sky].astype(int) - a[~sky]
    assert (lit_or_shade <= 1).mean() > 0.95  # below the sky: shadows darken, only car paint may brighten
    # cast shadows: a 10 m tall 4 x 4 m box, the sun 45 deg up in +x: the ground 0-10 m on its -x side is dark
    from attnlink_ros.data import town as T

    box = T.Solids(kind=np.zeros(1, np.int8), x0=np.array([0.0], np.float32), x1=np.array([4.0], np.float32),
                   y0=np.array([0.0], np.float32), y1=np.array([4.0], np.float32), zmin=np.zeros(1, np.float32),
                   zmax=np.array([10.0], np.float32), material=np.zeros(1, np.int8), color=np.ones((1, 3), np.float32),
                   style=np.zeros((1, 4), np.float32), intensity=np.ones(1, np.float32))
    sun = np.array([np.sqrt(0.5), 0.0, np.sqrt(0.5)], np.float32)
    gx = np.array([-5.0, -9.0, -12.0, 8.0, 2.0], np.float32)
    gy = np.array([2.0, 2.0, 2.0, 2.0, 12.0], np.float32)
    assert var._in_shadow(box, (20.0, 2.0, 1.65), sun, gx, gy).tolist() == [True, True, False, False, False]
    covers = {SyntheticDrive(SynthConfig(frames=10, seed=s, scene_variety=True))._cloud_cover for s in range(5)}
    assert len(covers) == 5
