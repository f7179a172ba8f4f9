"""The image side on real pairs (issue 20): a pseudo-LiDAR network on a frozen ImageNet-pretrained
encoder, taught by real LiDAR, seen through a level grid, validated on a real fold it never saw.

Everything but the pseudo-LiDAR network's decoder (``model.mono`` less its encoder) is frozen: the
EfficientNet-Lite0 encoder keeps its ImageNet weights (77 real frames cannot retrain 0.7 M weights
without forgetting what makes them transfer; session 8 tried and its held-out depth was worse than a
constant), and the LiDAR and fused descriptors stay bit-identical, the frozen depth branch being the
teacher. So the encoder's features are computed once per frame (and its mirror image) and the
decoder trains on them in seconds a step on two cores. The grid is level (``fov_deg``: the same
angles about the vehicle through every camera, geometry.projection.level_grid), which is what
lets the depth transfer to KITTI-360's camera (another focal length, looking 5 degrees down).

Per frame (real frames of the training folds, synthetic town frames beside them):

- depth: |log d_pred - log d_lidar| on the grid pixels holding a LiDAR return (<= 80 m);
- returns: BCE of the predicted LiDAR-return logit against the scan's returns;
- teacher: |log d_pred - log d_completed| everywhere, against the depth branch's own input (its
  completion of the scan): the pseudo-LiDAR should look like what the depth branch sees;
- descriptor (``nce_weight`` > 0): InfoNCE of the image's descriptor (pseudo-LiDAR through the
  frozen depth branch) against its own frame's LiDAR descriptor, the batch's other real frames as
  negatives (session 11: at 0.2 it overfit the 57 real frames, held-out cosine 0.70 -> 0.15);
- distillation (``distill_weight`` > 0): 1 - cosine of the image's descriptor to its own frame's
  LiDAR descriptor on the synthetic frames (plenty of them; no negatives, so consecutive frames
  do not fight).

The run is resumable (``OUT/last.pt``: decoder weights, optimiser, step, RNG) and ends with the
held-out fold's real depth table and its "which drive" recall (``evaluate_fold``), written to
``OUT/result.json``; the model artifact is ``OUT/model`` (``.json`` + ``.safetensors``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..geometry.projection import KITTI_FOV_DEG


@dataclass(frozen=True)
class RealImageConfig:
    init_from: str = "attnlink_ros/models/attnlink-lite"  # model whose frozen parts are kept
    folds: str = "attnlink_ros/config/real_folds.yaml"
    held_out: str = ""  # a fold's name, or "" to train on every real frame (the shipped model)
    synth: tuple = ()  # KITTI-layout roots of synthetic towns (sequence 00), every `synth_stride`-th frame
    synth_stride: int = 2
    fov_deg: tuple | None = KITTI_FOV_DEG  # the model's input_fov_deg (level grid); None: the starting model's grid
    out: str = "runs/real-image"
    steps: int = 600
    batch_real: int = 8
    batch_synth: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    depth_weight: float = 1.0
    return_weight: float = 0.1
    teacher_weight: float = 1.0
    top_weight: float = 1.0  # the depth and teacher terms' weight on the grid's top third (the far band the descriptor hangs on: eval --depth --sensitivity)
    nce_weight: float = 0.0
    distill_weight: float = 0.0  # 1 - cos(image descriptor, its own frame's LiDAR descriptor), synthetic frames
    mono_teacher: str = ""  # a model whose pseudo-LiDAR network teaches on the synthetic frames ("" = none)
    mono_teacher_weight: float = 0.0  # its depth (log L1) and return probability (BCE); replaces the synthetic frames' depth terms
    temperature: float = 0.07
    pool_cache: str = ""  # folder keeping the synthetic frames' pool (features, completions, teacher outputs) between runs
    flip: bool = True  # mirror image and scan together (features of both cached)
    real_photometric: int = 0  # seeded photometric variants of each real training frame beside it (train/mixture.photometric_variants)
    checkpoint_every: int = 100
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_real < 1 or self.batch_synth < 0:
            raise ConfigError("real_image: steps and batch_real must be >= 1, batch_synth >= 0")

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> "RealImageConfig":
        return load_section(cls, path, "real_image", overrides, tuples=("synth", "fov_deg"))


def load_section(cls, path: str | Path, section: str, overrides: dict | None = None, tuples=()):
    """The dataclass ``cls`` from the ``section:`` of a YAML file, ``overrides`` (not None) on top;
    unknown keys refused; the keys in ``tuples`` made tuples."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    body = data.get(section)
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: no '{section}:' section")
    body = {**body, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    unknown = set(body) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"{path}: unknown {section} keys {sorted(unknown)}")
    for key in tuples:
        if body.get(key) is not None:
            body[key] = tuple(body[key])
    return cls(**body)


def build_model(cfg: RealImageConfig):
    """The starting model with a fresh pseudo-LiDAR network (ImageNet-pretrained encoder, frozen)
    and the level grid; every other weight copied from ``init_from``."""
    from ..model import AttnLink
    from ..model.efficientnet import MonoDepthLite0
    from ..model.io import load_model

    init, meta = load_model(cfg.init_from)
    mcfg = dataclasses.replace(init.cfg, image_depth=True, mono_encoder="efficientnet_lite0", image_rgb_weight=0.0,
                               input_fov_deg=cfg.fov_deg if cfg.fov_deg is not None else init.cfg.input_fov_deg)
    model = AttnLink(mcfg)
    state = {k: v for k, v in init.state_dict().items() if not k.startswith("mono.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("mono.") for k in missing):
        raise ConfigError(f"init_from {cfg.init_from}: weights do not fit ({unexpected[:3]}, {missing[:3]})")
    model.mono = MonoDepthLite0(mcfg.max_depth_m, pretrained=True)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("mono.") and not name.startswith("mono.encoder."))
    return model, meta


@dataclass
class _Pool:
    """Frames as the decoder trains on them: the frozen encoder's features of the image and of its
    mirror, the sparse LiDAR depth, the depth branch's completion of it (mirrored too) and, for
    the descriptor term, the LiDAR descriptors."""

    feats: list      # 4 x (N, 2, C, h, w) float16: [:, 0] the image, [:, 1] its mirror
    depth: torch.Tensor   # (N, 1, H, W) sparse metres
    dense: torch.Tensor   # (N, 2, H, W) the completion of the scan and of the mirrored scan
    desc: torch.Tensor | None  # (N, 2, D) LiDAR descriptors (scan, mirrored scan)
    taught: tuple | None = None  # the mono teacher's (depth, logit), each (N, 2, H, W) float16: image, mirror

    def __len__(self) -> int:
        return len(self.depth)

    def batch(self, idx: torch.Tensor, flip: torch.Tensor):
        f = flip.long()
        feats = [x[idx, f].float() for x in self.feats]
        depth = torch.where(flip[:, None, None, None], self.depth[idx].flip(-1), self.depth[idx])
        dense = self.dense[idx, f][:, None]
        desc = None if self.desc is None else self.desc[idx, f]
        taught = None if self.taught is None else tuple(t[idx, f][:, None].float() for t in self.taught)
        return feats, depth, dense, desc, taught


@torch.no_grad()
def _pool(model, rgb: np.ndarray, depth: np.ndarray, with_desc: bool, chunk: int = 16, teacher=None) -> _Pool:
    feats, dense, desc, taught = [[] for _ in range(4)], [], [], ([], [])
    enc = model.mono.encoder.eval()
    for i in range(0, len(rgb), chunk):
        x = torch.from_numpy(np.ascontiguousarray(rgb[i:i + chunk]))
        d = torch.from_numpy(np.ascontiguousarray(depth[i:i + chunk]))
        per = [enc((im - model.rgb_mean) / model.rgb_std) for im in (x, x.flip(-1))]
        for k in range(4):
            feats[k].append(torch.stack([per[0][k], per[1][k]], 1).half())
        toks = [model.encode(None, dd) for dd in (d, d.flip(-1))]
        dense.append(torch.cat([t.dense_depth for t in toks], 1))
        if with_desc:
            desc.append(torch.stack([model.fuse(t)[0] for t in toks], 1))
        if teacher is not None:
            out = [teacher.mono((im - teacher.rgb_mean) / teacher.rgb_std) for im in (x, x.flip(-1))]
            for k in range(2):
                taught[k].append(torch.cat([out[0][k], out[1][k]], 1).half())
    return _Pool([torch.cat(f) for f in feats], torch.from_numpy(depth), torch.cat(dense), torch.cat(desc) if with_desc else None,
                 tuple(torch.cat(t) for t in taught) if teacher is not None else None)


def _synth_frames(roots, stride: int, height: int, width: int, fov_deg):
    """Every ``stride``-th frame of each synthetic town (sequence 00), read as the real ones are."""
    from ..data.real import load_real_frames

    parts = [load_real_frames([r], height, width, sequences=["00"], stride=stride, fov_deg=fov_deg) for r in roots]
    return np.concatenate([p.rgb for p in parts]), np.concatenate([p.depth for p in parts])


def _cached_pool(cfg: RealImageConfig, init_meta: dict, teacher_fp: str | None, build, grid) -> _Pool:
    """The synthetic pool, built once per (towns, stride, grid, frozen weights, teacher) and kept in
    ``cfg.pool_cache`` when set: every fold run of a recipe sees the same synthetic frames through
    the same frozen parts, and building it takes minutes on two cores."""
    if not cfg.pool_cache:
        return build()
    import hashlib

    key = json.dumps({"synth": [str(Path(r).resolve()) for r in cfg.synth], "stride": cfg.synth_stride, "grid": list(map(str, grid)),
                      "init": init_meta.get("fingerprint"), "desc": cfg.distill_weight > 0,
                      "teacher": teacher_fp}, sort_keys=True)
    path = Path(cfg.pool_cache) / f"real_image_pool_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if path.exists():
        d = torch.load(path, map_location="cpu", weights_only=True)
        return _Pool(d["feats"], d["depth"], d["dense"], d.get("desc"), tuple(d["taught"]) if d.get("taught") else None)
    pool = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"feats": pool.feats, "depth": pool.depth, "dense": pool.dense, "desc": pool.desc,
                "taught": list(pool.taught) if pool.taught is not None else None, "key": key}, tmp)
    tmp.replace(path)
    return pool


def step_loss(model, feats, depth: torch.Tensor, dense: torch.Tensor, lidar_desc, cfg: RealImageConfig,
              synth_desc=None, taught=None) -> tuple[torch.Tensor, dict]:
    """The loss of one batch: the frozen encoder's features, sparse LiDAR depth (B, 1, H, W)
    metres, the depth branch's completion (B, 1, H, W), the LiDAR descriptors (n, D) of the
    batch's first n frames (the real ones) or None, and those of its last m (synthetic) or None.
    ``taught``: the mono teacher's (depth, logit) of the last m frames, each (m, 1, H, W); they
    then learn the teacher's output instead of the depth, return and completion terms."""
    pred_all, logit_all = model.mono.decode(feats)
    pred, logit = pred_all, logit_all
    if taught is not None and cfg.mono_teacher_weight > 0:
        m = len(taught[0])
        pred, logit, depth, dense = pred_all[:-m], logit_all[:-m], depth[:-m], dense[:-m]
    valid = (depth > 0) & (depth <= 80.0)
    logp = torch.log(pred.clamp_min(0.1))
    H = pred.shape[2]
    rows = 1.0 + (cfg.top_weight - 1.0) * (torch.arange(H, dtype=pred.dtype) < H // 3).to(pred.dtype).view(1, 1, H, 1)
    rows = rows.expand_as(pred)
    ld = ((logp - torch.log(depth.clamp_min(0.1))).abs() * rows)[valid].sum() / rows[valid].sum().clamp_min(1e-6)
    lr = F.binary_cross_entropy_with_logits(logit, (depth > 0).to(logit.dtype))
    lt = ((logp - torch.log(dense.clamp_min(0.1))).abs() * rows).sum() / rows.sum()
    loss = cfg.depth_weight * ld + cfg.return_weight * lr + cfg.teacher_weight * lt
    stats = {"depth_log": float(ld.detach()), "return": float(lr.detach()), "teacher": float(lt.detach())}
    if taught is not None and cfg.mono_teacher_weight > 0:
        tp, tl = pred_all[-m:], logit_all[-m:]
        lm = (torch.log(tp.clamp_min(0.1)) - torch.log(taught[0].clamp_min(0.1))).abs().mean()
        lb = F.binary_cross_entropy_with_logits(tl, torch.sigmoid(taught[1]))
        loss = loss + cfg.mono_teacher_weight * (lm + lb)
        stats["mono_teacher"] = float(lm.detach())
        stats["mono_teacher_return"] = float(lb.detach())
        pred, logit = pred_all, logit_all  # the descriptor terms below index the whole batch
    if lidar_desc is not None and cfg.nce_weight > 0:
        n = len(lidar_desc)  # the batch's first n frames are the real ones: the term is theirs alone
        image_desc = model.fuse(model.pseudo_lidar_tokens(pred[:n], logit[:n]))[0]  # as an image-only query computes it
        sim = image_desc @ lidar_desc.T / cfg.temperature
        ln = F.cross_entropy(sim, torch.arange(len(sim)))
        loss = loss + cfg.nce_weight * ln
        stats["nce"] = float(ln.detach())
        stats["nce_top1"] = float((sim.argmax(1) == torch.arange(len(sim))).float().mean())
    if synth_desc is not None and cfg.distill_weight > 0:
        m = len(synth_desc)
        image_desc = model.fuse(model.pseudo_lidar_tokens(pred[-m:], logit[-m:]))[0]
        cos = (image_desc * synth_desc).sum(1)
        loss = loss + cfg.distill_weight * (1 - cos).mean()
        stats["distill_cos"] = float(cos.detach().mean())
    return loss, stats


def _descriptors(model, rgb=None, depth=None, batch: int = 16) -> np.ndarray:
    out = []
    n = len(rgb if rgb is not None else depth)
    with torch.no_grad():
        for i in range(0, n, batch):
            out.append(model(rgb=None if rgb is None else torch.from_numpy(rgb[i:i + batch]),
                             depth=None if depth is None else torch.from_numpy(depth[i:i + batch])).descriptor.numpy())
    return np.concatenate(out)


def first_halves(frames) -> np.ndarray:
    """(N,) bool: the first half (by frame index) of every drive of ``frames``: the "which drive"
    protocol's map; the rest are its queries."""
    first = np.zeros(len(frames), bool)
    for d in frames.drives:
        idx = np.flatnonzero(frames.drive == d)
        first[idx[np.argsort(frames.frame[idx])][: (len(idx) + 1) // 2]] = True
    return first


def which_drive(model, frames, query_drives, modes=("image", "lidar", "fused")) -> dict:
    """Recall@1 "which drive": the LiDAR map holds the first half (by frame index) of every drive
    of ``frames`` (data.real.RealFrames with heading ``views``), far apart; the later half of each
    drive in ``query_drives`` asks, per mode; a hit is a top-1 place of the query's own drive."""
    model.eval()
    first = first_halves(frames)
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
    model.eval()  # frozen parts (and the encoder's BatchNorm) keep inference behaviour throughout
    H, W, fov = model.cfg.input_height, model.cfg.input_width, model.cfg.input_fov_deg
    frames = load_real_frames(folds.roots, H, W, sequences=folds.drives, views=2, fov_deg=fov)
    train_drives = folds.train_drives(cfg.held_out) if cfg.held_out else folds.drives
    tr = frames.of_drives(train_drives)
    t0 = time.perf_counter()
    with_desc = cfg.nce_weight > 0
    rgb, depth = tr.rgb, tr.depth
    if cfg.real_photometric:  # darker, brighter, other cameras' looks, blur: the camera network for any light
        from .mixture import photometric_variants

        rgb = np.concatenate([rgb, photometric_variants(rgb, cfg.real_photometric, seed=cfg.seed)])
        depth = np.concatenate([depth] * (1 + cfg.real_photometric))
    real = _pool(model, rgb, depth, with_desc)
    teacher = teacher_fp = None
    if cfg.mono_teacher and cfg.mono_teacher_weight > 0:
        from ..model.io import load_model

        teacher, tmeta = load_model(cfg.mono_teacher)
        teacher.eval()
        teacher_fp = tmeta["fingerprint"]
        if teacher.mono is None:
            raise ConfigError(f"mono_teacher {cfg.mono_teacher}: the model has no pseudo-LiDAR network")
    synth = None
    if cfg.batch_synth and cfg.synth:
        synth = _cached_pool(cfg, init_meta, teacher_fp, lambda: _pool(model, *_synth_frames(cfg.synth, cfg.synth_stride, H, W, fov),
                                                                    cfg.distill_weight > 0, teacher=teacher), (H, W, fov))
    cache_s = time.perf_counter() - t0
    params = [p for p in model.mono.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, log = 0, []
    g = torch.Generator().manual_seed(cfg.seed)
    ckpt = out / "last.pt"
    decoder_state = lambda: {k: v for k, v in model.mono.state_dict().items() if not k.startswith("encoder.")}  # noqa: E731
    if ckpt.exists() and not fresh:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.mono.load_state_dict(state["decoder"], strict=False)
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        g.set_state(state["rng"])
        log = json.loads((out / "log.json").read_text()) if (out / "log.json").exists() else []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"real image ({cfg.held_out or 'all folds'})", unit="step")
    dec_modules = [m for n, m in model.mono.named_children() if n != "encoder"]
    for m in dec_modules:
        m.train()
    t0 = time.perf_counter()
    while step < cfg.steps:
        i = torch.randint(len(real), (min(cfg.batch_real, len(real)),), generator=g)
        fl = (torch.rand(len(i), generator=g) < 0.5) & cfg.flip
        feats, depth, dense, desc, _ = real.batch(i, fl)
        sdesc = taught = None
        if synth is not None:
            j = torch.randint(len(synth), (cfg.batch_synth,), generator=g)
            sf = (torch.rand(len(j), generator=g) < 0.5) & cfg.flip
            f2, d2, n2, sdesc, taught = synth.batch(j, sf)
            feats = [torch.cat([a, b]) for a, b in zip(feats, f2)]
            depth, dense = torch.cat([depth, d2]), torch.cat([dense, n2])
        scale = min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for grp in opt.param_groups:
            grp["lr"] = cfg.lr * scale
        loss, stats = step_loss(model, feats, depth, dense, desc, cfg, sdesc, taught)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        log.append({"step": step, "loss": round(float(loss.detach()), 5), **{k: round(v, 5) for k, v in stats.items()}})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", depth=f"{stats['depth_log']:.3f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            tmp = out / "last.pt.tmp"
            torch.save({"decoder": decoder_state(), "opt": opt.state_dict(), "step": step, "rng": g.get_state()}, tmp)
            tmp.replace(ckpt)
            (out / "log.json").write_text(json.dumps(log) + "\n")
    if bar is not None:
        bar.close()
    model.eval()
    provenance = (f"{init_meta['fingerprint'][:12]} with a pseudo-LiDAR network on a frozen ImageNet EfficientNet-Lite0 "
                  f"(level grid {list(fov) if fov else None}) whose decoder trained {cfg.steps} steps on real folds {train_drives} "
                  f"+ synthetic {list(cfg.synth)} (train/real_image.py)")
    save_model(model, out / "model", {"trained_steps": cfg.steps, "provenance": provenance, "real_train_drives": train_drives,
                                      "real_held_out": cfg.held_out})
    result = {"held_out": cfg.held_out, "train_drives": train_drives, "steps": step, "real_pool_frames": len(real), "cache_seconds": round(cache_s, 1),
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
    from ..model.io import load_model, trained_drives

    folds = RealFolds.load(folds_path)
    base, base_meta = load_model(baseline)
    frames = {}  # per grid (a model's input_fov_deg): the baseline may see the frames through another
    out = {"folds": {}, "baseline": base_meta["fingerprint"],
           "baseline_trained_on": trained_drives(base_meta, folds.drives)}  # its rows on these drives are not held out
    pooled = {"model": {"depth": np.zeros(4), "hits": {m: [] for m in ("image", "lidar", "fused")}},
              "baseline": {"depth": np.zeros(4), "hits": {m: [] for m in ("image", "lidar", "fused")}}}
    for name, drives in folds.folds.items():
        model, meta = load_model(run_pattern.format(fold=name))
        if meta.get("real_held_out") not in (None, name):
            raise ConfigError(f"{run_pattern.format(fold=name)} was trained with fold {meta.get('real_held_out')!r} held out, not {name!r}")
        row = {}
        for key, m in (("model", model), ("baseline", base)):
            grid = (m.cfg.input_height, m.cfg.input_width, m.cfg.input_fov_deg)
            if grid not in frames:
                frames[grid] = load_real_frames(folds.roots, *grid[:2], sequences=folds.drives, views=2, fov_deg=grid[2])
            held = frames[grid].of_drives(drives)
            pred = predict_depth(m, held.rgb)  # once: the fold's table and the pooled sums
            pooled[key]["depth"] += sum(depth_sums(p, t) for p, t in zip(pred, held.depth))
            ev = {"drives": list(drives), "depth": evaluate_depth(pred, held), "which_drive": which_drive(m, frames[grid], drives)}
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
