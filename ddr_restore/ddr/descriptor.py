"""The Deep Degradation Response (DDR) descriptor, loss and blind quality score (Wu et al., NeurIPS 2024).

For an image ``i`` with CLIP image embedding ``F`` (C channels, *not* L2-normalised) and a degradation type ``d``
with text direction ``T_d = text(degraded prompt) - text(clean prompt)``::

    T_hat_d = std(F) * (T_d - mean(T_d)) / (std(T_d) + 1e-3) + mean(F)     # stats over channels, unbiased std
    DDR_d   = 1 - cos(F, F + T_hat_d)
    Q_DDR   = mean_d DDR_d            (higher = better quality)
    loss    = -mean_batch Q_DDR

Square inputs go through exactly the official computation: bicubic resize to the CLIP input size
(``antialias=False``, no crop), CLIP mean/std normalisation, ``encode_image``. Differences from the official code,
all deliberate:

* Non-square inputs (the official ``forward`` crashes on them): ``nonsquare="resize"`` (default) resizes straight to
  224x224, so every pixel gets gradient and the cost is one CLIP pass per image; ``"patches"`` uses the BIQA
  patch protocol below (differentiable, n passes per image); ``"error"`` refuses them.
* Input range: the official code does not clamp and neither do we by default (a restoration network's output
  overshoots [0,1] a little during training and clamping would zero its gradient there). Values further than 0.5
  outside [0,1] (e.g. [0,255] or [-1,1] data) or non-finite values raise ValueError; ``clamp=True`` clamps to
  [0,1] after that check.
* Computation runs in the module's dtype (fp32 by default, also on GPU; ``autocast=True``/``"fp16"`` encodes images
  under CUDA fp16 autocast like the official fp16 GPU model, ``autocast="bf16"`` under bf16 autocast on CUDA and
  CPU). The input is cast to it; gradients flow through the cast.
* Speed (``compile=``, off by default so the default stays the exact eager fp32 path): the part after the resize
  (normalisation, CLIP image tower, responses) always sees (N, 3, 224, 224), so it is captured once per batch size
  with ``torch.compile(dynamic=False)``; ``compile="reduce-overhead"`` adds CUDA graphs on CUDA. The text
  directions are computed once at construction (buffers), so no text encoding runs per call in any mode.
* ``quality_score`` scores each image separately (the official one pools a whole batch into one number) and
  drops duplicate patches of square images (identical score, half the work).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ddr_restore.ddr.clip_backend import ClipBundle, freeze, load_clip
from ddr_restore.ddr.prompts import DEFAULT_DEGRADATIONS, PROMPTS, resolve_degradations
from ddr_restore.errors import InputError

__all__ = [
    "DDR",
    "biqa_patches",
    "resolve_compile",
    "resolve_autocast",
    "COMPILE_MODES",
    "AUTOCAST_DTYPES",
    "TEXT_STD_EPS",
    "RANGE_TOLERANCE",
]

#: eps added to std(T_d) only, as in the official code.
TEXT_STD_EPS = 1e-3
#: how far outside [0, 1] an input may go before it is rejected as wrongly scaled.
RANGE_TOLERANCE = 0.5
_NONSQUARE = ("resize", "patches", "error")
#: ``torch.compile`` modes accepted by ``compile=`` (``True`` means ``"default"``). The two ``max-autotune`` modes
#: benchmark kernels at compile time (minutes); ``reduce-overhead`` and ``max-autotune`` use CUDA graphs on CUDA.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
#: ``autocast=`` values: ``True`` means ``"fp16"`` (the official GPU model's precision).
AUTOCAST_DTYPES: Dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
_AUTOCAST_ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


def resolve_compile(value: Any, option: str = "compile") -> Optional[str]:
    """The ``torch.compile`` mode that ``compile=value`` asks for, or None (eager).

    ``False``/``None`` -> None; ``True`` -> ``"default"``; one of :data:`COMPILE_MODES` -> itself.

    Raises:
        InputError (a ValueError): any other value; the message names ``option`` (e.g. ``train.ddr_opt.compile``).
    """
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value.strip().lower() in COMPILE_MODES:
        return value.strip().lower()
    raise InputError(
        f"{option} must be false (eager, exact), true (= 'default') or a torch.compile mode "
        f"({', '.join(repr(m) for m in COMPILE_MODES)}); got {value!r}"
    )


def resolve_autocast(value: Any, option: str = "autocast") -> Optional[str]:
    """The autocast precision that ``autocast=value`` asks for: ``"fp16"``, ``"bf16"`` or None (module dtype).

    ``False``/``None`` -> None; ``True`` -> ``"fp16"``; ``"fp16"``/``"float16"``/``"half"`` and
    ``"bf16"``/``"bfloat16"`` as named.

    Raises:
        InputError (a ValueError): any other value; the message names ``option``.
    """
    if value is None or value is False:
        return None
    if value is True:
        return "fp16"
    if isinstance(value, str):
        key = value.strip().lower()
        key = _AUTOCAST_ALIASES.get(key, key)
        if key in AUTOCAST_DTYPES:
            return key
    raise InputError(f"{option} must be false, true (= 'fp16', CUDA only), 'fp16' or 'bf16'; got {value!r}")


def biqa_patches(height: int, width: int, dedupe: bool = True) -> Tuple[int, List[Tuple[int, int]]]:
    """Patch geometry of the official DDR BIQA protocol.

    Square patches of side ``s = min(H, W)`` slide along the long side: ``n = max // s + 1`` patches with stride
    ``(max - s) // (n - 1)`` starting at 0 (a few pixels at the far end can be missed, as in the official code).

    Returns:
        ``(s, offsets)`` with offsets as ``(top, left)`` pairs; with ``dedupe`` identical offsets (square images:
        stride 0, two identical patches) appear once, which leaves the patch mean unchanged.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width} (HxW)")
    side, long = min(height, width), max(height, width)
    n = long // side + 1
    stride = (long - side) // (n - 1)
    starts = [i * stride for i in range(n)]
    if dedupe:
        starts = list(dict.fromkeys(starts))
    if width >= height:
        return side, [(0, s) for s in starts]
    return side, [(s, 0) for s in starts]


class DDR(nn.Module):
    """Deep Degradation Response with a frozen CLIP encoder.

    ``DDR()(x)`` returns the training loss ``-mean_b Q_DDR(x_b)`` for ``x`` (B,3,H,W) RGB in [0,1].

    Args:
        backbone: CLIP model (``"ViT-B-32"`` = OpenAI ViT-B/32, QuickGELU; aliases such as ``"ViT-B/32"``, ``"RN50"``).
        pretrained: open_clip tag, local checkpoint path, ``"none"`` (random, warns loudly), or None = the file in
            ``$DDR_CLIP_CHECKPOINT`` if set, else ``"openai"``.
        degradations: types to average (default blur, color, noise, exposure; ``"content"`` is optional).
        antialias: antialiased bicubic resize (the official code uses False).
        nonsquare: how ``forward``/``per_type`` treat non-square inputs: ``"resize"``, ``"patches"`` or ``"error"``.
        clamp: clamp inputs to [0,1] before resizing (official: no clamp).
        check_range: reject inputs far outside [0,1] or non-finite (one min/max reduction per call, and one host
            synchronisation: DDRLoss turns it off).
        autocast: encode images under autocast: ``True``/``"fp16"`` fp16 on CUDA (ignored on CPU, where the
            official code runs fp32), ``"bf16"`` bf16 on CUDA and CPU. Responses are computed in fp32 either way.
        compile: ``torch.compile`` the fixed-size part of the computation (normalisation, CLIP image tower,
            responses; the resize to 224x224 stays eager so that any input size reuses it). ``False`` (default,
            the exact eager path), ``True`` (= ``"default"``) or a mode of :data:`COMPILE_MODES`;
            ``"reduce-overhead"`` captures CUDA graphs on CUDA (on CPU it is the default mode). Compiled once per
            batch size and grad mode (``dynamic=False``); beyond torch's recompile limit it falls back to eager.
            The first call of each batch size takes seconds (CPU, small CLIPs) to tens of seconds (GPU, ViT-B/32).
        clip: an already loaded :class:`ClipBundle` to share between instances (then backbone/pretrained are
            ignored).
        switch_hint: how the caller's users choose ``pretrained``, named in the error raised when the weights are
            unavailable: a flag (``"--pretrained"``), an option-file key (``"train.ddr_opt.pretrained"``), or None
            (this ``pretrained=`` argument). See :class:`~ddr_restore.ddr.clip_backend.ClipWeightsUnavailableError`.
    """

    pretrained_is_random: bool

    def __init__(
        self,
        backbone: str = "ViT-B-32",
        pretrained: Optional[str] = None,
        degradations: Union[str, Sequence[str]] = DEFAULT_DEGRADATIONS,
        antialias: bool = False,
        nonsquare: str = "resize",
        clamp: bool = False,
        check_range: bool = True,
        autocast: Union[bool, str] = False,
        clip: Optional[ClipBundle] = None,
        switch_hint: Optional[str] = None,
        compile: Union[bool, str, None] = False,  # noqa: A002 - the option's name in option files
    ) -> None:
        super().__init__()
        self.degradations: Tuple[str, ...] = resolve_degradations(degradations)
        if nonsquare not in _NONSQUARE:
            raise ValueError(f"nonsquare must be one of {', '.join(_NONSQUARE)}, got {nonsquare!r}")
        # Checked before the (slow) CLIP load so that a typo fails at once.
        self.autocast: Optional[str] = resolve_autocast(autocast)
        self.compile_mode: Optional[str] = resolve_compile(compile)
        bundle = clip if clip is not None else load_clip(backbone, pretrained, switch_hint=switch_hint)
        self.clip_model = freeze(bundle.model)
        self.model_name = bundle.model_name
        self.source = bundle.source
        self.pretrained_is_random = bundle.is_random
        self.image_size = bundle.image_size
        self.antialias = bool(antialias)
        self.nonsquare = nonsquare
        self.clamp = bool(clamp)
        self.check_range = bool(check_range)

        ref = next(t for t in self.clip_model.buffers() if t.is_floating_point())
        dtype, device = ref.dtype, ref.device
        mean = torch.tensor(bundle.mean, dtype=dtype, device=device).view(1, 3, 1, 1)
        std = torch.tensor(bundle.std, dtype=dtype, device=device).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

        # Text directions once, at init. Buffers (not plain attributes) so .to()/DDP replication move them.
        prompts = [p for d in self.degradations for p in PROMPTS[d]]  # clean_0, degraded_0, clean_1, ...
        with torch.no_grad():
            text = self.clip_model.encode_text(bundle.tokenizer(prompts).to(device)).to(dtype)
        directions = text[1::2] - text[0::2]  # degraded - clean, (D, C)
        standardised = (directions - directions.mean(dim=-1, keepdim=True)) / (
            directions.std(dim=-1, keepdim=True) + TEXT_STD_EPS
        )
        self.register_buffer("text_directions", directions, persistent=False)
        self.register_buffer("text_directions_std", standardised, persistent=False)

    # ------------------------------------------------------------------ module behaviour
    def train(self, mode: bool = True) -> "DDR":
        """Set train/eval mode for this module; CLIP always stays in eval mode (BatchNorm in RN backbones).

        CLIP's weights are buffers (see :func:`~ddr_restore.ddr.clip_backend.freeze`), so ``parameters()`` is
        empty and ``requires_grad_(True)`` on a parent cannot unfreeze them.
        """
        super().train(mode)
        self.clip_model.eval()
        return self

    def extra_repr(self) -> str:
        return (
            f"model={self.model_name}, weights={self.source}, degradations={list(self.degradations)}, "
            f"antialias={self.antialias}, nonsquare={self.nonsquare!r}, clamp={self.clamp}, "
            f"autocast={self.autocast}, compile={self.compile_mode}"
        )

    def __getstate__(self) -> Dict[str, Any]:
        # The compiled callable is bound to this instance: a copy (deepcopy, pickle) compiles its own on first use.
        state = dict(super().__getstate__())
        state.pop("_compiled_tower", None)
        return state

    # ------------------------------------------------------------------ pieces
    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"DDR expects a torch.Tensor (B,3,H,W), got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            hint = ""
            if x.dim() == 3 and x.shape[0] == 3:
                hint = " (one image: use x.unsqueeze(0))"
            elif x.dim() == 4 and x.shape[1] == 1:
                hint = " (greyscale: replicate with x.expand(-1, 3, -1, -1))"
            elif x.dim() == 4 and x.shape[1] == 4:
                hint = " (RGBA: drop alpha with x[:, :3])"
            raise ValueError(f"DDR accepts RGB batches of shape (B,3,H,W); got shape {tuple(x.shape)}{hint}")
        if not x.is_floating_point():
            raise ValueError(f"DDR expects floating-point RGB in [0,1]; got dtype {x.dtype} (divide uint8 by 255)")
        if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"DDR got an empty input of shape {tuple(x.shape)}")
        if x.device != self.text_directions.device:
            raise ValueError(
                f"input is on {x.device} but DDR is on {self.text_directions.device}; move one (ddr.to(x.device))"
            )
        if self.check_range:
            lo, hi = torch.aminmax(x.detach())
            lo, hi = float(lo), float(hi)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError("DDR input contains NaN or infinite values")
            if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
                raise ValueError(
                    f"DDR expects RGB values in [0,1] (overshoot up to {RANGE_TOLERANCE} tolerated); got min {lo:.4g}, "
                    f"max {hi:.4g}. Scale [0,255] data by 1/255 and [-1,1] data by (x+1)/2."
                )
        x = x.to(self.text_directions.dtype)
        return x.clamp(0.0, 1.0) if self.clamp else x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        # Square: torchvision Resize(size, BICUBIC, antialias=False) gives exactly (size, size) = this call.
        # Non-square (nonsquare="resize"): squashed to (size, size) so every pixel contributes to the embedding.
        size = self.image_size
        return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=self.antialias)

    def _autocast_dtype(self, device_type: str) -> Optional[torch.dtype]:
        # "fp16" keeps its historical meaning (CUDA only: the official CPU model runs fp32, CPU fp16 is slow).
        if self.autocast is None or (self.autocast == "fp16" and device_type != "cuda"):
            return None
        return AUTOCAST_DTYPES[self.autocast]

    def _encode(self, x224: torch.Tensor) -> torch.Tensor:
        x224 = (x224 - self.mean) / self.std
        dtype = self._autocast_dtype(x224.device.type)
        if dtype is None:
            return self.clip_model.encode_image(x224)
        with torch.autocast(x224.device.type, dtype=dtype):
            feats = self.clip_model.encode_image(x224)
        return feats.to(self.text_directions.dtype)

    def _tower(self, x224: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) resized images -> (N, D) responses: the fixed-size part that ``compile`` captures."""
        return self.responses(self._encode(x224))

    def _tower_responses(self, x224: torch.Tensor) -> torch.Tensor:
        """:meth:`_tower`, compiled when ``compile`` is set (built on first use, once per instance)."""
        if self.compile_mode is None:
            return self._tower(x224)
        fn = self.__dict__.get("_compiled_tower")
        if fn is None:
            # Not a submodule (state_dict keys and repr unchanged). dynamic=False: the size after the resize is
            # fixed, only the batch size varies, and each batch size gets its own graph (one CUDA graph each).
            fn = torch.compile(self._tower, mode=self.compile_mode, dynamic=False)
            self.__dict__["_compiled_tower"] = fn
        out = fn(x224)
        if self.compile_mode in _CUDAGRAPH_MODES and out.is_cuda:
            # CUDA-graph outputs live in memory the next replay overwrites; (N, D) is tiny, so hand out a copy.
            out = out.clone()
        return out

    def responses(self, features: torch.Tensor) -> torch.Tensor:
        """DDR of every selected type from (N, C) CLIP image embeddings -> (N, D). Row-wise, no BxB matrix."""
        mu = features.mean(dim=-1, keepdim=True)[:, None, :]  # (N,1,1)
        sigma = features.std(dim=-1, keepdim=True)[:, None, :]  # unbiased, as torch.std in the official code
        adapted = sigma * self.text_directions_std[None] + mu  # (N,D,C)
        degraded = features[:, None, :] + adapted
        cos = (F.normalize(features, dim=-1)[:, None, :] * F.normalize(degraded, dim=-1)).sum(dim=-1)
        return 1.0 - cos

    def _patch_responses(self, x: torch.Tensor, max_batch: Optional[int] = None) -> torch.Tensor:
        """(B,3,H,W) checked input -> (B, D) mean over the BIQA patches (differentiable)."""
        b = x.shape[0]
        side, offsets = biqa_patches(x.shape[2], x.shape[3])
        # Crop then resize each patch (identical to resizing the crop), patch-major; one CLIP call for all.
        crops = [self._resize(x[:, :, t : t + side, l : l + side]) for t, l in offsets]
        batch = torch.stack(crops, dim=1).flatten(0, 1)  # (B*P, 3, 224, 224), image-major
        if max_batch is None or batch.shape[0] <= max_batch:
            resp = self._tower_responses(batch)
        else:  # responses are row-wise: per-chunk responses concatenated = responses of the whole batch
            resp = torch.cat([self._tower_responses(chunk) for chunk in batch.split(max_batch)])
        return resp.view(b, len(offsets), -1).mean(dim=1)

    # ------------------------------------------------------------------ public API
    def per_type(self, x: torch.Tensor) -> torch.Tensor:
        """DDR_d for each selected type: (B,3,H,W) in [0,1] -> (B, D), columns in ``self.degradations`` order."""
        x = self._check(x)
        if x.shape[2] != x.shape[3]:
            if self.nonsquare == "error":
                raise ValueError(f"DDR got a non-square input {tuple(x.shape)} and nonsquare='error'")
            if self.nonsquare == "patches":
                return self._patch_responses(x)
        return self._tower_responses(self._resize(x))

    def q(self, x: torch.Tensor) -> torch.Tensor:
        """Q_DDR per image (B,) = mean over the selected types (higher = better), with gradients."""
        return self.per_type(x).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training loss: ``-mean_b Q_DDR`` (a scalar in about [-1, 0]; minimising it maximises DDR)."""
        return -self.q(x).mean()

    @torch.no_grad()
    def quality_score(
        self, x: torch.Tensor, per_type: bool = False, max_batch: Optional[int] = None
    ) -> torch.Tensor:
        """Blind quality score with the official BIQA patch protocol (see :func:`biqa_patches`).

        Args:
            x: (B,3,H,W) RGB in [0,1]; each image is scored on its own.
            per_type: return (B, D) per-type DDR instead of (B,) Q_DDR.
            max_batch: split the CLIP call into chunks of at most this many patches (memory), default one call.
        """
        scores = self._patch_responses(self._check(x), max_batch=max_batch)
        return scores if per_type else scores.mean(dim=1)
