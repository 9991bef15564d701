"""Catalog metric ``q_ddr``: the blind DDR quality score of an image (no reference; higher is better).

The score is :meth:`ddr_restore.ddr.descriptor.DDR.quality_score` (the official full-image BIQA patch protocol) of
the 8-bit image; the DDR module is the same class the DDR loss and ``ddr-score`` use. CLIP is loaded on the first
call (:meth:`QDDRMetric.load`), so creating the metric is cheap.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from ddr_restore.metrics.catalog import Metric, register_metric

__all__ = ["QDDRMetric"]

_RANDOM_WARNING = "Q_DDR uses a RANDOMLY initialised CLIP; its values are not meaningful quality scores"


@register_metric("q_ddr", better="higher", needs_reference=False, title="Q_DDR")
class QDDRMetric(Metric):
    """Blind DDR quality score Q_DDR (mean over degradation types of the CLIP degradation response)."""

    def __init__(self, backbone: str = "ViT-B-32", pretrained: Optional[str] = None) -> None:
        """``pretrained``: an open_clip tag, a checkpoint path, or ``"none"`` (random CLIP, recorded as such);
        default ``$DDR_CLIP_CHECKPOINT`` if set, else ``"openai"`` (see :mod:`ddr_restore.ddr.clip_backend`)."""
        super().__init__()
        if not isinstance(backbone, str) or not backbone:
            raise ValueError(f"backbone must be an open_clip model name, got {backbone!r}")
        self.backbone = backbone
        self.pretrained = pretrained
        self._ddr: Any = None
        # Which user-facing switch sets ``pretrained`` (named when CLIP weights cannot be obtained): set by the
        # caller, e.g. "--ddr-pretrained" (ddr-eval) or "val.metrics.q_ddr.pretrained" (an option file).
        self.switch_hint: Optional[str] = None

    def _load(self) -> None:
        from ddr_restore.ddr.descriptor import DDR

        self._ddr = DDR(backbone=self.backbone, pretrained=self.pretrained,
                        switch_hint=self.switch_hint).to(self.device).eval()

    def _move(self, device: Any) -> None:
        self._ddr = self._ddr.to(device)

    @property
    def clip_random(self) -> Optional[bool]:
        """Whether CLIP is randomly initialised (``None`` before loading)."""
        if self._ddr is None:
            return None
        return bool(getattr(self._ddr, "pretrained_is_random", self.pretrained == "none"))

    def score(self, restored: np.ndarray, reference: Optional[np.ndarray]) -> float:
        import torch

        from ddr_restore.imageio import img2tensor

        with torch.inference_mode():
            return float(self._ddr.quality_score(img2tensor(restored).unsqueeze(0).to(self.device)).mean())

    def describe(self) -> Dict[str, Any]:
        info: Dict[str, Any] = {
            "backbone": self.backbone, "pretrained": self.pretrained, "clip_random": self.clip_random,
            "score": "DDR.quality_score of the quantised restored image (official full-image patch protocol)",
        }
        if self._ddr is not None:
            info["clip_source"] = str(getattr(self._ddr, "source", self.pretrained))
            info["degradations"] = list(getattr(self._ddr, "degradations", []))
        return info

    def protocol(self) -> str:
        return f"Q_DDR ({self.backbone}) of the uint8 image, official full-image patch protocol"

    def caveats(self) -> List[str]:
        return [_RANDOM_WARNING] if self.clip_random else []
