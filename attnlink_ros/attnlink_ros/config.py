"""Configuration: frozen dataclasses, read from YAML, one precedence rule.

``CLI flag > file > dataclass default``. A section of ``config/offline.yaml`` maps onto one
dataclass; an unknown key or a value of the wrong type is a :class:`ConfigError`, so a typo never
silently falls back to a default. The resolved configuration is saved beside every artifact.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

# which pseudo-LiDAR network of a mixture model image queries run (model/mixture.py); here, torch-free,
# for the node's parameters and the CLI
IMAGE_DOMAINS = ("auto", "camera", "render")

C = TypeVar("C")


@dataclass(frozen=True)
class InputConfig:
    """The network input cut from a camera image and its LiDAR scan (FoV conversion)."""

    height: int = 128
    width: int = 512
    crop_top: int | None = None  # first image row of the crop; None: from calibration (LiDAR's top beam)
    max_elevation_deg: float = 2.0  # top beam of the LiDAR, for the automatic crop
    min_range_m: float = 3.0  # nearest range considered for the automatic crop

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"input size must be positive, got {self.height}x{self.width}")
        if self.crop_top is not None and self.crop_top < 0:
            raise ConfigError(f"input.crop_top must be >= 0, got {self.crop_top}")


def _check_type(cls: type, name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check_type(cls, name, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{cls.__name__}.{name}: {value!r} is not {tp}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    if tp in (list, tuple) and isinstance(value, (list, tuple)):
        return tp(value)
    if tp is dict and isinstance(value, dict):
        return value
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        return tuple(value) if origin is tuple else list(value)
    raise ConfigError(f"{cls.__name__}.{name}: {value!r} is not {getattr(tp, '__name__', tp)}")


def from_dict(cls: type[C], values: dict[str, Any] | None) -> C:
    """Builds dataclass ``cls`` from a dict, refusing unknown keys and wrong types."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {k: _check_type(cls, k, hints[k], v) for k, v in values.items()}
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def resolve(cls: type[C], file_values: dict[str, Any] | None = None, cli: dict[str, Any] | None = None) -> C:
    """``cli`` (entries that are None are 'not given') over ``file_values`` over defaults."""
    merged = dict(file_values or {})
    merged.update({k: v for k, v in (cli or {}).items() if v is not None})
    return from_dict(cls, merged)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_resolved(path: str | Path, **sections: Any) -> Path:
    """Writes the resolved sections (dataclasses or dicts) as JSON beside an artifact."""
    path = Path(path)
    data = {k: (to_dict(v) if dataclasses.is_dataclass(v) else v) for k, v in sections.items()}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True)
class NodeConfig:
    """Parameters of the ROS nodes (``config/attnlink.yaml``, ``ros__parameters``). The nodes declare
    exactly these, with :data:`NODE_PARAM_DOCS`' descriptions and ranges; strings that are empty mean
    'not set' (ROS parameters cannot be null)."""

    model: str = ""  # model artifact; empty: the shipped default
    map: str = ""  # place map directory
    backend: str = "auto"
    mode: str = "fused"
    image_domain: str = "auto"  # which pseudo-LiDAR network image queries run (model/mixture.py); a vehicle: camera
    calib_file: str = ""
    lidar_to_camera: tuple[float, ...] = ()  # 16 floats row-major, or empty
    crop_top: int = -1  # first image row of the network crop; -1: from the calibration
    k: int = 5
    slop: float = 0.05
    sensor_timeout: float = 1.0
    reliability: str = "best_effort"
    map_frame: str = "map"
    map_mode: str = "relocalize"  # relocalize: the prebuilt map, fixed | online: the map grows from the drive
    loops: bool = True
    loop_min_score: float = 0.5
    loop_min_gap: float = 30.0
    keyframe_interval: float = 1.0
    keyframe_views: int = 2  # = retrieval.views.DEFAULT_VIEWS
    reverse_offset: float = 3.5  # = retrieval.views.DEFAULT_REVERSE_OFFSET_M
    verify: bool = True
    verify_candidates: int = 6  # = retrieval.loops.LoopConfig.candidates
    verify_async: bool = True
    min_inlier_ratio: float = 0.7
    consistency: int = 1
    markers: bool = True
    tracking: bool = True  # relocalize: the filter over the map's places decides what ~/place carries
    min_confidence: float = -1.0  # relocalize + tracking: a fix is published on ~/place at or above this; < 0: per mode, as calibrated
    track_alignment: bool = True  # relocalize + tracking + pose_topic: the recent drive aligned onto the map (localization/alignment.py)
    track_odometry_drift: float = 0.03  # the alignment's odometry error per metre driven (AlignConfig.drift_per_m)
    visual_odometry: bool = False  # relocalize + tracking, no pose_topic: the camera's own motion (localization/visual_odometry.py)
    camera_height: float = 1.65  # visual_odometry: the camera above the road, m (its scale)
    tracking_calibration: str = ""  # the filter's observation model; empty: the model's own NAME.tracking.json
    pose_topic: str = ""  # nav_msgs/Odometry of the LiDAR's pose (e.g. SLAM's); online: keyframe poses; relocalize: the filter's motion
    pose_tolerance: float = 0.1
    saved_map: str = "attnlink_drive_map"
    autostart: bool = True

    def __post_init__(self) -> None:
        for name, (_, choices, rng) in NODE_PARAM_DOCS.items():
            v = getattr(self, name)
            if choices and v not in choices:
                raise ConfigError(f"parameter {name}: {v!r} is not one of {', '.join(choices)}")
            if rng and not (rng[0] <= v <= rng[1]):
                raise ConfigError(f"parameter {name}: {v} is outside [{rng[0]}, {rng[1]}]")
        if len(self.lidar_to_camera) not in (0, 16):
            raise ConfigError(f"parameter lidar_to_camera: needs 16 floats (row-major 4x4), got {len(self.lidar_to_camera)}")


# name: (description, allowed values or None, (min, max) or None)
NODE_PARAM_DOCS: dict[str, tuple[str, tuple | None, tuple | None]] = {
    "model": ("model artifact (NAME.json); empty: the shipped default model", None, None),
    "map": ("place map directory (attnlink build-map); the retrieval needs one", None, None),
    "backend": ("inference backend", ("auto", "torch", "onnxruntime", "tensorrt"), None),
    "mode": ("query mode (fused falls back to the modality present when a sensor goes silent)", ("image", "lidar", "fused"), None),
    "image_domain": ("which of the model's pseudo-LiDAR networks image queries run: camera (a real camera: the network "
                     "taught by real LiDAR, no gate, the fastest image query), render (rendered towns), auto (a gate guesses "
                     "per image; it takes dark or blurred photographs for renders: docs/deployment.md); camera and render need "
                     "a mixture model (the shipped one)", IMAGE_DOMAINS, None),
    "calib_file": ("KITTI calib.txt giving P2 and Tr (used until a CameraInfo arrives, and for Tr)", None, None),
    "lidar_to_camera": ("LiDAR -> camera 4x4 transform, 16 floats row-major (overrides calib_file's Tr); empty: unset", None, None),
    "crop_top": ("first image row of the network crop; -1: from the calibration (the LiDAR's top beam)", None, (-1, 100000)),
    "k": ("places returned per query (~/match)", None, (1, 100)),
    "slop": ("max stamp difference of a camera/LiDAR pair, s", None, (0.0, 1.0)),
    "sensor_timeout": ("a stream silent this long (s) counts as lost: query with the other", None, (0.05, 60.0)),
    "reliability": ("sensor subscription reliability", ("best_effort", "reliable"), None),
    "map_frame": ("frame_id of ~/place and ~/markers", None, None),
    "map_mode": ("relocalize: match the prebuilt map | online: the map grows from the drive (SLAM loop closure)", ("relocalize", "online"), None),
    "loops": ("publish loops: LIO-SAM pairs [t_query, t_match] on lio_loop/loop_closure_detection and attnlink_msgs/LoopClosure on ~/loop", None, None),
    "loop_min_score": ("smallest descriptor score (cosine) of a loop candidate", None, (-1.0, 1.0)),
    "loop_min_gap": ("smallest |t_query - t_match| (s) of a loop; online: the exclusion window of recent frames", None, (0.0, 1e9)),
    "keyframe_interval": ("online: one keyframe (descriptor + downsampled scan) per this many seconds", None, (0.0, 3600.0)),
    "keyframe_views": ("online: heading views a keyframe holds (its scan turned by 360/K steps): loops are found driving either way; 1 = camera view only", None, (1, 36)),
    "reverse_offset": ("online: a keyframe's rear views are taken this far (m) to its left, where the drive the other way passes (right-hand traffic; negative for left-hand)", None, (-20.0, 20.0)),
    "verify": ("GICP-verify candidates against the place's stored scan (needs the LiDAR; relocalize: a map built with --scans), publish verified loops only", None, None),
    "verify_candidates": ("candidates verified per query, best score first", None, (1, 20)),
    "verify_async": ("relocalize: verify in a process of its own; a frame arriving while it is busy is answered at once, unverified (counted verify_busy), so the node keeps the sensor rate", None, None),
    "min_inlier_ratio": ("share of the live scan's voxels matched after GICP to accept a candidate", None, (0.0, 1.0)),
    "consistency": ("online: consecutive agreeing detections before a loop is published (1 = off)", None, (1, 20)),
    "markers": ("publish ~/markers (map places once, then the current match)", None, None),
    "tracking": ("relocalize: track the vehicle over the map's places (a filter over places and views, with a 'lost' state); "
                 "~/place then carries only confident fixes and verified poses; false: every frame's top place", None, None),
    "min_confidence": ("relocalize + tracking: smallest posterior probability (within 10 m of the fix, its heading) "
                       "of a fix published on ~/place; -1 (default): per query mode, the threshold the tracking calibration "
                       "measured (0.8 where it measured none; a mode whose fixes were never precise on the validation towns, "
                       "image-only today, publishes verified, carried and aligned poses only)", None, (-1.0, 1.0)),
    "track_alignment": ("relocalize + tracking with pose_topic: the drive's last 150 m of odometry aligned onto the map "
                        "as one rigid shape, agreed by many frames' hits; its pose is published where the belief's is not "
                        "(image-only fixes come from it) and says 'lost' off the map; false: off", None, None),
    "track_odometry_drift": ("relocalize + tracking + track_alignment: the odometry's position error per metre driven "
                             "since the last frame whose hits agreed with the alignment; it widens the aligned pose's "
                             "sigma (published only while its place + sigma lies within 10 m) and the radius its hits "
                             "must fall in. 0.03 was chosen for the towns' simulated odometry (2% a step + 0.002 rad a "
                             "frame); set it to your odometry's measured drift", None, (0.001, 0.5)),
    "visual_odometry": ("relocalize + tracking + track_alignment with no pose_topic, image or fused mode: the vehicle's motion "
                        "from consecutive camera images (monocular visual odometry, its scale from the road and camera_height; "
                        "about 45 ms a frame on one core, 1.4x the image query) drives the alignment (a 100 m window, drift 0.06 a metre, as "
                        "measured on the towns); pose_topic, when set, is used instead", None, None),
    "camera_height": ("visual_odometry: the camera's height above the road, m (KITTI's rig: 1.65)", None, (0.1, 10.0)),
    "tracking_calibration": ("relocalize + tracking: the filter's observation model (attnlink eval --track --calibrate); "
                             "empty: NAME.tracking.json beside the model", None, None),
    "pose_topic": ("nav_msgs/Odometry topic of the LiDAR's pose in a world frame (e.g. SLAM's or wheel odometry); online: "
                   "keyframes take it and ~/save_map stores it (empty: the saved map holds no poses); relocalize + tracking: "
                   "the filter's motion between frames (empty: the map's geometry alone)", None, None),
    "pose_tolerance": ("online: largest gap (s) between a keyframe and the nearest pose on pose_topic", None, (0.0, 10.0)),
    "saved_map": ("online: directory ~/save_map writes the drive's map to (replaced atomically)", None, None),
    "autostart": ("configure and activate at start-up (false: drive the lifecycle from outside)", None, None),
}


def node_params_from_yaml(path: str | Path, node_name: str = "attnlink") -> dict[str, Any]:
    """The ``ros__parameters`` a ROS 2 params file gives node ``node_name`` (``/**`` first, then
    the node's own entry, which wins), as ROS would apply them."""
    data = load_yaml(path)
    params: dict[str, Any] = {}
    for key in ("/**", node_name, f"/{node_name}"):
        entry = data.get(key)
        if entry is None:
            continue
        if not isinstance(entry, dict) or "ros__parameters" not in entry:
            raise ConfigError(f"{path}: entry {key!r} has no ros__parameters")
        params.update(entry["ros__parameters"] or {})
    return params
