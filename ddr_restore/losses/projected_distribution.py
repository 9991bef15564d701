"""Projected distribution loss (PDL; Delbracio, Talebi, Milanfar, "Projected Distribution Loss for Image
Enhancement", ICCP 2021): 1-D Wasserstein distances between the distributions of CNN activations."""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import nn

from ddr_restore.losses.feature_backbones import FrozenFeatureLoss, LayerSpec, block_end_relus, upcast
from ddr_restore.registry import LOSS_REGISTRY

__all__ = ["ProjectedDistributionLoss", "projected_distribution_distance"]


def projected_distribution_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the 1-D Wasserstein-1 distance between the spatial distributions of each channel.

    ``x``, ``y``: (B, C, H, W) activations. Each channel is one 1-D projection of the C-dimensional feature
    vectors (the projections are the channel axes themselves, not random directions); its H*W values form an
    empirical distribution. For two empirical distributions with the same number of equally weighted samples,
    W1 is the mean absolute difference of the sorted samples. Returns a (B,) tensor; it is 0 exactly when, in
    every channel, the two images hold the same multiset of values (e.g. the same pixels in another order).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            "projected_distribution_distance: expected equal (B, C, H, W) shapes, "
            f"got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    xs = torch.sort(upcast(x).flatten(2), dim=2).values  # sort along spatial positions, per image and channel
    ys = torch.sort(upcast(y).flatten(2), dim=2).values
    return (xs - ys).abs().mean(dim=(1, 2))


@LOSS_REGISTRY.register()
class ProjectedDistributionLoss(FrozenFeatureLoss):
    """PDL: ``loss_weight * reduce_b sum_l w_l * mean_c W1(phi_l^c(pred), phi_l^c(target))``.

    The 1-D projections are the feature channels (each channel's H*W activations are one distribution), the W1
    distance is computed by sorting along spatial positions (:func:`projected_distribution_distance`), averaged
    over channels, summed over layers with weights ``w_l`` (1 by default).

    Defaults: an ImageNet VGG19 (``backbone: vgg16`` for the offline weights of ``ddr-fetch-lpips``), layers
    ``relu1_2, relu2_2, relu3_4, relu4_4, relu5_4`` (the last ReLU of each block; ``relu1_2 ... relu5_3`` for
    VGG16), ``reduction: mean`` over the batch. The paper's exact layer list and layer weights could not be checked
    here; these are the five-stage VGG layers that FDL and LPIPS-style losses use. Give ``layers`` to change them.
    Also accepts a feature extractor module (e.g. one returning the image itself, for a PDL on pixels).

    Minimum: 0 for identical images (and for any images whose per-channel activation histograms coincide).
    Differences from the original: torchvision VGG with ImageNet mean/std normalisation of [0, 1] inputs;
    float16/bfloat16 features are sorted in float32.
    """

    requires_target = True

    def __init__(
        self,
        loss_weight: float = 1.0,
        reduction: str = "mean",
        layers: LayerSpec = None,
        backbone: Union[str, nn.Module] = "vgg19",
        pretrained: Optional[str] = "imagenet",
        cache_dir: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        super().__init__(loss_weight, reduction, backbone, layers, block_end_relus, pretrained, cache_dir)

    def layer_distance(self, name: str, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """Channel-averaged W1 of one layer, per image."""
        return projected_distribution_distance(fx, fy)
