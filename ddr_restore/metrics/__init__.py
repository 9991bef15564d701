"""Metrics. Importing this package registers PSNR/SSIM in METRIC_REGISTRY.

``alignment`` (RealBlur ECC protocol; OpenCV + scikit-image) and ``lpips_metric`` (LPIPS; imports ``lpips``) are not
imported here so that ``import ddr_restore.metrics`` stays light; import them explicitly.
"""
from ddr_restore.metrics import psnr_ssim  # noqa: F401  (registration side effects)
from ddr_restore.metrics.psnr_ssim import METRIC_BETTER, calculate_psnr, calculate_ssim, psnr_ssim_tensors

__all__ = ["METRIC_BETTER", "calculate_psnr", "calculate_ssim", "psnr_ssim_tensors"]
