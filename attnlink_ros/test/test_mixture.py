"""Issue 20, session 13: the pseudo-LiDAR mixture: the rendered-town U-Net and the real-image Lite0
network behind a gate fitted on renders against camera frames; LiDAR and fused untouched."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from attnlink_ros.errors import ConfigError
from attnlink_ros.model import AttnLink
from attnlink_ros.model.mixture import MonoMixture

from .conftest import PKG

SHIPPED = PKG / "models" / "attnlink-lite"


def test_the_gate_passes_one_network_through_and_mixes_in_between():
    torch.manual_seed(0)
    m = MonoMixture((8, 8, 16, 16)).eval()
    with torch.no_grad():
        m.camera.head.weight.normal_(0, 0.1)  # the fresh Lite0 head is constant: make it say something
        x = torch.randn(2, 3, 64, 256)
        m.gate.weight.zero_()
        cam_d, cam_l = m.camera(x)
        ren_d, ren_l = m.render(x)
        for bias, want in ((30.0, (ren_d, ren_l)), (-30.0, (cam_d, cam_l))):
            m.gate.bias.fill_(bias)
            d, logit = m(x)
            assert torch.allclose(d, want[0], rtol=1e-5) and torch.allclose(logit, want[1], atol=1e-5)
        m.gate.bias.fill_(0.0)
        d, logit = m(x)
        assert torch.allclose(d, torch.sqrt(ren_d * cam_d), rtol=1e-4)  # p = 0.5: the geometric mean of the depths
        assert torch.allclose(logit, (ren_l + cam_l) / 2, atol=1e-5)
        m.hard.fill_(1.0)  # the hard gate: the favoured network alone, exactly, however close the call
        for bias, want, p in ((0.2, (ren_d, ren_l), 1.0), (-0.2, (cam_d, cam_l), 0.0)):
            m.gate.bias.fill_(bias)
            d, logit, prob = m.gated(x)
            assert torch.equal(d, want[0]) and torch.equal(logit, want[1]) and bool((prob == p).all())


def test_fit_gate_tells_two_kinds_apart_with_few_of_one():
    """Balanced classes: 30 frames of one kind against 3000 of the other are both classified."""
    from attnlink_ros.train.mixture import fit_gate

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (30, 12)), rng.normal(0, 1, (3000, 12)) + np.eye(12)[0] * 4]).astype(np.float32)
    y = np.concatenate([np.zeros(30), np.ones(3000)])
    gate = torch.nn.Linear(12, 1)
    mean, std = torch.zeros(12), torch.ones(12)
    fit = fit_gate(gate, mean, std, X, y, weight_decay=1e-2, steps=100)
    assert fit["camera_frames"] == 30 and fit["renders"] == 3000
    assert fit["render_accuracy"] >= 0.97 and fit["camera_accuracy"] >= 0.9
    assert torch.allclose(mean, torch.from_numpy(X.mean(0)), atol=1e-5)
    with pytest.raises(ConfigError, match="both"):
        fit_gate(gate, mean, std, X[:30], y[:30], 1e-2, 10)


def test_mixture_trained_on_real_kitti_keeps_lidar_and_serves_both_kinds(kitti_root, synth_root, tmp_path):
    """A real-image run (one step, drives 02 + 08 held out) and the shipped model joined: the gate
    tells the held-out real drives from renders, LiDAR and fused descriptors are the shipped
    model's, the image descriptor of a render is the shipped model's and of a camera image the
    real-image run's; models that differ outside their pseudo-LiDAR networks are refused."""
    from attnlink_ros.model.io import load_model, save_model
    from attnlink_ros.train.mixture import MixtureConfig, build_mixture, render_probability, train_mixture
    from attnlink_ros.train.real_image import RealImageConfig, train_real_image

    folds = tmp_path / "folds.yaml"
    folds.write_text(f"roots: [{kitti_root}]\nfolds:\n  a: ['00', '01']\n  b: ['02', '08']\n")
    train_real_image(RealImageConfig(folds=str(folds), held_out="b", out=str(tmp_path / "cam-b"), steps=1, batch_real=2,
                                     batch_synth=0), progress=False)
    cfg = MixtureConfig(render_from=str(SHIPPED), camera_from=str(tmp_path / "cam-{fold}" / "model"), folds=str(folds),
                        held_out="b", synth=(str(synth_root),), synth_stride=2, out=str(tmp_path / "mix"), steps=50)
    r = train_mixture(cfg, progress=False)
    assert r["gate_fit"]["render_accuracy"] == 1.0 and r["gate_fit"]["camera_accuracy"] == 1.0
    assert r["held_out_render_probability"]["above_0.5"] == 0 and r["held_out_render_probability"]["frames"] == 20
    assert r["held_out_eval"]["which_drive"]["lidar"]["recall@1"] >= 0.9
    assert json.loads((tmp_path / "mix" / "result.json").read_text())["held_out"] == "b"

    mix, meta = load_model(tmp_path / "mix" / "model")
    shipped, _ = load_model(SHIPPED)
    cam, _ = load_model(tmp_path / "cam-b" / "model")
    assert mix.cfg.mono_encoder == "mixture" and meta["real_held_out"] == "b"
    s, t = mix.state_dict(), shipped.state_dict()
    assert all(torch.equal(s[k], t[k]) for k in t if not k.startswith("mono."))
    from attnlink_ros.data.real import load_real_frames

    H, W, fov = mix.cfg.input_height, mix.cfg.input_width, mix.cfg.input_fov_deg
    real = load_real_frames([kitti_root], H, W, ["08"], stride=5, fov_deg=fov)
    rend = load_real_frames([synth_root], H, W, ["00"], stride=12, fov_deg=fov)
    assert (render_probability(mix, rend.rgb) > 0.5).all() and (render_probability(mix, real.rgb) < 0.5).all()
    with torch.no_grad():
        # a render's image query is the shipped model's whole image path (its U-Net and its RGB
        # share, image_rgb_weight 0.2), a camera image's the real-image run's pseudo-LiDAR alone
        assert mix.cfg.image_rgb_weight == shipped.cfg.image_rgb_weight == 0.2 and cam.cfg.image_rgb_weight == 0.0
        for frames, ref in ((rend, shipped), (real, cam)):
            x = torch.from_numpy(frames.rgb)
            got, want = mix(rgb=x).descriptor, ref(rgb=x).descriptor
            assert float((got * want).sum(1).min()) > 0.95
        d = torch.from_numpy(real.depth)
        assert torch.allclose(mix(depth=d).descriptor, shipped(depth=d).descriptor, atol=1e-5)  # LiDAR queries unchanged

    from attnlink_ros.model.mixture import render_half

    half = render_half(mix)  # what a U-Net run or another mixture starts from: the shipped U-Net again
    assert half.cfg.mono_encoder == "unet"
    assert all(torch.equal(v, t[k]) for k, v in half.state_dict().items() if k in t)

    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "attnlink_ros", "eval", "--depth", "--data", str(kitti_root), "--sequences", "08",
                          "--model", str(tmp_path / "mix" / "model"), "--json", str(tmp_path / "d.json"), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    gate = json.loads((tmp_path / "d.json").read_text())["render_probability"]
    assert list(gate) == ["08"] and gate["08"]["max"] < 0.5 and "probability that the image is a render" in out.stdout

    # the gate fitted on photometric variants of both kinds too: held-out real frames still camera frames,
    # and the run measures its robustness probe on them
    from attnlink_ros.train.mixture import PROBE

    r2 = train_mixture(dataclasses.replace(cfg, photometric=1, out=str(tmp_path / "mix-photo")), progress=False)
    assert r2["gate_fit"]["renders"] == 2 * r["gate_fit"]["renders"] and r2["gate_fit"]["camera_frames"] == 2 * r["gate_fit"]["camera_frames"]
    assert r2["held_out_render_probability"]["above_0.5"] == 0 and list(r2["held_out_perturbed"]) == list(PROBE)
    assert all(v["frames"] == 20 for v in r2["held_out_perturbed"].values())

    other, ometa = load_model(SHIPPED)
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if n.startswith("trunk.")).add_(0.01)
    save_model(other, tmp_path / "other", {"provenance": "a perturbed copy"})
    with pytest.raises(ConfigError, match="differ outside"):
        build_mixture(tmp_path / "other", tmp_path / "cam-b" / "model")
    with pytest.raises(ConfigError, match="held out"):
        train_mixture(dataclasses.replace(cfg, held_out="a", camera_from=str(tmp_path / "cam-b" / "model")), progress=False)


def test_mixture_exports_to_onnx_and_agrees_with_torch(tmp_path):
    from attnlink_ros.inference.export import export_onnx, parity
    from attnlink_ros.model.config import variant

    torch.manual_seed(0)
    m = AttnLink(variant("attnlink-lite", image_depth=True, mono_encoder="mixture", input_fov_deg=(4.771, -15.277, 40.213, -41.376))).eval()
    with torch.no_grad():
        m.mono.gate.weight.normal_(0, 0.5)  # a gate that is neither 0 nor 1 on random images
    for hard in (0.0, 1.0):  # the soft mix and the hard pick
        m.mono.hard.fill_(hard)
        path = export_onnx(m, tmp_path / f"mix{hard}.image.onnx", "image")
        assert parity(m, path, "image") < 1e-4


def test_photometric_variants_are_seeded_and_in_range(kitti_root):
    from attnlink_ros.data.real import load_real_frames
    from attnlink_ros.train.mixture import photometric_variants

    real = load_real_frames([kitti_root], 64, 256, ["08"], stride=5)
    v = photometric_variants(real.rgb, 2, seed=3)
    assert v.shape == (2 * len(real), *real.rgb.shape[1:]) and v.dtype == np.float32 and 0.0 <= v.min() and v.max() <= 1.0
    assert np.array_equal(v, photometric_variants(real.rgb, 2, seed=3)) and not np.array_equal(v, photometric_variants(real.rgb, 2, seed=4))
    means = v.reshape(len(v), -1).mean(1)
    assert means.min() < 0.5 * real.rgb.mean() and not np.allclose(v[: len(real)], real.rgb, atol=0.05)  # darker, and changed
    assert photometric_variants(real.rgb, 0).shape == (0, *real.rgb.shape[1:])


def test_image_domain_fixes_the_route_and_its_export(tmp_path):
    """A fixed image domain (a vehicle's camera; rendered towns) runs one network whatever the gate
    says, gives the gate's own answer where the gate picks that network, and exports to its own
    ONNX (NAME.image.DOMAIN.onnx, without the other network) that agrees with torch; a model with
    one pseudo-LiDAR network refuses a domain other than auto, as the pipeline does at start."""
    from attnlink_ros.errors import AttnLinkError
    from attnlink_ros.inference.backends import OnnxRuntimeBackend, TorchBackend, _onnx_is_current
    from attnlink_ros.inference.export import onnx_path
    from attnlink_ros.model.config import variant
    from attnlink_ros.model.io import load_model, save_model
    from attnlink_ros.pipeline import PlaceRecognizer

    torch.manual_seed(0)
    cfg = variant("attnlink-lite", image_depth=True, mono_encoder="mixture", image_rgb_weight=0.3,
                  input_fov_deg=(4.771, -15.277, 40.213, -41.376))
    m = AttnLink(cfg).eval()
    x = torch.rand(2, 3, 64, 256)
    with torch.no_grad():
        m.mono.camera.head.weight.normal_(0, 0.1)
        m.mono.gate.weight.zero_()
        m.mono.hard.fill_(1.0)
        got = {}
        for bias, dom in ((-5.0, "camera"), (5.0, "render")):  # the gate picks dom
            m.mono.gate.bias.fill_(bias)
            gated = m(rgb=x).descriptor
            m.set_image_domain(dom)
            got[dom] = m(rgb=x).descriptor
            m.mono.gate.bias.fill_(-bias)  # the gate now says the other: the domain does not listen
            assert torch.allclose(m(rgb=x).descriptor, got[dom], atol=1e-6) and torch.allclose(got[dom], gated, atol=1e-6), dom
            _, _, p = m.mono.gated((x - m.rgb_mean) / m.rgb_std)
            assert bool((p == float(dom == "render")).all())
            m.set_image_domain("auto")
        assert not torch.allclose(got["camera"], got["render"], atol=1e-3)
    with pytest.raises(ConfigError, match="image domain"):
        m.set_image_domain("infrared")

    path = save_model(m, tmp_path / "mix")
    files = {}
    for dom in ("auto", "camera", "render"):
        ort_b = OnnxRuntimeBackend(path, "image", image_domain=dom)
        files[dom] = onnx_path(path, "image", dom)
        assert files[dom].is_file()
        want = TorchBackend(path, "image", image_domain=dom).encode(rgb=x.numpy())
        assert np.abs(ort_b.encode(rgb=x.numpy()) - want).max() < 1e-4, dom
    assert len(set(files.values())) == 3 and files["auto"] == onnx_path(path, "image")
    assert files["camera"].stat().st_size < files["auto"].stat().st_size  # no U-Net, no RGB trunk pass
    meta = load_model(path)[1]
    assert _onnx_is_current(files["camera"], meta["fingerprint"], cfg, "camera")
    assert not _onnx_is_current(files["camera"], meta["fingerprint"], cfg, "auto")
    assert onnx_path(path, "lidar", "camera") == onnx_path(path, "lidar")  # no pseudo-LiDAR in the LiDAR graph

    one = save_model(AttnLink(variant("attnlink-lite", image_depth=True)).eval(), tmp_path / "unet")
    with pytest.raises(AttnLinkError, match="mixture"):
        PlaceRecognizer(one, None, backend="torch", image_domain="camera")
    assert PlaceRecognizer(one, None, backend="torch", image_domain="auto").image_domain == "auto"
