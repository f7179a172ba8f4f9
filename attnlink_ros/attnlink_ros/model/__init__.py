"""The AttnLink network (DESIGN.md section 3)."""

from .attnlink import AttnLink, AttnLinkOutput
from .config import MODES, VARIANTS, ModelConfig, variant

__all__ = ["AttnLink", "AttnLinkOutput", "ModelConfig", "MODES", "VARIANTS", "variant"]
