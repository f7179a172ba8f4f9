"""ament_python package attnlink_ros: `colcon build` and `pip install` both use this file."""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = "attnlink_ros"


def share(folder: str, pattern: str = "*"):
    files = [f for f in glob(f"{folder}/{pattern}") if os.path.isfile(f)]
    return (f"share/{package_name}/{folder}", files)


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        share("launch"),
        share("config"),
        share("config/ablations"),
        share("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="attnlink_ros developers",
    maintainer_email="attnlink@example.org",
    description="AttnLink cross-modal place recognition (camera / LiDAR vs LiDAR map) for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "attnlink = attnlink_ros.cli:main",
            "attnlink_node = attnlink_ros.ros.entry:node_main",
            "attnlink_frontend = attnlink_ros.ros.entry:frontend_main",
            "attnlink_retrieval = attnlink_ros.ros.entry:retrieval_main",
        ],
    },
)
