"""The ROS 2 package as colcon builds and installs it, and the project's entry points."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from .conftest import REPO


def test_colcon_build_installs_package(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    p = subprocess.run(
        [str(colcon), "--log-base", str(tmp_path / "log"), "build", "--base-paths", str(REPO),
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    inst = tmp_path / "install" / "attnlink_ros"
    exe = inst / "lib" / "attnlink_ros" / "attnlink"
    assert exe.is_file() and os.access(exe, os.X_OK)  # where `ros2 run attnlink_ros attnlink` looks
    node_exe = inst / "lib" / "attnlink_ros" / "attnlink_node"
    assert node_exe.is_file() and os.access(node_exe, os.X_OK)
    share = inst / "share" / "attnlink_ros"
    for sub in ("launch", "config", "models"):
        assert (share / sub).is_dir() and any((share / sub).iterdir()), sub
    assert (share / "config" / "attnlink.yaml").is_file()
    assert (share / "package.xml").is_file()
    assert (inst / "share" / "ament_index" / "resource_index" / "packages" / "attnlink_ros").is_file()
    site = next((inst / "lib").glob("python3*/site-packages"))
    assert (site / "attnlink_ros" / "geometry" / "projection.py").exists() or any(site.glob("attnlink_ros*"))
    assert not (REPO / "build").exists() and not (REPO / "install").exists()


def test_package_xml_format3_declares_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "attnlink_ros"
    deps = {e.text for e in root if e.tag in ("depend", "exec_depend", "test_depend")}
    for key in ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "nav_msgs", "visualization_msgs", "diagnostic_msgs",
                "python3-numpy", "python3-opencv", "python3-yaml", "python3-torch", "python3-pytest"):
        assert key in deps, key
    assert root.find("export/build_type").text == "ament_python"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in ci and os.access(REPO / ".ci" / "run", os.X_OK)


def test_requirements_pin_everything():
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert "==" in line, line
