"""ddr_restore: image restoration with the Deep Degradation Response (DDR) objective.

Public API (imports stay light: CLIP, LPIPS and the trainer load only when used)::

    from ddr_restore import DDR
    loss = DDR(pretrained="none")(restored)          # -mean Q_DDR of the batch
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["DDR", "__version__"]


def __getattr__(name: str):
    # Lazy: `import ddr_restore` must not import open_clip/torch-heavy modules until asked.
    if name == "DDR":
        from ddr_restore.ddr.descriptor import DDR

        return DDR
    raise AttributeError(f"module 'ddr_restore' has no attribute {name!r}")
