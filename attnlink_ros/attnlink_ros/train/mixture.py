"""The pseudo-LiDAR mixture (model/mixture.py): a model trained end to end on rendered towns
(``render_from``, its U-Net) and a real-image run (``camera_from``, its ImageNet Lite0 network)
joined by a gate fitted here, everything else frozen and shared.

The two models must agree on every weight outside their pseudo-LiDAR networks (a real-image run
copies them from the model it started from): the mixture then answers LiDAR and fused queries
bit for bit as both do. The gate is a logistic regression on the Lite0 encoder's pooled features
(and those of the mirror image), rendered frames of ``synth`` towns (label 1) against the real
frames of the training folds (label 0), both classes weighed equally, L2-regularised, fitted
full-batch with L-BFGS: seconds on two cores. With ``held_out`` a fold of real drives is left out
of the gate (and must be left out of ``camera_from``'s run: ``{fold}`` in its path), and the run
ends with that fold's real depth and "which drive" recall and the gate's probabilities on it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass(frozen=True)
class MixtureConfig:
    render_from: str = "attnlink_ros/models/attnlink-lite"  # its pseudo-LiDAR U-Net serves rendered images
    camera_from: str = "runs/real-lite0-{fold}/model"  # a real_image run; {fold}: the held-out fold ("all" for none)
    folds: str = "attnlink_ros/config/real_folds.yaml"
    held_out: str = ""
    synth: tuple = ()  # rendered towns (KITTI layout, sequence 00): the gate's renders
    synth_stride: int = 3
    out: str = "runs/mixture"
    weight_decay: float = 1e-2  # L2 on the gate's weights (standardised features)
    steps: int = 200  # L-BFGS iterations
    hard_gate: bool = False  # the favoured network alone (p > 0.5), not the mix (model/mixture.py)
    # photometric variants of every gate frame, both classes alike (photometric_variants): brightness,
    # tone, a camera's response and blur stop telling renders from photographs
    photometric: int = 0
    threads: int = 2

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> "MixtureConfig":
        from .real_image import load_section

        return load_section(cls, path, "mixture", overrides, tuples=("synth",))


def build_mixture(render_from: str | Path, camera_from: str | Path):
    """The mixture of the two models' pseudo-LiDAR networks (gate untrained: p = 0.5), every other
    weight and the camera model's grid kept. Refuses models that differ outside ``mono``."""
    from ..model import AttnLink
    from ..model.io import load_model

    ren, rmeta = load_model(render_from)
    cam, cmeta = load_model(camera_from)
    if ren.cfg.mono_encoder == "mixture":  # a mixture (the shipped model) lends its rendered-town U-Net
        from ..model.mixture import render_half

        ren = render_half(ren)
    if ren.cfg.mono_encoder != "unet" or ren.mono is None:
        raise ConfigError(f"render_from {render_from}: needs a model with the pseudo-LiDAR U-Net (mono_encoder unet)")
    if cam.cfg.mono_encoder != "efficientnet_lite0":
        raise ConfigError(f"camera_from {camera_from}: needs a real-image run's model (mono_encoder efficientnet_lite0)")
    rs, cs = ren.state_dict(), cam.state_dict()
    shared = [k for k in cs if not k.startswith("mono.")]
    if set(shared) != {k for k in rs if not k.startswith("mono.")} or any(not torch.equal(rs[k], cs[k]) for k in shared):
        raise ConfigError(f"{render_from} and {camera_from} differ outside their pseudo-LiDAR networks: they cannot share one depth branch")
    # the RGB share of an image query is the rendered-town model's (scaled by the gate: model/mixture.py)
    cfg = dataclasses.replace(cam.cfg, mono_encoder="mixture", mono_widths=ren.cfg.mono_widths, image_rgb_weight=ren.cfg.image_rgb_weight)
    model = AttnLink(cfg)
    model.load_state_dict({k: cs[k] for k in shared}, strict=False)
    model.mono.render.load_state_dict(ren.mono.state_dict())
    model.mono.camera.load_state_dict(cam.mono.state_dict())
    return model.eval(), rmeta, cmeta


@torch.no_grad()
def gate_features(model, rgb: np.ndarray, mirror: bool = True, chunk: int = 32) -> np.ndarray:
    """(N or 2N, F) the gate's input features of images (N, 3, H, W) in [0, 1] (and of their mirrors)."""
    out = []
    enc = model.mono.camera.encoder.eval()
    for i in range(0, len(rgb), chunk):
        x = (torch.from_numpy(np.ascontiguousarray(rgb[i:i + chunk])) - model.rgb_mean) / model.rgb_std
        for im in ((x, x.flip(-1)) if mirror else (x,)):
            out.append(model.mono.gate_features(enc(im)).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.mono.gate.in_features), np.float32)


def fit_gate(gate: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor, X: np.ndarray, y: np.ndarray,
             weight_decay: float, steps: int) -> dict:
    """Fits ``gate`` (and the standardisation ``mean``/``std``, in place) as a logistic regression
    of ``y`` (1 = render) on ``X``, both classes weighed equally; returns per-class training accuracy."""
    if len(set(y.tolist())) != 2:
        raise ConfigError("the gate needs both rendered and camera frames")
    Xt = torch.from_numpy(X).float()
    yt = torch.from_numpy(y.astype(np.float32))
    with torch.no_grad():
        mean.copy_(Xt.mean(0))
        std.copy_(Xt.std(0).clamp_min(1e-6))
        gate.weight.zero_()
        gate.bias.zero_()
    Z = (Xt - mean) / std
    w = torch.where(yt > 0, 0.5 / yt.sum(), 0.5 / (1 - yt).sum())
    opt = torch.optim.LBFGS(gate.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(gate(Z)[:, 0], yt, reduction="none") * w).sum()
        loss = loss + 0.5 * weight_decay * gate.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = gate(Z)[:, 0] > 0
    return {"render_accuracy": round(float(pred[yt > 0].float().mean()), 4),
            "camera_accuracy": round(float((~pred[yt == 0]).float().mean()), 4),
            "renders": int(yt.sum()), "camera_frames": int((1 - yt).sum())}


def _to_u8_bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(rgb.transpose(0, 2, 3, 1)[..., ::-1] * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _from_u8_bgr(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def photometric_variants(rgb: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """(N * n, 3, H, W) seeded photometric variants of images (N, 3, H, W) in [0, 1]: brightness
    x e^U(ln 0.1, ln 1.5) and gamma U(0.6, 1.6), then half the time a random camera's response
    (data/camera.py: white balance, vignetting, noise, JPEG) and half the time a Gaussian blur of
    sigma U(0, 2) px. The same family for renders and photographs: what it changes cannot tell them apart."""
    import cv2

    from ..data.camera import camera_look, camera_response

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        for im in rgb:
            x = np.clip(im * np.exp(rng.uniform(np.log(0.1), np.log(1.5))), 0.0, 1.0) ** rng.uniform(0.6, 1.6)
            u8 = _to_u8_bgr(x[None])[0]
            if rng.random() < 0.5:
                u8 = camera_response(u8, camera_look(int(rng.integers(1 << 30))), rng)
            if rng.random() < 0.5:
                sigma = rng.uniform(0.0, 2.0)
                if sigma > 0.2:
                    u8 = cv2.GaussianBlur(u8, (0, 0), sigma)
            out.append(u8)
    return _from_u8_bgr(np.stack(out)) if out else np.zeros((0, *rgb.shape[1:]), np.float32)


# the gate's robustness probe: fixed perturbations of camera images that must still go to the camera network
PROBE = ("dark_x0.3", "dark_x0.15", "look_1", "look_2", "look_3", "blur_2")


def probe_images(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Per :data:`PROBE` perturbation, the images (N, 3, H, W) in [0, 1] so perturbed (camera
    looks drawn with a fixed seed over these frames in order)."""
    import cv2

    from ..data.camera import camera_look, camera_response

    u8 = _to_u8_bgr(rgb)
    out = {}
    for name in PROBE:
        if name.startswith("dark_"):
            out[name] = (rgb * float(name.split("x")[1])).astype(np.float32)
        elif name.startswith("look_"):
            rng = np.random.default_rng(0)
            look = camera_look(int(name.split("_")[1]))
            out[name] = _from_u8_bgr(np.stack([camera_response(im, look, rng) for im in u8]))
        else:
            out[name] = _from_u8_bgr(np.stack([cv2.GaussianBlur(im, (0, 0), float(name.split("_")[1])) for im in u8]))
    return out


def perturbation_probe(model, rgb: np.ndarray) -> dict:
    """Per :data:`PROBE` perturbation of images (N, 3, H, W) in [0, 1], the gate's render
    probabilities summarised (frames, min, median, max, above_0.5)."""
    return {name: _summary(render_probability(model, x)) for name, x in probe_images(rgb).items()}


def render_probability(model, rgb: np.ndarray) -> np.ndarray:
    """The gate's probability that each image (N, 3, H, W) in [0, 1] is a render."""
    X = torch.from_numpy(gate_features(model, rgb, mirror=False))
    with torch.no_grad():
        return torch.sigmoid(model.mono.gate((X - model.mono.gate_mean) / model.mono.gate_std)[:, 0]).numpy()


def _summary(p: np.ndarray) -> dict:
    return {"frames": int(len(p)), "min": round(float(p.min()), 4), "median": round(float(np.median(p)), 4),
            "max": round(float(p.max()), 4), "above_0.5": int((p > 0.5).sum())}


def train_mixture(cfg: MixtureConfig, progress: bool = True) -> dict:
    from ..data.real import RealFolds, load_real_frames
    from ..model.io import save_model
    from .real_image import evaluate_fold

    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    camera_from = cfg.camera_from.format(fold=cfg.held_out or "all")
    model, rmeta, cmeta = build_mixture(cfg.render_from, camera_from)
    if cfg.held_out and cmeta.get("real_held_out") != cfg.held_out:
        raise ConfigError(f"camera_from {camera_from} did not hold out fold {cfg.held_out!r} (it held out {cmeta.get('real_held_out')!r})")
    folds = RealFolds.load(cfg.folds)
    H, W, fov = model.cfg.input_height, model.cfg.input_width, model.cfg.input_fov_deg
    frames = load_real_frames(folds.roots, H, W, sequences=folds.drives, views=2, fov_deg=fov, progress=progress)
    train_drives = folds.train_drives(cfg.held_out) if cfg.held_out else folds.drives
    def with_variants(rgb: np.ndarray, seed: int) -> np.ndarray:
        return np.concatenate([rgb, photometric_variants(rgb, cfg.photometric, seed)]) if cfg.photometric else rgb

    real = gate_features(model, with_variants(frames.of_drives(train_drives).rgb, 0))
    renders = [gate_features(model, with_variants(load_real_frames([r], H, W, sequences=["00"], stride=cfg.synth_stride, fov_deg=fov,
                                                                   progress=progress).rgb, 1 + i)) for i, r in enumerate(cfg.synth)]
    if not renders:
        raise ConfigError("mixture: synth names no rendered towns for the gate")
    X = np.concatenate([real, *renders])
    y = np.concatenate([np.zeros(len(real)), np.ones(sum(len(r) for r in renders))])
    fit = fit_gate(model.mono.gate, model.mono.gate_mean, model.mono.gate_std, X, y, cfg.weight_decay, cfg.steps)
    model.mono.hard.fill_(1.0 if cfg.hard_gate else 0.0)
    model.eval()
    provenance = (f"pseudo-LiDAR mixture: the U-Net of {rmeta['fingerprint'][:12]} ({cfg.render_from}) for renders, the Lite0 "
                  f"network of {cmeta['fingerprint'][:12]} ({camera_from}) for camera images, a {'hard' if cfg.hard_gate else 'soft'} gate fitted on real drives "
                  f"{train_drives} against renders of {list(cfg.synth)}" + (f", {cfg.photometric} photometric variants a frame" if cfg.photometric else "")
                  + " (train/mixture.py)")
    save_model(model, out / "model", {"trained_steps": 0, "provenance": provenance, "real_train_drives": train_drives,
                                      "real_held_out": cfg.held_out})
    result = {"held_out": cfg.held_out, "train_drives": train_drives, "camera_from": camera_from, "gate_fit": fit}
    if cfg.held_out:
        held = frames.of_drives(folds.folds[cfg.held_out])
        result["held_out_render_probability"] = _summary(render_probability(model, held.rgb))
        result["held_out_perturbed"] = perturbation_probe(model, held.rgb)
        result["held_out_eval"] = evaluate_fold(model, frames, folds.folds[cfg.held_out])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
