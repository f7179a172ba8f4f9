"""The attnlink node (attnlink.launch.py) plus `attnlink replay` of a KITTI sequence or a bag, on
sim time (/clock from the replay).

    ros2 launch attnlink_ros kitti_replay.launch.py map:=/path/to/map data:=/path/to/kitti sequence:=00
    ros2 launch attnlink_ros kitti_replay.launch.py map:=/path/to/map bag:=/path/to/kitti.bag calib_file:=...

With data:=, the sequence's calib.txt gives the node its LiDAR extrinsics. The command line comes
from attnlink_ros.launch_logic.replay_command (tested without a launch install).
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, OpaqueFunction, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from attnlink_ros.launch_logic import calib_of, launch_environment, replay_command

ARGUMENTS = {
    "map": ("", "place map directory (attnlink build-map)"),
    "model": ("", "model artifact; empty: the shipped model"),
    "backend": ("", "inference backend; empty: the params file's"),
    "mode": ("", "query mode; empty: the params file's"),
    "image_domain": ("", "camera (real KITTI drives and bags) | render (a rendered town in KITTI layout) | auto; empty: the params file's"),
    "data": ("", "KITTI-layout root (holds dataset/); or bag:="),
    "sequence": ("00", "sequence of data:="),
    "bag": ("", "ROS 1 .bag or ROS 2 bag folder (kitti2bag / kitti2mcap / attnlink to-bag)"),
    "calib_file": ("", "KITTI calib.txt (with bag:=); with data:= the sequence's own"),
    "rate": ("1.0", "replay speed, times real time"),
    "loop": ("false", "replay in a loop"),
    "namespace": ("", "namespace of the node and the replayed topics"),
    "split": ("false", "front end + retrieval as two nodes"),
}


def _setup(context):
    v = {k: LaunchConfiguration(k).perform(context) for k in ARGUMENTS}
    calib = v["calib_file"] or (calib_of(v["data"], v["sequence"]) if v["data"] else "")
    node_args = {"map": v["map"], "model": v["model"], "backend": v["backend"], "mode": v["mode"], "image_domain": v["image_domain"],
                 "namespace": v["namespace"], "split": v["split"], "use_sim_time": "true", "calib_file": calib}
    here = os.path.dirname(os.path.abspath(__file__))
    include = IncludeLaunchDescription(PythonLaunchDescriptionSource(os.path.join(here, "attnlink.launch.py")),
                                       launch_arguments={k: x for k, x in node_args.items() if x}.items())
    cmd = replay_command(v["data"], v["sequence"], v["bag"], v["rate"], "true", v["loop"], v["namespace"])
    return [SetEnvironmentVariable(k, x) for k, x in launch_environment().items()] + [include, ExecuteProcess(cmd=cmd, output="screen")]


def generate_launch_description():
    return LaunchDescription([DeclareLaunchArgument(k, default_value=d, description=desc) for k, (d, desc) in ARGUMENTS.items()]
                             + [OpaqueFunction(function=_setup)])
