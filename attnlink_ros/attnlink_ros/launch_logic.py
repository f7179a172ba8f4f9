"""What the launch files start, as plain data (``launch`` and ``launch_ros`` are not needed to
import or test this module): ``launch/attnlink.launch.py`` and ``launch/kitti_replay.launch.py``
turn these specs into ``launch_ros.actions.Node`` / ``launch.actions.ExecuteProcess`` actions;
:meth:`NodeSpec.command` gives the same node as a ``ros2 run``-equivalent command line, which the
tests start for real."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .ros.transport import config_dir, transport_env

PACKAGE = "attnlink_ros"


@dataclass
class NodeSpec:
    executable: str  # console script of this package
    name: str
    namespace: str = ""
    params_file: str = ""
    parameters: dict = field(default_factory=dict)  # overrides over params_file
    remappings: list = field(default_factory=list)  # (from, to)

    def command(self, python: str = sys.executable) -> list[str]:
        """The node as a process: ``python -c <entry point> --ros-args ...`` (what ``ros2 run`` runs)."""
        module, func = ENTRY_POINTS[self.executable]
        args = [python, "-c", f"import sys; from {module} import {func}; sys.exit({func}())", "--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace if self.namespace.startswith('/') else '/' + self.namespace}"]
        if self.params_file:
            args += ["--params-file", self.params_file]
        for k, v in self.parameters.items():
            args += ["-p", f"{k}:={_ros_value(v)}"]
        for a, b in self.remappings:
            args += ["-r", f"{a}:={b}"]
        return args


ENTRY_POINTS = {
    "attnlink_node": ("attnlink_ros.ros.entry", "node_main"),
    "attnlink_frontend": ("attnlink_ros.ros.entry", "frontend_main"),
    "attnlink_retrieval": ("attnlink_ros.ros.entry", "retrieval_main"),
}


def _ros_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_ros_value(x) for x in v) + "]"
    if isinstance(v, str) and v == "":
        return "''"
    return str(v)


def _truthy(v) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def default_params_file() -> str:
    return str(config_dir() / "attnlink.yaml")


def attnlink_nodes(model: str = "", map: str = "", backend: str = "", mode: str = "", namespace: str = "", use_sim_time="false",
                   split="false", params_file: str = "", calib_file: str = "", map_mode: str = "",
                   image_domain: str = "") -> list[NodeSpec]:
    """The nodes of ``attnlink.launch.py``: one ``attnlink`` node, or (split) ``attnlink_frontend``
    feeding ``attnlink_retrieval`` through the descriptor topic. Empty arguments leave the params
    file's values."""
    over = {k: v for k, v in (("model", model), ("map", map), ("backend", backend), ("mode", mode), ("calib_file", calib_file),
                              ("map_mode", map_mode), ("image_domain", image_domain)) if v}
    over["use_sim_time"] = _truthy(use_sim_time)
    pf = params_file or default_params_file()
    if not _truthy(split):
        return [NodeSpec("attnlink_node", "attnlink", namespace, pf, over)]
    front = {k: v for k, v in over.items() if k != "map"}
    retrieval = {k: v for k, v in over.items() if k not in ("calib_file",)}
    return [NodeSpec("attnlink_frontend", "attnlink_frontend", namespace, pf, front),
            NodeSpec("attnlink_retrieval", "attnlink_retrieval", namespace, pf, retrieval,
                     remappings=[("descriptor", "attnlink_frontend/descriptor")])]


def replay_command(data: str = "", sequence: str = "00", bag: str = "", rate="1.0", clock="true", loop="false", namespace: str = "",
                   lockstep: str = "") -> list[str]:
    """``attnlink replay`` for ``kitti_replay.launch.py`` (a KITTI folder or a bag)."""
    if bool(data) == bool(bag):
        raise ValueError("kitti_replay: give exactly one of data:=ROOT or bag:=PATH")
    cmd = [sys.executable, "-m", "attnlink_ros", "replay", "--rate", str(rate), "--quiet"]
    cmd += ["--data", data, "--sequence", str(sequence)] if data else ["--bag", bag]
    if _truthy(clock):
        cmd.append("--clock")
    if _truthy(loop):
        cmd.append("--loop")
    if lockstep:
        cmd += ["--lockstep", lockstep]
    if namespace:
        ns = "/" + namespace.strip("/")
        cmd += ["--image-topic", f"{ns}/image", "--camera-info-topic", f"{ns}/camera_info", "--points-topic", f"{ns}/points"]
    return cmd


def launch_environment() -> dict[str, str]:
    """Environment the launch files set: the shipped Fast DDS profile (unless one is named)."""
    return transport_env()


def calib_of(data: str, sequence: str) -> str:
    """The KITTI sequence's calib.txt (the replay launch hands it to the node for the extrinsics)."""
    from .data.kitti import KittiSequence

    return str(Path(KittiSequence(data, sequence).dir) / "calib.txt")
