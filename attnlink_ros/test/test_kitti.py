import shutil

import numpy as np
import pytest

from attnlink_ros.data.kitti import KittiSequence, list_sequences, read_velodyne_bin
from attnlink_ros.errors import DataError
from attnlink_ros.geometry.poses import ground_xy, load_poses, path_length


def test_reads_real_sequence(kitti_root):
    seq = KittiSequence(kitti_root, "00")
    assert len(seq) == 4541
    assert seq.poses.shape == (4541, 4, 4)
    np.testing.assert_allclose(seq.poses[0], np.eye(4), atol=1e-6)
    assert list(seq.available_frames()) == list(range(10))
    assert seq.image_size == (1241, 376)
    assert KittiSequence(kitti_root, 8).image_size == (1226, 370)
    scan = seq.read_scan(0)
    assert scan.dtype == np.float32 and scan.shape[1] == 4 and 100_000 < len(scan) < 140_000
    img = seq.read_image(0)
    assert img.shape == (376, 1241, 3) and img.dtype == np.uint8
    assert "00" in list_sequences(kitti_root) and "10" in list_sequences(kitti_root)


def test_dataset_folder_itself_is_accepted(kitti_root):
    assert len(KittiSequence(kitti_root / "dataset", "08")) == 4071


def test_ground_plane_uses_columns_3_and_11(kitti_root):
    raw = np.loadtxt(kitti_root / "dataset/poses/00.txt")
    xy = ground_xy(load_poses(kitti_root / "dataset/poses/00.txt"))
    np.testing.assert_allclose(xy, raw[:, [3, 11]])
    assert 3600 < path_length(xy) < 3800  # seq 00 is ~3.7 km


def _copy_seq(kitti_root, tmp_path, frames=2):
    src = kitti_root / "dataset/sequences/00"
    dst = tmp_path / "dataset/sequences/00"
    (dst / "velodyne").mkdir(parents=True)
    (dst / "image_2").mkdir()
    for f in ("calib.txt", "times.txt"):
        shutil.copy(src / f, dst / f)
    for i in range(frames):
        shutil.copy(src / f"velodyne/{i:06d}.bin", dst / f"velodyne/{i:06d}.bin")
        shutil.copy(src / f"image_2/{i:06d}.png", dst / f"image_2/{i:06d}.png")
    (tmp_path / "dataset/poses").mkdir()
    shutil.copy(kitti_root / "dataset/poses/00.txt", tmp_path / "dataset/poses/00.txt")
    return dst


def test_truncated_scan_is_a_clear_error(kitti_root, tmp_path):
    dst = _copy_seq(kitti_root, tmp_path)
    data = (dst / "velodyne/000001.bin").read_bytes()
    (dst / "velodyne/000001.bin").write_bytes(data[:-6])
    seq = KittiSequence(tmp_path, "00")
    assert len(seq.read_scan(0)) > 0
    with pytest.raises(DataError, match="not a multiple of 16") as e:
        seq.read_scan(1)
    assert "000001.bin" in str(e.value)


def test_unreadable_image(kitti_root, tmp_path):
    dst = _copy_seq(kitti_root, tmp_path)
    (dst / "image_2/000001.png").write_bytes(b"not a png")
    seq = KittiSequence(tmp_path, "00")
    with pytest.raises(DataError, match="image unreadable") as e:
        seq.read_image(1)
    assert "000001.png" in str(e.value)


def test_missing_frame_and_out_of_range(kitti_root, tmp_path):
    _copy_seq(kitti_root, tmp_path)
    seq = KittiSequence(tmp_path, "00")
    with pytest.raises(DataError, match="scan file not found"):
        seq.read_scan(5)
    with pytest.raises(DataError, match="out of range"):
        seq.read_scan(4541)


def test_pose_row_count_mismatch(kitti_root, tmp_path):
    _copy_seq(kitti_root, tmp_path)
    poses = (tmp_path / "dataset/poses/00.txt").read_text().splitlines()
    (tmp_path / "dataset/poses/00.txt").write_text("\n".join(poses[:-3]) + "\n")
    seq = KittiSequence(tmp_path, "00")
    with pytest.raises(DataError, match="4538 pose rows but 4541 frames"):
        seq.poses


def test_malformed_pose_row(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 0 0 1 0 0 0 0 1\n")
    with pytest.raises(DataError, match="line 2: 11 values, expected 12"):
        load_poses(p)


def test_missing_sequence(kitti_root):
    with pytest.raises(DataError, match="sequence folder not found"):
        KittiSequence(kitti_root, "42")
    with pytest.raises(DataError, match="not a KITTI odometry folder"):
        KittiSequence(kitti_root / "dataset" / "poses", "00")


def test_read_velodyne_missing(tmp_path):
    with pytest.raises(DataError, match="scan file not found"):
        read_velodyne_bin(tmp_path / "x.bin")
