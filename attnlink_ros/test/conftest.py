"""Shared fixtures. ROS isolation is set here, before any test imports rclpy."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import pytest

# One random DDS domain per test session, discovery kept on this host.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random().randint(1, 101)))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# The shipped Fast DDS transport profile, as launch files, replay and demo apply it (before any rclpy.init).
from attnlink_ros.ros.transport import apply_transport_profile  # noqa: E402

apply_transport_profile()

PKG = Path(__file__).resolve().parents[1]  # the attnlink_ros package folder (package.xml, setup.py, config, ...)
REPO = PKG.parent  # the repository: README, Makefile, .ci, docs, attnlink_msgs
KITTI_ROOT = Path(os.environ.get("ATTNLINK_KITTI", REPO.parent / "shared" / "data" / "kitti"))


@pytest.fixture(scope="session")
def kitti_root() -> Path:
    if not (KITTI_ROOT / "dataset" / "sequences" / "00" / "velodyne").is_dir():
        pytest.skip(f"real KITTI frames not found at {KITTI_ROOT} (set ATTNLINK_KITTI to the folder holding dataset/)")
    return KITTI_ROOT


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A short synthetic drive written once per session (seed 3, 24 frames)."""
    from attnlink_ros.data.synth import SynthConfig, write_synthetic_sequence

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_sequence(root, SynthConfig(frames=24, seed=3), workers=1, progress=False)
    return root


@contextlib.contextmanager
def spinning(node, listener):
    """Spins ``node`` and ``listener`` on a two-thread executor (real rclpy) for the ``with``
    block; after it, tears both down and gives the node's counters as the yielded dict's
    ``counters``."""
    import threading

    from rclpy.executors import MultiThreadedExecutor

    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(node)
    ex.add_node(listener)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    out: dict = {}
    try:
        yield out
    finally:
        ex.shutdown()
        spin.join(timeout=5)
    out["counters"] = dict(node.counters)
    node.destroy_node()
    listener.destroy_node()


def replay_through_node(node, listener, records, lockstep_timeout: float = 10.0, settle=None, rate: float = 0,
                        until=None):
    """Spins ``node`` and ``listener`` (real rclpy), replays ``records`` to the node in lockstep on
    its ~/match (the replay tool; ``rate`` > 0: free-running at that multiple of the recorded
    time instead), then tears both down; returns (replay stats, node counters). ``settle()`` runs
    after discovery, before the first frame; ``until()``, when given, is waited for (10 s at most)
    after the last one."""
    import time

    from attnlink_ros.ros.replay import Replayer

    with spinning(node, listener) as done:
        rp = Replayer(lockstep=None if rate > 0 else "/attnlink/match", lockstep_timeout=lockstep_timeout)
        assert rp.wait_for_subscribers(10.0, ("image", "points"))
        if settle is not None:
            settle()
        stats = rp.run(list(records), rate=rate, progress=False)
        deadline = time.monotonic() + 10.0
        while until is not None and not until() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        rp.close()
    return stats, done["counters"]
