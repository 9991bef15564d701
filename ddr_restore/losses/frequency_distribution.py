"""Frequency distribution loss (FDL; Ni, Wu, Wang, Yang, Wang, Ma, "Misalignment-Robust Frequency Distribution
Loss for Image Transformation", CVPR 2024): sliced Wasserstein distances between the Fourier amplitudes and
phases of CNN features.

The authors publish it as the PyPI package ``fdl-pytorch`` (1.0, module ``FDL_pytorch``). That package is not
wrapped here: importing it fails on a machine without CUDA (its class body allocates CUDA tensors), its backbone
always downloads torchvision's VGG19 weights, and its random projections come from the global RNG (different on
each DDP rank unless seeded identically). This file computes the same function; ``tests/test_losses_perceptual.py``
checks it against the package on the same backbone and projections when the package is installed.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from ddr_restore.errors import InputError
from ddr_restore.losses.feature_backbones import FrozenFeatureLoss, LayerSpec, block_end_relus, upcast
from ddr_restore.registry import LOSS_REGISTRY

__all__ = ["FrequencyDistributionLoss", "random_projections", "sliced_wasserstein", "frequency_distribution_distance"]


def random_projections(num_proj: int, channels: int, patch_size: int, generator: torch.Generator) -> torch.Tensor:
    """``num_proj`` Gaussian (channels, patch, patch) directions, each scaled to unit L2 norm (as in FDL)."""
    rand = torch.randn(num_proj, channels, patch_size, patch_size, generator=generator)
    return rand / rand.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Sliced W1 between the patch distributions of ``x`` and ``y`` (B, C, H, W): a (B,) tensor.

    Every (C, p, p) patch (taken with ``stride``, no padding) is projected on each direction of ``projections``
    (P, C, p, p) by a convolution; per image and direction the projected values are sorted and compared, and the
    mean absolute difference is taken over directions and positions.
    """
    px = nn.functional.conv2d(x, projections, stride=stride).flatten(2)
    py = nn.functional.conv2d(y, projections, stride=stride).flatten(2)
    px, py = torch.sort(px, dim=2).values, torch.sort(py, dim=2).values
    return (px - py).abs().mean(dim=(1, 2))


def frequency_distribution_distance(
    x: torch.Tensor, y: torch.Tensor, projections: torch.Tensor, phase_weight: float = 1.0, stride: int = 1
) -> torch.Tensor:
    """FDL of one layer: ``SW(|F x|, |F y|) + phase_weight * SW(angle F x, angle F y)`` per image (B,).

    ``F`` is the 2-D FFT over the spatial axes of each channel (computed in float32 at least).
    """
    fx = torch.fft.fftn(upcast(x), dim=(-2, -1))
    fy = torch.fft.fftn(upcast(y), dim=(-2, -1))
    proj = projections.to(device=fx.real.device, dtype=fx.real.dtype)
    amplitude = sliced_wasserstein(fx.abs(), fy.abs(), proj, stride)
    phase = sliced_wasserstein(torch.angle(fx), torch.angle(fy), proj, stride)
    return amplitude + phase_weight * phase


@LOSS_REGISTRY.register()
class FrequencyDistributionLoss(FrozenFeatureLoss):
    """FDL: ``loss_weight * reduce_b sum_l w_l * (SW(amplitude_l) + phase_weight * SW(phase_l))``.

    Defaults are those of the official ``fdl-pytorch`` 1.0 (``FDL_loss()``): an ImageNet VGG19 with the outputs of
    its five blocks, ``relu1_2, relu2_2, relu3_4, relu4_4, relu5_4`` (``features[3, 8, 17, 26, 35]``; the package's
    variable names say relu3_3/4_3/5_3 but its slices end at the VGG19 layers listed here), ImageNet normalisation,
    ``num_proj = 256`` random 5x5 projections per layer, ``stride = 1``, ``phase_weight = 1``, layers summed,
    ``reduction: mean`` over the batch. With ``backbone: vgg16`` the layers are ``relu1_2 ... relu5_3``.

    Input size: every feature map must be at least ``patch_size`` wide, i.e. crops of at least 80 x 80 for relu5_x
    (5 x 16); smaller ones raise an error naming the layer.

    Differences from the original: the projections come from a private generator seeded with ``seed`` (the
    package draws them from the global RNG at construction), so every rank and every run uses the same ones; they
    are not saved in a state dict (they are re-created from the seed). Per-layer weights ``w_l`` (default 1) are an
    addition. Float16/bfloat16 features are transformed in float32.

    Minimum: 0 for identical images.
    """

    requires_target = True

    def __init__(
        self,
        loss_weight: float = 1.0,
        reduction: str = "mean",
        layers: LayerSpec = None,
        backbone: Union[str, nn.Module] = "vgg19",
        pretrained: Optional[str] = "imagenet",
        patch_size: int = 5,
        stride: int = 1,
        num_proj: int = 256,
        phase_weight: float = 1.0,
        seed: int = 0,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        super().__init__(loss_weight, reduction, backbone, layers, block_end_relus, pretrained, cache_dir)
        for name, value in (("patch_size", patch_size), ("stride", stride), ("num_proj", num_proj)):
            if int(value) != value or value < 1:
                raise InputError(f"FrequencyDistributionLoss: {name} must be a positive integer, got {value!r}")
        self.patch_size, self.stride, self.num_proj = int(patch_size), int(stride), int(num_proj)
        self.phase_weight = float(phase_weight)
        self.seed = int(seed)
        # (layer, channels) -> projections (float32, CPU): drawn on first use, since a custom extractor's channel
        # counts are known only then; each layer has its own generator so the order of first use does not matter.
        self._projections: Dict[Tuple[str, int], torch.Tensor] = {}

    def projections(self, name: str, channels: int) -> torch.Tensor:
        """The (num_proj, channels, patch, patch) directions of layer ``name`` (deterministic given ``seed``)."""
        key = (name, channels)
        if key not in self._projections:
            names = list(self.layer_weights) if self.layer_weights is not None else []
            index = names.index(name) if name in names else sum(ord(c) for c in name)
            gen = torch.Generator().manual_seed(self.seed * 1000 + index)
            self._projections[key] = random_projections(self.num_proj, channels, self.patch_size, gen)
        return self._projections[key]

    def layer_distance(self, name: str, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """Amplitude + phase sliced W1 of one layer, per image."""
        if min(fx.shape[-2:]) < self.patch_size:
            raise InputError(
                f"FrequencyDistributionLoss: layer {name} is {fx.shape[-2]}x{fx.shape[-1]}, smaller than patch_size "
                f"{self.patch_size}; use larger crops or shallower layers"
            )
        projections = self.projections(name, fx.shape[1])
        return frequency_distribution_distance(fx, fy, projections, self.phase_weight, self.stride)
