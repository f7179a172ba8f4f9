"""ONNX export of a model artifact, one graph per query mode (an absent modality is not in the
graph), dynamic batch, checked with ``onnx.checker`` and against PyTorch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..model.attnlink import AttnLink, DescriptorOnly
from ..model.config import MODES

OPSET = 17
INPUTS = {"image": ("rgb",), "lidar": ("depth",), "fused": ("rgb", "depth")}


def example_inputs(model: AttnLink, mode: str, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the model's size for ``mode``: rgb in [0, 1], sparse depth (~15% filled)."""
    g = torch.Generator().manual_seed(seed)
    h, w = model.cfg.input_height, model.cfg.input_width
    rgb = torch.rand(batch, 3, h, w, generator=g)
    depth = torch.rand(batch, 1, h, w, generator=g) * 60 * (torch.rand(batch, 1, h, w, generator=g) < 0.15)
    return tuple({"rgb": rgb, "depth": depth}[n] for n in INPUTS[mode])


def onnx_path(model_path: str | Path, mode: str, image_domain: str = "auto") -> Path:
    """NAME.MODE.onnx beside the model; an image graph with a fixed image domain (model/mixture.py)
    is NAME.image.DOMAIN.onnx."""
    p = Path(model_path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    domain = f".{image_domain}" if mode == "image" and image_domain != "auto" else ""
    return p.with_name(f"{p.name}.{mode}{domain}.onnx")


def export_onnx(model: AttnLink, out: str | Path, mode: str, fingerprint: str = "") -> Path:
    """Writes ``out`` (ONNX, opset 17, dynamic batch) for ``mode`` (an image graph traces the
    model's image domain, recorded in the metadata); returns its path."""
    import onnx

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    wrapper = DescriptorOnly(model, mode).eval()
    args = example_inputs(model, mode)
    names = list(INPUTS[mode])
    out = Path(out)
    tmp = out.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, args, str(tmp), opset_version=OPSET, dynamo=False, input_names=names, output_names=["descriptor"],
            dynamic_axes={**{n: {0: "batch"} for n in names}, "descriptor": {0: "batch"}},
        )
    model.eval()  # the exporter restores the wrapper's mode; keep the model in eval
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    meta = proto.metadata_props.add()
    meta.key, meta.value = "attnlink", json.dumps({"mode": mode, "fingerprint": fingerprint, "config": model.cfg.to_dict(),
                                                    "image_domain": model.image_domain if mode == "image" else "auto"})
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return out


def parity(model: AttnLink, path: str | Path, mode: str, batch: int = 2) -> float:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch descriptors on random inputs."""
    import onnxruntime as ort

    args = example_inputs(model, mode, batch, seed=1)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(INPUTS[mode], args)})[0]
    with torch.no_grad():
        want = DescriptorOnly(model, mode).eval()(*args).numpy()
    return float(np.abs(got - want).max())
