import dataclasses
import json

import numpy as np
import pytest
import torch

from attnlink_ros.data.cache import FrameCache, build_cache
from attnlink_ros.errors import DataError
from attnlink_ros.model import AttnLink, variant
from attnlink_ros.model.io import load_model, save_model
from attnlink_ros.train.augment import make_sample, model_grid
from attnlink_ros.train.losses import adaptive_triplet_loss, completion_loss, heading_gap_deg, pair_masks
from attnlink_ros.train.trainer import BatchSampler, RunConfig, train


def test_triplet_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.8, 0.6], [1.0, 0.0]])
    pos = torch.tensor([[True, False], [False, True]])
    neg = ~pos
    loss, st = adaptive_triplet_loss(a, t, pos, neg, margin_min=0.1, margin_max=0.6)
    d = torch.cdist(a, t)
    margin = float((d[neg].mean() - d[pos].mean()).clamp(0.1, 0.6))
    want = (torch.relu(d[0, 0] - d[0, 1] + margin) + torch.relu(d[1, 1] - d[1, 0] + margin)) / 2
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    assert st["margin"] == pytest.approx(margin)


def test_margin_follows_separation():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    pos = torch.eye(16, dtype=torch.bool)
    noisy = torch.nn.functional.normalize(a + 3 * torch.randn(16, 8), dim=1)
    _, mixed = adaptive_triplet_loss(a, noisy, pos, ~pos)
    _, separated = adaptive_triplet_loss(a, a, pos, ~pos)
    assert separated["margin"] == pytest.approx(0.6)  # clipped at margin_max
    assert 0.1 <= mixed["margin"] < 0.5


def test_pair_masks_and_completion():
    xy = torch.tensor([[0.0, 0.0], [3.0, 0.0], [7.0, 0.0], [30.0, 0.0]])
    pos, neg = pair_masks(xy, torch.zeros(4))
    assert pos[0, 1] and not pos[0, 2] and not neg[0, 2] and neg[0, 3] and pos[0, 0]
    pos2, neg2 = pair_masks(xy, torch.tensor([0, 1, 0, 0]))
    assert not pos2[0, 1] and neg2[0, 1]
    dense = torch.full((1, 1, 2, 2), 10.0)
    target = torch.tensor([[[[0.0, 12.0], [0.0, 0.0]]]])
    assert float(completion_loss(dense, target, 80.0)) == pytest.approx(2.0 / 80)


def test_heading_aware_positives():
    """pos_heading_deg: a pair within the positive radius facing the other way is neither a
    positive nor a negative; facing the same way (across the +-180 seam too) it stays positive."""
    assert heading_gap_deg(np.array([170.0, 10.0, 90.0]), np.array([-170.0, 350.0, -90.0])).tolist() == [20.0, 20.0, 180.0]
    from attnlink_ros.retrieval.views import wrap_deg

    a, b = np.random.default_rng(0).uniform(-720, 720, (2, 1000))
    assert np.allclose(heading_gap_deg(a, b), np.abs(wrap_deg(a - b)))  # the project's wrap, for tensors too
    assert torch.allclose(heading_gap_deg(torch.tensor(a), torch.tensor(b)), torch.tensor(np.abs(wrap_deg(a - b))))
    xy = torch.tensor([[0.0, 0.0], [3.0, 0.0], [2.0, 0.0], [30.0, 0.0]])
    heading = torch.tensor([175.0, -175.0, -5.0, 0.0])
    pos, neg = pair_masks(xy, torch.zeros(4), heading_deg=heading, max_heading_deg=45.0)
    assert pos[0, 1] and not pos[0, 2] and not neg[0, 2] and neg[0, 3]
    assert torch.equal(pair_masks(xy, torch.zeros(4))[0][0], torch.tensor([True, True, True, False]))


def test_batch_sampler_draws_partners_facing_the_same_way():
    """A drive out and back along a line: every revisit faces the other way, so with
    max_heading_deg the sampler's partners are the neighbours of the same pass, never the return."""
    n = 40
    x = np.concatenate([np.arange(n // 2), np.arange(n // 2)[::-1]]).astype(float)
    cache = dataclasses.make_dataclass("C", ["xy", "times"])(np.stack([x, np.zeros(n)], 1), np.arange(n) * 10.0)
    cache.__class__.__len__ = lambda self: n
    heading = np.where(np.arange(n) < n // 2, 0.0, 180.0)
    plain = BatchSampler([cache], 64, 1.5, 1.0, seed=0)
    aware = BatchSampler([cache], 64, 1.5, 1.0, seed=0, headings=[heading], max_heading_deg=45.0)
    _, idx, rear = plain()
    assert not rear.any() and any(heading_gap_deg(heading[a], heading[p]) > 90 for a, p in idx.reshape(-1, 2))
    for _ in range(5):
        _, idx, rear = aware()
        pairs = idx.reshape(-1, 2)
        assert not rear.any() and all(heading_gap_deg(heading[a], heading[p]) <= 45 and abs(x[a] - x[p]) <= 1.5 for a, p in pairs)
    # rear_share 1: every anchor with a return pass takes it, marked as its rear view (which faces the anchor's way)
    back = BatchSampler([cache], 64, 1.5, 1.0, seed=0, headings=[heading], max_heading_deg=45.0, rear_share=1.0)
    _, idx, rear = back()
    pairs, flags = idx.reshape(-1, 2), rear.reshape(-1, 2)
    assert flags[:, 1].all() and not flags[:, 0].any()
    assert all(heading_gap_deg(heading[a], heading[p]) >= 135 and abs(x[a] - x[p]) <= 1.5 for a, p in pairs)


def test_rear_view_cache_and_samples_on_real_frames(kitti_root, tmp_path):
    """A cache built with rear views holds each scan's view 180 (from the reverse offset), the
    same depth the map builder encodes for a place's rear view; the camera's part is unchanged."""
    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.geometry.projection import sparse_depth
    from attnlink_ros.retrieval.views import rotate_scan, vertical_axis, view_offsets

    plain = FrameCache.open(build_cache(kitti_root, "00", tmp_path / "c", 128, 512, progress=False))
    c = FrameCache.open(build_cache(kitti_root, "00", tmp_path / "rv", 128, 512, progress=False, rear_view=True))
    for name in ("images", "points", "offsets", "frames", "xy"):
        assert np.array_equal(getattr(plain, name), getattr(c, name)), name
    grid = model_grid(c, 64, 256)
    seq = KittiSequence(kitti_root, "00")
    k = 3
    scan = rotate_scan(seq.read_scan(int(c.frames[k])), 180.0, vertical_axis(seq.calib.T_cam_lidar), view_offsets([180.0])[0])
    want = sparse_depth(scan[:, :3].astype(np.float16).astype(np.float32), c.calib, grid)
    rgb, depth, _ = make_sample(c, k, grid, None, rear=True)
    _, front, _ = make_sample(c, k, grid, None)
    both = (depth[0] > 0) & (want > 0)
    assert both.sum() > 0.99 * max((depth[0] > 0).sum(), (want > 0).sum()) and np.allclose(depth[0][both], want[both], rtol=1e-3)
    assert (depth > 0).sum() > 3000 and np.abs(depth - front).mean() > 1.0  # another scene than the camera's
    assert np.array_equal(rgb, make_sample(c, k, grid, None)[0])
    with pytest.raises(DataError, match="no rear views"):
        make_sample(plain, k, grid, None, rear=True)


def test_joint_step_keeps_rear_views_out_of_the_image_terms():
    """A rear-view sample is a LiDAR query and target only: its image (not of that view) gets no
    gradient, while its depth does (the LiDAR terms)."""
    from attnlink_ros.train.trainer import TrainConfig, _joint_step

    torch.manual_seed(0)
    model = AttnLink(variant("attnlink-lite", image_depth=True)).eval()  # eval: BatchNorm does not couple the samples
    rgb = torch.rand(4, 3, 64, 256, requires_grad=True)
    depth = (torch.rand(4, 1, 64, 256) * 40 * (torch.rand(4, 1, 64, 256) < 0.1)).requires_grad_(True)
    xy = torch.tensor([[0.0, 0.0], [2.0, 0.0], [40.0, 0.0], [42.0, 0.0]])
    heading = torch.tensor([0.0, 0.0, 90.0, 90.0])
    pos, neg = pair_masks(xy, torch.zeros(4), 5.0, 10.0, heading, 45.0)
    rear = torch.tensor([False, True, False, False])
    loss, stats = _joint_step(model, rgb, depth, torch.zeros_like(depth), pos, neg, TrainConfig(distill_weight=1.0), 80.0, 0, rear)
    loss.backward()
    assert stats["rear_views"] == 0.25 and torch.isfinite(loss)
    assert float(rgb.grad[1].abs().sum()) == 0.0 and float(rgb.grad[0].abs().sum()) > 0
    assert float(depth.grad[1].abs().sum()) > 0


def test_model_artifact_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    m = AttnLink(variant("attnlink-lite")).eval()
    meta_path = save_model(m, tmp_path / "m", {"note": "test"})
    m2, meta = load_model(meta_path)
    assert meta["note"] == "test" and len(meta["fingerprint"]) == 64
    x = torch.rand(1, 3, 64, 256)
    with torch.no_grad():
        assert torch.equal(m(rgb=x).descriptor, m2(rgb=x).descriptor)
    w = tmp_path / "m.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(DataError, match="fingerprint"):
        load_model(tmp_path / "m")
    with pytest.raises(DataError, match="model config not found"):
        load_model(tmp_path / "nothing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_model(tmp_path / "bad")


def test_cache_and_samples_on_real_frames(kitti_root, tmp_path):
    path = build_cache(kitti_root, "00", tmp_path / "c", 128, 512, progress=False)
    c = FrameCache.open(path)
    one = FrameCache.open(build_cache(kitti_root, "00", tmp_path / "c1", 128, 512, progress=False, threads=1))
    for name in ("images", "points", "offsets", "frames", "xy", "times"):  # threads read; the order is kept
        assert np.array_equal(getattr(one, name), getattr(c, name)), name
    assert len(c) == 10 and c.images.shape == (10, 128, 512, 3)
    assert c.grid.top == 120
    grid = model_grid(c, 64, 256)
    rgb, depth, target = make_sample(c, 3, grid, None)
    assert rgb.shape == (3, 64, 256) and 0 <= rgb.min() and rgb.max() <= 1
    assert depth.shape == (1, 64, 256) and (depth > 0).sum() > 5000 and not target.any()
    rgb2, depth2, target2 = make_sample(c, 3, grid, np.random.default_rng(0))
    assert (target2 > 0).sum() > 300 and not np.any((target2 > 0) & (depth2 > 0))
    # pixel noise (augment.noise): on about half of the samples, never outside [0, 1]; none by default
    from attnlink_ros.train.augment import AugmentConfig

    still = AugmentConfig(brightness=0.0, contrast=0.0, rotation_deg=0.0, translation_m=0.0, keep_min=1.0, hide=0.0)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    noisy = [make_sample(c, 3, grid, rng_a, dataclasses.replace(still, noise=0.15))[0] for _ in range(20)]
    plain = [make_sample(c, 3, grid, rng_b, still)[0] for _ in range(20)]
    assert all(np.allclose(p, rgb, atol=1e-6) for p in plain)
    changed = sum(float(np.abs(n - rgb).mean()) > 1e-3 for n in noisy)
    assert 3 <= changed <= 17 and all(0 <= n.min() and n.max() <= 1 for n in noisy)
    # blur (augment.blur): on about a quarter of the samples; a blurred image keeps its mean, loses detail
    blurred = [make_sample(c, 3, grid, np.random.default_rng(k), dataclasses.replace(still, blur=2.0))[0] for k in range(40)]
    soft = [b for b in blurred if float(np.abs(b - rgb).mean()) > 1e-3]
    assert 3 <= len(soft) <= 20 and all(b.shape == rgb.shape and b.dtype == np.float32 for b in blurred)
    detail = lambda im: float(np.abs(np.diff(im, axis=2)).mean())  # noqa: E731
    assert all(detail(b) < detail(rgb) and abs(float(b.mean() - rgb.mean())) < 0.01 for b in soft)
    # the depth branch's input made wrong (augment.depth_scale, far_band_drop): one scale for input
    # and target alike, within the range; the far band (top third) loses its returns on about that share
    _, d0, _ = make_sample(c, 3, grid, np.random.default_rng(5), still)
    ratios = []
    for k in range(20):
        _, d, t = make_sample(c, 3, grid, np.random.default_rng(k), dataclasses.replace(still, depth_scale=0.2))
        r = d[d0 > 0] / d0[d0 > 0]
        assert np.allclose(r, r[0], rtol=1e-5) and not t.any()
        ratios.append(float(r[0]))
    assert np.exp(-0.2) <= min(ratios) < 0.95 and 1.05 < max(ratios) <= np.exp(0.2)
    dropped = [make_sample(c, 3, grid, np.random.default_rng(k), dataclasses.replace(still, far_band_drop=0.5))[1] for k in range(40)]
    band = 64 // 3
    assert d0[:, :band].any()
    gone = [not d[:, :band].any() for d in dropped]
    assert 8 <= sum(gone) <= 32 and all(np.array_equal(d[:, band:], d0[:, band:]) for d in dropped)
    with pytest.raises(DataError, match="no manifest"):
        FrameCache.open(tmp_path)


def test_train_resume_and_eval(synth_root, tmp_path):
    cfg_text = f"""
model: {{variant: attnlink-lite}}
data:
  train: [{{root: {synth_root}, sequence: "00"}}]
  val: [{{root: {synth_root}, sequence: "00"}}]
  cache_dir: {tmp_path / 'cache'}
train: {{out: {tmp_path / 'run'}, steps: 2, batch_size: 4, eval_every: 2, checkpoint_every: 1, log_every: 1, warmup_steps: 1,
        pos_heading_deg: 45.0}}
"""
    (tmp_path / "c.yaml").write_text(cfg_text)
    res = train(RunConfig.load(tmp_path / "c.yaml"), progress=False)
    assert res["steps"] == 2
    run = tmp_path / "run"
    assert json.loads((run / "last" / "state.json").read_text())["step"] == 2
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("completion" in rec for rec in lines)
    res = train(RunConfig.load(tmp_path / "c.yaml", {"steps": 3}), progress=False)  # resumes at 2
    assert res["steps"] == 3
    assert json.loads((run / "last" / "state.json").read_text())["step"] == 3
    model, meta = load_model(run / "final")
    assert meta["trained_steps"] == 3 and model.cfg.variant == "attnlink-lite"
    res = train(RunConfig.load(tmp_path / "c.yaml", {"steps": 3}), progress=False)  # finished: trains nothing
    assert res["steps"] == 3 and json.loads((run / "last" / "state.json").read_text())["step"] == 3
    # a time budget (a GPU lease) ends the run before its steps, validated, saved and with the
    # learning rate decayed: here the budget is spent after the first step
    res = train(RunConfig.load(tmp_path / "c.yaml", {"steps": 50, "time_budget_s": 1e-3, "out": str(tmp_path / "timed")}), progress=False)
    assert res["steps"] == 1 and res["history"][-1]["step"] == 1
    assert load_model(tmp_path / "timed" / "final")[1]["trained_steps"] == 1
    lr = [json.loads(line).get("lr") for line in (tmp_path / "timed" / "log.jsonl").read_text().splitlines()]
    # without decay the budget only stops it: the next lease resumes at the step's learning rate
    res = train(RunConfig.load(tmp_path / "c.yaml", {"steps": 50, "time_budget_s": 1e-3, "time_budget_decay": False,
                                                     "out": str(tmp_path / "leases")}), progress=False)
    res = train(RunConfig.load(tmp_path / "c.yaml", {"steps": 50, "time_budget_s": 1e-3, "time_budget_decay": False,
                                                     "out": str(tmp_path / "leases")}), progress=False)
    assert res["steps"] == 2
    lr2 = [json.loads(line)["lr"] for line in (tmp_path / "leases" / "log.jsonl").read_text().splitlines() if "lr" in line]
    assert lr2[-1] > 0.5 * 1e-3 and [v for v in lr if v is not None] == [1e-3]  # warmup 1: step 0's lr, then the schedule
    with pytest.raises(Exception, match="pos_heading_deg"):
        RunConfig.load(tmp_path / "c.yaml", {"pos_heading_deg": 200.0})


def test_train_with_rear_views_builds_their_caches(synth_root, tmp_path):
    """rear_view_share: the run reads caches built with rear views (suffix _rv) and draws rear-view
    samples (logged share) where revisits face the other way; without pos_heading_deg it is refused."""
    slow = _slowed_drive(synth_root, tmp_path)  # frames 10 s apart: revisits
    poses = slow / "dataset" / "poses" / "00.txt"
    rows = np.loadtxt(poses).reshape(-1, 3, 4)
    rows[12:, :, [0, 2]] *= -1  # the second half recorded facing back (the camera turned 180 degrees about its y axis)
    np.savetxt(poses, rows.reshape(-1, 12))
    (tmp_path / "c.yaml").write_text(f"""
model: {{variant: attnlink-lite}}
data:
  train: [{{root: {slow}, sequence: "00"}}]
  cache_dir: {tmp_path / 'cache'}
  cache_size: [64, 256]
train: {{out: {tmp_path / 'run'}, steps: 2, batch_size: 8, log_every: 1, warmup_steps: 1, pos_heading_deg: 45.0,
        rear_view_share: 1.0, pos_radius_m: 60.0}}
""")
    train(RunConfig.load(tmp_path / "c.yaml"), progress=False)
    (cache,) = (tmp_path / "cache").iterdir()
    assert cache.name.endswith("_rv") and FrameCache.open(cache).rear_points is not None
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(0.0 < rec["rear_views"] <= 0.5 for rec in lines)
    with pytest.raises(Exception, match="rear_view_share needs"):
        RunConfig.load(tmp_path / "c.yaml", {"pos_heading_deg": 0.0})


def test_torchrun_two_processes(synth_root, tmp_path):
    """The same command on several processes (DistributedDataParallel, gloo on CPU)."""
    import subprocess
    import sys

    (tmp_path / "c.yaml").write_text(f"""
model: {{variant: attnlink-lite}}
data:
  train: [{{root: {synth_root}, sequence: "00"}}]
  cache_dir: {tmp_path / 'cache'}
train: {{out: {tmp_path / 'run'}, steps: 2, batch_size: 4, checkpoint_every: 1, log_every: 1, warmup_steps: 1}}
""")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29571", "-m", "attnlink_ros",
                        "train", "--config", str(tmp_path / "c.yaml"), "--quiet"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("trained 2 steps") == 1  # only rank 0 reports
    assert json.loads((tmp_path / "run" / "last" / "state.json").read_text())["step"] == 2


def test_mono_stage_trains_only_the_pseudo_lidar_network(synth_root, tmp_path):
    """train.stage mono from a model without image_depth: the new network starts fresh and
    learns; every other weight (so every LiDAR map built with the model) stays bit-identical."""
    torch.manual_seed(0)
    init = save_model(AttnLink(variant("attnlink-lite")).eval(), tmp_path / "init")
    (tmp_path / "c.yaml").write_text(f"""
model: {{variant: attnlink-lite, image_depth: true}}
data:
  train: [{{root: {synth_root}, sequence: "00"}}]
  val: [{{root: {synth_root}, sequence: "00"}}]
  cache_dir: {tmp_path / 'cache'}
  cache_size: [64, 256]
train: {{out: {tmp_path / 'run'}, init_from: {init}, stage: mono, modes: [image], steps: 3, batch_size: 4, eval_every: 3,
        log_every: 1, warmup_steps: 1, lr: 0.01, distill_weight: 1.0, pseudo_feature_weight: 1.0}}
augment: {{rotation_deg: 0.0, translation_m: 0.0, keep_min: 1.0, hide: 0.0}}
""")
    res = train(RunConfig.load(tmp_path / "c.yaml"), progress=False)
    # validated at the start (the model it starts from) and at step 3 (the tiny drive has no revisit: nan)
    assert res["steps"] == 3 and [h["step"] for h in res["history"]] == [0, 3]
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and lines[0]["init_from"] == str(init)
    assert all(k in lines[1] for k in ("pseudo_depth", "pseudo_return", "pseudo_feature", "distill_image"))
    before, _ = load_model(init)
    after, _ = load_model(tmp_path / "run" / "final")
    assert after.cfg.image_depth
    old = before.state_dict()
    for k, v in after.state_dict().items():
        if k.startswith("mono."):
            continue
        assert torch.equal(v, old[k]), k  # frozen weights and BatchNorm statistics alike
    fresh = AttnLink(variant("attnlink-lite", image_depth=True)).mono.state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in after.mono.state_dict().items())
    # a joint-stage config refuses a mono stage without the network
    (tmp_path / "bad.yaml").write_text((tmp_path / "c.yaml").read_text().replace("image_depth: true", "image_depth: false"))
    with pytest.raises(Exception, match="image_depth"):
        train(RunConfig.load(tmp_path / "bad.yaml"), fresh=True, progress=False)


def _slowed_drive(synth_root, tmp_path):
    """The 24-frame drive with its clock slowed 100x: frames lie 10 s apart, so later frames
    revisit earlier places."""
    import shutil

    slow = tmp_path / "slow"
    shutil.copytree(synth_root, slow)
    times = slow / "dataset" / "sequences" / "00" / "times.txt"
    times.write_text("".join(f"{float(t) * 100:.6e}\n" for t in times.read_text().split()))
    return slow


def test_validation_score_averages_image_noise_levels(synth_root, tmp_path):
    """train.val_noise: the selection score is the image revisit Recall@1 averaged over the
    validation sequences and noise levels, each level as `attnlink eval --robustness` measures it."""
    from attnlink_ros.evaluation.protocols import make_protocol
    from attnlink_ros.evaluation.robustness import image_noise_recall

    slow = _slowed_drive(synth_root, tmp_path)
    torch.manual_seed(0)
    init = save_model(AttnLink(variant("attnlink-lite", image_depth=True)).eval(), tmp_path / "init")
    (tmp_path / "c.yaml").write_text(f"""
model: {{variant: attnlink-lite, image_depth: true}}
data:
  train: [{{root: {synth_root}, sequence: "00"}}]
  val: [{{root: {slow}, sequence: "00"}}]
  cache_dir: {tmp_path / 'cache'}
  cache_size: [64, 256]
train: {{out: {tmp_path / 'run'}, init_from: {init}, stage: mono, modes: [image], steps: 1, batch_size: 4, eval_every: 1,
        warmup_steps: 1, val_noise: [0.0, 0.1, 0.15]}}
augment: {{rotation_deg: 0.0, translation_m: 0.0, keep_min: 1.0, hide: 0.0, noise: 0.1, blur: 1.0}}
""")
    res = train(RunConfig.load(tmp_path / "c.yaml"), progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    start = lines[0]
    (name, val), = start["val"].items()
    assert val["revisit"]["image"]["queries"] > 0 and set(val["image_noise"]) == {"0.0", "0.1", "0.15"}
    assert val["image_noise"]["0.0"] == val["revisit"]["image"]["recall@1"]
    assert start["val_image_recall@1"] == pytest.approx(np.mean(list(val["image_noise"].values())))
    # the same numbers as the robustness study gives the starting model
    model, _ = load_model(init)
    cache = FrameCache.open(next((tmp_path / "cache").glob("slow_00_*")))
    assert cache.name == name
    proto = make_protocol("revisit", cache.xy, cache.times)
    from attnlink_ros.evaluation.recall import encode_cache

    db = encode_cache(model, cache, modes=("lidar",))["lidar"]
    ref = image_noise_recall(model, cache, proto, db, (0.1, 0.15))
    assert val["image_noise"]["0.1"] == ref["0.1"]["image"]["recall@1"]
    assert val["image_noise"]["0.15"] == ref["0.15"]["image"]["recall@1"]
    assert [h["step"] for h in res["history"]] == [0, 1]
    with pytest.raises(Exception, match="val_noise"):
        RunConfig.load(tmp_path / "c.yaml", {"val_noise": [1.5]})


def test_mono_stage_widens_the_pseudo_lidar_network(synth_root, tmp_path):
    """model.mono_widths wider than init_from's: the trained U-Net is widened (function-preserving,
    test_model) and keeps training, the rest stays frozen; a narrower one is refused in one line."""
    torch.manual_seed(0)
    init = save_model(AttnLink(variant("attnlink-lite", image_depth=True, mono_widths=(8, 16, 24, 32))).eval(),
                      tmp_path / "init")
    (tmp_path / "c.yaml").write_text(f"""
model: {{variant: attnlink-lite, image_depth: true, mono_widths: [12, 16, 40, 48]}}
data:
  train: [{{root: {synth_root}, sequence: "00"}}]
  cache_dir: {tmp_path / 'cache'}
  cache_size: [64, 256]
train: {{out: {tmp_path / 'run'}, init_from: {init}, stage: mono, modes: [image], steps: 1, batch_size: 4,
        warmup_steps: 1, pseudo_feature_weight: 1.0}}
augment: {{rotation_deg: 0.0, translation_m: 0.0, keep_min: 1.0, hide: 0.0}}
""")
    assert train(RunConfig.load(tmp_path / "c.yaml"), progress=False)["steps"] == 1
    before, _ = load_model(init)
    after, _ = load_model(tmp_path / "run" / "final")
    assert after.cfg.mono_widths == (12, 16, 40, 48)
    # the old channels moved from the init's values (they train), the LiDAR side did not
    assert not torch.equal(after.mono.head.weight[:, :8], before.mono.head.weight)
    old = before.state_dict()
    assert all(torch.equal(v, old[k]) for k, v in after.state_dict().items() if not k.startswith("mono."))
    (tmp_path / "narrow.yaml").write_text((tmp_path / "c.yaml").read_text().replace("[12, 16, 40, 48]", "[8, 16, 16, 32]"))
    from attnlink_ros.errors import ConfigError

    with pytest.raises(ConfigError, match="narrower"):
        train(RunConfig.load(tmp_path / "narrow.yaml"), fresh=True, progress=False)


def test_rear_view_negatives_and_two_view_validation(synth_root, tmp_path):
    """Mono stage with rear_negative_weight and val_views 2: the term is logged and trains the
    U-Net only; validation scores image queries against a map of two heading views (the rear
    views those of the shipped map builder) and reports recall by heading."""
    from attnlink_ros.train.trainer import rear_view_nce

    slow = _slowed_drive(synth_root, tmp_path)
    torch.manual_seed(0)
    init = save_model(AttnLink(variant("attnlink-lite", image_depth=True)).eval(), tmp_path / "init")
    (tmp_path / "c.yaml").write_text(f"""
model: {{variant: attnlink-lite, image_depth: true}}
data:
  train: [{{root: {slow}, sequence: "00"}}]
  val: [{{root: {slow}, sequence: "00"}}]
  cache_dir: {tmp_path / 'cache'}
  cache_size: [64, 256]
train: {{out: {tmp_path / 'run'}, init_from: {init}, stage: mono, modes: [image], steps: 2, batch_size: 4, eval_every: 2,
        log_every: 1, warmup_steps: 1, lr: 0.01, distill_weight: 1.0, rear_negative_weight: 1.0, rear_negatives: 4,
        neg_radius_m: 10.0, val_views: 2}}
augment: {{rotation_deg: 0.0, translation_m: 0.0, keep_min: 1.0, hide: 0.0}}
""")
    train(RunConfig.load(tmp_path / "c.yaml"), progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "rear_nce" in lines[1] and np.isfinite(lines[1]["rear_nce"]) and 0.0 <= lines[1]["rear_beats_own"] <= 1.0
    (val,) = lines[0]["val"].values()
    assert val["revisit"]["ceiling"]["view_count"] == 2 and "by_heading" in val["revisit"]["image"]
    before, after = load_model(init)[0], load_model(tmp_path / "run" / "final")[0]
    old = before.state_dict()
    assert all(torch.equal(v, old[k]) for k, v in after.state_dict().items() if not k.startswith("mono."))
    # the term itself: a query equal to its own LiDAR descriptor and unlike every rear view scores
    # low; the same query where a far rear view equals it scores higher; near rear views never count
    q = torch.nn.functional.normalize(torch.randn(1, 8), dim=1)
    xy, far, near = torch.zeros(1, 2), torch.tensor([[100.0, 0]]), torch.tensor([[5.0, 0]])
    good, st = rear_view_nce(q, q, xy, -q, far, 10.0, 2, 0.1)  # the rear views are all unlike it
    bad, st_bad = rear_view_nce(q, q, xy, torch.cat([-q, q]), torch.cat([far, far]), 10.0, 2, 0.1)  # a far place's rear view equals it
    same_place, _ = rear_view_nce(q, q, xy, torch.cat([-q, q]), torch.cat([far, near]), 10.0, 2, 0.1)  # its own place, seen back
    assert good < bad and same_place == pytest.approx(float(good), rel=1e-6) and st["rear_beats_own"] == 0.0
    # batch positives: frame 1, 3 m from frame 0 (a revisit), holds frame 0's image descriptor in its
    # LiDAR one; frame 2, 100 m away, too (a confuser). Within pos_radius frame 1 rescues frame 0.
    r = torch.nn.functional.normalize(torch.randn(1, 8), dim=1)
    q3, own3 = torch.cat([q, q, q]), torch.cat([r, q, q])
    xy3 = torch.tensor([[0.0, 0], [3.0, 0], [100.0, 0]])
    alone, _ = rear_view_nce(q3, own3, xy3, -q, far, 10.0, 1, 0.1)
    paired, _ = rear_view_nce(q3, own3, xy3, -q, far, 10.0, 1, 0.1, pos_radius=5.0)
    assert paired < alone and float(rear_view_nce(q, q, xy, -q, far, 10.0, 2, 0.1, pos_radius=5.0)[0]) == pytest.approx(float(good))
    with pytest.raises(Exception, match="rear_negative_weight"):
        RunConfig.load(tmp_path / "c.yaml", {"stage": "joint"})
