import math

import numpy as np
import pytest
import torch

from attnlink_ros.data.kitti import KittiSequence
from attnlink_ros.geometry.calibration import Calibration
from attnlink_ros.geometry.projection import (
    GridGeometry,
    crop_image,
    network_grid,
    project_to_grid,
    sparse_depth,
    sparse_depth_full,
    sparse_depth_torch,
)


def _reference_zbuffer(points, calib, W, H):
    """Per-point float64 reference: project every point, keep the nearest per pixel."""
    X = np.c_[points[:, :3].astype(np.float64), np.ones(len(points))]
    uvw = X @ calib.lidar_to_image.T
    out = {}
    for (a, b, w) in uvw:
        if w <= 1e-3:
            continue
        u, v = int(np.floor(a / w + 0.5)), int(np.floor(b / w + 0.5))
        if 0 <= u < W and 0 <= v < H and w < out.get((v, u), np.inf):
            out[(v, u)] = w
    return out


@pytest.mark.parametrize("seq_name, frame", [("00", 0), ("00", 7), ("08", 3)])
def test_real_frame_against_per_point_reference(kitti_root, seq_name, frame):
    seq = KittiSequence(kitti_root, seq_name)
    pts = seq.read_scan(frame)
    W, H = seq.image_size
    depth = sparse_depth_full(pts, seq.calib, W, H)
    assert depth.shape == (H, W) and depth.dtype == np.float32
    filled = depth > 0
    assert 18_000 <= filled.sum() <= 21_500  # ~18-21k of ~120k points fall inside the image
    ref = _reference_zbuffer(pts, seq.calib, W, H)
    ref_pixels = set(ref)
    got_pixels = set(zip(*np.nonzero(filled)))
    # float32 vs float64 may move a point that sits on a pixel border; allow a handful
    assert len(ref_pixels ^ got_pixels) <= 10
    common = ref_pixels & got_pixels
    got = np.array([depth[p] for p in common])
    want = np.array([ref[p] for p in common])
    assert np.mean(np.abs(got - want) <= 1e-4 * want) > 0.999


def test_depth_is_camera_z_of_winning_point(kitti_root):
    seq = KittiSequence(kitti_root, "00")
    pts = seq.read_scan(2)
    W, H = seq.image_size
    G = GridGeometry.full(W, H).grid_matrix(seq.calib.lidar_to_image)
    flat, w, idx = project_to_grid(pts, G, H, W)
    depth = sparse_depth_full(pts, seq.calib, W, H).ravel()
    # camera z of every point in the image, in float64 (camera 2 frame: P2's third row)
    X = np.c_[pts[idx, :3].astype(np.float64), np.ones(len(idx))]
    z = X @ seq.calib.lidar_to_image[2]
    win = {}
    for f, zz in zip(flat, z):
        win[f] = min(win.get(f, np.inf), zz)
    cells = np.array(list(win))
    np.testing.assert_allclose(depth[cells], np.array([win[c] for c in cells]), rtol=1e-5)
    assert np.count_nonzero(depth) == len(win)


def test_nearest_wins_and_behind_dropped():
    P = np.array([[100.0, 0, 50, 0], [0, 100.0, 40, 0], [0, 0, 1, 0]])
    Tr = np.eye(4)  # the "LiDAR" frame is the camera frame here
    calib = Calibration(P, Tr)
    pts = np.array(
        [
            [0.0, 0.0, 10.0, 0.1],  # pixel (50, 40), depth 10
            [0.001, 0.0, 5.0, 0.1],  # same pixel, nearer: wins
            [0.0, 0.0, 20.0, 0.1],  # same pixel, farther
            [0.0, 0.0, -5.0, 0.1],  # behind the camera: dropped although u/w lands in the image
            [2.0, 1.0, 4.0, 0.1],  # pixel (100, 65): outside a 100-wide image
            [-2.0, -1.0, 4.0, 0.1],  # pixel (0, 15)
        ],
        dtype=np.float32,
    )
    d = sparse_depth_full(pts, calib, 100, 80)
    assert d[40, 50] == pytest.approx(5.0)
    assert d[15, 0] == pytest.approx(4.0)
    assert np.count_nonzero(d) == 2


@pytest.mark.parametrize("seq_name", ["00", "08"])
def test_torch_path_equals_numpy_path(kitti_root, seq_name):
    seq = KittiSequence(kitti_root, seq_name)
    W, H = seq.image_size
    pts = seq.read_scan(1)
    for grid in (GridGeometry.full(W, H), network_grid(seq.calib, W, H)):
        a = sparse_depth(pts, seq.calib, grid)
        b = sparse_depth_torch(torch.from_numpy(pts), seq.calib, grid).numpy()
        assert np.array_equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_cuda_equals_numpy(kitti_root):
    seq = KittiSequence(kitti_root, "00")
    W, H = seq.image_size
    pts = seq.read_scan(4)
    grid = network_grid(seq.calib, W, H)
    a = sparse_depth(pts, seq.calib, grid)
    b = sparse_depth_torch(torch.from_numpy(pts).cuda(), seq.calib, grid).cpu().numpy()
    assert np.array_equal(a, b)


def test_network_input_keeps_real_depths(kitti_root):
    seq = KittiSequence(kitti_root, "00")
    W, H = seq.image_size
    pts = seq.read_scan(5)
    grid = network_grid(seq.calib, W, H)
    assert (grid.out_h, grid.out_w) == (128, 512)
    # the crop starts where the LiDAR's top beam reaches; nearly every in-image point is below it
    G = GridGeometry.full(W, H).grid_matrix(seq.calib.lidar_to_image)
    flat, w, _ = project_to_grid(pts, G, H, W)
    assert np.mean(flat // W >= grid.top) > 0.995
    net = sparse_depth(pts, seq.calib, grid)
    vals = net[net > 0]
    assert 12_000 < len(vals) < 20_000
    # every cell holds the depth of a real point (no averaging with empty pixels) ...
    assert np.isin(vals, w).all()
    # ... the nearest of the points whose continuous image position falls in the cell
    X = np.c_[pts[:, :3].astype(np.float64), np.ones(len(pts))]
    uvw = X @ seq.calib.lidar_to_image.T
    front = uvw[:, 2] > 1e-3
    u, v, z = uvw[front, 0] / uvw[front, 2], uvw[front, 1] / uvw[front, 2], uvw[front, 2]
    sx, sy = grid.scale
    cc = np.floor((u + 0.5 - grid.left) * sx).astype(int)
    cr = np.floor((v + 0.5 - grid.top) * sy).astype(int)
    ok = (cr >= 0) & (cr < grid.out_h) & (cc >= 0) & (cc < grid.out_w)
    ref = np.full(grid.out_h * grid.out_w, np.inf)
    np.minimum.at(ref, cr[ok] * grid.out_w + cc[ok], z[ok])
    ref[np.isinf(ref)] = 0
    agree = np.isclose(ref, net.ravel(), rtol=1e-5)
    assert agree.mean() > 0.999  # float32 vs float64 may move a point across a cell border


def test_crop_image(kitti_root):
    seq = KittiSequence(kitti_root, "08")
    W, H = seq.image_size
    grid = network_grid(seq.calib, W, H, out_h=64, out_w=256)
    img = seq.read_image(0)
    small = crop_image(img, grid)
    assert small.shape == (64, 256, 3) and small.dtype == np.uint8
    with pytest.raises(ValueError, match="grid expects"):
        crop_image(img[:-1], grid)
    with pytest.raises(ValueError, match="outside"):
        network_grid(seq.calib, W, H, top=H)


def test_level_grid_sees_the_same_angles_through_any_camera(kitti_root):
    """The level grid of KITTI's camera is network_grid's crop exactly (so the synthetic towns' and
    KITTI's inputs do not change), and through KITTI-360's camera (focal 552 px, looking 5 degrees
    down) a LiDAR-frame direction lands on the same grid row as through KITTI's (network_grid's
    crop puts the horizon 8 rows lower and 20 degrees off 14-21 columns nearer the centre)."""
    from attnlink_ros.geometry.projection import KITTI_FOV_DEG, grid_fov_deg, level_grid

    seq = KittiSequence(kitti_root, "00")
    W, H = seq.image_size
    assert level_grid(seq.calib, W, H, 64, 256, KITTI_FOV_DEG) == network_grid(seq.calib, W, H, 64, 256)
    assert np.allclose(grid_fov_deg(seq.calib, network_grid(seq.calib, W, H, 64, 256)), KITTI_FOV_DEG, atol=2e-3)
    extra = kitti_root.parent / "kitti_extra"
    if not (extra / "dataset" / "sequences" / "k360").is_dir():
        pytest.skip("kitti_extra (KITTI-360 calibration) not found beside the KITTI root")
    k360 = KittiSequence(extra, "k360")
    Wk, Hk = k360.image_size
    g0, g1 = level_grid(seq.calib, W, H, 64, 256), level_grid(k360.calib, Wk, Hk, 64, 256)
    assert g1.top > 100 and g1.left > 200  # the crop moves down and in: KITTI-360's camera looks down, sees wider
    # far points straight ahead and 20 degrees off, 5 degrees down and level, in the LiDAR frame
    dirs = [(math.radians(e), math.radians(a)) for e in (-5.0, 0.0) for a in (-20.0, 0.0, 20.0)]
    pts = np.array([[500 * math.cos(e) * math.cos(a), 500 * math.cos(e) * math.sin(a), 500 * math.sin(e)] for e, a in dirs], np.float32)
    cells = []
    for calib, g in ((seq.calib, g0), (k360.calib, g1), (k360.calib, network_grid(k360.calib, Wk, Hk, 64, 256))):
        flat, _, idx = project_to_grid(pts, g.grid_matrix(calib.lidar_to_image), g.out_h, g.out_w)
        assert len(idx) == len(pts)
        cells.append(np.stack([flat // g.out_w, flat % g.out_w], 1))
    # the same row within one (the elevation: what fixes the ground's depth); columns within 6 of 256,
    # since a crop cannot undo KITTI-360's camera yaw of about a degree (a rotation, not a shift)
    assert np.abs(cells[0][:, 0] - cells[1][:, 0]).max() <= 1 and np.abs(cells[0][:, 1] - cells[1][:, 1]).max() <= 6
    assert np.abs(cells[0][:, 0] - cells[2][:, 0]).max() >= 8 and np.abs(cells[0][:, 1] - cells[2][:, 1]).max() >= 14
    # a window reaching past the image (KITTI raw's camera is 3 px shorter): black there, no error
    wide = GridGeometry(H, W, g0.top, -10, g0.crop_h + 20, W + 20, 64, 256)
    small = crop_image(seq.read_image(0), wide)
    assert small.shape == (64, 256, 3) and not small[:, 0].any() and small[:, 5].any()
