import pytest

from attnlink_ros.config import NODE_PARAM_DOCS, InputConfig, NodeConfig, from_dict, load_yaml, node_params_from_yaml, resolve
from attnlink_ros.data.synth import SynthConfig
from attnlink_ros.errors import ConfigError

from .conftest import PKG


def test_shipped_yaml_resolves():
    data = load_yaml(PKG / "config/offline.yaml")
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


def test_node_params_file_matches_nodeconfig():
    """config/attnlink.yaml is a ROS 2 params file whose keys are NodeConfig's, with its defaults,
    each documented on its line; every NodeConfig field has a description."""
    params = node_params_from_yaml(PKG / "config/attnlink.yaml")
    assert NodeConfig(**params) == NodeConfig()
    assert set(params) | {"lidar_to_camera"} == set(NodeConfig.__dataclass_fields__) == set(NODE_PARAM_DOCS)
    text = (PKG / "config/attnlink.yaml").read_text()
    for name in NodeConfig.__dataclass_fields__:
        line = next(ln for ln in text.splitlines() if ln.strip().lstrip("# ").startswith(name + ":"))
        assert "#" in line.split(":", 1)[1], f"{name} has no comment"


def test_nodeconfig_refuses_bad_values(tmp_path):
    for bad in ({"mode": "sonar"}, {"k": 0}, {"slop": 2.0}, {"lidar_to_camera": (1.0,) * 12}, {"backend": "tpu"},
                {"image_domain": "infrared"}):
        with pytest.raises(ConfigError):
            NodeConfig(**bad)
    p = tmp_path / "p.yaml"
    p.write_text("/**:\n  ros__parameters:\n    k: 3\nattnlink:\n  ros__parameters:\n    k: 7\n")
    assert node_params_from_yaml(p) == {"k": 7}
    p.write_text("attnlink:\n  k: 3\n")
    with pytest.raises(ConfigError, match="no ros__parameters"):
        node_params_from_yaml(p)
