"""AttnLink: image and/or LiDAR depth -> one L2-normalised place descriptor.

Data flow (shapes for the default 128x512 input, ResNet-34, stride 16):

    rgb (B,3,128,512) --stem_rgb-->\\                       /-> F_rgb  --VLAD--> token
                                    > shared ResNet stages -> (B,512,8,32)
    sparse depth (B,1,128,512) --ADCN--> dense --stem_depth-->/  \\-> NMF+gate -> S --VLAD--> token
                                                          ... same for depth: F_depth, S_depth
    tokens (B,T<=4,d) --attention fusion (masked)--> descriptor (B,256), weights (B,4)

An absent modality costs nothing: its stem, trunk pass, heads and tokens are skipped. Within a
training batch, modalities can also be dropped per sample with ``present`` (both are computed and
the fusion masks the absent tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .config import ModelConfig
from .depth_completion import DepthCompletion, MonoDepth
from .fusion import TOKENS, AttentionFusion, ConcatFusion
from .netvlad import VLADHead
from .nmf import SemanticClustering
from .resnet import ResNetTrunk

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AttnLinkOutput:
    descriptor: torch.Tensor  # (B, D) L2-normalised
    attention: torch.Tensor  # (B, 4) fusion weight per token (F_rgb, F_depth, S_rgb, S_depth)
    dense_depth: torch.Tensor | None = None  # (B, 1, H, W) metres, when depth was given and ADCN is on
    by_mode: dict[str, torch.Tensor] | None = None  # training: descriptor per query mode, one trunk pass
    rgb_depth: torch.Tensor | None = None  # training aux: coarse depth predicted from the image
    return_logit: torch.Tensor | None = None  # image-only with image_depth: predicted LiDAR-return logit
    pseudo_depth: torch.Tensor | None = None  # training with image_depth: the image's predicted dense depth


@dataclass
class Tokens:
    """Per-modality tokens of a batch, before fusion."""

    values: dict[str, torch.Tensor]  # token name -> (B, d)
    dense_depth: torch.Tensor | None = None
    rgb_depth: torch.Tensor | None = None  # (B, 1, h/16, w/16) metres, training aux head only
    return_logit: torch.Tensor | None = None  # (B, 1, H, W) pseudo-LiDAR return logit (image_depth)
    render_p: torch.Tensor | None = None  # (B,) a mixture's probability that the image is a render (model/mixture.py)


class AttnLink(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.adcn = DepthCompletion(cfg.adcn_widths, cfg.max_depth_m) if cfg.adcn else None
        self.trunk = ResNetTrunk(cfg.blocks, cfg.widths, depth_channels=2, maxpool=cfg.stem_maxpool,
                                 last_stride=cfg.last_stride, attention=cfg.spatial_attention)
        C = self.trunk.out_channels
        self.semantic = SemanticClustering(C, cfg.nmf_components, cfg.nmf_iterations, cfg.context_gating)
        self.heads = nn.ModuleDict({name: VLADHead(C, cfg.local_dim, cfg.vlad_clusters, cfg.token_dim, cfg.token_norm) for name in TOKENS})
        fusion_cls = AttentionFusion if cfg.fusion == "attention" else ConcatFusion
        self.fusion = fusion_cls(cfg.token_dim, cfg.attention_heads, cfg.descriptor_dim)
        # training-only: depth seen from the image, so the RGB trunk learns the LiDAR's geometry
        self.rgb_depth_head = nn.Conv2d(C, 1, 1) if cfg.rgb_depth_aux else None
        self.mono = None
        if cfg.image_depth:
            if cfg.mono_encoder == "efficientnet_lite0":
                from .efficientnet import MonoDepthLite0

                self.mono = MonoDepthLite0(cfg.max_depth_m)  # ImageNet weights: MonoDepthLite0(pretrained=True) when training starts
            elif cfg.mono_encoder == "mixture":
                from .mixture import MonoMixture

                self.mono = MonoMixture(cfg.mono_widths, cfg.max_depth_m)
            else:
                self.mono = MonoDepth(cfg.mono_widths, cfg.max_depth_m)
        self.register_buffer("rgb_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("rgb_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.out_channels = cfg.descriptor_dim

    @property
    def image_domain(self) -> str:
        """Which pseudo-LiDAR network serves images (model/mixture.py): "auto" unless set."""
        return getattr(self.mono, "domain", "auto")

    def set_image_domain(self, domain: str) -> "AttnLink":
        """Fixes which of a mixture's two pseudo-LiDAR networks serves every image: "camera" (a
        vehicle's camera), "render" (rendered towns) or "auto" (the gate). Only a mixture model
        (mono_encoder "mixture") has a choice; any model takes "auto"."""
        from .mixture import DOMAINS

        if domain not in DOMAINS:
            raise ConfigError(f"image domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
        if self.cfg.mono_encoder == "mixture" and self.mono is not None:
            self.mono.set_domain(domain)
        elif domain != "auto":
            raise ConfigError(f"image domain {domain!r} needs a model with two pseudo-LiDAR networks (mono_encoder 'mixture'); "
                              f"this model's image path has one ({self.cfg.mono_encoder if self.cfg.image_depth else 'RGB tokens'}): "
                              "use 'auto'")
        return self

    # ------------------------------------------------------------------------------------------
    def depth_input(self, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Trunk input of the depth branch (B, 2, H, W) and the dense depth (or None)."""
        mask = (sparse > 0).to(sparse.dtype)
        if self.adcn is None:
            return torch.cat([sparse / self.cfg.max_depth_m, mask], 1), None
        dense = self.adcn(sparse)
        return torch.cat([dense / self.cfg.max_depth_m, mask], 1), dense

    def encode_pseudo_lidar(self, rgb: torch.Tensor) -> Tokens:
        """Image-only tokens with ``image_depth``: the image's predicted depth-branch input
        (dense depth, LiDAR-return probability) through the depth branch; F_depth and S_depth."""
        x = (rgb - self.rgb_mean) / self.rgb_std
        if self.cfg.mono_encoder == "mixture":
            dense, logit, p = self.mono.gated(x)
            tokens = self.pseudo_lidar_tokens(dense, logit)
            tokens.render_p = p
            return tokens
        dense, logit = self.mono(x)
        return self.pseudo_lidar_tokens(dense, logit)

    def pseudo_lidar_tokens(self, dense: torch.Tensor, logit: torch.Tensor) -> Tokens:
        """The depth branch's tokens of a pseudo-LiDAR (dense metres, return logit), each (B, 1, H, W)."""
        x = torch.cat([dense / self.cfg.max_depth_m, torch.sigmoid(logit)], 1)
        f = self.trunk.forward_stages(self.trunk.forward_stem(x, depth=True))
        values = {"F_depth": self.heads["F_depth"](f), "S_depth": self.heads["S_depth"](self.semantic(f))}
        return Tokens(values, dense, return_logit=logit)

    def encode(self, rgb: torch.Tensor | None = None, depth: torch.Tensor | None = None, pseudo: bool = True) -> Tokens:
        """Tokens of the given modalities. rgb: (B, 3, H, W) RGB in [0, 1]; depth: (B, 1, H, W)
        sparse metres, 0 = no return. An image alone goes through ``encode_pseudo_lidar`` when
        the model has ``image_depth`` (and ``pseudo``; else its RGB tokens)."""
        if rgb is None and depth is None:
            raise ValueError("AttnLink needs an image, a depth map, or both")
        if depth is None and self.mono is not None and pseudo:
            return self.encode_pseudo_lidar(rgb)
        stems, names = [], []
        dense = None
        if rgb is not None:
            stems.append(self.trunk.forward_stem((rgb - self.rgb_mean) / self.rgb_std, depth=False))
            names.append("rgb")
        if depth is not None:
            x, dense = self.depth_input(depth)
            stems.append(self.trunk.forward_stem(x, depth=True))
            names.append("depth")
        # one pass of the shared stages over both modalities (one set of BatchNorm statistics)
        feats = self.trunk.forward_stages(torch.cat(stems, 0)).chunk(len(stems), 0)
        values = {}
        rgb_depth = None
        for name, f in zip(names, feats):
            values[f"F_{name}"] = self.heads[f"F_{name}"](f)
            values[f"S_{name}"] = self.heads[f"S_{name}"](self.semantic(f))
            if name == "rgb" and self.rgb_depth_head is not None and self.training:
                rgb_depth = torch.nn.functional.softplus(self.rgb_depth_head(f)) * self.cfg.max_depth_m
        return Tokens(values, dense, rgb_depth)

    def fuse(self, tokens: Tokens, present: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Descriptor and attention weights from tokens. ``present`` (B, 2) bool masks the
        image (column 0) and LiDAR (column 1) tokens per sample; each sample needs one."""
        which = [i for i, n in enumerate(TOKENS) if n in tokens.values]
        stacked = torch.stack([tokens.values[TOKENS[i]] for i in which], 1)  # (B, T, d)
        mask = None
        if present is not None:
            if not bool(present.any(1).all()):
                raise ValueError("every sample needs at least one modality present")
            modality = [0 if TOKENS[i].endswith("rgb") else 1 for i in which]
            mask = ~present[:, modality]  # (B, T) True = absent
        return self.fusion(stacked, which, mask)

    def forward(self, rgb: torch.Tensor | None = None, depth: torch.Tensor | None = None,
                present: torch.Tensor | None = None, modes: tuple[str, ...] | None = None) -> AttnLinkOutput:
        """Descriptor of the given inputs. With ``modes`` (training), both inputs are encoded
        once and fused once per query mode ('image', 'lidar', 'fused'); ``by_mode`` holds the
        descriptors (going through ``forward`` keeps DistributedDataParallel's hooks)."""
        if modes:
            pseudo = "image" in modes and self.mono is not None and rgb is not None
            needs_rgb = "fused" in modes or ("image" in modes and not pseudo)
            others = [m for m in modes if not (m == "image" and pseudo)]
            tokens = self.encode(rgb if needs_rgb or depth is None else None, depth) if others else Tokens({})
            B, dev = ((rgb if rgb is not None else depth).shape[0], (rgb if rgb is not None else depth).device)
            masks = {"image": (True, False), "lidar": (False, True), "fused": (True, True)}
            by_mode = {}
            logit = None
            for m in modes:
                if m == "image" and pseudo:
                    image_tokens = self.encode_pseudo_lidar(rgb)
                    by_mode[m], logit = self.fuse(image_tokens)[0], image_tokens.return_logit
                    continue
                pres = torch.tensor(masks[m], device=dev).expand(B, 2)
                by_mode[m] = self.fuse(tokens, pres)[0]
            first = by_mode[modes[0]]
            return AttnLinkOutput(first, first.new_zeros(B, 4), tokens.dense_depth, by_mode, tokens.rgb_depth,
                                  return_logit=logit, pseudo_depth=image_tokens.dense_depth if logit is not None else None)
        tokens = self.encode(rgb, depth)
        desc, weights = self.fuse(tokens, present)
        w = self.cfg.image_rgb_weight
        if depth is None and self.mono is not None and w > 0 and self.image_domain != "camera":  # camera: RGB share 0
            # image only: the pseudo-LiDAR descriptor mixed with the RGB tokens' (cfg.image_rgb_weight)
            rgb_desc = self.fuse(self.encode(rgb, None, pseudo=False))[0]
            if tokens.render_p is not None:  # a mixture: the RGB share is the rendered-town model's, on renders
                w = w * tokens.render_p[:, None]
            desc = F.normalize((1.0 - w) * desc + w * rgb_desc, dim=1)
        return AttnLinkOutput(desc, weights, tokens.dense_depth, return_logit=tokens.return_logit)


@torch.no_grad()
def init_vlad_heads(model: AttnLink, rgb: torch.Tensor, depth: torch.Tensor, per_head: int = 20000, seed: int = 0) -> None:
    """Starts each NetVLAD head from k-means of its own local features on a sample batch."""
    from .netvlad import init_netvlad_from_features

    captured: dict[str, torch.Tensor] = {}
    hooks = [head.reduce.register_forward_hook(lambda mod, inp, out, n=name: captured.__setitem__(n, out))
             for name, head in model.heads.items()]
    try:
        model.encode(rgb, depth)
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(seed)
    for name, feat in captured.items():
        x = feat.permute(0, 2, 3, 1).reshape(-1, feat.shape[1]).float()  # (B*H*W, D)
        x = x[torch.randperm(len(x), generator=g)[:per_head]]
        init_netvlad_from_features(model.heads[name].vlad, x)


class DescriptorOnly(nn.Module):
    """The network for one query mode, returning only the descriptor (what export traces).

    Built in eval mode: a fresh module is in training mode, and exporters restore the wrapper's
    mode afterwards, which would switch the wrapped model's BatchNorm to batch statistics."""

    def __init__(self, model: AttnLink, mode: str) -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.train(model.training)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.mode == "image":
            return self.model(rgb=inputs[0]).descriptor
        if self.mode == "lidar":
            return self.model(depth=inputs[0]).descriptor
        return self.model(rgb=inputs[0], depth=inputs[1]).descriptor
