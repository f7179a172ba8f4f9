"""Launch logic (the launch files' node lists and replay command) and the nodes it describes,
started for real as processes with the shipped params file, fed by the replay command."""

import ast
import subprocess
import threading
import time

import pytest
import rclpy
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.executors import SingleThreadedExecutor

from attnlink_ros.launch_logic import ENTRY_POINTS, attnlink_nodes, calib_of, default_params_file, launch_environment, replay_command

from .conftest import PKG


def test_node_lists():
    (single,) = attnlink_nodes(map="/m", mode="lidar", namespace="car1", use_sim_time="true")
    assert (single.executable, single.name, single.namespace) == ("attnlink_node", "attnlink", "car1")
    assert single.parameters == {"map": "/m", "mode": "lidar", "use_sim_time": True}  # empty args keep the file's values
    assert single.params_file == default_params_file() and (PKG / "config/attnlink.yaml").samefile(single.params_file)
    front, retr = attnlink_nodes(map="/m", split="true", calib_file="/c.txt", image_domain="camera")
    assert "map" not in front.parameters and front.parameters["calib_file"] == "/c.txt"
    assert front.parameters["image_domain"] == "camera"  # a vehicle's camera: the front end encodes the images
    assert retr.parameters["map"] == "/m" and retr.remappings == [("descriptor", "attnlink_frontend/descriptor")]
    cmd = single.command()
    assert cmd[cmd.index("--params-file") + 1] == single.params_file
    assert "map:=/m" in cmd and "use_sim_time:=true" in cmd and "__ns:=/car1" in cmd
    assert set(ENTRY_POINTS) == {"attnlink_node", "attnlink_frontend", "attnlink_retrieval"}
    setup = (PKG / "setup.py").read_text()
    assert all(f"{k} = {m}:{f}" in setup for k, (m, f) in ENTRY_POINTS.items())


def test_replay_command():
    cmd = replay_command(data="/k", sequence="05", rate="2", namespace="car1")
    assert cmd[cmd.index("--data") + 1] == "/k" and "--clock" in cmd and cmd[cmd.index("--rate") + 1] == "2"
    assert cmd[cmd.index("--points-topic") + 1] == "/car1/points"
    assert "--bag" in replay_command(bag="/b.bag", clock="false") and "--clock" not in replay_command(bag="/b.bag", clock="false")
    with pytest.raises(ValueError, match="exactly one"):
        replay_command()
    env = launch_environment()
    assert not env or env["FASTRTPS_DEFAULT_PROFILES_FILE"].endswith("fastdds_shm.xml")


@pytest.mark.parametrize("name", ["attnlink.launch.py", "kitti_replay.launch.py"])
def test_launch_files_use_the_logic(name):
    """Parsed (launch is not installable here): a generate_launch_description, and every name
    imported from attnlink_ros.launch_logic exists there; with launch installed, it is built."""
    import attnlink_ros.launch_logic as logic

    tree = ast.parse((PKG / "launch" / name).read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "attnlink_ros.launch_logic" for a in n.names]
    assert imported and all(hasattr(logic, a) for a in imported)
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
    except ImportError:
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location("lf", PKG / "launch" / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.generate_launch_description().entities


def test_launch_spec_runs_with_replay(synth_root, tmp_path):
    """The single-process spec (params file parsed by rcl) started as a process, fed by the
    replay command (another process): ~/place arrives for the replayed frames."""
    from attnlink_ros.cli import main

    assert main(["build-map", "--data", str(synth_root), "--out", str(tmp_path / "map"), "--backend", "onnxruntime", "--quiet"]) == 0
    (spec,) = attnlink_nodes(map=str(tmp_path / "map"), backend="onnxruntime", mode="lidar", calib_file=calib_of(str(synth_root), "00"))
    spec.parameters["tracking"] = False  # the launch plumbing: every replayed frame's top place on ~/place
    rclpy.init()
    io = rclpy.create_node("launch_listener")
    places = []
    io.create_subscription(PoseWithCovarianceStamped, "/attnlink/place", places.append, 50)
    ex = SingleThreadedExecutor()
    ex.add_node(io)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    node = subprocess.Popen(spec.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if io.count_publishers("/attnlink/place") > 0:
                break
            time.sleep(0.2)
        assert io.count_publishers("/attnlink/place") > 0, "the node did not come up"
        rep = subprocess.run(replay_command(data=str(synth_root), rate="2", clock="false", lockstep="/attnlink/match"),
                             capture_output=True, text=True, timeout=120)
        assert rep.returncode == 0, rep.stderr
        time.sleep(1.0)
    finally:
        node.terminate()
        try:
            log = node.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            node.kill()
            log = node.communicate()[0]
        ex.shutdown()
        spin.join(timeout=5)
        io.destroy_node()
        rclpy.shutdown()
    assert len(places) >= 20, f"{len(places)} places of 24 frames; node log:\n{log[-2000:]}"
    assert "configured: model" in log
