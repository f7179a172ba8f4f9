"""Message <-> numpy conversions (sensor_msgs_py is not installable here, so they live here).

Every converter raises :class:`MessageError` with a short ``kind`` (for once-per-kind logging and
counting in the nodes) on a malformed message; none of them copies more than it has to:
PointCloud2 is read through a zero-copy structured view of its buffer.
"""

from __future__ import annotations

import numpy as np

from ..errors import AttnLinkError
from ..geometry.calibration import Calibration

# sensor_msgs/PointField datatypes
_POINTFIELD = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "8UC3": 3}


class MessageError(AttnLinkError):
    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


def cloud_dtype(fields, point_step: int, big_endian: bool) -> np.dtype:
    """Structured dtype of one point from PointCloud2 fields (offsets and padding kept)."""
    names, formats, offsets = [], [], []
    order = ">" if big_endian else "<"
    for f in fields:
        if f.datatype not in _POINTFIELD:
            raise MessageError("cloud_field_type", f"PointCloud2 field {f.name!r} has unknown datatype {f.datatype}")
        fmt = order + _POINTFIELD[f.datatype]
        names.append(f.name)
        formats.append(fmt if f.count <= 1 else (fmt, (f.count,)))
        offsets.append(f.offset)
    try:
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    except (ValueError, TypeError) as exc:
        raise MessageError("cloud_layout", f"PointCloud2 fields do not fit point_step {point_step} ({exc})") from None


def _packed_xyzi(msg) -> np.ndarray | None:
    """The common layout (float32 x, y, z, intensity|i at 0, 4, 8, 12; 16-byte points, unpadded
    rows, little-endian) read as one float32 view; None for any other layout."""
    f = msg.fields
    if (msg.point_step != 16 or msg.is_bigendian or len(f) != 4 or msg.row_step != 16 * msg.width
            or [(x.name, x.offset, x.datatype, x.count) for x in f[:3]] != [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)]
            or (f[3].name, f[3].offset, f[3].datatype, f[3].count) not in (("intensity", 12, 7, 1), ("i", 12, 7, 1))):
        return None
    raw = np.frombuffer(memoryview(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data, dtype=np.uint8)
    if raw.size != msg.height * msg.row_step:
        raise MessageError("cloud_size", f"PointCloud2 data has {raw.size} bytes, height x row_step = {msg.height * msg.row_step}")
    out = raw.view(np.float32).reshape(-1, 4)
    finite = np.isfinite(out[:, :3]).all(1)
    return out if finite.all() else out[finite]


def pointcloud2_to_xyzi(msg) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity (field ``intensity`` or ``i``; 0 when absent); points
    with a non-finite coordinate are dropped."""
    fast = _packed_xyzi(msg)
    if fast is not None:
        return fast
    dtype = cloud_dtype(msg.fields, msg.point_step, msg.is_bigendian)
    names = set(dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise MessageError("cloud_fields", f"PointCloud2 lacks x, y or z (fields: {sorted(names)})")
    h, w = msg.height, msg.width
    if msg.point_step <= 0 or msg.row_step < w * msg.point_step:
        raise MessageError("cloud_layout", f"PointCloud2 row_step {msg.row_step} < width {w} x point_step {msg.point_step}")
    buf = memoryview(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data
    raw = np.frombuffer(buf, dtype=np.uint8)
    if raw.size != h * msg.row_step:
        raise MessageError("cloud_size", f"PointCloud2 data has {raw.size} bytes, height x row_step = {h * msg.row_step}")
    if msg.row_step == w * msg.point_step:
        pts = raw.view(dtype) if raw.size else np.zeros(0, dtype)
    else:  # padded rows: view each row, drop the padding
        pts = np.concatenate([raw[r * msg.row_step : r * msg.row_step + w * msg.point_step].view(dtype) for r in range(h)])
    inten_name = "intensity" if "intensity" in names else ("i" if "i" in names else None)
    out = np.empty((len(pts), 4), np.float32)
    out[:, 0] = pts["x"]
    out[:, 1] = pts["y"]
    out[:, 2] = pts["z"]
    out[:, 3] = pts[inten_name] if inten_name else 0.0
    finite = np.isfinite(out[:, :3]).all(1)
    return out if finite.all() else out[finite]


def xyzi_to_pointcloud2(points: np.ndarray, header, intensity_name: str = "intensity"):
    """A PointCloud2 (x, y, z, intensity as float32, 16-byte points) from (N, >=3) points."""
    from sensor_msgs.msg import PointCloud2, PointField

    pts = np.asarray(points, dtype=np.float32)
    n = len(pts)
    data = np.zeros((n, 4), np.float32)
    data[:, : min(4, pts.shape[1])] = pts[:, :4]
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, n
    msg.fields = [PointField(name=nm, offset=4 * k, datatype=PointField.FLOAT32, count=1)
                  for k, nm in enumerate(("x", "y", "z", intensity_name))]
    msg.is_bigendian = False
    msg.point_step = 16
    msg.row_step = 16 * n
    msg.is_dense = True
    msg.data = data.tobytes()
    return msg


def image_to_bgr(msg) -> np.ndarray:
    """(H, W, 3) uint8 BGR from sensor_msgs/Image in rgb8, bgr8, rgba8, bgra8 or mono8."""
    enc = msg.encoding
    if enc not in _ENCODINGS:
        raise MessageError("image_encoding", f"image encoding {enc!r} not supported (use one of {', '.join(_ENCODINGS)})")
    ch = _ENCODINGS[enc]
    h, w, step = msg.height, msg.width, msg.step
    if h == 0 or w == 0 or step < w * ch:
        raise MessageError("image_size", f"image {w}x{h} with step {step} is malformed for {enc}")
    raw = np.frombuffer(memoryview(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data, dtype=np.uint8)
    if raw.size != h * step:
        raise MessageError("image_size", f"image data has {raw.size} bytes, height x step = {h * step}")
    img = raw.reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if enc in ("bgr8", "8UC3"):
        return img
    if enc == "rgb8":
        return img[..., ::-1]
    if enc == "rgba8":
        return img[..., 2::-1]
    if enc == "bgra8":
        return img[..., :3]
    return np.repeat(img, 3, axis=2)  # mono8


def bgr_to_image(bgr: np.ndarray, header, encoding: str = "bgr8"):
    from sensor_msgs.msg import Image

    img = np.ascontiguousarray(bgr if encoding == "bgr8" else bgr[..., ::-1])
    msg = Image()
    msg.header = header
    msg.height, msg.width = img.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = img.shape[1] * 3
    msg.data = img.tobytes()
    return msg


def camera_info_to_calibration(msg, T_cam_lidar: np.ndarray) -> Calibration:
    """Calibration from CameraInfo (rectified projection P) and the LiDAR -> camera transform."""
    P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
    if not np.any(P):
        raise MessageError("camera_info", "CameraInfo has an all-zero projection matrix P")
    return Calibration(P=P, T_cam_lidar=np.asarray(T_cam_lidar, dtype=np.float64).reshape(4, 4), image_size=(int(msg.width), int(msg.height)))


def calibration_to_camera_info(calib: Calibration, header):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    msg.header = header
    w, h = calib.image_size
    msg.width, msg.height = int(w), int(h)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = calib.K.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = calib.P.reshape(-1).tolist()
    return msg


def stamp_to_sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(t: float):
    from builtin_interfaces.msg import Time

    ns = int(round(t * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
