"""The model artifact: ``NAME.safetensors`` (weights, cannot execute code) + ``NAME.json``
(full model config, sha256 fingerprint of the weights file, provenance).

``load_model`` checks the fingerprint, so a truncated or swapped weights file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from ..errors import DataError
from .attnlink import AttnLink
from .config import ModelConfig

FORMAT_VERSION = 1
REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
DEFAULT_MODEL_NAME = "attnlink-lite"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_model(model: AttnLink, path: str | Path, extra: dict | None = None) -> Path:
    """Writes ``path.safetensors`` and ``path.json`` (each atomically); returns the JSON path."""
    from safetensors.torch import save_file

    weights, meta = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=weights.parent, suffix=".tmp")
    os.close(fd)
    save_file(state, tmp)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a model is shared
    os.replace(tmp, weights)
    info = {"format_version": FORMAT_VERSION, "config": model.cfg.to_dict(), "fingerprint": sha256_file(weights),
            "weights": weights.name, **(extra or {})}
    tmpj = meta.with_suffix(".json.tmp")
    tmpj.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmpj, meta)
    return meta


def trained_drives(meta: dict, drives) -> list[str]:
    """The drives among ``drives`` whose names the model's real-image training lists
    (``real_train_drives`` in its JSON): numbers on them are training numbers, not held out."""
    seen = set(meta.get("real_train_drives") or ())
    return sorted({str(d) for d in drives} & seen)


def default_model_path() -> Path:
    """The shipped default model (``models/attnlink-lite``), in the repo or the installed share."""
    candidates = [REPO_MODELS / DEFAULT_MODEL_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("attnlink_ros")) / "models" / DEFAULT_MODEL_NAME)
    except Exception:  # not installed by colcon
        pass
    for c in candidates:
        if c.with_suffix(".json").is_file():
            return c
    raise DataError(candidates[0].with_suffix(".json"), "shipped default model not found (train one: see models/README.md)")


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[AttnLink, dict]:
    """Loads a model artifact (default: the shipped one) in eval mode; returns (model, meta)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta_path = _paths(path if path is not None else default_model_path())
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DataError(meta_path, "model config not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(meta_path, f"model config is not valid JSON ({exc.msg})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(meta_path, f"model format version {meta.get('format_version')} is not {FORMAT_VERSION}")
    if not weights.is_file():
        raise DataError(weights, "model weights not found")
    fp = sha256_file(weights)
    if fp != meta.get("fingerprint"):
        raise DataError(weights, "weights do not match the fingerprint in the model config (corrupt or replaced file)")
    cfg = ModelConfig.from_dict(meta["config"])
    model = AttnLink(cfg)
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise DataError(weights, f"unreadable weights ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(weights, f"weights do not fit the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(device).eval(), meta
