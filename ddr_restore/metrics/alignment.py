"""RealBlur evaluation protocol: ECC homography alignment, then masked PSNR/SSIM (Rim et al., ECCV 2020).

RealBlur ground truth is not pixel-aligned with the blurred input, so the official evaluation aligns each
*restored* image to its GT before scoring. Steps (own implementation of the published protocol):

1. scale the prediction's intensity to the GT by least squares: ``z <- (sum(x z) / sum(z z)) z`` (all channels);
2. estimate a homography with ``cv2.findTransformECC`` (``MOTION_HOMOGRAPHY``, 100 iterations, eps 0,
   ``gaussFiltSize`` 5) between the grey GT (template) and the grey scaled prediction (input);
3. warp the prediction onto the GT (bicubic, inverse map, reflect border) and a ones-image the same way (nearest,
   constant 0) to get a validity mask; multiply both prediction and GT by the mask;
4. PSNR = ``10 log10(1 / MSE)`` with the squared error summed over the masked images and divided by the mask sum;
5. SSIM = scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
   data_range=1, channel_axis=-1, full=True)`` of the masked images; its map is multiplied by the mask, cropped by
   the Gaussian window radius (``int(3.5 * 1.5 + 0.5) = 5``), summed per channel, divided by the cropped mask sum
   per channel, and averaged over channels.

Differences from the official script (``rimchang/RealBlur: evaluation_RealBlur_ecc.py``), which pins scikit-image
0.17.2 and OpenCV 4.2: ``channel_axis=-1`` replaces the removed ``multichannel=True``; images here are RGB (grey
conversion uses ``COLOR_RGB2GRAY`` on RGB data). When ECC does not converge (``cv2.error``) the identity warp is
used, a ``RuntimeWarning`` is issued and :class:`RealBlurScore` records ``ecc_converged=False``.

Catalog metrics ``psnr_realblur`` and ``ssim_realblur`` (what ``ddr-eval --preset realblur`` reports as ``psnr`` and
``ssim``) share one alignment per image pair: the second of them reuses the first one's warp.
"""
from __future__ import annotations

import warnings
import hashlib
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from ddr_restore.metrics.catalog import Metric, register_metric

__all__ = [
    "RealBlurPSNR",
    "RealBlurSSIM",
    "RealBlurAlignment",
    "RealBlurScore",
    "realblur_align",
    "realblur_score",
    "realblur_psnr_ssim",
    "masked_psnr",
    "masked_ssim",
]

ECC_ITERATIONS = 100
ECC_EPS = 0.0
ECC_GAUSS_FILT_SIZE = 5
SSIM_SIGMA = 1.5
# scikit-image's Gaussian window: radius = int(truncate * sigma + 0.5) with truncate 3.5 -> 5 (an 11x11 window).
SSIM_PAD = int(3.5 * SSIM_SIGMA + 0.5)


@dataclass
class RealBlurAlignment:
    """Result of :func:`realblur_align`: masked aligned prediction/GT, the mask, the warp and ECC status."""

    aligned: np.ndarray  # prediction warped onto the GT, times the mask (float32 HWC)
    gt: np.ndarray  # GT times the mask (float32 HWC)
    mask: np.ndarray  # 1 where the warped prediction has data, else 0 (float32 HWC, 3 channels)
    warp: np.ndarray  # 3x3 homography (GT coordinates -> prediction coordinates)
    ecc_converged: bool
    ecc_cc: float  # final ECC correlation coefficient (nan when ECC failed)


@dataclass
class RealBlurScore:
    """RealBlur-protocol scores of one image pair, with the alignment diagnostics."""

    psnr: float
    ssim: float
    warp: np.ndarray
    ecc_converged: bool
    ecc_cc: float


def _as_float_rgb(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name}: expected an RGB HWC image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"{name}: expected float in [0,1] or uint8, got dtype {img.dtype}")
    return img.astype(np.float32)


def realblur_align(restored: np.ndarray, gt: np.ndarray) -> RealBlurAlignment:
    """Align ``restored`` to ``gt`` (float RGB HWC in [0,1], or uint8) with the RealBlur ECC protocol (steps 1-3).

    Raises ValueError when the shapes differ or are not RGB HWC; an ECC failure falls back to the identity warp
    with a RuntimeWarning.
    """
    z = _as_float_rgb(restored, "restored")
    x = _as_float_rgb(gt, "gt")
    if z.shape != x.shape:
        raise ValueError(f"image shapes differ: restored {z.shape} vs gt {x.shape}")
    zz = float(np.sum(z.astype(np.float64) ** 2))
    scale = float(np.sum(x.astype(np.float64) * z)) / zz if zz > 0 else 1.0
    zs = (scale * z).astype(np.float32)

    warp = np.eye(3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPS)
    try:
        cc, warp = cv2.findTransformECC(
            cv2.cvtColor(x, cv2.COLOR_RGB2GRAY),
            cv2.cvtColor(zs, cv2.COLOR_RGB2GRAY),
            warp,
            cv2.MOTION_HOMOGRAPHY,
            criteria,
            None,
            ECC_GAUSS_FILT_SIZE,
        )
        converged, cc = True, float(cc)
    except cv2.error as err:
        # e.g. flat images or divergence ("images may be uncorrelated or non-overlapped"): score unaligned
        warnings.warn(f"RealBlur ECC alignment failed ({str(err).strip().splitlines()[-1]}); using identity warp",
                      RuntimeWarning, stacklevel=2)
        warp, converged, cc = np.eye(3, dtype=np.float32), False, float("nan")

    h, w = x.shape[:2]
    aligned = cv2.warpPerspective(zs, warp, (w, h), flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpPerspective(np.ones_like(zs), warp, (w, h), flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return RealBlurAlignment(aligned * mask, x * mask, mask, np.asarray(warp, dtype=np.float64), converged, cc)


def masked_psnr(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (peak 1) with the squared error summed over masked images and divided by the mask sum."""
    err = np.sum((gt.astype(np.float64) - pred) ** 2) / np.sum(mask, dtype=np.float64)
    return float("inf") if err == 0 else float(10.0 * np.log10(1.0 / err))


def masked_ssim(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> float:
    """skimage Gaussian SSIM map times the mask, border-cropped by the window radius, mask-averaged per channel."""
    _, smap = structural_similarity(gt, pred, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False,
                                    data_range=1.0, channel_axis=-1, full=True)
    p = SSIM_PAD
    smap = (smap.astype(np.float64) * mask)[p:-p, p:-p]  # float64 sums: float32 drifts by ~1e-6
    m = mask[p:-p, p:-p].astype(np.float64)
    per_channel = smap.sum(axis=(0, 1)) / m.sum(axis=(0, 1))
    return float(np.mean(per_channel))


def realblur_score(restored: np.ndarray, gt: np.ndarray) -> RealBlurScore:
    """Align and score one pair with the RealBlur protocol; returns scores plus warp and ECC status."""
    al = realblur_align(restored, gt)
    return RealBlurScore(masked_psnr(al.gt, al.aligned, al.mask), masked_ssim(al.gt, al.aligned, al.mask),
                         al.warp, al.ecc_converged, al.ecc_cc)


def realblur_psnr_ssim(restored: np.ndarray, gt: np.ndarray) -> Tuple[float, float]:
    """RealBlur-protocol (PSNR dB, SSIM) of a restored image against its GT (float RGB HWC in [0,1] or uint8)."""
    s = realblur_score(restored, gt)
    return s.psnr, s.ssim


# ------------------------------------------------------------------------------------------- catalog entries
_ALIGNMENT_CACHE: Dict[str, Any] = {"key": None, "value": None}


def _pair_key(restored: np.ndarray, gt: np.ndarray) -> Tuple[Any, ...]:
    # By content, not identity: two metrics scoring the same pair get equal arrays that may be distinct objects.
    digest = hashlib.blake2b(digest_size=16)
    for a in (restored, gt):
        digest.update(np.ascontiguousarray(a).tobytes())
    return (restored.shape, restored.dtype.str, gt.shape, gt.dtype.str, digest.hexdigest())


def _cached_alignment(restored: np.ndarray, gt: np.ndarray) -> RealBlurAlignment:
    """:func:`realblur_align` of the pair, reused when the same pair is scored by the PSNR and the SSIM metric."""
    key = _pair_key(restored, gt)
    if _ALIGNMENT_CACHE["key"] != key:
        _ALIGNMENT_CACHE["value"] = realblur_align(restored, gt)
        _ALIGNMENT_CACHE["key"] = key
    return _ALIGNMENT_CACHE["value"]


class _RealBlurMetric(Metric):
    """Common part of the RealBlur-aligned metrics: alignment, ECC diagnostics, summary facts."""

    def __init__(self) -> None:
        super().__init__()
        self.ecc_failures = 0

    def _value(self, al: RealBlurAlignment) -> float:
        raise NotImplementedError

    def score_with_details(self, restored: np.ndarray, reference: Optional[np.ndarray]) -> Tuple[float, Dict[str, Any]]:
        al = _cached_alignment(restored, reference)
        self.ecc_failures += int(not al.ecc_converged)
        return self._value(al), {"ecc_converged": bool(al.ecc_converged)}

    def score(self, restored: np.ndarray, reference: Optional[np.ndarray]) -> float:
        return self.score_with_details(restored, reference)[0]

    def describe(self) -> Dict[str, Any]:
        # no border crop and no Y conversion: the RealBlur protocol scores the aligned RGB images as they are
        return {"crop_border": 0, "test_y_channel": False, "ecc_failures": self.ecc_failures}


_ALIGN_TEXT = ("official RealBlur ECC evaluation (intensity scaling of the output to the GT, ECC homography aligning "
               "the output onto the GT)")


@register_metric("psnr_realblur", better="higher", needs_reference=True, title="(aligned) PSNR", unit="dB",
                 details=("ecc_converged",))
class RealBlurPSNR(_RealBlurMetric):
    """PSNR after the official RealBlur ECC alignment of the output onto the GT (masked, peak 1)."""

    def _value(self, al: RealBlurAlignment) -> float:
        return masked_psnr(al.gt, al.aligned, al.mask)

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "aligned": True}

    def protocol(self) -> str:
        return f"masked PSNR after the {_ALIGN_TEXT}"


@register_metric("ssim_realblur", better="higher", needs_reference=True, title="(aligned) SSIM",
                 details=("ecc_converged",))
class RealBlurSSIM(_RealBlurMetric):
    """SSIM after the official RealBlur ECC alignment (scikit-image Gaussian SSIM, mask-averaged per channel)."""

    def _value(self, al: RealBlurAlignment) -> float:
        return masked_ssim(al.gt, al.aligned, al.mask)

    def describe(self) -> Dict[str, Any]:
        return {**super().describe(), "variant": "RealBlur masked SSIM"}

    def protocol(self) -> str:
        return f"masked Gaussian SSIM after the {_ALIGN_TEXT}"
