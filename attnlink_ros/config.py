"""Configuration: frozen dataclasses, read from YAML, one precedence rule.

``CLI flag > file > dataclass default``. A section of ``config/attnlink.yaml`` maps onto one
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
