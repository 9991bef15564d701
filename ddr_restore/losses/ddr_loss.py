"""DDR as a training loss (``train.ddr_opt: {type: DDRLoss, loss_weight: ...}``).

The loss sees only the restored image (no ground truth): ``loss_weight * (-mean_b Q_DDR(pred))``; ``loss_weight`` is
the paper's lambda_d. The CLIP encoder inside is frozen and always in eval mode; its weights are registered as
*buffers* (not parameters, ``requires_grad=False``), so ``DDRLoss(...).parameters()`` is empty: no optimizer, gradient
clipping or DDP gradient reduction ever sees them, and a parent's ``requires_grad_(True)`` cannot unfreeze them. Keep
loss modules out of the DDP wrapper (wrap only the network): each rank builds its own identical frozen CLIP.

Speed options (both off by default: the default is the exact fp32 eager loss)::

    ddr_opt:
      type: DDRLoss
      compile: true          # or "reduce-overhead" (CUDA graphs on CUDA), "max-autotune", ...
      autocast: bf16         # or fp16 / true (CUDA only)

``compile`` captures the part after the resize to 224x224 (CLIP image tower + responses) with ``torch.compile``;
on CUDA, ``compile: reduce-overhead`` with ``autocast: bf16`` is the fast path. Gradients flow to the restored
image as in eager mode (the frozen CLIP weights are buffers, so no gradient is computed for them).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ddr_restore.ddr.prompts import DEFAULT_DEGRADATIONS
from ddr_restore.errors import InputError
from ddr_restore.registry import LOSS_REGISTRY

__all__ = ["DDRLoss"]

#: The option-file key that sets the loss's CLIP weights in the trainer (named in "weights unavailable" errors).
DEFAULT_SWITCH = "train.ddr_opt.pretrained"


@LOSS_REGISTRY.register()
class DDRLoss(nn.Module):
    """``loss_weight * DDR(pred)``: minimising it maximises the deep degradation response of ``pred``.

    Args:
        loss_weight: lambda_d (the paper's value is not published; DDR is in about [-1, 0] while the PSNR loss is
            about -30, so tune it).
        degradations, backbone, pretrained: passed to :class:`~ddr_restore.ddr.descriptor.DDR`
            (``pretrained=None``: ``$DDR_CLIP_CHECKPOINT`` if set, else the ``openai`` tag).
        switch_hint: the option that sets ``pretrained``, named when the CLIP weights are unavailable (default
            ``train.ddr_opt.pretrained``, where the trainer reads this loss from; pass another key when the loss is
            configured elsewhere).
        **ddr_kwargs: any other DDR option (``antialias``, ``nonsquare``, ``clamp``, ``autocast``, ``compile``,
            ...). ``check_range`` defaults to False here: a network's output can overshoot [0,1] early in training
            and the official loss sees it unclamped (and the check would synchronise with the GPU every step);
            NaN/inf losses are caught by the trainer. A bad ``compile``/``autocast`` value is reported under the
            option path derived from ``switch_hint`` (``train.ddr_opt.compile``), before CLIP is loaded.
    """

    requires_target = False  # no-reference: the loss sees only the restored image

    def __init__(
        self,
        loss_weight: float = 1.0,
        degradations: Union[str, Sequence[str]] = DEFAULT_DEGRADATIONS,
        backbone: str = "ViT-B-32",
        pretrained: Optional[str] = None,
        switch_hint: Optional[str] = DEFAULT_SWITCH,
        **ddr_kwargs: Any,
    ) -> None:
        super().__init__()
        try:
            self.loss_weight = float(loss_weight)
        except (TypeError, ValueError):
            raise InputError(f"DDRLoss: loss_weight must be a number, got {loss_weight!r}") from None
        # Imported here so that registering the loss does not import open_clip.
        from ddr_restore.ddr.descriptor import DDR, resolve_autocast, resolve_compile

        where = _option_prefix(switch_hint)
        for key, resolve in (("compile", resolve_compile), ("autocast", resolve_autocast)):
            if key in ddr_kwargs:  # checked here to name the option-file key, and before the slow CLIP load
                resolve(ddr_kwargs[key], option=f"{where}.{key}" if where else f"DDRLoss {key}")
        ddr_kwargs.setdefault("check_range", False)
        self.ddr = DDR(backbone=backbone, pretrained=pretrained, degradations=degradations, switch_hint=switch_hint,
                       **ddr_kwargs)

    @property
    def pretrained_is_random(self) -> bool:
        """True when the CLIP inside is randomly initialised (the loss is then meaningless)."""
        return self.ddr.pretrained_is_random

    def forward(self, pred: torch.Tensor, target: Optional[torch.Tensor] = None, **kwargs: Any) -> torch.Tensor:
        """``loss_weight * -mean_b Q_DDR(pred)``; ``target`` is accepted for a uniform loss call and ignored."""
        return self.loss_weight * self.ddr(pred)


def _option_prefix(switch_hint: Optional[str]) -> str:
    """``"train.ddr_opt"`` from ``"train.ddr_opt.pretrained"``: where this loss's options live in the option file
    (the trainer passes ``<where>.pretrained`` as ``switch_hint``); "" when the hint is not an option-file key."""
    if isinstance(switch_hint, str) and switch_hint.endswith(".pretrained") and not switch_hint.startswith("-"):
        return switch_hint[: -len(".pretrained")]
    return ""
