"""``attnlink train --config FILE``: training with resume, validation recall and best-model
selection; one CPU, one GPU, or several GPUs through ``torchrun`` (DistributedDataParallel).

Run layout (``train.out``):

    config.json          the resolved configuration
    last/                model.safetensors + model.json, optimizer.pt, state.json (resume point)
    best.safetensors     best validation Recall@1 so far (+ best.json: the model artifact)
    log.jsonl            one line of scalars per logged step and per validation
    tb/                  TensorBoard scalars (when tensorboard is installed)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import from_dict, load_yaml, save_resolved
from ..data.cache import FrameCache, build_cache
from ..errors import ConfigError
from ..model import AttnLink, variant
from ..model.io import save_model
from .augment import AugmentConfig, make_sample, model_grid
from .losses import adaptive_triplet_loss, coarse_depth_loss, completion_loss, contrastive_loss, heading_gap_deg, pair_masks


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/attnlink-lite"
    init_from: str | None = None  # model artifact to start from (warm start; same config), when not resuming
    steps: int = 3000
    batch_size: int = 16  # frames per step (half anchors, half their positives)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    eval_every: int = 250
    checkpoint_every: int = 50
    # > 0: training also ends once this process's loop has run this many seconds (a lent GPU's
    # lease), validated and saved as at its last step; the cosine schedule follows whichever of
    # steps and time is further along, so the run ends with its learning rate decayed either way
    time_budget_s: float = 0.0
    # false: the budget only stops the run and the schedule follows the steps alone: a run spanning
    # several leases (each resuming OUT/last) with `steps` its total length
    time_budget_decay: bool = True
    log_every: int = 10
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    workers: int = 0  # data-loading processes (0 = in the training loop; a GPU run needs several)
    revisit_share: float = 0.7  # share of anchor positives taken from a revisit (>= 30 s apart)
    modes: tuple[str, ...] = ("image", "lidar", "fused")
    pos_radius_m: float = 5.0
    neg_radius_m: float = 10.0
    margin_min: float = 0.1
    margin_max: float = 0.6
    completion_weight: float = 1.0
    contrastive_weight: float = 1.0  # InfoNCE beside the triplet loss (keeps batch-hard mining from collapsing)
    temperature: float = 0.07
    distill_weight: float = 0.0  # 1 - cos(image descriptor, detached LiDAR descriptor of the same frame)
    image_losses_from: int = 0  # step from which the image mode's triplet/InfoNCE terms count (before: distillation only)
    # "joint": every part trains; "mono": only the image's pseudo-LiDAR network (model.image_depth)
    # trains, against the frozen depth branch: its dense depth and LiDAR returns (per pixel) and
    # its descriptor of the same frame's real scan (distill_weight)
    stage: str = "joint"
    pseudo_depth_weight: float = 1.0  # L1 (units of max depth) of the image's depth vs the completed LiDAR depth
    pseudo_return_weight: float = 0.1  # BCE of the image's LiDAR-return logit vs the scan's returns
    pseudo_feature_weight: float = 0.0  # relative MSE of the depth branch's stage features, pseudo vs real scan
    # validation image-noise levels (seeded, as `attnlink eval --robustness`): the selection score is
    # the image revisit Recall@1 averaged over validation sequences and these levels (0 = clean)
    val_noise: tuple[float, ...] = (0.0,)
    # heading views a place of the validation databases (retrieval/views.py): 2 scores image
    # queries against the product's map, whose rear views they must not mistake for their place
    val_views: int = 1
    # mono stage: InfoNCE of the image descriptor against its own frame's LiDAR descriptor, with the
    # town's rear-view LiDAR descriptors (the `rear_negatives` most similar ones of places beyond
    # neg_radius_m) and the batch's other frames beyond neg_radius_m as negatives
    rear_negative_weight: float = 0.0
    rear_negatives: int = 16
    # the rear-view term's positives: its own frame's LiDAR descriptor only (false), or also the
    # batch's frames within pos_radius_m (true: the revisit pairs the sampler draws, the place as
    # a map recorded at another time holds it)
    rear_batch_positives: bool = False
    # > 0: positive pairs (the sampler's and the losses') must also face within this many degrees:
    # a revisit driven the other way sees another scene through a forward camera (the map answers
    # it with its rear view); such pairs within neg_radius_m count as neither. 0: position only
    pos_heading_deg: float = 0.0
    # > 0 (with pos_heading_deg): this share of the anchors that have a revisit driven the other way
    # get that revisit's rear view (the map's view 180, from a cache built with rear views) as their
    # positive: what the product's map answers a reverse query with, which no other term trains
    rear_view_share: float = 0.0

    def __post_init__(self) -> None:
        if self.stage not in ("joint", "mono"):
            raise ConfigError(f"train.stage must be 'joint' or 'mono', got {self.stage!r}")
        if not self.val_noise or any(not 0 <= float(v) < 1 for v in self.val_noise):
            raise ConfigError(f"train.val_noise must list sigmas in [0, 1), got {self.val_noise!r}")
        if not 0 <= self.pos_heading_deg <= 180:
            raise ConfigError(f"train.pos_heading_deg must be in [0, 180], got {self.pos_heading_deg!r}")
        if not 0 <= self.rear_view_share <= 1:
            raise ConfigError(f"train.rear_view_share must be in [0, 1], got {self.rear_view_share!r}")
        if self.rear_view_share > 0 and (self.pos_heading_deg <= 0 or self.stage != "joint"):
            raise ConfigError("train.rear_view_share needs train.pos_heading_deg > 0 and the joint stage")
        if self.val_views not in (1, 2):
            raise ConfigError(f"train.val_views must be 1 or 2, got {self.val_views!r}")
        if self.rear_negative_weight > 0 and self.stage != "mono":
            raise ConfigError("train.rear_negative_weight needs train.stage 'mono' (the rear views come from the frozen depth branch)")


@dataclass(frozen=True)
class DataConfig:
    train: tuple = ()  # of {"root": ..., "sequence": ..., "frames": [start, end] (optional)}
    val: tuple = ()
    cache_dir: str = "out/cache"
    cache_size: tuple[int, int] = (128, 512)  # input size the caches are built at


@dataclass
class RunConfig:
    model: dict = field(default_factory=lambda: {"variant": "attnlink-lite"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> "RunConfig":
        raw = load_yaml(path)
        unknown = set(raw) - {"model", "data", "train", "augment"}
        if unknown:
            raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}")
        tr = dict(raw.get("train", {}))
        tr.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(model=dict(raw.get("model", {"variant": "attnlink-lite"})), data=from_dict(DataConfig, raw.get("data", {})),
                   train=from_dict(TrainConfig, tr), augment=from_dict(AugmentConfig, raw.get("augment", {})))

    def model_config(self):
        m = dict(self.model)
        name = m.pop("variant", "attnlink-lite")
        return variant(name, **m)

    def to_dict(self) -> dict:
        return {"model": self.model, "data": dataclasses.asdict(self.data), "train": dataclasses.asdict(self.train),
                "augment": dataclasses.asdict(self.augment)}


def open_caches(specs, cache_dir: str | Path, size: tuple[int, int], progress: bool, rear_view: bool = False) -> list[FrameCache]:
    """Opens (building when missing) the cache of each ``{"root", "sequence"}`` (``rear_view``:
    caches that also hold each scan's rear view, name suffix ``_rv``)."""
    caches = []
    for spec in specs:
        unknown = set(spec) - {"root", "sequence", "frames"}
        if unknown:
            raise ConfigError(f"data entry {spec}: unknown key(s) {sorted(unknown)}")
        root, seq = Path(spec["root"]), str(spec.get("sequence", "00"))
        rng = tuple(int(f) for f in spec["frames"]) if spec.get("frames") is not None else None
        name = f"{root.resolve().name}_{seq}_{size[0]}x{size[1]}" + (f"_{rng[0]}-{rng[1]}" if rng else "") + ("_rv" if rear_view else "")
        path = Path(cache_dir) / name
        if not (path / "manifest.json").is_file():
            build_cache(root, seq, path, size[0], size[1], progress=progress, frame_range=rng, rear_view=rear_view)
        caches.append(FrameCache.open(path))
    return caches


class BatchSampler:
    """Batches of one sequence: anchors and, for each, a positive frame within the positive
    radius, from a revisit (>= 30 s apart) when one exists, else a neighbouring frame. With
    ``rear_share`` (and headings), that share of the anchors with a revisit driven the other way
    get it as their partner, marked to be read as its rear view. Returns (cache index, frame
    indices (B,), rear flags (B,))."""

    def __init__(self, caches: list[FrameCache], batch: int, pos_radius: float, revisit_share: float, seed: int,
                 headings: list[np.ndarray] | None = None, max_heading_deg: float = 0.0, rear_share: float = 0.0) -> None:
        self.caches = caches
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        self.revisit_share = revisit_share
        self.rear_share = rear_share
        self.partners = []  # per cache: (revisit partners, near partners) lists per frame
        self.reverse = []  # per cache: revisit partners driven the other way, per frame (rear_share)
        for ci, c in enumerate(caches):
            d = np.linalg.norm(c.xy[:, None] - c.xy[None], axis=-1)
            dt = np.abs(c.times[:, None] - c.times[None])
            close = d <= pos_radius
            if max_heading_deg > 0:  # partners facing the same way (pair_masks' positives)
                h = headings[ci]
                gap = heading_gap_deg(h[:, None], h[None])
                if rear_share > 0:
                    back = close & (gap >= 180.0 - max_heading_deg) & (dt >= 30)
                    self.reverse.append([np.flatnonzero(back[i]) for i in range(len(c))])
                close &= gap <= max_heading_deg
            rev = [np.flatnonzero(close[i] & (dt[i] >= 30)) for i in range(len(c))]
            near = [np.flatnonzero(close[i] & (dt[i] > 0)) for i in range(len(c))]
            self.partners.append((rev, near))

    def __call__(self) -> tuple[int, np.ndarray, np.ndarray]:
        ci = int(self.rng.integers(len(self.caches)))
        rev, near = self.partners[ci]
        n = len(self.caches[ci])
        has_rev = np.flatnonzero([len(r) > 0 for r in rev])
        back = self.reverse[ci] if self.rear_share > 0 else None
        has_back = np.flatnonzero([len(r) > 0 for r in back]) if back is not None else np.zeros(0, int)
        anchors, rear = [], []
        for _ in range(self.batch // 2):
            if len(has_back) and self.rng.random() < self.rear_share:  # a reverse revisit, as its rear view
                a = int(self.rng.choice(has_back))
                anchors += [a, int(self.rng.choice(back[a]))]
                rear += [False, True]
                continue
            rear += [False, False]
            if len(has_rev) and self.rng.random() < self.revisit_share:
                a = int(self.rng.choice(has_rev))
                p = int(self.rng.choice(rev[a]))
            else:
                a = int(self.rng.integers(n))
                p = int(self.rng.choice(near[a])) if len(near[a]) else a
            anchors += [a, p]
        return ci, np.asarray(anchors), np.asarray(rear, bool)


class _BatchStream(torch.utils.data.IterableDataset):
    """Endless training batches (cache index, frame indices, rear-view flags, rgb, depth, hidden
    target); each loader worker draws from its own seeded sampler."""

    def __init__(self, caches, grids, sampler_args: tuple, aug) -> None:
        """``sampler_args``: (batch, pos_radius, revisit_share, seed, headings, max_heading_deg, rear_share)."""
        self.caches, self.grids, self.aug = caches, grids, aug
        self.batch_args, self.seed, self.heading_args = sampler_args[:3], sampler_args[3], sampler_args[4:]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        sampler = BatchSampler(self.caches, *self.batch_args, self.seed + 7919 * wid, *self.heading_args)
        rng = np.random.default_rng(self.seed + 7 + 7919 * wid)
        while True:
            ci, idx, rear = sampler()
            items = [make_sample(self.caches[ci], int(k), self.grids[ci], rng, self.aug, bool(r)) for k, r in zip(idx, rear)]
            yield (ci, idx, rear) + tuple(np.stack([i[j] for i in items]) for j in range(3))


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def train(cfg: RunConfig, fresh: bool = False, progress: bool = True) -> dict:
    """Trains (resuming from ``out/last`` unless ``fresh``); returns the final summary."""
    from tqdm import tqdm

    rank, world, local = _dist_env()
    distributed = world > 1
    if distributed and cfg.train.time_budget_s > 0:
        raise ConfigError("train.time_budget_s is for one process (ranks would stop at different steps)")
    if distributed:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    out = Path(tc.out)
    main = rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_resolved(out / "config.json", **cfg.to_dict())
    torch.manual_seed(tc.seed)
    mcfg = cfg.model_config()
    model = AttnLink(mcfg).to(device)
    mono_stage = tc.stage == "mono"
    if mono_stage:
        if model.mono is None:
            raise ConfigError("train.stage 'mono' needs model.image_depth: true")
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("mono."))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay)

    def set_train_mode() -> None:
        """Training mode; in the mono stage the frozen parts keep inference behaviour (BatchNorm)."""
        model.eval() if mono_stage else model.train()
        if mono_stage:
            model.mono.train()
    step, best, history = 0, -1.0, []
    last = out / "last"
    if not fresh and (last / "state.json").is_file():
        from safetensors.torch import load_file

        state = json.loads((last / "state.json").read_text())
        model.load_state_dict(load_file(last / "model.safetensors"))
        opt.load_state_dict(torch.load(last / "optimizer.pt", map_location=device, weights_only=True))
        step, best = int(state["step"]), float(state["best"])
        if main:
            print(f"resuming {out} at step {step} (best val recall@1 {best:.3f})")
    elif tc.init_from:
        from ..model.io import load_model

        init, init_meta = load_model(tc.init_from)
        if init.cfg.mono_encoder == "mixture" and mcfg.mono_encoder == "unet":
            from ..model.mixture import render_half

            init = render_half(init)  # the shipped mixture's rendered-town U-Net is what a U-Net run continues
        same = dataclasses.replace(init.cfg, image_depth=mcfg.image_depth, mono_widths=mcfg.mono_widths, variant=mcfg.variant)
        if same != mcfg:
            raise ConfigError(f"train.init_from {tc.init_from}: its model config differs from this run's")
        if init.mono is not None and mcfg.image_depth and init.cfg.mono_widths != mcfg.mono_widths:
            # a wider pseudo-LiDAR network starts from the trained one (function-preserving)
            from ..model.depth_completion import widen_mono

            try:
                init.mono = widen_mono(init.mono, mcfg.mono_widths, mcfg.max_depth_m)
            except ValueError as e:
                raise ConfigError(f"train.init_from {tc.init_from}: {e}") from None
        # a model without the pseudo-LiDAR network may start one that has it (mono.* starts fresh)
        missing, unexpected = model.load_state_dict(init.state_dict(), strict=init.cfg == mcfg)
        if unexpected or any(not k.startswith("mono.") for k in missing):
            raise ConfigError(f"train.init_from {tc.init_from}: weights do not fit ({unexpected or missing})")
        if main:
            print(f"starting from {tc.init_from} ({init_meta['fingerprint'][:12]})")
    if distributed and not main:
        torch.distributed.barrier()  # rank 0 builds missing caches first
    caches = open_caches(cfg.data.train, cfg.data.cache_dir, tuple(cfg.data.cache_size), progress and main, tc.rear_view_share > 0)
    val = open_caches(cfg.data.val, cfg.data.cache_dir, tuple(cfg.data.cache_size), progress and main) if cfg.data.val else []
    if distributed and main:
        torch.distributed.barrier()
    if not caches:
        raise ConfigError("data.train lists no sequence")
    grids = [model_grid(c, mcfg.input_height, mcfg.input_width) for c in caches]
    specs_of = {id(c): spec for c, spec in zip(caches + val, list(cfg.data.train) + list(cfg.data.val or ()))}
    rear: dict[int, torch.Tensor] = {}  # cache id -> (N, D) rear-view LiDAR descriptors (frozen depth branch: computed once)

    def rear_bank(c: FrameCache) -> np.ndarray:
        from ..data.kitti import KittiSequence
        from ..evaluation.recall import encode_views

        if id(c) not in rear or not mono_stage:
            spec = specs_of[id(c)]
            seq = KittiSequence(spec["root"], str(spec.get("sequence", "00")))
            bank = encode_views(model, c, seq, [180.0], store=False)[:, 0]
            set_train_mode()  # encode_views left the model in eval mode
            rear[id(c)] = torch.from_numpy(bank).to(device)
        return rear[id(c)]

    if tc.rear_negative_weight > 0:
        for c in caches:
            rear_bank(c)
    headings = None
    if tc.pos_heading_deg > 0:
        from ..data.kitti import KittiSequence
        from ..geometry.poses import headings_deg

        headings = []
        for c in caches:
            spec = specs_of[id(c)]
            headings.append(headings_deg(KittiSequence(spec["root"], str(spec.get("sequence", "00"))).poses[c.frames]))
    stream = _BatchStream(caches, grids, (tc.batch_size, tc.pos_radius_m, tc.revisit_share, tc.seed + 1000 * rank + step,
                                          headings, tc.pos_heading_deg, tc.rear_view_share), cfg.augment)
    if tc.workers > 0:
        batches = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=tc.workers, prefetch_factor=4,
                                                   persistent_workers=True, pin_memory=device.type == "cuda"))
    else:
        batches = iter(stream)
    if step == 0 and not tc.init_from:
        # data-driven NetVLAD start on one batch per training sequence (same on every rank: seeded)
        from ..model.attnlink import init_vlad_heads

        init_rng = np.random.default_rng(tc.seed + 99)
        items = [make_sample(c, int(k), g, None) for c, g in zip(caches, grids) for k in init_rng.choice(len(c), 8)]
        init_vlad_heads(model, torch.from_numpy(np.stack([i[0] for i in items])).to(device),
                        torch.from_numpy(np.stack([i[1] for i in items])).to(device), seed=tc.seed)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None) if distributed else model
    writer = None
    if main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tb"))
        except ImportError:
            print("tensorboard not installed: scalars go to log.jsonl only")
    log = open(out / "log.jsonl", "w" if fresh or step == 0 else "a") if main else None

    def time_spent() -> float:
        """Share of the time budget this process's training loop has used (0 without a budget)."""
        return (time.time() - t_start) / tc.time_budget_s if tc.time_budget_s > 0 else 0.0

    def lr_at(s: int) -> float:
        if s < tc.warmup_steps:
            return tc.lr * (s + 1) / tc.warmup_steps
        progress = (s - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
        if tc.time_budget_decay:
            progress = max(progress, time_spent())
        return tc.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def save_last():
        from safetensors.torch import save_file

        tmp = out / "last.tmp"
        tmp.mkdir(exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "best": best, "time": time.time()}))
        import shutil

        shutil.rmtree(last, ignore_errors=True)
        tmp.rename(last)

    def validate() -> tuple[dict, float]:
        """Revisit recall of every validation sequence, and the selection score: image Recall@1
        averaged over sequences (with revisit queries) and ``val_noise`` levels."""
        from ..evaluation.protocols import make_protocol
        from ..evaluation.recall import encode_cache, evaluate_descriptors
        from ..evaluation.robustness import image_noise_recall

        res, scores = {}, []
        modes = ("image", "lidar") if mono_stage else ("image", "lidar", "fused")  # the mono stage changes image only
        for c in val:
            desc = encode_cache(model, c, modes=modes, device=device)
            if tc.val_views == 2:  # the product's map: each place also as its rear view
                from ..data.kitti import KittiSequence
                from ..geometry.poses import headings_deg

                spec = specs_of[id(c)]
                seq = KittiSequence(spec["root"], str(spec.get("sequence", "00")))
                db = np.stack([desc["lidar"], rear_bank(c).cpu().numpy()], axis=1)
                res[c.name] = evaluate_descriptors(desc, c.xy, c.times, protocols=("revisit",), modes=modes, db=db,
                                                   heading=headings_deg(seq.poses[c.frames]), view_yaws_deg=[0.0, 180.0])
            else:
                res[c.name] = evaluate_descriptors(desc, c.xy, c.times, protocols=("revisit",), modes=modes)
            clean = res[c.name]["revisit"]["image"]
            if not clean["queries"]:
                continue
            noisy = [float(v) for v in tc.val_noise if float(v) > 0]
            levels = {"0.0": clean["recall@1"]} if 0.0 in [float(v) for v in tc.val_noise] else {}
            if noisy:
                proto = make_protocol("revisit", c.xy, c.times)
                for sigma, r in image_noise_recall(model, c, proto, desc["lidar"], noisy).items():
                    levels[sigma] = r["image"]["recall@1"]
                res[c.name]["image_noise"] = levels  # {sigma: image revisit Recall@1}
            scores.extend(levels.values())
        set_train_mode()
        return res, (float(np.mean(scores)) if scores else float("nan"))

    if main and val and step == 0 and tc.init_from:
        # the starting model's score, in the log beside the run's (what a fine-tuning run must beat)
        res_val, r0 = validate()
        log.write(json.dumps({"step": 0, "val": res_val, "val_image_recall@1": r0, "init_from": tc.init_from}) + "\n")
        log.flush()
        history.append({"step": 0, "val_image_recall@1": r0})
        print(f"step 0 ({tc.init_from}): val score {r0:.3f}")
    bar = tqdm(total=tc.steps, initial=step, desc=f"train {mcfg.variant}", disable=not (progress and main))
    set_train_mode()
    t_start = time.time()
    done = step >= tc.steps  # a finished run resumed: nothing to train
    while not done:
        ci, idx, rear_views, rgb, depth, target = next(batches)
        ci, idx = int(ci), np.asarray(idx)
        rear_views = torch.as_tensor(np.asarray(rear_views, bool), device=device)  # (not `rear`: the mono stage's banks)
        rgb, depth, target = (torch.as_tensor(a).to(device, non_blocking=True) for a in (rgb, depth, target))
        xy = torch.from_numpy(caches[ci].xy[idx]).float().to(device)
        # a rear view faces the other way from where its frame was driven
        hd = torch.from_numpy(headings[ci][idx]).float().to(device) + 180.0 * rear_views if headings is not None else None
        pos, neg = pair_masks(xy, torch.zeros(len(idx), device=device), tc.pos_radius_m, tc.neg_radius_m, hd, tc.pos_heading_deg)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        if mono_stage:
            bank = (rear[id(caches[ci])], torch.from_numpy(caches[ci].xy).float().to(device)) if tc.rear_negative_weight > 0 else None
            loss, stats = _mono_step(model, net, rgb, depth + target, tc, mcfg.max_depth_m, xy, bank)
        else:
            loss, stats = _joint_step(net, rgb, depth, target, pos, neg, tc, mcfg.max_depth_m, step, rear_views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 5.0)
        opt.step()
        step += 1
        done = step >= tc.steps or time_spent() >= 1.0
        bar.update(1)
        if main and step % tc.log_every == 0:
            rec = {"step": step, "loss": float(loss.detach()), "lr": lr_at(step - 1), "elapsed_s": round(time.time() - t_start, 1), **stats}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", best=f"{best:.3f}")
            if writer:
                for k, v in rec.items():
                    if k != "step":
                        writer.add_scalar(f"train/{k}", v, step)
        evaluate_now = val and (step % tc.eval_every == 0 or done)
        if main and evaluate_now:
            res_val, r1 = validate()
            rec = {"step": step, "val": res_val, "val_image_recall@1": r1}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            history.append({"step": step, "val_image_recall@1": r1})
            if writer:
                for name, r in res_val.items():
                    for m, v in r["revisit"].items():
                        if m == "ceiling" or not v["queries"]:
                            continue
                        writer.add_scalar(f"val/{name}/revisit/{m}/recall@1", v["recall@1"], step)
                        for c, hv in v.get("by_heading", {}).items():
                            if hv.get("queries"):
                                writer.add_scalar(f"val/{name}/revisit/{m}/{c}_heading_recall@1", hv["recall@1"], step)
                    for sigma, v in r.get("image_noise", {}).items():
                        writer.add_scalar(f"val/{name}/revisit/image_noise_{sigma}/recall@1", v, step)
            if r1 == r1 and r1 > best:
                best = r1
                save_model(model, out / "best", {"trained_steps": step, "val_image_recall@1": r1, "run": str(out)})
            bar.write(f"step {step}: val score (image->lidar revisit recall@1, mean over sequences and val_noise) {r1:.3f} (best {best:.3f})")
        if main and (step % tc.checkpoint_every == 0 or done or evaluate_now):
            save_last()
        if distributed:
            torch.distributed.barrier()
    bar.close()
    if main:
        save_model(model, out / "final", {"trained_steps": step, "run": str(out)})
        if log:
            log.close()
        if writer:
            writer.close()
    if distributed:
        torch.distributed.destroy_process_group()
    return {"out": str(out), "steps": step, "best_val_image_recall@1": best, "history": history}


def _pseudo_lidar_terms(res, teacher_dense: torch.Tensor, returns: torch.Tensor, tc: TrainConfig, max_depth: float,
                        rows: torch.Tensor | None = None):
    """Dense supervision of the image's pseudo-LiDAR: depth vs the completed LiDAR depth (every
    pixel) and the return logit vs the scan's returns (``rows``: of these samples only)."""
    import torch.nn.functional as F

    sel = (lambda t: t[rows]) if rows is not None else (lambda t: t)  # noqa: E731
    ld = (sel(res.pseudo_depth) - sel(teacher_dense)).abs().mean() / max_depth
    lr = F.binary_cross_entropy_with_logits(sel(res.return_logit), sel(returns))
    return tc.pseudo_depth_weight * ld + tc.pseudo_return_weight * lr, {"pseudo_depth": float(ld.detach()), "pseudo_return": float(lr.detach())}


def _mono_step(model, net, rgb, scan, tc: TrainConfig, max_depth: float, xy: torch.Tensor | None = None, bank=None):
    """Loss of the mono stage: the frozen depth branch on the real scan is the teacher. ``bank``:
    (rear-view descriptors (N, D), their places' xy (N, 2)) of the batch's town, for the
    rear-view negatives; ``xy`` (B, 2): the batch frames' places."""
    feats: list[torch.Tensor] = []
    hooks = [getattr(model.trunk, f"att{i}").register_forward_hook(lambda mod, inp, out: feats.append(out))
             for i in range(1, 5)] if tc.pseudo_feature_weight > 0 else []
    try:
        with torch.no_grad():
            teacher = model(depth=scan)
        res = net(rgb=rgb, modes=("image",))
    finally:
        for h in hooks:
            h.remove()
    loss, stats = _pseudo_lidar_terms(res, teacher.dense_depth, (scan > 0).to(rgb.dtype), tc, max_depth)
    if hooks:
        # the depth branch's own features of the real scan (first four) are the targets of the pseudo scan's (last four)
        lf = sum(((s - t) ** 2).mean() / ((t ** 2).mean() + 1e-6) for t, s in zip(feats[:4], feats[4:])) / 4
        loss = loss + tc.pseudo_feature_weight * lf
        stats["pseudo_feature"] = float(lf.detach())
    if tc.distill_weight > 0:
        ld = (1 - (res.by_mode["image"] * teacher.descriptor).sum(1)).mean()
        loss = loss + tc.distill_weight * ld
        stats["distill_image"] = float(ld.detach())
    if bank is not None and tc.rear_negative_weight > 0:
        lr_, st = rear_view_nce(res.by_mode["image"], teacher.descriptor, xy, bank[0], bank[1], tc.neg_radius_m,
                                tc.rear_negatives, tc.temperature, tc.pos_radius_m if tc.rear_batch_positives else 0.0)
        loss = loss + tc.rear_negative_weight * lr_
        stats.update(st)
    return loss, stats


def rear_view_nce(q: torch.Tensor, own: torch.Tensor, xy: torch.Tensor, bank: torch.Tensor, bank_xy: torch.Tensor,
                  neg_radius: float, hardest: int, temperature: float, pos_radius: float = 0.0) -> tuple[torch.Tensor, dict]:
    """InfoNCE of image descriptors ``q`` (B, D) against their own frames' LiDAR descriptors
    ``own`` (B, D, the positives; with ``pos_radius`` > 0 also the batch's other frames within it,
    multi-positive); negatives: for each query the ``hardest`` rear-view descriptors of ``bank``
    (N, D) most like it among places farther than ``neg_radius`` (a rear view of a place within it
    may be the query's own place seen the other way), and the batch's other frames farther than
    ``neg_radius``. Returns (loss, stats)."""
    far_bank = torch.cdist(xy, bank_xy) > neg_radius  # (B, N)
    with torch.no_grad():
        sims = (q.detach() @ bank.T).masked_fill(~far_bank, -2.0)
        hard = sims.topk(min(hardest, bank.shape[0]), dim=1).indices  # (B, M)
        hard_ok = torch.gather(far_bank, 1, hard)
    rear_logits = torch.einsum("bd,bmd->bm", q, bank[hard]).masked_fill(~hard_ok, float("-inf")) / temperature
    d = torch.cdist(xy, xy)
    batch = (q @ own.T) / temperature
    batch_logits = batch.masked_fill(d <= neg_radius, float("-inf"))
    others = (d <= pos_radius) & ~torch.eye(len(q), dtype=torch.bool, device=q.device)
    pos = (q * own).sum(1) / temperature
    positives = torch.cat([pos[:, None], batch.masked_fill(~others, float("-inf"))], dim=1)
    logits = torch.cat([positives, rear_logits, batch_logits], dim=1)
    loss = (torch.logsumexp(logits, dim=1) - torch.logsumexp(positives, dim=1)).mean()
    with torch.no_grad():
        beaten = (rear_logits.max(1).values > pos).float().mean()
    return loss, {"rear_nce": float(loss.detach()), "rear_beats_own": float(beaten)}


def _joint_step(net, rgb, depth, target, pos, neg, tc: TrainConfig, max_depth: float, step: int,
                rear: torch.Tensor | None = None):
    """Loss of the joint stage: triplet + InfoNCE per query mode against LiDAR, completion,
    distillation and auxiliary terms. ``rear`` (B,) marks samples whose depth is a rear view: their
    image is not of it, so they are LiDAR queries and targets only (no image or fused anchor, no
    distillation or pseudo-LiDAR term)."""
    cam = ~rear if rear is not None and bool(rear.any()) else None  # the samples whose image and depth agree
    rows = (lambda t: t[cam]) if cam is not None else (lambda t: t)  # noqa: E731
    stats = {"rear_views": float(rear.float().mean())} if rear is not None else {}
    fwd_modes = tuple(dict.fromkeys(tuple(tc.modes) + (("image", "lidar") if tc.distill_weight > 0 else ("lidar",))))
    res = net(rgb=rgb, depth=depth, modes=fwd_modes)
    lidar = res.by_mode["lidar"]
    loss = torch.zeros((), device=rgb.device)
    for m in tc.modes:
        if m == "image" and step < tc.image_losses_from:
            continue
        q, p_, n_ = (res.by_mode[m], pos, neg) if m == "lidar" else (rows(res.by_mode[m]), rows(pos), rows(neg))
        l, st = adaptive_triplet_loss(q, lidar, p_, n_, tc.margin_min, tc.margin_max)
        loss = loss + l
        stats[f"triplet_{m}"] = float(l.detach())
        stats[f"margin_{m}"] = st["margin"]
        if tc.contrastive_weight > 0:
            lc = contrastive_loss(q, lidar, p_, n_, tc.temperature)
            loss = loss + tc.contrastive_weight * lc
            stats[f"contrastive_{m}"] = float(lc.detach())
    if res.dense_depth is not None and tc.completion_weight > 0:
        lc = completion_loss(res.dense_depth, target, max_depth)
        loss = loss + tc.completion_weight * lc
        stats["completion"] = float(lc.detach())
    if tc.distill_weight > 0 and "image" in res.by_mode:
        ld = rows(1 - (res.by_mode["image"] * lidar.detach()).sum(1)).mean()
        loss = loss + tc.distill_weight * ld
        stats["distill_image"] = float(ld.detach())
    if res.rgb_depth is not None:
        la = coarse_depth_loss(rows(res.rgb_depth), rows(depth + target), max_depth)
        loss = loss + la
        stats["rgb_depth"] = float(la.detach())
    if res.pseudo_depth is not None:
        lp, st = _pseudo_lidar_terms(res, res.dense_depth.detach(), ((depth + target) > 0).to(rgb.dtype), tc, max_depth, cam)
        loss = loss + lp
        stats.update(st)
    return loss, stats
