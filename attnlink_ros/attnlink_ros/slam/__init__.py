"""SLAM with the project's loop closures (no rclpy here): KISS-ICP LiDAR odometry, the online loop
detector (retrieval/loops.py), a GTSAM pose graph optimised incrementally (iSAM2) as loops arrive,
trajectory error by evo, and KISS-SLAM run beside it as the peer.

Imports go one way: slam -> retrieval, evaluation, data, geometry; nothing imports slam but the CLI.
"""
