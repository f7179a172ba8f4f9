"""Where a model's tracking calibration lives: ``NAME.tracking.json`` beside the model artifact
(``NAME.json`` + ``NAME.safetensors``), written by ``attnlink eval --track --calibrate`` on
validation towns, with the model's fingerprint: scores of another model mean something else, so a
calibration of another model is refused."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError
from .tracker import ObservationModel, load_calibration, save_calibration


def calibration_path(model_path: str | Path | None) -> Path:
    from ..model.io import default_model_path

    p = Path(model_path) if model_path else default_model_path()
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".tracking.json")


def save_for_model(models: dict[str, ObservationModel], path: str | Path, fingerprint: str, extra: dict | None = None) -> Path:
    return save_calibration(models, path, {"model_fingerprint": fingerprint, **(extra or {})})


def load_for_model(path: str | Path | None, model_path: str | Path | None, fingerprint: str) -> dict[str, ObservationModel]:
    """The observation models for the model with ``fingerprint`` (from ``path``, or the file beside
    the model); a calibration made for another model is refused with the command that remakes it."""
    path = Path(path) if path else calibration_path(model_path)
    models = load_calibration(path)
    got = json.loads(path.read_text()).get("model_fingerprint")
    if got != fingerprint:
        raise DataError(path, f"tracking calibration made for model {str(got)[:12]}, not {fingerprint[:12]}: "
                              "re-fit it on validation towns (attnlink eval --track --calibrate FILE)")
    return models
