"""PSNR and SSIM with BasicSR semantics, on uint8-range **RGB** arrays.

Protocol (exact, written from the published definitions):

* inputs are images in the [0, 255] range (uint8 or float), HWC (or CHW with ``input_order="CHW"``); they are
  converted to float64, so no rounding or overflow happens here;
* ``crop_border`` pixels are removed from each side before anything else;
* ``test_y_channel=True`` converts to the ITU-R BT.601 luma of MATLAB's ``rgb2ycbcr``
  (``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` with RGB in [0, 1]; Y in [16, 235]), **not rounded**. BasicSR's
  ``bgr2ycbcr`` takes BGR arrays; ddr_restore keeps images in RGB, so the weights are applied in RGB order here;
  the resulting Y is identical to BasicSR on the same picture;
* PSNR = ``10 log10(255^2 / MSE)``, MSE over all pixels and channels; ``inf`` when the images are identical;
* SSIM (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, ``C1 = (0.01*255)^2``, ``C2 = (0.03*255)^2``,
  population (not sample) statistics, computed on the "valid" region only (5 pixels lost on each side), averaged
  over the map, **per channel and then averaged over channels**.

Differences from other SSIMs (they give different numbers, so always say which one is used):

* MATLAB ``ssim()`` on an RGB array (used by the GoPro/HIDE MATLAB evaluation scripts of Restormer and by NAFNet's
  ``ssim3d``) treats the image as a 3-D volume with a 3-D Gaussian window, which mixes channels; our per-channel
  average is the Wang et al. grey-image SSIM applied per channel (BasicSR's ``calculate_ssim``).
* ``skimage.metrics.structural_similarity`` with its *defaults* uses a 7x7 uniform window and sample covariance; with
  ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255`` its map agrees with ours on the
  valid region and its mean (which drops a 5-pixel border) equals ours to float precision.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
from scipy import ndimage

from ddr_restore.metrics.catalog import Metric, register_metric

__all__ = [
    "PSNR",
    "SSIM",
    "rgb_to_y",
    "calculate_psnr",
    "calculate_ssim",
    "psnr_ssim_tensors",
]

_SSIM_WIN = 11
_SSIM_SIGMA = 1.5


def _reorder(img: np.ndarray, input_order: str, name: str) -> np.ndarray:
    img = np.asarray(img)
    if input_order not in ("HWC", "CHW"):
        raise ValueError(f"input_order must be 'HWC' or 'CHW', got {input_order!r}")
    if img.ndim == 2:
        return img[..., None]
    if img.ndim != 3:
        raise ValueError(f"{name}: expected a 2-D or 3-D image array, got shape {img.shape}")
    return img.transpose(1, 2, 0) if input_order == "CHW" else img


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma (MATLAB ``rgb2ycbcr`` Y) of an RGB HWC image in [0, 255]; returns float64 (H, W, 1) in [16, 235]."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"Y-channel conversion needs an RGB HWC image, got shape {img.shape}")
    rgb = img / 255.0
    y = 16.0 + rgb @ np.array([65.481, 128.553, 24.966])
    return y[..., None]


def _prepare(img: np.ndarray, img2: np.ndarray, crop_border: int, input_order: str, test_y_channel: bool):
    a = _reorder(img, input_order, "img")
    b = _reorder(img2, input_order, "img2")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: img {a.shape} vs img2 {b.shape} (after input_order={input_order!r})")
    if not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    if crop_border:
        if 2 * crop_border >= min(a.shape[0], a.shape[1]):
            raise ValueError(f"crop_border={crop_border} leaves nothing of an image of shape {a.shape}")
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a.astype(np.float64), b.astype(np.float64)


def calculate_psnr(
    img: np.ndarray,
    img2: np.ndarray,
    crop_border: int = 0,
    input_order: str = "HWC",
    test_y_channel: bool = False,
) -> float:
    """PSNR (dB) between two images in the [0, 255] range; ``inf`` when identical.

    Args:
        img, img2: RGB (or grey) images, uint8 or float in [0, 255], same shape.
        crop_border: pixels removed on each side before computing.
        input_order: ``"HWC"`` or ``"CHW"``.
        test_y_channel: compute on the BT.601 Y channel (see module docstring).

    Raises:
        ValueError: the shapes differ (both are named), or a bad ``crop_border``/``input_order``.
    """
    a, b = _prepare(img, img2, crop_border, input_order, test_y_channel)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 * 255.0 / mse))


def _gaussian_1d(size: int = _SSIM_WIN, sigma: float = _SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    # Separable Gaussian; the kernel is symmetric so correlation == convolution. Cropping r pixels per side keeps
    # only outputs whose window lies inside the image ("valid"), so the border mode never matters.
    r = (len(k) - 1) // 2
    out = ndimage.correlate1d(x, k, axis=0, mode="constant")
    out = ndimage.correlate1d(out, k, axis=1, mode="constant")
    return out[r:-r, r:-r]


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    k = _gaussian_1d()
    mu1, mu2 = _filter_valid(a, k), _filter_valid(b, k)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(a * a, k) - mu1_sq
    s2 = _filter_valid(b * b, k) - mu2_sq
    s12 = _filter_valid(a * b, k) - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return float(ssim_map.mean())


def calculate_ssim(
    img: np.ndarray,
    img2: np.ndarray,
    crop_border: int = 0,
    input_order: str = "HWC",
    test_y_channel: bool = False,
) -> float:
    """SSIM between two images in the [0, 255] range (BasicSR semantics; see module docstring).

    11x11 Gaussian window (sigma 1.5), valid region, computed per channel and averaged. Arguments as for
    :func:`calculate_psnr`. Images must be at least 11x11 after cropping.
    """
    a, b = _prepare(img, img2, crop_border, input_order, test_y_channel)
    if min(a.shape[0], a.shape[1]) < _SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN} pixels, got shape {a.shape}")
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def psnr_ssim_tensors(
    pred: "Any",
    gt: "Any",
    crop_border: int = 0,
    test_y_channel: bool = False,
) -> Tuple[List[float], List[float]]:
    """Per-image (PSNR, SSIM) lists for tensors (B,3,H,W) or (3,H,W) in [0, 1].

    Each image is clamped to [0, 1], scaled by 255 and rounded to uint8 first (BasicSR's ``tensor2img``), so the
    numbers equal those of the saved 8-bit PNGs.
    """
    import torch

    if not isinstance(pred, torch.Tensor) or not isinstance(gt, torch.Tensor):
        raise TypeError("psnr_ssim_tensors expects two torch tensors")
    if pred.shape != gt.shape:
        raise ValueError(f"tensor shapes differ: pred {tuple(pred.shape)} vs gt {tuple(gt.shape)}")
    if pred.dim() == 3:
        pred, gt = pred[None], gt[None]
    if pred.dim() != 4:
        raise ValueError(f"expected (B,3,H,W) or (3,H,W) tensors, got shape {tuple(pred.shape)}")

    def to_u8(t: "torch.Tensor") -> np.ndarray:
        # clamp out of place: never modify the caller's tensor
        arr = t.detach().float().cpu().clamp(0, 1).numpy().transpose(1, 2, 0)
        return (arr * 255.0).round().astype(np.uint8)

    psnrs, ssims = [], []
    for p, g in zip(pred, gt):
        a, b = to_u8(p), to_u8(g)
        psnrs.append(calculate_psnr(a, b, crop_border, test_y_channel=test_y_channel))
        ssims.append(calculate_ssim(a, b, crop_border, test_y_channel=test_y_channel))
    return psnrs, ssims


# ------------------------------------------------------------------------------------------- catalog entries
def _y_text(test_y_channel: bool) -> str:
    return "Y channel (BT.601)" if test_y_channel else "no Y conversion"


class _PixelMetric(Metric):
    """Shared options of PSNR and SSIM on 8-bit RGB images."""

    def __init__(self, crop_border: int = 0, test_y_channel: bool = False, input_order: str = "HWC") -> None:
        super().__init__()
        if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
            raise ValueError(f"crop_border must be an integer >= 0, got {crop_border!r}")
        if not isinstance(test_y_channel, bool):
            raise ValueError(f"test_y_channel must be true or false, got {test_y_channel!r}")
        # BasicSR option files may spell out input_order; images reach a catalog metric as HWC arrays.
        if input_order != "HWC":
            raise ValueError(f"input_order: images are compared as HWC arrays here; got {input_order!r}")
        self.crop_border = int(crop_border)
        self.test_y_channel = test_y_channel
        self.input_order = input_order

    def _kwargs(self) -> Dict[str, Any]:
        return {"crop_border": self.crop_border, "input_order": "HWC", "test_y_channel": self.test_y_channel}


@register_metric("psnr", better="higher", needs_reference=True, title="PSNR", unit="dB",
                 aliases=("calculate_psnr",))
class PSNR(_PixelMetric):
    """PSNR on 8-bit RGB (peak 255; optional border crop and BT.601 Y channel); BasicSR's calculate_psnr."""

    def score(self, restored: np.ndarray, reference: Any) -> float:
        return calculate_psnr(restored, reference, **self._kwargs())

    def describe(self) -> Dict[str, Any]:
        return {"crop_border": self.crop_border, "test_y_channel": self.test_y_channel, "aligned": False}

    def protocol(self) -> str:
        return f"PSNR on RGB uint8 (peak 255, crop_border={self.crop_border}, {_y_text(self.test_y_channel)})"


@register_metric("ssim", better="higher", needs_reference=True, title="SSIM", aliases=("calculate_ssim",))
class SSIM(_PixelMetric):
    """SSIM, BasicSR-style: 11x11 Gaussian window (sigma 1.5), per channel then averaged; calculate_ssim."""

    def score(self, restored: np.ndarray, reference: Any) -> float:
        return calculate_ssim(restored, reference, **self._kwargs())

    def describe(self) -> Dict[str, Any]:
        return {"crop_border": self.crop_border, "test_y_channel": self.test_y_channel,
                "variant": "BasicSR per-channel 2-D Gaussian"}

    def protocol(self) -> str:
        return (f"SSIM BasicSR-style (float64, 11x11 Gaussian window sigma 1.5, per channel then averaged, "
                f"crop_border={self.crop_border}, {_y_text(self.test_y_channel)})")
