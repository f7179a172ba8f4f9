"""The ROS 2 package as colcon builds and installs it, and the project's entry points."""

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from .conftest import PKG, REPO


def _workspace_with_this_repository(tmp_path) -> Path:
    """A colcon workspace whose src/ holds this repository as a fresh checkout would: the files git
    tracks (or would track), never a virtual environment, build output or git-ignored data. (Copying
    the tree minus a list of ignores once took the 1.6 GB `.venv-kiss` along and filled CI's disk.)"""
    src = tmp_path / "ws" / "src" / "attnlink"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, timeout=60, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        f = REPO / rel
        if f.is_file():  # a tracked file deleted in the working tree is not in a fresh checkout either
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, src / rel)
    return tmp_path / "ws"


def test_colcon_build_in_a_workspace_builds_both_packages(tmp_path):
    """`colcon build` in a workspace with this repository in src/, as a robot user runs it:
    discovery finds attnlink_msgs and attnlink_ros, builds the interfaces first, installs both;
    the installed messages import and the executables sit where `ros2 run` looks."""
    ws = _workspace_with_this_repository(tmp_path)
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}",
               AMENT_PREFIX_PATH=os.environ.get("AMENT_PREFIX_PATH") or str(bindir.parent))
    colcon = str(bindir / "colcon")
    listed = subprocess.run([colcon, "list", "--topological-order", "--names-only"], cwd=ws, capture_output=True, text=True,
                            timeout=120, env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["attnlink_msgs", "attnlink_ros"]  # the interfaces first: attnlink_ros depends on them
    p = subprocess.run([colcon, "build", "--event-handlers", "console_cohesion-"], cwd=ws, capture_output=True, text=True,
                       timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    inst = ws / "install" / "attnlink_ros"
    for exe in ("attnlink", "attnlink_node", "attnlink_frontend", "attnlink_retrieval"):
        f = inst / "lib" / "attnlink_ros" / exe
        assert f.is_file() and os.access(f, os.X_OK), exe  # where `ros2 run attnlink_ros <exe>` looks
    share = inst / "share" / "attnlink_ros"
    for sub in ("launch", "config", "models"):
        assert (share / sub).is_dir() and any((share / sub).iterdir()), sub
    assert (share / "config" / "attnlink.yaml").is_file() and (share / "package.xml").is_file()
    assert (inst / "share" / "ament_index" / "resource_index" / "packages" / "attnlink_ros").is_file()
    msgs = ws / "install" / "attnlink_msgs"
    assert (msgs / "share" / "attnlink_msgs" / "msg" / "PlaceMatches.msg").is_file()
    assert (msgs / "share" / "ament_index" / "resource_index" / "rosidl_interfaces" / "attnlink_msgs").is_file()
    # the installed generated types (not the venv's copy) import and round-trip
    site = next((msgs / "lib").glob("python3*/site-packages"))
    code = ("import attnlink_msgs.msg as m; from rclpy.serialization import serialize_message, deserialize_message; "
            "x = m.PlaceMatches(mode='fused', hits=[m.PlaceHit(map_index=7, score=0.5)]); "
            "y = deserialize_message(serialize_message(x), m.PlaceMatches); print(m.__file__, y.hits[0].map_index)")
    run_env = dict(env, PYTHONPATH=str(site), LD_LIBRARY_PATH=f"{msgs / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=run_env)
    assert r.returncode == 0, r.stderr
    where, index = r.stdout.split()
    assert where.startswith(str(site)) and index == "7"


def test_package_xml_format3_declares_dependencies():
    root = ET.parse(PKG / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "attnlink_ros"
    deps = {e.text for e in root if e.tag in ("depend", "exec_depend", "test_depend")}
    for key in ("rclpy", "attnlink_msgs", "std_srvs", "sensor_msgs", "std_msgs", "geometry_msgs", "nav_msgs", "visualization_msgs", "diagnostic_msgs",
                "python3-numpy", "python3-opencv", "python3-yaml", "python3-torch", "python3-pytest"):
        assert key in deps, key
    assert root.find("export/build_type").text == "ament_python"
    msgs = ET.parse(REPO / "attnlink_msgs" / "package.xml").getroot()
    assert msgs.get("format") == "3" and msgs.findtext("name") == "attnlink_msgs"
    assert msgs.find("export/build_type").text == "ament_cmake" and msgs.findtext("member_of_group") == "rosidl_interface_packages"


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
