"""Issue 20: real depth measured, the ImageNet-pretrained encoder loaded key by key, and the
pseudo-LiDAR network trained on real pairs with a real fold held out."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from attnlink_ros.data.real import RealFolds, load_real_frames
from attnlink_ros.evaluation.depth import depth_sums, evaluate_depth, metrics, row_median_image
from attnlink_ros.model.efficientnet import LITE0_SHA256, EfficientNetLite0Features, MonoDepthLite0, load_imagenet_weights, pretrained_weights_file

from .conftest import PKG, REPO


def test_lite0_imagenet_weights_load_key_by_key(tmp_path):
    path = pretrained_weights_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LITE0_SHA256  # the file the project recorded
    feats = EfficientNetLite0Features()
    info = load_imagenet_weights(feats)
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = feats.state_dict()
    assert info["loaded"] == len(own) == 288
    # every tensor of the module came from the file, shapes equal; only the classifier head is left
    assert all(torch.equal(own[k], state[k]) for k in own)
    assert {k.split(".")[0] for k in info["unused"]} == {"_conv_head", "_bn1", "_fc"}
    assert feats.out_channels == (16, 24, 40, 112, 320)
    x = torch.rand(2, 3, 64, 256)
    shapes = [tuple(f.shape[1:]) for f in feats.eval()(x)]
    assert shapes == [(16, 32, 128), (24, 16, 64), (40, 8, 32), (112, 4, 16), (320, 2, 8)]
    # a file that lacks tensors is refused with a clear error
    from attnlink_ros.errors import AttnLinkError

    torch.save({k: v for k, v in state.items() if not k.startswith("_blocks.15.")}, tmp_path / "other.pth")
    with pytest.raises(AttnLinkError, match="no weights"):
        load_imagenet_weights(EfficientNetLite0Features(), tmp_path / "other.pth")


def test_mono_lite0_outputs_the_depth_branch_input():
    m = MonoDepthLite0(pretrained=False).eval()
    d, logit = m(torch.rand(1, 3, 64, 256))
    assert d.shape == logit.shape == (1, 1, 64, 256) and bool((d > 0).all()) and bool((d < 80).all())
    assert torch.allclose(d, torch.full_like(d, 15.0))  # a fresh head starts at 15 m everywhere
    assert m.encoder.out_channels == (16, 24, 40, 112)  # cut at stride 16: 0.70 M of Lite0's 2.96 M weights
    assert sum(p.numel() for p in m.encoder.parameters()) == 700768


def test_depth_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    t = np.where(rng.random((1, 8, 16)) < 0.5, rng.uniform(1, 100, (1, 8, 16)), 0).astype(np.float32)
    p = rng.uniform(1, 60, t.shape).astype(np.float32)
    m = metrics(depth_sums(p, t))
    ok = [(pp, tt) for pp, tt in zip(p.ravel(), t.ravel()) if 0 < tt <= 80]
    assert m["pixels"] == len(ok)
    assert m["abs_rel"] == pytest.approx(np.mean([abs(a - b) / b for a, b in ok]), abs=1e-4)
    assert m["rmse_m"] == pytest.approx(np.sqrt(np.mean([(a - b) ** 2 for a, b in ok])), abs=1e-3)
    assert m["delta1"] == pytest.approx(np.mean([max(a / b, b / a) < 1.25 for a, b in ok]), abs=1e-4)
    assert metrics(depth_sums(t, t))["abs_rel"] == 0.0  # the truth scores perfectly


def test_eval_depth_and_pseudo_depth_on_real_kitti(kitti_root, tmp_path):
    out = subprocess.run([sys.executable, "-m", "attnlink_ros", "eval", "--depth", "--data", str(kitti_root), "--sequences", "00", "08",
                          "--json", str(tmp_path / "d.json"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    table = json.loads((tmp_path / "d.json").read_text())["depth"]
    assert set(table) == {"00", "08", "pooled"} and table["pooled"]["frames"] == 20
    for row in table.values():
        assert row["model"]["pixels"] > 10000 and 0 < row["model"]["abs_rel"] and 0 <= row["row_median"]["delta1"] <= 1
    assert "row-median baseline" in out.stdout
    # the shipped model's camera network trained on these drives: said, on one line
    warn = [ln for ln in out.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "(00, 08, its real_train_drives)" in warn[0] and "not held out" in warn[0], out.stderr
    # the baseline computed by hand from the same frames
    from attnlink_ros.model.io import load_model

    frames = load_real_frames([kitti_root], 64, 256, ["00", "08"], fov_deg=load_model(None)[0].cfg.input_fov_deg)  # the model's grid
    base = row_median_image(frames.depth)
    assert evaluate_depth(np.broadcast_to(base, frames.depth.shape), frames)["pooled"]["model"] == table["pooled"]["row_median"]
    seq = kitti_root / "dataset" / "sequences" / "00"
    out = subprocess.run([sys.executable, "-m", "attnlink_ros", "project", "--calib", str(seq / "calib.txt"), "--image",
                          str(seq / "image_2" / "000000.png"), "--pseudo-depth", "--out", str(tmp_path / "p.npy"),
                          "--json", str(tmp_path / "p.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    d = np.load(tmp_path / "p.npy")
    r = json.loads((tmp_path / "p.json").read_text())
    top, bottom = r["rows"]
    assert d.shape == (376, 1241) and d.dtype == np.float32
    assert not d[:top].any() and bool((d[top:bottom] > 0).all())  # 0 where the network sees nothing
    # bad input: one line, exit 1
    out = subprocess.run([sys.executable, "-m", "attnlink_ros", "eval", "--depth", "--data", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "no sequence" in out.stderr


def test_eval_depth_on_a_town_warns_of_no_trained_drive(synth_root):
    """A town's drive is named "00" like KITTI's, which the shipped camera network trained on: the
    training-numbers warning is for real drives only (the town is marked as rendered)."""
    out = subprocess.run([sys.executable, "-m", "attnlink_ros", "eval", "--depth", "--data", str(synth_root), "--stride", "8", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "row-median baseline" in out.stdout and "warning:" not in out.stderr, out.stderr


def test_descriptor_sensitivity_on_real_kitti(kitti_root):
    """How exact a depth the depth branch's descriptor asks for, on real scans: the perturbations
    are what they say (scale 1.1 is 0.1 AbsRel from the completion), a larger error moves the
    descriptor further, and the pseudo-LiDAR row is the image-only query's depth-branch descriptor."""
    from attnlink_ros.evaluation.depth import SENSITIVITY, descriptor_sensitivity, format_sensitivity
    from attnlink_ros.model.io import load_model

    model, _ = load_model(None)
    frames = load_real_frames([kitti_root], model.cfg.input_height, model.cfg.input_width, ["00"], stride=3,
                              fov_deg=model.cfg.input_fov_deg)
    t = descriptor_sensitivity(model, frames.rgb, frames.depth, batch=3)
    assert list(t) == list(SENSITIVITY)
    assert t["scale 1.1"]["abs_rel_vs_completion"] == pytest.approx(0.1, abs=1e-4)
    assert t["scale 0.8"]["abs_rel_vs_completion"] == pytest.approx(0.2, abs=1e-4)
    for r in t.values():
        assert -1.0 <= r["cos_median"] <= 1.0 and r["abs_rel_vs_completion"] >= 0
    assert t["scale 0.9"]["cos_mean"] > t["scale 0.8"]["cos_mean"]  # further from the scan, further from its descriptor
    with torch.no_grad():  # the pseudo-LiDAR row is the image-only query's depth-branch descriptor
        own = model.fuse(model.encode_pseudo_lidar(torch.from_numpy(frames.rgb)))[0]
        lidar = model(depth=torch.from_numpy(frames.depth)).descriptor
    assert t["pseudo-LiDAR (its depth and returns)"]["cos_mean"] == pytest.approx(float((own * lidar).sum(1).mean()), abs=1e-4)
    assert "pseudo-depth in the top third" in format_sensitivity(t)


def test_top_weight_weighs_the_far_band_of_the_depth_terms():
    """``top_weight`` multiplies the depth and teacher terms on the grid's top third: with the
    error only there (log 2 on every top-third pixel, none below), each term is log 2 times the
    top third's share of the weights."""
    from types import SimpleNamespace

    from attnlink_ros.train.real_image import RealImageConfig, step_loss

    mono = MonoDepthLite0(pretrained=False).eval()
    model = SimpleNamespace(mono=mono)
    with torch.no_grad():
        feats = mono.encoder(torch.rand(2, 3, 64, 256))
        pred, _ = mono.decode(feats)
    top = torch.arange(64).view(1, 1, 64, 1) < 64 // 3
    truth = torch.where(top, pred * 2, pred)  # every pixel a return (<= 80 m: the head starts at 15 m)
    for w in (1.0, 4.0):
        _, stats = step_loss(model, feats, truth, truth, None, RealImageConfig(top_weight=w))
        share = w * 21 / (w * 21 + 43)
        assert stats["depth_log"] == pytest.approx(np.log(2) * share, rel=1e-4)
        assert stats["teacher"] == pytest.approx(np.log(2) * share, rel=1e-4)


def test_mono_teacher_replaces_the_synthetic_frames_depth_terms():
    """With a mono teacher, the batch's last m (synthetic) frames learn the teacher's depth and
    return probability, and the depth, return and completion terms are the real frames' alone:
    garbage LiDAR on the synthetic frames changes nothing, the teacher's own output costs only the
    entropy of its return probabilities, and a teacher twice as far costs log 2."""
    from types import SimpleNamespace

    from attnlink_ros.train.real_image import RealImageConfig, step_loss

    mono = MonoDepthLite0(pretrained=False).eval()
    model = SimpleNamespace(mono=mono)
    torch.manual_seed(0)
    with torch.no_grad():
        mono.head.weight.normal_(0, 0.05)  # logits away from 0 so the BCE is not flat
        feats = mono.encoder(torch.rand(5, 3, 64, 256))
        pred, logit = mono.decode(feats)
    truth = pred * 2  # the real frames (first 3): everything a return, twice as far
    cfg = RealImageConfig(mono_teacher_weight=1.0)
    for garbage in (pred, torch.full_like(pred, 70.0)):
        depth = torch.cat([truth[:3], garbage[3:]])
        loss, st = step_loss(model, feats, depth, depth, None, cfg, taught=(pred[3:], logit[3:]))
        assert st["depth_log"] == pytest.approx(np.log(2), rel=1e-4) and st["teacher"] == pytest.approx(np.log(2), rel=1e-4)
        assert st["mono_teacher"] == pytest.approx(0.0, abs=1e-6)
        p = torch.sigmoid(logit[3:])
        entropy = float(-(p * torch.log(p) + (1 - p) * torch.log(1 - p)).mean())
        assert st["mono_teacher_return"] == pytest.approx(entropy, rel=1e-4)
    _, st = step_loss(model, feats, depth, depth, None, cfg, taught=(pred[3:] * 2, logit[3:]))
    assert st["mono_teacher"] == pytest.approx(np.log(2), rel=1e-4)
    _, st0 = step_loss(model, feats, depth, depth, None, RealImageConfig(), taught=(pred[3:], logit[3:]))
    assert "mono_teacher" not in st0 and st0["depth_log"] > st["depth_log"]  # weight 0: the old terms over the whole batch


def test_folds_are_fixed_and_disjoint():
    folds = RealFolds.load(PKG / "config" / "real_folds.yaml", base=REPO)
    assert list(folds.folds) == ["kitti_00_01", "kitti_02_08", "k360", "r0926"]
    assert sorted(folds.drives) == ["00", "01", "02", "08", "k360", "r0926"]
    assert "k360" not in folds.train_drives("k360") and len(folds.train_drives("k360")) == 5


def test_real_image_training_holds_a_fold_out_and_resumes(kitti_root, tmp_path):
    """Two steps on real KITTI frames with drives 02+08 held out (no synthetic towns), then two
    more resumed from the checkpoint: the frozen parts stay the shipped model's, the held-out
    fold is measured, the run's model loads."""
    from attnlink_ros.model.io import load_model
    from attnlink_ros.train.real_image import RealImageConfig, train_real_image

    folds = tmp_path / "folds.yaml"
    folds.write_text(f"roots: [{kitti_root}]\nfolds:\n  a: ['00', '01']\n  b: ['02', '08']\n")
    cfg = RealImageConfig(folds=str(folds), held_out="b", out=str(tmp_path / "run-b"), steps=2, batch_real=4, batch_synth=0,
                          checkpoint_every=1)
    r = train_real_image(cfg, progress=False)
    assert r["steps"] == 2 and r["train_drives"] == ["00", "01"]
    ev = r["held_out_eval"]
    assert set(ev["depth"]) == {"02", "08", "pooled"} and ev["which_drive"]["queries"] == 10
    assert set(ev["which_drive"]["image"]["by_drive"]) == {"02", "08"}
    assert ev["which_drive"]["lidar"]["recall@1"] >= 0.9  # the frozen LiDAR branch finds its drives
    import dataclasses

    r2 = train_real_image(dataclasses.replace(cfg, steps=4), progress=False)
    assert r2["steps"] == 4 and len(json.loads((tmp_path / "run-b" / "log.json").read_text())) == 4
    model, meta = load_model(tmp_path / "run-b" / "model")
    shipped, _ = load_model(None)
    assert model.cfg.mono_encoder == "efficientnet_lite0" and meta["real_held_out"] == "b"
    s, t = model.state_dict(), shipped.state_dict()
    assert all(torch.equal(s[k], t[k]) for k in t if not k.startswith("mono."))  # LiDAR and fused untouched
    imagenet = EfficientNetLite0Features(levels=4)
    load_imagenet_weights(imagenet)
    assert all(torch.equal(s[f"mono.encoder.{k}"], v) for k, v in imagenet.state_dict().items())  # the encoder stays ImageNet's
    from attnlink_ros.geometry.projection import KITTI_FOV_DEG

    assert model.cfg.input_fov_deg == KITTI_FOV_DEG  # the level grid
    # every fold's run on its own held-out fold, beside the shipped model, which trained on all of them (said)
    from attnlink_ros.errors import ConfigError
    from attnlink_ros.train.real_image import evaluate_folds

    train_real_image(dataclasses.replace(cfg, held_out="a", out=str(tmp_path / "run-a"), steps=1), progress=False)
    ev = evaluate_folds(folds, str(tmp_path / "run-{fold}" / "model"))
    assert set(ev["folds"]) == {"a", "b"} and ev["baseline_trained_on"] == ["00", "01", "02", "08"]
    assert ev["folds"]["b"]["model"]["which_drive"] == r2["held_out_eval"]["which_drive"]  # the run's own held-out numbers
    assert 0 <= ev["pooled_model"]["which_drive"]["image"] <= 1 and ev["pooled_model"]["depth"]["pixels"] > 10000
    (tmp_path / "run-x").symlink_to(tmp_path / "run-b")  # a run that held "b" out, asked for fold "x"
    other = tmp_path / "other_folds.yaml"
    other.write_text(f"roots: [{kitti_root}]\nfolds:\n  x: ['00', '01']\n  a: ['02', '08']\n")
    with pytest.raises(ConfigError, match="held out, not 'x'"):
        evaluate_folds(other, str(tmp_path / "run-{fold}" / "model"))


def test_real_image_training_with_synthetic_frames_and_descriptor_terms(kitti_root, synth_root, tmp_path):
    """Real and synthetic frames in one batch, the InfoNCE term on the real ones and the
    distillation term on the synthetic ones: both logged, and only the decoder moves; a
    photometric variant of each real frame trains beside it."""
    from attnlink_ros.train.real_image import RealImageConfig, build_model, train_real_image

    folds = tmp_path / "folds.yaml"
    folds.write_text(f"roots: [{kitti_root}]\nfolds:\n  a: ['00', '01']\n  b: ['02', '08']\n")
    cfg = RealImageConfig(folds=str(folds), held_out="b", out=str(tmp_path / "run"), steps=2, batch_real=3, batch_synth=2,
                          synth=(str(synth_root),), synth_stride=4, nce_weight=0.2, distill_weight=1.0, checkpoint_every=2,
                          real_photometric=1)
    start, _ = build_model(cfg)
    assert train_real_image(cfg, progress=False)["real_pool_frames"] == 2 * 20  # drives 00 + 01, each frame and one variant
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert len(log) == 2 and all({"nce", "distill_cos", "depth_log", "teacher"} <= set(row) for row in log)
    assert all(-1.0 <= row["distill_cos"] <= 1.0 for row in log)
    from attnlink_ros.model.io import load_model

    model, _ = load_model(tmp_path / "run" / "model")
    s, t = model.state_dict(), start.state_dict()
    moved = {k for k in t if not torch.equal(s[k], t[k])}
    assert moved and all(k.startswith("mono.") and not k.startswith("mono.encoder.") for k in moved)


def test_real_image_training_with_a_mono_teacher_and_a_kept_pool(kitti_root, synth_root, tmp_path):
    """The shipped model's pseudo-LiDAR network teaches the synthetic frames; the synthetic pool is
    kept in ``pool_cache`` and a second run (another fold) reads it back: same losses at step 1."""
    import dataclasses

    from attnlink_ros.train.real_image import RealImageConfig, train_real_image

    folds = tmp_path / "folds.yaml"
    folds.write_text(f"roots: [{kitti_root}]\nfolds:\n  a: ['00', '01']\n  b: ['02', '08']\n")
    cfg = RealImageConfig(folds=str(folds), held_out="b", out=str(tmp_path / "run"), steps=1, batch_real=2, batch_synth=2,
                          synth=(str(synth_root),), synth_stride=4, mono_teacher=str(PKG / "models" / "attnlink-lite"),
                          mono_teacher_weight=1.0, pool_cache=str(tmp_path / "pool"), checkpoint_every=1)
    train_real_image(cfg, progress=False)
    kept = list((tmp_path / "pool").glob("real_image_pool_*.pt"))
    assert len(kept) == 1
    train_real_image(dataclasses.replace(cfg, out=str(tmp_path / "run2")), progress=False)
    assert list((tmp_path / "pool").glob("real_image_pool_*.pt")) == kept
    logs = [json.loads((tmp_path / r / "log.json").read_text()) for r in ("run", "run2")]
    assert logs[0] == logs[1] and logs[0][0]["mono_teacher"] > 0 and "mono_teacher_return" in logs[0][0]


def test_frame_cache_follows_the_models_level_grid(kitti_root, tmp_path):
    """Evaluation caches are cut on the model's grid: KITTI's camera keeps the old cache (the level
    grid is its crop), KITTI-360's gets its own, cut where the level grid says."""
    import dataclasses

    from attnlink_ros.data.cache import model_cache
    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.geometry.projection import KITTI_FOV_DEG, level_grid, network_grid
    from attnlink_ros.model.config import ModelConfig

    cfg = dataclasses.replace(ModelConfig(), input_height=64, input_width=256, input_fov_deg=KITTI_FOV_DEG)
    c00 = model_cache(kitti_root, "00", tmp_path, cfg, progress=False)
    seq = KittiSequence(kitti_root, "00")
    assert c00.path.name.endswith("_64x256") and c00.grid == network_grid(seq.calib, *seq.image_size, 64, 256)
    extra = kitti_root.parent / "kitti_extra"
    if not (extra / "dataset" / "sequences" / "k360").is_dir():
        pytest.skip("kitti_extra not found beside the KITTI root")
    k = KittiSequence(extra, "k360")
    ck = model_cache(extra, "k360", tmp_path, cfg, progress=False)
    assert ck.path.name.endswith("_level") and ck.grid == level_grid(k.calib, *k.image_size, 64, 256, KITTI_FOV_DEG)
    assert len(ck) == 17 and ck.images.shape[1:] == (64, 256, 3)
    crop = model_cache(extra, "k360", tmp_path, dataclasses.replace(cfg, input_fov_deg=None), progress=False)
    assert not crop.path.name.endswith("_level") and crop.grid.left == 0 and crop.grid != ck.grid
