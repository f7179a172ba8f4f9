"""ROS 2 edge: message conversions, time synchronisation, nodes, replay. The only package that
imports rclpy and ROS message types; the core stays ROS-free."""
