"""Conversions on messages built by hand, against a per-point / per-pixel reference."""

import struct

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from attnlink_ros.geometry.calibration import Calibration
from attnlink_ros.ros.conversions import (
    MessageError,
    bgr_to_image,
    calibration_to_camera_info,
    camera_info_to_calibration,
    image_to_bgr,
    pointcloud2_to_xyzi,
    sec_to_stamp,
    stamp_to_sec,
    xyzi_to_pointcloud2,
)


def _cloud(points, layout, point_step, height=1, row_pad=0, big=False):
    """layout: [(name, offset, datatype, struct char)]; points: list of dicts."""
    order = ">" if big else "<"
    n = len(points) // height
    rows = []
    for r in range(height):
        row = b""
        for p in points[r * n : (r + 1) * n]:
            buf = bytearray(point_step)
            for name, off, _, ch in layout:
                struct.pack_into(order + ch, buf, off, p[name])
            row += bytes(buf)
        rows.append(row + b"\xee" * row_pad)
    msg = PointCloud2()
    msg.height, msg.width = height, n
    msg.fields = [PointField(name=nm, offset=off, datatype=dt, count=1) for nm, off, dt, _ in layout]
    msg.is_bigendian = big
    msg.point_step = point_step
    msg.row_step = n * point_step + row_pad
    msg.data = b"".join(rows)
    return msg


def _reference(msg, layout):
    """Per-point decode with struct (the slow, obvious way)."""
    order = ">" if msg.is_bigendian else "<"
    out = []
    data = bytes(msg.data)
    fmt = {nm: (off, ch) for nm, off, _, ch in layout}
    iname = "intensity" if "intensity" in fmt else ("i" if "i" in fmt else None)
    for r in range(msg.height):
        for c in range(msg.width):
            base = r * msg.row_step + c * msg.point_step
            v = [struct.unpack_from(order + fmt[k][1], data, base + fmt[k][0])[0] for k in ("x", "y", "z")]
            v.append(struct.unpack_from(order + fmt[iname][1], data, base + fmt[iname][0])[0] if iname else 0.0)
            if all(np.isfinite(v[:3])):
                out.append(v)
    return np.asarray(out, np.float32).reshape(-1, 4)


def _points(n, seed=0, nan_every=0):
    rng = np.random.default_rng(seed)
    pts = []
    for k in range(n):
        x, y, z = rng.normal(0, 20, 3)
        if nan_every and k % nan_every == 0:
            x = float("nan")
        pts.append({"x": x, "y": y, "z": z, "intensity": rng.random(), "i": rng.random(), "ring": int(k % 64), "t": rng.random()})
    return pts


LAYOUTS = {
    "ouster_like_padded": ([("x", 0, 7, "f"), ("y", 4, 7, "f"), ("z", 8, 7, "f"), ("intensity", 16, 7, "f"), ("ring", 20, 4, "H"), ("t", 24, 8, "d")], 32),
    "kitti2bag_i": ([("x", 0, 7, "f"), ("y", 4, 7, "f"), ("z", 8, 7, "f"), ("i", 12, 7, "f")], 16),
    "float64_xyz": ([("x", 0, 8, "d"), ("y", 8, 8, "d"), ("z", 16, 8, "d"), ("intensity", 24, 7, "f")], 28),
    "xyz_only": ([("z", 8, 7, "f"), ("x", 0, 7, "f"), ("y", 4, 7, "f")], 12),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("big", [False, True])
def test_pointcloud2_layouts(name, big):
    layout, step = LAYOUTS[name]
    msg = _cloud(_points(120, nan_every=7), layout, step, height=2, row_pad=5, big=big)
    got = pointcloud2_to_xyzi(msg)
    want = _reference(msg, layout)
    assert got.shape == want.shape and got.shape[0] == 120 - len(range(0, 120, 7))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pointcloud2_round_trip_and_zero_copy():
    pts = np.random.default_rng(1).normal(size=(1000, 4)).astype(np.float32)
    msg = xyzi_to_pointcloud2(pts, Header())
    np.testing.assert_array_equal(pointcloud2_to_xyzi(msg), pts)


@pytest.mark.parametrize(
    "mutate, kind",
    [
        (lambda m: setattr(m, "data", bytes(m.data)[:-3]), "cloud_size"),
        (lambda m: setattr(m, "fields", [f for f in m.fields if f.name != "z"]), "cloud_fields"),
        (lambda m: setattr(m, "row_step", 4), "cloud_layout"),
        (lambda m: m.fields.__setitem__(0, PointField(name="x", offset=0, datatype=99, count=1)), "cloud_field_type"),
        (lambda m: m.fields.__setitem__(0, PointField(name="x", offset=14, datatype=7, count=1)), "cloud_layout"),
    ],
)
def test_malformed_clouds(mutate, kind):
    msg = xyzi_to_pointcloud2(np.ones((10, 4), np.float32), Header())
    mutate(msg)
    with pytest.raises(MessageError) as e:
        pointcloud2_to_xyzi(msg)
    assert e.value.kind == kind


def _image(enc, arr, pad=0):
    msg = Image()
    msg.height, msg.width = arr.shape[:2]
    ch = arr.shape[2] if arr.ndim == 3 else 1
    msg.encoding = enc
    msg.step = msg.width * ch + pad
    rows = [arr[r].tobytes() + b"\0" * pad for r in range(msg.height)]
    msg.data = b"".join(rows)
    return msg


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_image_encodings(enc):
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 255, (7, 9, 3), dtype=np.uint8)
    if enc == "rgb8":
        arr = bgr[..., ::-1]
    elif enc == "bgr8":
        arr = bgr
    elif enc == "rgba8":
        arr = np.concatenate([bgr[..., ::-1], np.full((7, 9, 1), 255, np.uint8)], 2)
    elif enc == "bgra8":
        arr = np.concatenate([bgr, np.full((7, 9, 1), 255, np.uint8)], 2)
    else:
        gray = bgr[..., 0]
        arr = gray
        bgr = np.repeat(gray[..., None], 3, 2)
    got = image_to_bgr(_image(enc, np.ascontiguousarray(arr), pad=3))
    for r in range(7):  # per-pixel reference
        for c in range(9):
            assert tuple(got[r, c]) == tuple(bgr[r, c])


def test_image_errors_and_round_trip():
    bgr = np.random.default_rng(3).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    for enc in ("bgr8", "rgb8"):
        np.testing.assert_array_equal(image_to_bgr(bgr_to_image(bgr, Header(), enc)), bgr)
    msg = _image("yuv422", bgr)
    with pytest.raises(MessageError) as e:
        image_to_bgr(msg)
    assert e.value.kind == "image_encoding"
    msg = _image("bgr8", bgr)
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(MessageError) as e:
        image_to_bgr(msg)
    assert e.value.kind == "image_size"


def test_camera_info_and_stamps():
    P = np.array([[700.0, 0, 600, 45], [0, 700, 180, 0], [0, 0, 1, 0.003]])
    T = np.eye(4)
    T[:3, 3] = [0.1, -0.2, 0.3]
    calib = Calibration(P, T, (1241, 376))
    back = camera_info_to_calibration(calibration_to_camera_info(calib, Header()), T)
    np.testing.assert_allclose(back.lidar_to_image, calib.lidar_to_image)
    assert back.image_size == (1241, 376)
    with pytest.raises(MessageError, match="all-zero"):
        camera_info_to_calibration(CameraInfo(), T)
    for t in (0.0, 12.3456789, 1.9999999999, 1e9 + 0.5):
        assert stamp_to_sec(sec_to_stamp(t)) == pytest.approx(t, abs=1e-9)
