"""AttnLink place recognition: one `attnlink` node, or front end + retrieval split (split:=true).

    ros2 launch attnlink_ros attnlink.launch.py map:=/path/to/map [model:=...] [backend:=auto]
        [mode:=fused] [image_domain:=camera] [map_mode:=relocalize|online] [namespace:=...] [use_sim_time:=false] [split:=false] [params_file:=...]

Topics (remap under the namespace): in image, camera_info, points (online: the pose_topic
parameter's nav_msgs/Odometry); out ~/place, ~/match (attnlink_msgs/PlaceMatches), ~/loop
(attnlink_msgs/LoopClosure), lio_loop/loop_closure_detection, ~/markers, /diagnostics; service
~/save_map (online mode). The node list comes from
attnlink_ros.launch_logic.attnlink_nodes (tested without a launch install); the shipped Fast DDS
profile (config/fastdds_shm.xml) is set in the environment unless one is already named.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from attnlink_ros.launch_logic import PACKAGE, attnlink_nodes, default_params_file, launch_environment

ARGUMENTS = {
    "model": ("", "model artifact NAME.json; empty: the params file's (default: the shipped model)"),
    "map": ("", "place map directory (attnlink build-map)"),
    "backend": ("", "auto | torch | onnxruntime | tensorrt; empty: the params file's"),
    "mode": ("", "image | lidar | fused; empty: the params file's"),
    "image_domain": ("", "camera (a vehicle's camera) | render (rendered towns) | auto (a per-image gate); empty: the params file's"),
    "map_mode": ("", "relocalize (prebuilt map) | online (loop closures from the drive itself); empty: the params file's"),
    "calib_file": ("", "KITTI calib.txt for the LiDAR extrinsics (or set lidar_to_camera in the params file)"),
    "namespace": ("", "namespace of the nodes and their topics"),
    "use_sim_time": ("false", "use /clock (replayed data)"),
    "split": ("false", "true: attnlink_frontend + attnlink_retrieval over the descriptor topic"),
    "params_file": ("", "ROS 2 params file; empty: the installed config/attnlink.yaml"),
}


def _nodes(context):
    values = {k: LaunchConfiguration(k).perform(context) for k in ARGUMENTS}
    actions = [SetEnvironmentVariable(k, v) for k, v in launch_environment().items()]
    for spec in attnlink_nodes(**values):
        actions.append(Node(package=PACKAGE, executable=spec.executable, name=spec.name, namespace=spec.namespace or None,
                            parameters=[spec.params_file, spec.parameters], remappings=spec.remappings, output="screen"))
    return actions


def generate_launch_description():
    args = [DeclareLaunchArgument(k, default_value=d, description=desc) for k, (d, desc) in ARGUMENTS.items()]
    args[-1] = DeclareLaunchArgument("params_file", default_value=default_params_file(), description=ARGUMENTS["params_file"][1])
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
