"""Every shipped training config parses, and its model builds and runs one forward pass."""

from pathlib import Path

import pytest
import torch
import yaml

from attnlink_ros.model import AttnLink
from attnlink_ros.train.trainer import RunConfig

from .conftest import PKG

ALL = sorted(PKG.glob("config/train_*.yaml")) + sorted(PKG.glob("config/ablations/*.yaml")) + sorted(PKG.glob("config/experiments/*.yaml"))
REAL_IMAGE = [p for p in ALL if "real_image" in (yaml.safe_load(p.read_text()) or {})]  # train/real_image.py's configs
MIXTURE = [p for p in ALL if "mixture" in (yaml.safe_load(p.read_text()) or {})]  # train/mixture.py's configs
CONFIGS = [p for p in ALL if p not in REAL_IMAGE and p not in MIXTURE]


@pytest.mark.parametrize("path", MIXTURE, ids=lambda p: str(Path(p).relative_to(PKG)))
def test_mixture_config_names_what_it_joins(path, monkeypatch):
    """A mixture config parses, its folds exist, its rendered-town model has the U-Net (directly
    or as a mixture's render half) and its camera model is named per fold."""
    from attnlink_ros.model.io import load_model
    from attnlink_ros.train.mixture import MixtureConfig

    from .conftest import REPO

    monkeypatch.chdir(REPO)
    cfg = MixtureConfig.load(path)
    assert Path(cfg.folds).is_file() and cfg.synth and "{fold}" in cfg.camera_from
    ren, _ = load_model(cfg.render_from)
    assert ren.cfg.mono_encoder in ("unet", "mixture")


@pytest.mark.parametrize("path", REAL_IMAGE, ids=lambda p: str(Path(p).relative_to(PKG)))
def test_real_image_config_builds_its_model(path, monkeypatch):
    from attnlink_ros.train.real_image import RealImageConfig, build_model

    from .conftest import REPO

    monkeypatch.chdir(REPO)  # the configs' paths are the repository root's
    cfg = RealImageConfig.load(path)
    assert cfg.steps > 0 and Path(cfg.folds).is_file()
    m, _ = build_model(cfg)
    assert m.cfg.image_depth and m.cfg.mono_encoder == "efficientnet_lite0" and m.cfg.input_fov_deg == cfg.fov_deg
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("mono.") and not n.startswith("mono.encoder.") for n in trained)  # only the decoder trains
    with torch.no_grad():
        assert m.eval()(rgb=torch.rand(1, 3, m.cfg.input_height, m.cfg.input_width)).descriptor.shape == (1, m.cfg.descriptor_dim)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(Path(p).relative_to(PKG)))
def test_config_builds_its_model(path):
    cfg = RunConfig.load(path)
    mcfg = cfg.model_config()
    assert cfg.data.train and cfg.train.steps > 0
    if mcfg.variant == "attnlink":  # the full trunk at a small input keeps this quick
        mcfg = type(mcfg)(**{**mcfg.to_dict(), "input_height": 64, "input_width": 128})
    torch.manual_seed(0)
    m = AttnLink(mcfg).eval()
    rgb = torch.rand(1, 3, mcfg.input_height, mcfg.input_width)
    depth = torch.rand(1, 1, mcfg.input_height, mcfg.input_width) * 30
    with torch.no_grad():
        out = m(rgb=rgb, depth=depth)
        assert out.descriptor.shape == (1, mcfg.descriptor_dim)
        if mcfg.image_depth:  # pseudo-LiDAR image query
            assert m(rgb=rgb).return_logit.shape == (1, 1, mcfg.input_height, mcfg.input_width)


def test_ablations_change_what_they_say():
    by_name = {p.stem: RunConfig.load(p).model_config() for p in PKG.glob("config/ablations/*.yaml")}
    assert by_name["no_adcn"].adcn is False
    assert by_name["no_spatial_attention"].spatial_attention is False
    assert by_name["no_context_gating"].context_gating is False
    assert by_name["concat_fusion"].fusion == "concat"
    assert {c.variant for c in by_name.values()} == {"attnlink-lite"}
