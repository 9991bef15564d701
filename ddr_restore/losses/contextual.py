"""Contextual loss (CTX; Mechrez, Talmi, Zelnik-Manor, "The Contextual Loss for Image Transformation with
Non-Aligned Data", ECCV 2018), with cosine distances on frozen VGG features."""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import nn

from ddr_restore.losses.feature_backbones import FrozenFeatureLoss, LayerSpec, upcast
from ddr_restore.registry import LOSS_REGISTRY

__all__ = ["ContextualLoss", "contextual_similarity", "contextual_loss"]

# the third block's last ReLU: relu3_4 of VGG19, its VGG16 counterpart relu3_3
_DEFAULT_LAYER = {"vgg19": ["relu3_4"], "vgg16": ["relu3_3"]}


def contextual_similarity(x: torch.Tensor, y: torch.Tensor, band_width: float = 0.5, eps: float = 1e-5) -> torch.Tensor:
    """CX(X, Y) per image for feature maps ``x`` (prediction) and ``y`` (target), both (B, C, H, W): a (B,) tensor.

    The paper's steps, with X = {x_i} and Y = {y_j} the feature vectors at each position:

    1. both sets are centred on the mean of the *target* features (over batch and positions, as the authors' code
       does) and L2-normalised along channels; ``d_ij = 1 - cos(x_i, y_j)`` (clamped at 0 against rounding);
    2. ``d~_ij = d_ij / (min_k d_ik + eps)`` (relative distance, eps = 1e-5);
    3. ``w_ij = exp((1 - d~_ij) / h)`` and ``CX_ij = w_ij / sum_k w_ik`` (computed as a softmax over j, which is the
       same value without overflow);
    4. ``CX = mean_j max_i CX_ij``.

    CX is in [1/N, 1]; it is 1 when every target vector is the unique nearest neighbour of a prediction vector.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            f"contextual_similarity: expected equal (B, C, H, W) shapes, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    x, y = upcast(x), upcast(y)
    mu = y.mean(dim=(0, 2, 3), keepdim=True)
    xn = nn.functional.normalize((x - mu).flatten(2), dim=1)  # (B, C, N)
    yn = nn.functional.normalize((y - mu).flatten(2), dim=1)
    dist = (1.0 - torch.bmm(xn.transpose(1, 2), yn)).clamp_min(0.0)  # (B, N_x, N_y): d_ij
    rel = dist / (dist.amin(dim=2, keepdim=True) + eps)
    cx = torch.softmax((1.0 - rel) / band_width, dim=2)
    return cx.amax(dim=1).mean(dim=1)


def contextual_loss(x: torch.Tensor, y: torch.Tensor, band_width: float = 0.5, eps: float = 1e-5) -> torch.Tensor:
    """``-log CX(x, y)`` per image (B,); 0 at the minimum (see :func:`contextual_similarity`)."""
    return -torch.log(contextual_similarity(x, y, band_width, eps))


@LOSS_REGISTRY.register()
class ContextualLoss(FrozenFeatureLoss):
    """Contextual loss: ``loss_weight * reduce_b sum_l w_l * (-log CX(phi_l(pred), phi_l(target)))``.

    Defaults (Mechrez et al. 2018): cosine distance, band width ``h = 0.5``, ``eps = 1e-5``; one layer, ``relu3_4``
    of an ImageNet VGG19 (``relu3_3`` with ``backbone: vgg16``). The paper uses different layers per task (e.g.
    conv3_2/conv4_2 for style transfer); relu3_4 is the default of the commonly used PyTorch port and the layer of
    the authors' super-resolution follow-up, and what CTX baselines in restoration papers usually mean.

    Options: ``layers`` (a name, a list, or ``{name: weight}``; see
    :func:`~ddr_restore.losses.feature_backbones.vgg_layer_names`), ``backbone: vgg19 | vgg16`` or a feature
    extractor module, ``pretrained: imagenet | none | <path>`` (see :mod:`~ddr_restore.losses.feature_backbones`;
    VGG19 ImageNet weights need torchvision's download, VGG16's come offline from ``ddr-fetch-lpips``),
    ``band_width``, ``eps``, ``reduction`` (``mean`` over the batch, ``sum`` or ``none``).

    Minimum: 0, reached for identical images whose target feature vectors point in pairwise different directions
    (duplicates, e.g. flat regions, split CX and leave a small positive value).

    Differences from the original: the distance is ``1 - cos`` (the authors' TF code uses ``(1 - cos) / 2``, which
    changes only the weight of ``eps``); inputs are [0, 1] RGB with ImageNet normalisation (torchvision VGG) instead
    of the TF VGG19's BGR mean subtraction; no random sampling of positions (memory grows as (H W / 16)^2 per image
    at relu3_x: 1024^2 floats for a 128 x 128 crop). Float16/bfloat16 features are computed in float32.
    """

    requires_target = True

    def __init__(
        self,
        loss_weight: float = 1.0,
        reduction: str = "mean",
        layers: LayerSpec = None,
        backbone: Union[str, nn.Module] = "vgg19",
        pretrained: Optional[str] = "imagenet",
        band_width: float = 0.5,
        eps: float = 1e-5,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        super().__init__(loss_weight, reduction, backbone, layers, _DEFAULT_LAYER.__getitem__, pretrained, cache_dir)
        if not band_width > 0 or not eps > 0:
            raise ValueError(f"ContextualLoss: band_width and eps must be > 0, got {band_width!r}, {eps!r}")
        self.band_width = float(band_width)
        self.eps = float(eps)

    def layer_distance(self, name: str, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """``-log CX`` of one layer, per image."""
        return contextual_loss(fx, fy, self.band_width, self.eps)
