"""The DDR descriptor (usable without the trainer): prompts, CLIP backend, descriptor/loss/BIQA score.

``DDR(compile=..., autocast=...)`` selects the fast path (see :mod:`ddr_restore.ddr.descriptor`); the default is
the exact fp32 eager computation."""
from ddr_restore.ddr.clip_backend import (
    ENV_CHECKPOINT,
    ClipBundle,
    ClipWeightsUnavailableError,
    load_clip,
    resolve_backbone,
)
from ddr_restore.ddr.descriptor import COMPILE_MODES, DDR, biqa_patches, resolve_autocast, resolve_compile
from ddr_restore.ddr.prompts import ALL_DEGRADATIONS, DEFAULT_DEGRADATIONS, PROMPTS

__all__ = [
    "DDR",
    "biqa_patches",
    "COMPILE_MODES",
    "resolve_compile",
    "resolve_autocast",
    "load_clip",
    "resolve_backbone",
    "ClipBundle",
    "ClipWeightsUnavailableError",
    "ENV_CHECKPOINT",
    "PROMPTS",
    "DEFAULT_DEGRADATIONS",
    "ALL_DEGRADATIONS",
]
