import pytest

from attnlink_ros.config import InputConfig, from_dict, load_yaml, resolve
from attnlink_ros.data.synth import SynthConfig
from attnlink_ros.errors import ConfigError

from .conftest import REPO


def test_shipped_yaml_resolves():
    data = load_yaml(REPO / "config/attnlink.yaml")
    assert from_dict(InputConfig, data["input"]) == InputConfig()
    assert from_dict(SynthConfig, data["synth"]) == SynthConfig()


def test_unknown_key_and_wrong_type_are_refused():
    with pytest.raises(ConfigError, match="unknown InputConfig key"):
        from_dict(InputConfig, {"hieght": 64})
    with pytest.raises(ConfigError, match="InputConfig.height"):
        from_dict(InputConfig, {"height": "tall"})
    with pytest.raises(ConfigError, match="crop_top must be >= 0"):
        from_dict(InputConfig, {"crop_top": -3})


def test_precedence_cli_over_file_over_default():
    cfg = resolve(InputConfig, {"height": 64, "width": 256}, {"width": 128, "crop_top": None})
    assert (cfg.height, cfg.width, cfg.crop_top) == (64, 128, None)
    assert resolve(SynthConfig, {}, {"frames": 10}).frames == 10


def test_bad_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("input: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(p)
