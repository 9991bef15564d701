"""Full-reference pixel losses: PSNRLoss (NAFNet's), L1Loss, CharbonnierLoss. All registered in LOSS_REGISTRY.

Every loss is called as ``loss(pred, target)`` on (B, C, H, W) tensors and returns ``loss_weight * loss``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ddr_restore.registry import LOSS_REGISTRY

__all__ = ["PSNRLoss", "L1Loss", "CharbonnierLoss", "rgb_to_y"]

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(cls: str, reduction: str, allowed=_REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ValueError(f"{cls}: unsupported reduction {reduction!r}; expected one of {', '.join(allowed)}")
    return reduction


def _check_pair(cls: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{cls}: pred and target shapes differ: pred {tuple(pred.shape)} vs target {tuple(target.shape)}"
        )


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of a (B, 3, H, W) RGB tensor in [0, 1], returned in [0, 1] scale as (B, 1, H, W).

    Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255, i.e. BasicSR's ``rgb2ycbcr(y_only=True)`` for float
    images: "studio" range, so Y spans [16/255, 235/255] rather than [0, 1].
    """
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects a (B, 3, H, W) RGB tensor, got shape {tuple(img.shape)}")
    coef = img.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return ((img * coef).sum(dim=1, keepdim=True) + 16.0) / 255.0


@LOSS_REGISTRY.register()
class PSNRLoss(nn.Module):
    """Negative PSNR, averaged over images: ``loss_weight * 10/ln(10) * mean_b ln(MSE_b + 1e-8)``.

    MSE_b is the mean squared error of image b over C, H, W with values in [0, 1] (peak 1), so the loss is
    ``-mean_b PSNR_b`` up to the 1e-8 guard (about -40 for 40 dB). Only ``reduction="mean"`` exists.
    With ``toY=True`` both tensors are first converted to BT.601 Y (see :func:`rgb_to_y`); the 16/255 offset
    cancels in the difference, so this is the Y-channel PSNR on the usual 255-peak scale, divided by 255.
    """

    requires_target = True

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", toY: bool = False) -> None:  # noqa: N803
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.reduction = _check_reduction("PSNRLoss", reduction, ("mean",))
        self.toY = bool(toY)
        self.scale = 10.0 / math.log(10.0)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss between ``pred`` and ``target`` (B, C, H, W)."""
        _check_pair("PSNRLoss", pred, target)
        if pred.dim() != 4:
            raise ValueError(f"PSNRLoss expects (B, C, H, W) tensors, got shape {tuple(pred.shape)}")
        if self.toY:
            pred, target = rgb_to_y(pred), rgb_to_y(target)
        mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
        return self.loss_weight * self.scale * torch.log(mse + 1e-8).mean()


@LOSS_REGISTRY.register()
class L1Loss(nn.Module):
    """``loss_weight * |pred - target|`` reduced by ``reduction`` ("none", "mean", "sum")."""

    requires_target = True

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.reduction = _check_reduction("L1Loss", reduction)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss between ``pred`` and ``target`` (same shape)."""
        _check_pair("L1Loss", pred, target)
        return self.loss_weight * _reduce((pred - target).abs(), self.reduction)


@LOSS_REGISTRY.register()
class CharbonnierLoss(nn.Module):
    """``loss_weight * sqrt((pred - target)^2 + eps^2)`` reduced by ``reduction``.

    ``eps`` enters squared (the MPRNet/Restormer convention, eps=1e-3), unlike BasicSR's ``CharbonnierLoss``
    which adds ``eps`` unsquared with eps=1e-12.
    """

    requires_target = True

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", eps: float = 1e-3) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"CharbonnierLoss: eps must be > 0, got {eps!r}")
        self.loss_weight = float(loss_weight)
        self.reduction = _check_reduction("CharbonnierLoss", reduction)
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss between ``pred`` and ``target`` (same shape)."""
        _check_pair("CharbonnierLoss", pred, target)
        loss = torch.sqrt((pred - target).pow(2) + self.eps**2)
        return self.loss_weight * _reduce(loss, self.reduction)
