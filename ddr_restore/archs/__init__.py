"""Network architectures. Importing this package registers them in ARCH_REGISTRY."""
from ddr_restore.archs import nafnet, restormer  # noqa: F401  (registration side effects)
from ddr_restore.archs.nafnet import LayerNorm2d, NAFBlock, NAFNet, NAFNetLocal, count_parameters
from ddr_restore.archs.restormer import Restormer

__all__ = ["NAFNet", "NAFNetLocal", "Restormer", "NAFBlock", "LayerNorm2d", "count_parameters"]
