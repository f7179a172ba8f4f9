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


def image_drive_with_map(root, frames: int = 120, seed: int = 11):
    """A synthetic drive (seed 11 turns 90 degrees) written to ``root/drive`` and a map of all its
    places saved at ``root/map``: (sequence, PlaceMap, PlaceRecognizer with that map)."""
    from attnlink_ros.data.kitti import KittiSequence
    from attnlink_ros.data.synth import SynthConfig, write_synthetic_sequence
    from attnlink_ros.pipeline import PlaceRecognizer
    from attnlink_ros.retrieval.build import build_map_from_sequence

    write_synthetic_sequence(Path(root) / "drive", SynthConfig(frames=frames, seed=seed), workers=1, progress=False)
    seq = KittiSequence(Path(root) / "drive", "00")
    rec = PlaceRecognizer(None, None, backend="onnxruntime")
    pm, _ = build_map_from_sequence(rec, seq, progress=False)
    pm.save(Path(root) / "map")
    rec.map = pm
    return seq, pm, rec


def blanked(image, i: int, blank=()):
    """``image`` of frame ``i``, or a uniform grey one where ``i`` is in ``blank`` (a camera that
    saw nothing: visual odometry finds no corners)."""
    import numpy as np

    return np.full_like(image, 128) if i in blank else image


def visual_tracking_offline(seq, pm, rec, blank=(), stats: dict | None = None) -> list[int]:
    """The frames the core's MapTracking publishes for image queries of ``seq`` with the drive
    aligned by monocular visual odometry (as the node's visual_odometry runs it: a frame whose
    motion is unknown breaks the chain, MapTracking.odometry_lost); each published fix is checked
    right (within 10 m of the truth). ``blank``: frames whose image is uniform grey; ``stats``
    gains "unknown", the frames whose motion was unknown."""
    from dataclasses import replace

    import numpy as np

    from attnlink_ros.localization.alignment import AlignConfig
    from attnlink_ros.localization.calibration import load_for_model
    from attnlink_ros.localization.session import MapTracking
    from attnlink_ros.localization.tracker import TrackerConfig
    from attnlink_ros.localization.visual_odometry import VisualOdometry, step_pose, visual_align
    from attnlink_ros.pipeline import Frame

    mt = MapTracking(pm, load_for_model(None, None, rec.fingerprint), replace(TrackerConfig(), align=visual_align(AlignConfig())))
    vo, T, out, unknown = VisualOdometry(), None, [], 0
    for i in range(len(seq)):
        image = blanked(seq.read_image(i), i, blank)
        step = vo.step(image, seq.calib.P[:3, :3])
        if step is None:
            T = np.eye(4) if vo.steps == 0 else None  # the first frame starts the chain
            if T is None:
                unknown += 1
                mt.odometry_lost()
        else:
            T = (np.eye(4) if T is None else T) @ step_pose(step)
        fix = mt.step(float(seq.times[i]), rec.query(Frame(float(seq.times[i]), seq.calib, image), 10, "image").hits, "image", T)
        if fix.published:
            assert fix.source == "aligned"
            assert np.hypot(*(np.asarray(fix.xy) - seq.poses[i][[0, 2], 3])) <= 10.0  # right, within 10 m
            out.append(i)
    if stats is not None:
        stats["unknown"] = unknown
    return out
