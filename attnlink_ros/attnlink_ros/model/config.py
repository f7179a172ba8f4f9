"""Model configuration: the variants of AttnLink as frozen dataclasses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError

MODES = ("image", "lidar", "fused")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the network's shape; saved as JSON beside every checkpoint."""

    variant: str = "attnlink"
    input_height: int = 128
    input_width: int = 512
    # ResNet trunk (torchvision ResNet-34 layout: BasicBlocks, 4 stages)
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_maxpool: bool = True
    last_stride: int = 1  # stride of stage 4 (1 keeps the 1/16 feature map)
    spatial_attention: bool = True  # CBAM-like attention after each stage
    # depth completion
    adcn: bool = True
    adcn_widths: tuple[int, int, int] = (16, 32, 64)
    max_depth_m: float = 80.0
    rgb_depth_aux: bool = False  # training-only head: the RGB trunk predicts the LiDAR depth (coarse)
    # image-only queries through pseudo-LiDAR: a U-Net predicts the depth branch's input from the
    # image and the depth branch makes the descriptor (the RGB tokens then serve fused queries)
    image_depth: bool = False
    mono_widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    # the pseudo-LiDAR network: "unet" (MonoDepth, mono_widths) or "efficientnet_lite0"
    # (MonoDepthLite0: an ImageNet-pretrained EfficientNet-Lite0 encoder, a U-Net decoder) or
    # "mixture" (both, and a gate that picks per image: model/mixture.py)
    mono_encoder: str = "unet"
    # with image_depth, an image-only descriptor mixes in the RGB tokens' own descriptor:
    # normalize((1 - w) * pseudo-LiDAR + w * RGB); 0 = pseudo-LiDAR alone (no weights of its own);
    # with mono_encoder "mixture", w times the gate's render probability
    image_rgb_weight: float = 0.0
    # the input grid: None = the image rows the LiDAR covers, every column (network_grid); or
    # (top elevation, bottom elevation, left azimuth, right azimuth), degrees in the LiDAR frame:
    # the same angles through any camera (geometry.projection.level_grid)
    input_fov_deg: tuple[float, float, float, float] | None = None
    # semantic clustering
    nmf_components: int = 16
    nmf_iterations: int = 8
    context_gating: bool = True
    # aggregation
    local_dim: int = 64  # channels entering each NetVLAD head
    vlad_clusters: int = 16
    token_dim: int = 256
    token_norm: bool = True  # BatchNorm on each token (see VLADHead)
    # fusion
    fusion: str = "attention"  # "attention" | "concat"
    attention_heads: int = 4
    descriptor_dim: int = 256

    def __post_init__(self) -> None:
        if self.fusion not in ("attention", "concat"):
            raise ConfigError(f"fusion must be 'attention' or 'concat', got {self.fusion!r}")
        if self.token_dim % self.attention_heads:
            raise ConfigError("token_dim must be divisible by attention_heads")
        if len(self.blocks) != 4 or len(self.widths) != 4:
            raise ConfigError("blocks and widths need 4 stages")
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "adcn_widths", tuple(int(w) for w in self.adcn_widths))
        object.__setattr__(self, "mono_widths", tuple(int(w) for w in self.mono_widths))
        if self.input_fov_deg is not None:
            fov = tuple(float(a) for a in self.input_fov_deg)
            if len(fov) != 4 or not (fov[0] > fov[1] and fov[2] > fov[3]):
                raise ConfigError(f"input_fov_deg must be (top, bottom, left, right) degrees with top > bottom, left > right, got {self.input_fov_deg}")
            object.__setattr__(self, "input_fov_deg", fov)
        if self.mono_encoder not in ("unet", "efficientnet_lite0", "mixture"):
            raise ConfigError(f"mono_encoder must be 'unet', 'efficientnet_lite0' or 'mixture', got {self.mono_encoder!r}")
        if self.mono_encoder != "unet" and (self.input_height % 16 or self.input_width % 16):
            raise ConfigError(f"mono_encoder {self.mono_encoder} needs input_height and input_width divisible by 16")
        if len(self.mono_widths) != 4:
            raise ConfigError("mono_widths needs 4 levels")
        if not 0.0 <= self.image_rgb_weight <= 1.0:
            raise ConfigError(f"image_rgb_weight must lie in [0, 1], got {self.image_rgb_weight}")
        if self.image_rgb_weight > 0 and not self.image_depth:
            raise ConfigError("image_rgb_weight mixes the pseudo-LiDAR descriptor with the RGB one: it needs image_depth")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        from ..config import from_dict

        return from_dict(cls, data)


VARIANTS = {
    # the paper's: ResNet-34 at 128x512
    "attnlink": ModelConfig(),
    # a trunk that keeps up with 10 Hz sensors on a CPU
    "attnlink-lite": ModelConfig(
        variant="attnlink-lite",
        input_height=64,
        input_width=256,
        blocks=(1, 1, 1, 1),
        widths=(32, 64, 96, 128),
        stem_maxpool=False,
        adcn_widths=(8, 16, 32),
        local_dim=48,
        token_dim=128,
        descriptor_dim=256,
    ),
}


def variant(name: str, **overrides) -> ModelConfig:
    if name not in VARIANTS:
        raise ConfigError(f"unknown model variant {name!r} (known: {', '.join(VARIANTS)})")
    return dataclasses.replace(VARIANTS[name], **overrides)
