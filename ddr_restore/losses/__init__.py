"""Losses. Importing this package registers the built-in losses in LOSS_REGISTRY."""
from ddr_restore.losses import ddr_loss, pixel  # noqa: F401  (registration side effects)
from ddr_restore.losses import contextual, frequency_distribution, lpips_loss, projected_distribution  # noqa: F401
