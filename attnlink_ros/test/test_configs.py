"""Every shipped training config parses, and its model builds and runs one forward pass."""

from pathlib import Path

import pytest
import torch

from attnlink_ros.model import AttnLink
from attnlink_ros.train.trainer import RunConfig

from .conftest import PKG

CONFIGS = sorted(PKG.glob("config/train_*.yaml")) + sorted(PKG.glob("config/ablations/*.yaml")) + sorted(PKG.glob("config/experiments/*.yaml"))


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
