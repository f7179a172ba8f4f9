"""The image side on real pairs (issue 20): a pseudo-LiDAR network on an ImageNet-pretrained
encoder, taught by real LiDAR, validated on a real fold it never saw.

Everything but the pseudo-LiDAR network (``model.mono``) is the starting model's, frozen: the
LiDAR and fused descriptors stay bit-identical, and the frozen depth branch is the teacher. Per
frame (real frames of the training folds, and synthetic town frames beside them):

- depth: |log d_pred - log d_lidar| on the grid pixels holding a real LiDAR return (<= 80 m);
- returns: BCE of the predicted LiDAR-return logit against the scan's returns;
- teacher: L1 (units of max depth) against the depth branch's own input, the completed scan;
- descriptor: InfoNCE of the image's descriptor (pseudo-LiDAR through the frozen depth branch)
  against its own frame's LiDAR descriptor, the batch's other frames as negatives.

The run is resumable (``OUT/last.pt``: weights, optimiser, step, RNG) and ends with the held-out
fold's real depth table and its "which drive" recall (``evaluate_fold``), written to
``OUT/result.json``; the model artifact is ``OUT/model`` (``.json`` + ``.safetensors``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass(frozen=True)
class RealImageConfig:
    init_from: str = "attnlink_ros/models/attnlink-lite"  # model whose frozen parts are kept
    mono_encoder: str = "efficientnet_lite0"
    image_rgb_weight: float = 0.0  # the new model's image-only descriptor: pseudo-LiDAR alone (fixed before training)
    folds: str = "attnlink_ros/config/real_folds.yaml"
    held_out: str = ""  # a fold's name, or "" to train on every real frame (the shipped model)
    synth: tuple = ()  # KITTI-layout roots of synthetic towns (sequence 00), every `synth_stride`-th frame
    synth_stride: int = 2
    out: str = "runs/real-image"
    steps: int = 400
    batch_real: int = 8
    batch_synth: int = 8
    lr: float = 5e-4
    encoder_lr_scale: float = 0.3  # the pretrained encoder learns slower than the fresh decoder
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    depth_weight: float = 1.0
    return_weight: float = 0.1
    teacher_weight: float = 0.5
    nce_weight: float = 0.2
    temperature: float = 0.07
    brightness: float = 0.3  # image gain in [1 - b, 1 + b]
    contrast: float = 0.3
    flip: bool = True  # mirror image and scan together (the teacher sees the mirrored scan)
    checkpoint_every: int = 50
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_real < 1 or self.batch_synth < 0:
            raise ConfigError("real_image: steps and batch_real must be >= 1, batch_synth >= 0")

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> "RealImageConfig":
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        body = data.get("real_image")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: no 'real_image:' section")
        body = {**body, **{k: v for k, v in (overrides or {}).items() if v is not None}}
        unknown = set(body) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"{path}: unknown real_image keys {sorted(unknown)}")
        if "synth" in body:
            body["synth"] = tuple(body["synth"] or ())
        return cls(**body)


@dataclass
class _Pool:
    rgb: torch.Tensor    # (N, 3, h, w) [0, 1]
    depth: torch.Tensor  # (N, 1, h, w) sparse metres
    drive: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _synth_pool(roots, stride: int, height: int, width: int) -> _Pool | None:
    """Every ``stride``-th frame of the synthetic towns (sequence 00), as the real ones are read."""
    from ..data.real import load_real_frames

    if not roots:
        return None
    f = load_real_frames(roots, height, width, sequences=["00"], stride=stride)
    return _Pool(torch.from_numpy(f.rgb), torch.from_numpy(f.depth))


def build_model(cfg: RealImageConfig):
    """The starting model with a fresh pseudo-LiDAR network (ImageNet-pretrained encoder); every
    other weight copied from ``init_from``."""
    from ..model import AttnLink
    from ..model.efficientnet import MonoDepthLite0
    from ..model.io import load_model

    init, meta = load_model(cfg.init_from)
    mcfg = dataclasses.replace(init.cfg, image_depth=True, mono_encoder=cfg.mono_encoder, image_rgb_weight=cfg.image_rgb_weight)
    model = AttnLink(mcfg)
    state = {k: v for k, v in init.state_dict().items() if not k.startswith("mono.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("mono.") for k in missing):
        raise ConfigError(f"init_from {cfg.init_from}: weights do not fit ({unexpected[:3]}, {missing[:3]})")
    if cfg.mono_encoder == "efficientnet_lite0":
        model.mono = MonoDepthLite0(mcfg.max_depth_m, pretrained=True)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("mono."))
    return model, meta


def _augment(rgb: torch.Tensor, depth: torch.Tensor, cfg: RealImageConfig, g: torch.Generator):
    B = rgb.shape[0]
    gain = 1 + cfg.brightness * (2 * torch.rand(B, 1, 1, 1, generator=g) - 1)
    con = 1 + cfg.contrast * (2 * torch.rand(B, 1, 1, 1, generator=g) - 1)
    mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
    rgb = ((rgb - mean) * con + mean) * gain
    if cfg.flip:
        f = torch.rand(B, generator=g) < 0.5
        rgb = torch.where(f[:, None, None, None], rgb.flip(-1), rgb)
        depth = torch.where(f[:, None, None, None], depth.flip(-1), depth)
    return rgb.clamp(0, 1), depth


def step_loss(model, rgb: torch.Tensor, depth: torch.Tensor, cfg: RealImageConfig) -> tuple[torch.Tensor, dict]:
    """The loss of one batch: rgb (B, 3, h, w) in [0, 1], depth (B, 1, h, w) sparse metres."""
    maxd = model.cfg.max_depth_m
    with torch.no_grad():  # the frozen depth branch on the real scan: the teacher
        teacher = model.encode(None, depth)
        lidar_desc = model.fuse(teacher)[0]  # (B, D)
    tokens = model.encode_pseudo_lidar(rgb)
    image_desc = model.fuse(tokens)[0]  # (B, D), as an image-only query computes it (image_rgb_weight 0)
    pred, logit = tokens.dense_depth, tokens.return_logit
    valid = (depth > 0) & (depth <= 80.0)
    ld = (torch.log(pred.clamp_min(0.1)) - torch.log(depth.clamp_min(0.1))).abs()[valid].mean()
    lr = F.binary_cross_entropy_with_logits(logit, (depth > 0).to(logit.dtype))
    lt = (pred - teacher.dense_depth).abs().mean() / maxd
    sim = image_desc @ lidar_desc.T / cfg.temperature  # (B, B)
    ln = F.cross_entropy(sim, torch.arange(len(sim)))
    loss = cfg.depth_weight * ld + cfg.return_weight * lr + cfg.teacher_weight * lt + cfg.nce_weight * ln
    with torch.no_grad():
        top1 = float((sim.argmax(1) == torch.arange(len(sim))).float().mean())
    return loss, {"depth_log": float(ld.detach()), "return": float(lr.detach()), "teacher": float(lt.detach()), "nce": float(ln.detach()), "nce_top1": top1}


def _descriptors(model, rgb=None, depth=None, batch: int = 16) -> np.ndarray:
    out = []
    n = len(rgb if rgb is not None else depth)
    with torch.no_grad():
        for i in range(0, n, batch):
            out.append(model(rgb=None if rgb is None else torch.from_numpy(rgb[i:i + batch]),
                             depth=None if depth is None else torch.from_numpy(depth[i:i + batch])).descriptor.numpy())
    return np.concatenate(out)


def which_drive(model, frames, query_drives, modes=("image", "lidar", "fused")) -> dict:
    """Recall@1 "which drive": the LiDAR map holds the first half (by frame index) of every drive
    of ``frames`` (data.real.RealFrames with heading ``views``), far apart; the later half of each
    drive in ``query_drives`` asks, per mode; a hit is a top-1 place of the query's own drive."""
    model.eval()
    first = np.zeros(len(frames), bool)
    for d in frames.drives:
        idx = np.flatnonzero(frames.drive == d)
        first[idx[np.argsort(frames.frame[idx])][: (len(idx) + 1) // 2]] = True
    K = frames.views.shape[1]
    mapf = frames.subset(first)
    db = _descriptors(model, depth=mapf.views.reshape(-1, *mapf.views.shape[2:]))  # (M*K, D)
    db_drive = np.repeat(mapf.drive, K)
    counts = np.array([np.sum(mapf.drive == d) for d in frames.drives], float)
    out = {"map_places": int(len(mapf)), "views": int(K), "chance": round(float(np.sum((counts / counts.sum()) ** 2)), 4)}
    q = frames.subset(~first & np.isin(frames.drive, list(query_drives)))
    out["queries"] = int(len(q))
    for m in modes:
        desc = _descriptors(model, rgb=q.rgb if m != "lidar" else None, depth=q.depth if m != "image" else None)
        top = np.argmax(desc @ db.T, 1)
        ok = db_drive[top] == q.drive
        out[m] = {"recall@1": round(float(ok.mean()), 4),
                  "by_drive": {d: round(float(ok[q.drive == d].mean()), 4) for d in q.drives}}
    return out


def evaluate_fold(model, frames, drives) -> dict:
    """Real numbers of ``model`` on ``drives`` (frames it never trained on): depth table and
    "which drive" recall against a LiDAR map of every drive in ``frames``."""
    from ..evaluation.depth import evaluate_depth, predict_depth

    held = frames.of_drives(drives)
    return {"drives": list(drives), "depth": evaluate_depth(predict_depth(model, held.rgb), held),
            "which_drive": which_drive(model, frames, drives)}


def train_real_image(cfg: RealImageConfig, fresh: bool = False, progress: bool = True) -> dict:
    from ..data.real import RealFolds, load_real_frames
    from ..model.io import save_model

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    folds = RealFolds.load(cfg.folds)
    model, init_meta = build_model(cfg)
    H, W = model.cfg.input_height, model.cfg.input_width
    frames = load_real_frames(folds.roots, H, W, sequences=folds.drives, views=2)
    train_drives = folds.train_drives(cfg.held_out) if cfg.held_out else folds.drives
    tr = frames.of_drives(train_drives)
    real = _Pool(torch.from_numpy(tr.rgb), torch.from_numpy(tr.depth), tr.drive)
    synth = _synth_pool(cfg.synth, cfg.synth_stride, H, W) if cfg.batch_synth else None
    enc = [p for n, p in model.mono.named_parameters() if n.startswith("encoder.")]
    dec = [p for n, p in model.mono.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": enc, "lr": cfg.lr * cfg.encoder_lr_scale}, {"params": dec, "lr": cfg.lr}],
                            weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    step, log = 0, []
    g = torch.Generator().manual_seed(cfg.seed)
    ckpt = out / "last.pt"
    if ckpt.exists() and not fresh:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.mono.load_state_dict(state["mono"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        g.set_state(state["rng"])
        log = json.loads((out / "log.json").read_text()) if (out / "log.json").exists() else []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"real image ({cfg.held_out or 'all folds'})", unit="step")
    model.eval()
    model.mono.train()  # frozen parts keep inference behaviour (BatchNorm statistics)
    t0 = time.perf_counter()
    while step < cfg.steps:
        i = torch.randint(len(real.rgb), (min(cfg.batch_real, len(real.rgb)),), generator=g)
        rgb, depth = real.rgb[i], real.depth[i]
        if synth is not None:
            j = torch.randint(len(synth.rgb), (cfg.batch_synth,), generator=g)
            rgb, depth = torch.cat([rgb, synth.rgb[j]]), torch.cat([depth, synth.depth[j]])
        rgb, depth = _augment(rgb, depth, cfg, g)
        scale = min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for grp, lr in zip(opt.param_groups, base_lrs):
            grp["lr"] = lr * scale
        loss, stats = step_loss(model, rgb, depth, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        log.append({"step": step, "loss": round(float(loss.detach()), 5), **{k: round(v, 5) for k, v in stats.items()}})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", depth=f"{stats['depth_log']:.3f}", nce=f"{stats['nce_top1']:.2f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            tmp = out / "last.pt.tmp"
            torch.save({"mono": model.mono.state_dict(), "opt": opt.state_dict(), "step": step, "rng": g.get_state()}, tmp)
            tmp.replace(ckpt)
            (out / "log.json").write_text(json.dumps(log) + "\n")
    if bar is not None:
        bar.close()
    model.eval()
    provenance = (f"{init_meta['fingerprint'][:12]} with a fresh pseudo-LiDAR network ({cfg.mono_encoder}, ImageNet encoder) "
                  f"trained {cfg.steps} steps on real folds {train_drives} + synthetic {list(cfg.synth)} (train/real_image.py)")
    save_model(model, out / "model", {"trained_steps": cfg.steps, "provenance": provenance, "real_train_drives": train_drives,
                                      "real_held_out": cfg.held_out})
    result = {"held_out": cfg.held_out, "train_drives": train_drives, "steps": step,
              "seconds_this_run": round(time.perf_counter() - t0, 1), "last": log[-1] if log else None}
    if cfg.held_out:
        result["held_out_eval"] = evaluate_fold(model, frames, folds.folds[cfg.held_out])
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate_folds(folds_path: str | Path, run_pattern: str, baseline: str | Path | None = None) -> dict:
    """Every fold's model (``run_pattern`` with ``{fold}``, e.g. ``runs/real-lite0-{fold}/model``) on
    its own held-out fold, and the baseline model (default: the shipped one) on the same frames;
    per fold and pooled over all real frames (each answered by a model that never trained on it)."""
    from ..data.real import RealFolds, load_real_frames
    from ..evaluation.depth import depth_sums, evaluate_depth, metrics, predict_depth
    from ..model.io import load_model

    folds = RealFolds.load(folds_path)
    base, base_meta = load_model(baseline)
    frames = None
    out = {"folds": {}, "baseline": base_meta["fingerprint"]}
    pooled = {"model": {"depth": np.zeros(4), "hits": {m: [] for m in ("image", "lidar", "fused")}},
              "baseline": {"depth": np.zeros(4), "hits": {m: [] for m in ("image", "lidar", "fused")}}}
    for name, drives in folds.folds.items():
        model, meta = load_model(run_pattern.format(fold=name))
        if meta.get("real_held_out") not in (None, name):
            raise ConfigError(f"{run_pattern.format(fold=name)} was trained with fold {meta.get('real_held_out')!r} held out, not {name!r}")
        if frames is None:
            frames = load_real_frames(folds.roots, model.cfg.input_height, model.cfg.input_width, sequences=folds.drives, views=2)
        row = {}
        held = frames.of_drives(drives)
        for key, m in (("model", model), ("baseline", base)):
            pred = predict_depth(m, held.rgb)  # once: the fold's table and the pooled sums
            pooled[key]["depth"] += sum(depth_sums(p, t) for p, t in zip(pred, held.depth))
            ev = {"drives": list(drives), "depth": evaluate_depth(pred, held), "which_drive": which_drive(m, frames, drives)}
            row[key] = ev
            wd = ev["which_drive"]
            for mode in ("image", "lidar", "fused"):
                pooled[key]["hits"][mode].append((wd[mode]["recall@1"], wd["queries"]))
        out["folds"][name] = row
    for key in ("model", "baseline"):
        out[f"pooled_{key}"] = {"depth": metrics(pooled[key]["depth"]),
                                "which_drive": {m: round(sum(r * q for r, q in v) / max(sum(q for _, q in v), 1), 4)
                                                for m, v in pooled[key]["hits"].items()}}
    return out
