"""Image-quality metrics and their catalog (:mod:`ddr_restore.metrics.catalog`).

Importing this package registers the catalog's metrics in ``METRIC_REGISTRY``: ``psnr`` and ``ssim`` (aliases
``calculate_psnr``/``calculate_ssim``; :mod:`.psnr_ssim`), ``psnr_realblur``/``ssim_realblur`` (:mod:`.alignment`),
``lpips`` (:mod:`.lpips_metric`) and ``q_ddr`` (:mod:`.q_ddr`). Only light code runs at import: LPIPS and CLIP
are imported and loaded when such a metric is first used.
"""
from ddr_restore.metrics import alignment, lpips_metric, psnr_ssim, q_ddr  # noqa: F401  (registration)
from ddr_restore.metrics.catalog import (Metric, MetricInfo, create_metric, list_metrics, metric_direction,
                                         metric_info, register_metric)
from ddr_restore.metrics.psnr_ssim import calculate_psnr, calculate_ssim, psnr_ssim_tensors

__all__ = ["Metric", "MetricInfo", "create_metric", "list_metrics", "metric_info", "metric_direction",
           "register_metric", "calculate_psnr", "calculate_ssim", "psnr_ssim_tensors"]
