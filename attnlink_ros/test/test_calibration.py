import numpy as np
import pytest

from attnlink_ros.errors import DataError
from attnlink_ros.geometry.calibration import Calibration, format_kitti_odometry_calib, parse_calib_file

RAW_VELO = """calib_time: 15-Mar-2012 11:37:16
R: 7.533745e-03 -9.999714e-01 -6.166020e-04 1.480249e-02 7.280733e-04 -9.998902e-01 9.998621e-01 7.523790e-03 1.480755e-02
T: -4.069766e-03 -7.631618e-02 -2.717806e-01
delta_f: 0.000000e+00 0.000000e+00
delta_c: 0.000000e+00 0.000000e+00
"""
RAW_CAM = """calib_time: 09-Jan-2012 13:57:47
corner_dist: 9.950000e-02
R_rect_00: 9.999239e-01 9.837760e-03 -7.445048e-03 -9.869795e-03 9.999421e-01 -4.278459e-03 7.402527e-03 4.351614e-03 9.999631e-01
S_rect_02: 1.242000e+03 3.750000e+02
P_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03
"""


def test_odometry_calib_real(kitti_root):
    c = Calibration.from_kitti_odometry(kitti_root / "dataset/sequences/00/calib.txt")
    assert c.P.shape == (3, 4) and c.T_cam_lidar.shape == (4, 4)
    assert c.P[0, 0] == pytest.approx(718.856)
    assert c.P[0, 3] == pytest.approx(45.38225)  # P2, not P0
    # Tr maps the LiDAR's forward axis (x) to the camera's forward axis (z)
    assert c.T_cam_lidar[2, 0] == pytest.approx(0.99997, abs=1e-4)
    assert set(c.extra) == {"P0", "P1", "P2", "P3", "Tr"}
    # camera 2's centre is ~0.27 m in front of the LiDAR and ~0.08 m below it
    centre = c.camera_center_lidar
    assert 0.2 < centre[0] < 0.35 and -0.12 < centre[2] < -0.03


def test_odometry_calib_round_trip(tmp_path, kitti_root):
    c = Calibration.from_kitti_odometry(kitti_root / "dataset/sequences/08/calib.txt")
    p = tmp_path / "calib.txt"
    p.write_text(format_kitti_odometry_calib({k: c.extra[k] for k in ("P0", "P1", "P2", "P3")}, c.extra["Tr"]))
    c2 = Calibration.from_kitti_odometry(p)
    np.testing.assert_allclose(c2.lidar_to_image, c.lidar_to_image, rtol=1e-11)


def test_raw_calib(tmp_path):
    (tmp_path / "v.txt").write_text(RAW_VELO)
    (tmp_path / "c.txt").write_text(RAW_CAM)
    c = Calibration.from_kitti_raw(tmp_path / "v.txt", tmp_path / "c.txt")
    assert c.image_size == (1242, 375)
    R_rect = np.array([float(v) for v in RAW_CAM.split("R_rect_00:")[1].split("\n")[0].split()]).reshape(3, 3)
    velo = np.eye(4)
    velo[:3, :3] = np.array([float(v) for v in RAW_VELO.split("R:")[1].split("\n")[0].split()]).reshape(3, 3)
    velo[:3, 3] = [-4.069766e-03, -7.631618e-02, -2.717806e-01]
    np.testing.assert_allclose(c.T_cam_lidar[:3, :3], R_rect @ velo[:3, :3])
    np.testing.assert_allclose(c.T_cam_lidar[:3, 3], R_rect @ velo[:3, 3])
    assert c.P[0, 3] == pytest.approx(44.85728)


@pytest.mark.parametrize(
    "text, message",
    [
        ("P0: 1 2 3\n", "key 'P0' has 3 values, expected 12"),
        ("P0: 1 0 0 0 0 1 0 0 0 0 1 0\nP1: 1 0 0 0 0 1 0 0 0 0 1 0\nP2: 1 0 0 0 0 1 0 0 0 0 1\n", "has 11 values, expected 12"),
        ("P0 1 2 3\n", "expected 'KEY: values'"),
        ("P0: 1 two 3\n", "not a number"),
    ],
)
def test_bad_odometry_calib(tmp_path, text, message):
    p = tmp_path / "calib.txt"
    p.write_text(text)
    with pytest.raises(DataError) as e:
        Calibration.from_kitti_odometry(p)
    assert message in str(e.value)
    assert str(p) in str(e.value)


def test_missing_key_is_named(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_text("\n".join(f"P{i}: " + " ".join(["1"] * 12) for i in range(4)) + "\n")
    with pytest.raises(DataError, match="missing calibration key 'Tr'"):
        Calibration.from_kitti_odometry(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        parse_calib_file(tmp_path / "nope.txt")


def test_raw_missing_key(tmp_path):
    (tmp_path / "v.txt").write_text(RAW_VELO.replace("T:", "X:"))
    (tmp_path / "c.txt").write_text(RAW_CAM)
    with pytest.raises(DataError, match="missing calibration key 'T'"):
        Calibration.from_kitti_raw(tmp_path / "v.txt", tmp_path / "c.txt")
