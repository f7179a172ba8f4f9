"""The DDS transport profile the project ships (``config/fastdds_shm.xml``) and how it is applied.

Importing this module does not import rclpy: the profile must be in the environment before the
process creates its first DDS participant (``rclpy.init``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROFILE_NAME = "fastdds_shm.xml"
PROFILE_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")  # Fast DDS 2.x, 3.x


def config_dir() -> Path:
    """The package's config folder: the source tree's, else the installed share folder."""
    src = Path(__file__).resolve().parents[2] / "config"
    if (src / PROFILE_NAME).is_file():
        return src
    for base in (Path(sys.prefix), *(Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p)):
        share = base / "share" / "attnlink_ros" / "config"
        if (share / PROFILE_NAME).is_file():
            return share
    try:  # a full ROS 2 install
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("attnlink_ros")) / "config"
    except Exception:  # noqa: BLE001 - not installed that way
        return src


def profile_path() -> Path:
    return config_dir() / PROFILE_NAME


def transport_env(environ: dict | None = None) -> dict[str, str]:
    """The variables to add to ``environ`` (default: this process's) for the shipped profile;
    empty when the environment already names a profile or the file is missing."""
    env = os.environ if environ is None else environ
    if any(env.get(v) for v in PROFILE_VARS):
        return {}
    p = profile_path()
    return {v: str(p) for v in PROFILE_VARS} if p.is_file() else {}


def apply_transport_profile() -> dict[str, str]:
    """Puts the shipped profile in this process's environment (before ``rclpy.init``)."""
    add = transport_env()
    os.environ.update(add)
    return add
