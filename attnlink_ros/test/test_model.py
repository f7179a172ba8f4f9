import numpy as np
import pytest
import torch

from attnlink_ros.model import AttnLink, variant
from attnlink_ros.model.netvlad import NetVLAD
from attnlink_ros.model.nmf import nmf_multiplicative
from attnlink_ros.model.resnet import ResNetTrunk


def _inputs(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.input_height, cfg.input_width
    rgb = torch.rand(b, 3, h, w, generator=g)
    depth = torch.rand(b, 1, h, w, generator=g) * 60
    depth = depth * (torch.rand(b, 1, h, w, generator=g) < 0.15)
    return rgb, depth


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return AttnLink(variant("attnlink-lite")).eval()


@pytest.mark.parametrize("name, size", [("attnlink-lite", None), ("attnlink", (64, 256))])
def test_shapes_dtype_norm(name, size):
    cfg = variant(name) if size is None else variant(name, input_height=size[0], input_width=size[1])
    torch.manual_seed(0)
    m = AttnLink(cfg).eval()
    rgb, depth = _inputs(cfg)
    with torch.no_grad():
        for kw, present in ((dict(rgb=rgb), [0, 2]), (dict(depth=depth), [1, 3]), (dict(rgb=rgb, depth=depth), [0, 1, 2, 3])):
            out = m(**kw)
            assert out.descriptor.shape == (2, cfg.descriptor_dim) and out.descriptor.dtype == torch.float32
            torch.testing.assert_close(out.descriptor.norm(dim=1), torch.ones(2))
            assert out.attention.shape == (2, 4)
            torch.testing.assert_close(out.attention.sum(1), torch.ones(2))
            absent = [i for i in range(4) if i not in present]
            assert torch.all(out.attention[:, absent] == 0)
    assert m.trunk.out_channels == cfg.widths[-1]


def test_masked_modality_changes_nothing(lite):
    rgb, depth = _inputs(lite.cfg)
    with torch.no_grad():
        image_only = lite(rgb=rgb).descriptor
        masked = lite(rgb=rgb, depth=depth, present=torch.tensor([[True, False]] * 2)).descriptor
        other_depth = lite(rgb=rgb, depth=depth.flip(-1) * 0.5, present=torch.tensor([[True, False]] * 2)).descriptor
        lidar_only = lite(depth=depth).descriptor
        masked_l = lite(rgb=rgb, depth=depth, present=torch.tensor([[False, True]] * 2)).descriptor
    torch.testing.assert_close(masked, image_only, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other_depth, image_only, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked_l, lidar_only, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least one modality"):
        lite(rgb=rgb, depth=depth, present=torch.tensor([[False, False], [True, True]]))


def test_absent_modality_costs_no_compute(lite):
    calls = {"adcn": 0, "depth_stem": 0, "rgb_stem": 0}
    hooks = [
        lite.adcn.register_forward_hook(lambda *a: calls.__setitem__("adcn", calls["adcn"] + 1)),
        lite.trunk.conv1_depth.register_forward_hook(lambda *a: calls.__setitem__("depth_stem", calls["depth_stem"] + 1)),
        lite.trunk.conv1.register_forward_hook(lambda *a: calls.__setitem__("rgb_stem", calls["rgb_stem"] + 1)),
    ]
    rgb, depth = _inputs(lite.cfg)
    with torch.no_grad():
        lite(rgb=rgb)
        assert calls == {"adcn": 0, "depth_stem": 0, "rgb_stem": 1}
        lite(depth=depth)
        assert calls == {"adcn": 1, "depth_stem": 1, "rgb_stem": 1}
    for h in hooks:
        h.remove()


def test_gradients_reach_every_part():
    torch.manual_seed(1)
    m = AttnLink(variant("attnlink-lite")).train()
    rgb, depth = _inputs(m.cfg, b=3)
    out = m(rgb=rgb, depth=depth)
    loss = out.descriptor[:, :7].sum() + out.dense_depth.mean() * 1e-3
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))]
    assert not missing, missing


def test_deterministic_in_eval(lite):
    rgb, depth = _inputs(lite.cfg)
    with torch.no_grad():
        a = lite(rgb=rgb, depth=depth)
        b = lite(rgb=rgb, depth=depth)
    assert torch.equal(a.descriptor, b.descriptor) and torch.equal(a.attention, b.attention)
    torch.manual_seed(5)
    m1 = AttnLink(variant("attnlink-lite"))
    torch.manual_seed(5)
    m2 = AttnLink(variant("attnlink-lite"))
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_netvlad_against_reference():
    torch.manual_seed(0)
    vlad = NetVLAD(dim=5, clusters=3)
    x = torch.rand(2, 5, 7)
    got = vlad(x)
    xn = torch.nn.functional.normalize(x, dim=1)
    logits = torch.einsum("kd,bdn->bkn", vlad.assign.weight[:, :, 0], xn) + vlad.assign.bias[None, :, None]
    a = torch.softmax(logits, dim=1)
    ref = torch.zeros(2, 3, 5)
    for b in range(2):
        for k in range(3):
            for n in range(7):
                ref[b, k] += a[b, k, n] * (xn[b, :, n] - vlad.centroids[k])
    ref = torch.nn.functional.normalize(ref, dim=2).flatten(1)
    ref = torch.nn.functional.normalize(ref, dim=1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_nmf_against_numpy_reference():
    rng = np.random.default_rng(0)
    F = rng.random((6, 9)).astype(np.float64)
    W0 = rng.random((6, 3)) + 0.1
    W, H = W0.copy(), np.maximum(W0.T @ F, 0) + 1e-6
    for _ in range(5):
        H = H * (W.T @ F) / (W.T @ W @ H + 1e-6)
        W = W * (F @ H.T) / (W @ (H @ H.T) + 1e-6)
    Wt, Ht = nmf_multiplicative(torch.from_numpy(F)[None], torch.from_numpy(W0), 5)
    np.testing.assert_allclose(Wt[0].numpy(), W, rtol=1e-9)
    np.testing.assert_allclose(Ht[0].numpy(), H, rtol=1e-9)
    # it actually factorises: the error falls with iterations
    err = [np.linalg.norm(F - (lambda w, h: w[0].numpy() @ h[0].numpy())(*nmf_multiplicative(torch.from_numpy(F)[None], torch.from_numpy(W0), it))) for it in (1, 5, 30)]
    assert err[0] > err[1] > err[2]


def test_loads_torchvision_format_state_dict(tmp_path):
    trunk = ResNetTrunk((3, 4, 6, 3), (64, 128, 256, 512))
    keys = set(trunk.state_dict())
    for k in ("conv1.weight", "bn1.running_mean", "layer1.2.conv2.weight", "layer2.0.downsample.0.weight",
              "layer2.0.downsample.1.running_var", "layer3.5.bn2.bias", "layer4.2.conv1.weight"):
        assert k in keys, k
    tv = {k: torch.randn_like(v.float()) if v.is_floating_point() else v for k, v in trunk.state_dict().items()
          if not k.startswith(("att", "conv1_depth", "bn1_depth"))}
    tv["fc.weight"] = torch.randn(1000, 512)
    tv["fc.bias"] = torch.randn(1000)
    torch.save(tv, tmp_path / "resnet34.pth")
    fresh = ResNetTrunk((3, 4, 6, 3), (64, 128, 256, 512))
    report = fresh.load_torchvision(tmp_path / "resnet34.pth")
    assert "fc.weight" in report["skipped"] and "layer4.2.conv2.weight" in report["loaded"]
    torch.testing.assert_close(fresh.state_dict()["layer3.1.conv1.weight"], tv["layer3.1.conv1.weight"])
    torch.testing.assert_close(fresh.conv1_depth.weight[:, :1], tv["conv1.weight"].mean(1, keepdim=True))


def test_kmeans_and_vlad_init_spread_descriptors():
    from attnlink_ros.model.attnlink import init_vlad_heads
    from attnlink_ros.model.netvlad import kmeans_unit

    x = torch.nn.functional.normalize(torch.cat([torch.randn(50, 8) * 0.05 + torch.eye(8)[i] for i in range(3)]), dim=1)
    c = kmeans_unit(x, 3)
    assert torch.equal(c, kmeans_unit(x, 3))  # deterministic
    assert sorted((c @ torch.eye(8)[:3].T).argmax(1).tolist()) == [0, 1, 2]  # one centroid per blob

    torch.manual_seed(0)
    m = AttnLink(variant("attnlink-lite")).train()
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(6, 3, 64, 256, generator=g)
    rgb[:3] *= torch.linspace(0, 1, 256)  # two kinds of images
    depth = torch.rand(6, 1, 64, 256, generator=g) * 40 * (torch.rand(6, 1, 64, 256, generator=g) < 0.2)

    def spread():  # mean cosine between the NetVLAD vectors of different images
        cap = {}
        h = m.heads["F_rgb"].vlad.register_forward_hook(lambda mod, i, o: cap.__setitem__("v", o))
        with torch.no_grad():
            m.encode(rgb, depth)
        h.remove()
        v = cap["v"]
        return float(((v @ v.T).sum() - 6) / 30)

    before = spread()
    init_vlad_heads(m, rgb, depth)
    assert spread() < before - 0.05  # VLAD vectors of different images are less alike


def test_image_depth_queries_go_through_the_depth_branch(lite):
    """With image_depth, an image-only query is the depth branch applied to the image's predicted
    depth and returns; LiDAR and fused queries are exactly those of the same model without it."""
    torch.manual_seed(3)
    m = AttnLink(variant("attnlink-lite", image_depth=True)).eval()
    missing, unexpected = m.load_state_dict(lite.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("mono.") for k in missing)
    rgb, depth = _inputs(m.cfg, b=3)
    with torch.no_grad():
        for kw in ({"depth": depth}, {"rgb": rgb, "depth": depth}):
            assert torch.equal(m(**kw).descriptor, lite(**kw).descriptor)
        out = m(rgb=rgb)
        assert out.descriptor.shape == (3, 256)
        assert torch.allclose(out.descriptor.norm(dim=1), torch.ones(3), atol=1e-5)
        assert out.dense_depth.shape == (3, 1, 64, 256) and out.return_logit.shape == (3, 1, 64, 256)
        assert float(out.attention[:, [0, 2]].abs().sum()) == 0  # no RGB token: the image became pseudo-LiDAR
        # the same as feeding the predicted depth and return probability to the depth branch by hand
        x = torch.cat([out.dense_depth / m.cfg.max_depth_m, torch.sigmoid(out.return_logit)], 1)
        f = m.trunk.forward_stages(m.trunk.forward_stem(x, depth=True))
        tok = torch.stack([m.heads["F_depth"](f), m.heads["S_depth"](m.semantic(f))], 1)
        assert torch.allclose(m.fusion(tok, [1, 3])[0], out.descriptor, atol=1e-6)
        # batched training forward: the image mode is the same function
        by_mode = m(rgb=rgb, depth=depth, modes=("image", "lidar", "fused")).by_mode
        assert torch.allclose(by_mode["image"], out.descriptor, atol=1e-6)
        assert torch.allclose(by_mode["lidar"], lite(depth=depth).descriptor, atol=1e-6)
    # gradients of an image-only query reach the pseudo-LiDAR network, not the RGB stem
    m.train()
    m(rgb=rgb).descriptor[:, :5].sum().backward()
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in m.mono.parameters())
    assert m.trunk.conv1.weight.grad is None


def test_image_rgb_weight_mixes_the_two_image_descriptors(lite, tmp_path):
    """image_rgb_weight w: an image-only query is normalize((1 - w) pseudo-LiDAR + w RGB-token
    descriptor); LiDAR and fused queries do not change; no weights of its own; ONNX follows."""
    import dataclasses

    from attnlink_ros.errors import ConfigError
    from attnlink_ros.inference.export import export_onnx, parity

    torch.manual_seed(4)
    pure = AttnLink(variant("attnlink-lite", image_depth=True)).eval()
    mixed = AttnLink(variant("attnlink-lite", image_depth=True, image_rgb_weight=0.3)).eval()
    mixed.load_state_dict(pure.state_dict())  # strict: the same weights
    rgb, depth = _inputs(pure.cfg, b=2)
    with torch.no_grad():
        p = pure(rgb=rgb).descriptor
        pure.mono, mono = None, pure.mono
        r = pure(rgb=rgb).descriptor  # the RGB tokens' image descriptor
        pure.mono = mono
        want = torch.nn.functional.normalize(0.7 * p + 0.3 * r, dim=1)
        assert torch.allclose(mixed(rgb=rgb).descriptor, want, atol=1e-6)
        for kw in ({"depth": depth}, {"rgb": rgb, "depth": depth}):
            assert torch.equal(mixed(**kw).descriptor, pure(**kw).descriptor)
    assert parity(mixed, export_onnx(mixed, tmp_path / "m.image.onnx", "image"), "image", batch=2) <= 1e-4
    for bad in ({"image_rgb_weight": 1.5}, {"image_rgb_weight": 0.3, "image_depth": False}):
        with pytest.raises(ConfigError, match="image_rgb_weight"):
            dataclasses.replace(variant("attnlink-lite", image_depth=True), **bad)


def test_widen_mono_keeps_what_the_trained_network_computes():
    """widen_mono: the wider pseudo-LiDAR network gives the same depth and return logit (eval
    mode, trained BatchNorm statistics), its added channels learn, and it never narrows."""
    from attnlink_ros.model.depth_completion import MonoDepth, widen_mono

    torch.manual_seed(0)
    old = MonoDepth((8, 16, 24, 32))
    opt = torch.optim.SGD(old.parameters(), lr=0.05)
    for _ in range(3):  # trained weights and running statistics, not the initialisation
        depth, logit = old(torch.randn(4, 3, 32, 64))
        (depth.mean() + logit.square().mean()).backward()
        opt.step()
        opt.zero_grad()
    old.eval()
    new = widen_mono(old, (12, 16, 40, 48)).eval()
    assert new.enc1[0][0].out_channels == 12 and new.enc4[1][0].out_channels == 48
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        (d0, l0), (d1, l1) = old(x), new(x)
    torch.testing.assert_close(d1, d0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    assert not torch.equal(d0, MonoDepth((12, 16, 40, 48)).eval()(x)[0])  # the copy is what made them equal
    # the added channels reach the output through zero weights, which get gradients
    new.train()
    depth, logit = new(x)
    (depth.mean() + logit.mean()).backward()
    assert new.head.weight.grad[:, 8:].abs().sum() > 0
    with pytest.raises(ValueError, match="narrower"):
        widen_mono(old, (8, 16, 16, 32))
