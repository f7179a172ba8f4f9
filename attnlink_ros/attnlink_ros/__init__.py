"""attnlink_ros: AttnLink cross-modal place recognition for ROS 2 (camera and LiDAR vs a LiDAR map)."""

__version__ = "0.1.0"
