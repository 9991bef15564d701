"""The DDR descriptor (usable without the trainer): prompts, CLIP backend, descriptor/loss/BIQA score."""
from ddr_restore.ddr.clip_backend import (
    ENV_CHECKPOINT,
    ClipBundle,
    ClipWeightsUnavailableError,
    load_clip,
    resolve_backbone,
)
from ddr_restore.ddr.descriptor import DDR, biqa_patches
from ddr_restore.ddr.prompts import ALL_DEGRADATIONS, DEFAULT_DEGRADATIONS, PROMPTS

__all__ = [
    "DDR",
    "biqa_patches",
    "load_clip",
    "resolve_backbone",
    "ClipBundle",
    "ClipWeightsUnavailableError",
    "ENV_CHECKPOINT",
    "PROMPTS",
    "DEFAULT_DEGRADATIONS",
    "ALL_DEGRADATIONS",
]
