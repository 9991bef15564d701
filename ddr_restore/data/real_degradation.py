"""Seeded second-order "real-world" degradation of the Real-ESRGAN kind, one sample at a time (numpy/OpenCV).

Reference: X. Wang, L. Xie, C. Dong, Y. Shan, "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure
Synthetic Data", ICCV Workshops 2021, §3 (the "high-order degradation model") and its published training options
``options/train_realesrnet_x4plus.yml``, whose values are the defaults here. Written from the paper and the
option names; the blur kernels come from :mod:`ddr_restore.data.kernels`.

The pipeline applied by :func:`degrade` to an HWC RGB float image ``gt`` in [0, 1] of size ``H x W``:

1. **first order**: blur with a random kernel (``blur``, probability ``blur_prob`` = 1) -> resize by a factor
   drawn as "up" in ``[1, range[1]]``, "down" in ``[range[0], 1]`` or "keep" (probabilities ``resize.prob``),
   relative to the input size, with a mode drawn uniformly from ``resize.modes`` (area / bilinear / bicubic) ->
   Gaussian noise (probability ``noise.gaussian_prob``, sigma in ``noise.gaussian_sigma`` 8-bit units) or else
   Poisson noise (``noise.poisson_scale``), each in grey (the same noise on R, G, B) with probability
   ``noise.gray_prob``; clamp to [0, 1] -> JPEG with quality in ``jpeg.quality``;
2. **second order** (``second_order``): the same stages with their own ranges; the blur happens with
   probability ``blur_prob`` = 0.8 and, as in Real-ESRGAN, the resize factor is relative to the *final* size
   ``(H/scale, W/scale)``, not to the current one;
3. **final**: with probability ``sinc_before_jpeg_prob`` = 0.5 [resize to exactly ``(H/scale, W/scale)`` with a
   random mode, then the final sinc filter (``final.sinc``: a sinc kernel with probability 0.8, else none)] and
   then JPEG (``final.jpeg``); otherwise JPEG first and then [resize + sinc];
4. round to 8 bits (``round(255 x) / 255``, clamped), as Real-ESRGAN does to its LQ.

Noise formulas (Real-ESRGAN's): Gaussian ``n ~ N(0, (sigma/255)^2)`` per pixel and channel (grey: one value per
pixel for all channels). Poisson: the image (grey: its luminance ``0.2989 R + 0.587 G + 0.114 B``) rounded to 8
bits, ``v = 2^ceil(log2(number of distinct levels))``, ``n = (Poisson(img * v) / v - img) * scale`` (grey: added
to every channel); ``out = clamp(img + n, 0, 1)``. Kernels are applied with ``cv2.filter2D`` (correlation, which
equals convolution for these point-symmetric kernels) and mirrored borders without edge repetition
(``BORDER_REFLECT_101``, PyTorch's ``reflect`` padding that Real-ESRGAN's ``filter2D`` uses).

YAML layout (``degradation:`` of :class:`~ddr_restore.data.sr_synthetic.SyntheticSRDataset`; every key optional,
these are the defaults; Real-ESRGAN's option names in the comments)::

    degradation:
      blur_prob: 1.0
      blur: {kernel_size: [7, 21], sigma: [0.2, 3], sinc_prob: 0.1, ...}  # KernelConfig keys (kernels.py)
      resize: {prob: [0.2, 0.7, 0.1], range: [0.15, 1.5], modes: [area, bilinear, bicubic]}  # resize_prob/_range
      noise: {gaussian_prob: 0.5, gaussian_sigma: [1, 30], poisson_scale: [0.05, 3], gray_prob: 0.4}
      jpeg: {quality: [30, 95]}                                                                  # jpeg_range
      second_order:
        blur_prob: 0.8                                                                           # second_blur_prob
        blur: {sigma: [0.2, 1.5], ...}                                                           # blur_sigma2, ...
        resize: {prob: [0.3, 0.4, 0.3], range: [0.3, 1.2]}                                       # resize_prob2, ...
        noise: {gaussian_prob: 0.5, gaussian_sigma: [1, 25], poisson_scale: [0.05, 2.5], gray_prob: 0.4}
        jpeg: {quality: [30, 95]}                                                                # jpeg_range2
      final:
        resize_modes: [area, bilinear, bicubic]
        sinc: {prob: 0.8, kernel_size: [7, 21], cutoff: [1.0472, 3.1416]}                        # final_sinc_prob
        jpeg: {quality: [30, 95]}
        sinc_before_jpeg_prob: 0.5

What differs from Real-ESRGAN, and why:

* **Per sample, in the data loader** (CPU, numpy/OpenCV), not on the GPU batch: every sample gets its own
  resize factor, mode and noise type (Real-ESRGAN draws those once per batch and mixes batches through a pool of
  180 samples to compensate), results are reproducible per sample from one seed, and no GPU is needed. Cost
  (``scripts/bench_sr_loader.py``, 256 px GT, x4): 24-39 ms per sample in one process on a shared, overloaded
  2-core Xeon (about 26-41 samples/s per worker; the first-order blur of the full-size crop is over half of it),
  against a GPU training step that consumes roughly 38-139 samples/s (NAFNet-w32 at 256 px, batch 4-16, H200;
  ``../shared/reference/gpu-notes.md``), i.e. a few workers per GPU.
* **Integer JPEG quality**: OpenCV's encoder takes an integer quality; Real-ESRGAN's differentiable ``DiffJPEG``
  takes the float drawn from the range. The float is drawn from the configured range and rounded (both are in the
  record). Chroma is subsampled 4:2:0 in both.
* **Resize modes** are OpenCV's ``INTER_AREA`` / ``INTER_LINEAR`` / ``INTER_CUBIC`` (a = -0.75, no antialiasing,
  half-pixel centres, like ``torch.nn.functional.interpolate``'s area / bilinear / bicubic); OpenCV's area
  averaging uses exact fractional pixel weights where PyTorch's adaptive pooling uses integer windows.
* **The crop is degraded**: Real-ESRGAN degrades a 400 px crop and then crops 256 px (GT) from the result; the
  dataset here degrades the ``gt_size`` crop itself (2.4x less work at 256 px), so borders see mirrored pixels.
* **No USM-sharpened GT by default**: Real-ESRGAN sharpens the GT (unsharp mask, weight 0.5, radius 50,
  threshold 10) before degrading it and uses the sharpened GT as the target; :func:`usm_sharpen` does the same and
  the dataset enables it with ``gt_usm: true``.

Every random draw comes from one ``numpy.random.Generator``: the same generator state gives identical bytes and
an identical record.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from ddr_restore.data.kernels import FinalSincConfig, KernelConfig, random_final_sinc_kernel, random_kernel
from ddr_restore.errors import InputError

__all__ = [
    "RESIZE_MODES",
    "RESIZE_DIRECTIONS",
    "ResizeConfig",
    "NoiseConfig",
    "JpegConfig",
    "StageConfig",
    "FinalConfig",
    "DegradationConfig",
    "apply_kernel",
    "resize",
    "add_gaussian_noise",
    "add_poisson_noise",
    "jpeg_compress",
    "usm_sharpen",
    "degrade",
    "record_values",
]

RESIZE_MODES: Tuple[str, ...] = ("area", "bilinear", "bicubic")
RESIZE_DIRECTIONS: Tuple[str, ...] = ("up", "down", "keep")
_CV2_INTERP = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
# torchvision's rgb_to_grayscale weights (ITU-R 601), which Real-ESRGAN's grey Poisson noise uses.
_LUMA = np.array([0.2989, 0.587, 0.114], dtype=np.float32)

FloatRange = Tuple[float, float]


# ------------------------------------------------------------------------------------------------- validation
# Messages have the form "<key>: <problem>"; from_dict prefixes the section path ("degradation.noise.") so the
# user reads the full key path, e.g. "degradation.second_order.noise.gaussian_sigma: ...".
def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name}: must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{name}: must be finite, got {value!r}")
    return v


def _prob(value: Any, name: str) -> float:
    p = _number(value, name)
    if not 0.0 <= p <= 1.0:
        raise InputError(f"{name}: must be a probability in [0, 1], got {value!r}")
    return p


def _range(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf) -> FloatRange:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise InputError(f"{name}: must be a pair [min, max], got {value!r}")
    a, b = _number(value[0], name), _number(value[1], name)
    if a > b:
        raise InputError(f"{name}: min must be <= max, got {list(value)!r}")
    if a < lo or b > hi:
        raise InputError(f"{name}: must lie within [{lo:g}, {hi:g}], got {list(value)!r}")
    return (a, b)


def _probs(value: Any, name: str, n: int) -> Tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n:
        raise InputError(f"{name}: must be a list of {n} probabilities, got {value!r}")
    ps = tuple(_number(v, name) for v in value)
    if any(p < 0 for p in ps) or abs(sum(ps) - 1.0) > 1e-6:
        raise InputError(f"{name}: probabilities must be >= 0 and sum to 1, got {list(value)!r}")
    return ps


def _modes(value: Any, name: str) -> Tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise InputError(f"{name}: must be a non-empty list from {list(RESIZE_MODES)}, got {value!r}")
    modes = tuple(value)
    bad = [m for m in modes if m not in RESIZE_MODES]
    if bad or len(set(modes)) != len(modes):
        raise InputError(f"{name}: must be distinct names from {list(RESIZE_MODES)}, got {list(modes)!r}")
    return modes


def _check_keys(options: Any, known: Sequence[str], where: str) -> Dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InputError(f"{where}: must be a mapping of options, got {type(options).__name__}")
    unknown = sorted(str(k) for k in options if k not in known)
    if unknown:
        raise InputError(f"{where}: unknown option(s) {unknown}; known: {sorted(known)}")
    return dict(options)


def _prefixed(where: str, err: InputError) -> InputError:
    """Prefix an error of a section with the section's key path (``degradation.noise.`` + ``key: ...``)."""
    return InputError(f"{where}.{err}")


# ------------------------------------------------------------------------------------------------- configuration
@dataclass
class ResizeConfig:
    """One random resize: direction up/down/keep with ``prob``, factor within ``range`` (which must contain 1)."""

    prob: Tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    range: FloatRange = (0.15, 1.5)
    modes: Tuple[str, ...] = RESIZE_MODES  # drawn uniformly

    def __post_init__(self) -> None:
        self.prob = _probs(self.prob, "prob", 3)  # type: ignore[assignment]
        self.range = _range(self.range, "range", 1e-6)
        if not self.range[0] <= 1.0 <= self.range[1]:
            # "up" draws from [1, max] and "down" from [min, 1], as Real-ESRGAN; set a direction's prob to 0 instead
            raise InputError(f"range: must contain 1 (down draws from [min, 1], up from [1, max]), got "
                             f"{list(self.range)}")
        self.modes = _modes(self.modes, "modes")


@dataclass
class NoiseConfig:
    """Gaussian noise with ``gaussian_prob`` (sigma in 8-bit units), else Poisson; grey with ``gray_prob``."""

    gaussian_prob: float = 0.5
    gaussian_sigma: FloatRange = (1.0, 30.0)
    poisson_scale: FloatRange = (0.05, 3.0)
    gray_prob: float = 0.4

    def __post_init__(self) -> None:
        self.gaussian_prob = _prob(self.gaussian_prob, "gaussian_prob")
        self.gaussian_sigma = _range(self.gaussian_sigma, "gaussian_sigma", 0.0)
        self.poisson_scale = _range(self.poisson_scale, "poisson_scale", 0.0)
        self.gray_prob = _prob(self.gray_prob, "gray_prob")


@dataclass
class JpegConfig:
    """JPEG quality range (drawn as a float, rounded to the integer OpenCV takes)."""

    quality: FloatRange = (30.0, 95.0)

    def __post_init__(self) -> None:
        self.quality = _range(self.quality, "quality", 1.0, 100.0)


def _section(cls: Any, options: Any, where: str) -> Any:
    opts = _check_keys(options, [f.name for f in fields(cls)], where)
    try:
        return cls(**opts)
    except InputError as err:
        raise _prefixed(where, err) from None


def _kernel_section(options: Any, where: str, base: KernelConfig) -> KernelConfig:
    if options is not None and not isinstance(options, Mapping):
        raise InputError(f"{where}: must be a mapping of blur-kernel options, got {type(options).__name__}")
    try:
        return KernelConfig.from_dict(options, base=base)
    except InputError as err:  # kernels.py names the field in its message ("sigma must be ...")
        raise InputError(f"{where}: {err}") from None


@dataclass
class StageConfig:
    """One order of the degradation: blur (with ``blur_prob``) -> resize -> noise -> JPEG."""

    blur_prob: float = 1.0
    blur: KernelConfig = field(default_factory=KernelConfig.first_order)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    jpeg: JpegConfig = field(default_factory=JpegConfig)

    def __post_init__(self) -> None:
        self.blur_prob = _prob(self.blur_prob, "blur_prob")
        for name, kind in (("blur", KernelConfig), ("resize", ResizeConfig), ("noise", NoiseConfig),
                           ("jpeg", JpegConfig)):
            if not isinstance(getattr(self, name), kind):
                raise InputError(f"{name}: must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    @classmethod
    def first_order(cls) -> "StageConfig":
        """Real-ESRGAN's first degradation (train_realesrnet_x4plus.yml)."""
        return cls()

    @classmethod
    def second_order(cls) -> "StageConfig":
        """Real-ESRGAN's second degradation: second_blur_prob 0.8, blur_sigma2 [0.2, 1.5], resize_prob2
        [0.3, 0.4, 0.3], resize_range2 [0.3, 1.2], noise_range2 [1, 25], poisson_scale_range2 [0.05, 2.5]."""
        return cls(
            blur_prob=0.8,
            blur=KernelConfig.second_order(),
            resize=ResizeConfig(prob=(0.3, 0.4, 0.3), range=(0.3, 1.2)),
            noise=NoiseConfig(gaussian_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5)),
            jpeg=JpegConfig(),
        )

    @classmethod
    def from_dict(cls, options: Any, where: str, base: "StageConfig") -> "StageConfig":
        """Build from a mapping; missing keys keep ``base``'s values; errors name the key path under ``where``."""
        opts = _check_keys(options, [f.name for f in fields(cls)], where)
        try:
            blur_prob = _prob(opts.get("blur_prob", base.blur_prob), "blur_prob")
        except InputError as err:
            raise _prefixed(where, err) from None
        return cls(
            blur_prob=blur_prob,
            blur=_kernel_section(opts.get("blur"), f"{where}.blur", base.blur),
            resize=_section(ResizeConfig, {**_public(base.resize), **_sub(opts, "resize", where)}, f"{where}.resize"),
            noise=_section(NoiseConfig, {**_public(base.noise), **_sub(opts, "noise", where)}, f"{where}.noise"),
            jpeg=_section(JpegConfig, {**_public(base.jpeg), **_sub(opts, "jpeg", where)}, f"{where}.jpeg"),
        )


def _public(cfg: Any) -> Dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def _sub(opts: Mapping[str, Any], key: str, where: str) -> Dict[str, Any]:
    value = opts.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"{where}.{key}: must be a mapping of options, got {type(value).__name__}")
    return dict(value)


@dataclass
class FinalConfig:
    """The last stage: resize to the LR size (+ final sinc) and JPEG, in a random order."""

    resize_modes: Tuple[str, ...] = RESIZE_MODES
    sinc: FinalSincConfig = field(default_factory=FinalSincConfig)
    jpeg: JpegConfig = field(default_factory=JpegConfig)
    sinc_before_jpeg_prob: float = 0.5  # Real-ESRGAN: [resize + sinc] then JPEG, or JPEG then [resize + sinc]

    def __post_init__(self) -> None:
        self.resize_modes = _modes(self.resize_modes, "resize_modes")
        self.sinc_before_jpeg_prob = _prob(self.sinc_before_jpeg_prob, "sinc_before_jpeg_prob")
        if not isinstance(self.sinc, FinalSincConfig):
            raise InputError(f"sinc: must be a FinalSincConfig, got {type(self.sinc).__name__}")
        if not isinstance(self.jpeg, JpegConfig):
            raise InputError(f"jpeg: must be a JpegConfig, got {type(self.jpeg).__name__}")

    @classmethod
    def from_dict(cls, options: Any, where: str) -> "FinalConfig":
        """Build from a mapping (missing keys: defaults); unknown keys and bad values name their key path."""
        opts = _check_keys(options, [f.name for f in fields(cls)], where)
        sinc_opts = _sub(opts, "sinc", where)
        try:
            sinc = FinalSincConfig.from_dict(sinc_opts)
        except InputError as err:
            raise InputError(f"{where}.sinc: {err}") from None
        jpeg = _section(JpegConfig, _sub(opts, "jpeg", where), f"{where}.jpeg")
        rest = {k: v for k, v in opts.items() if k not in ("sinc", "jpeg")}
        try:
            return cls(sinc=sinc, jpeg=jpeg, **rest)
        except InputError as err:
            raise _prefixed(where, err) from None


@dataclass
class DegradationConfig:
    """Every parameter of the pipeline; the defaults are Real-ESRGAN's published ones (train_realesrnet_x4plus).

    Build from YAML with :meth:`from_dict` (layout in the module docstring); :meth:`to_dict` gives the same layout.
    """

    first: StageConfig = field(default_factory=StageConfig.first_order)
    second: StageConfig = field(default_factory=StageConfig.second_order)
    final: FinalConfig = field(default_factory=FinalConfig)

    @classmethod
    def from_dict(cls, options: Optional[Mapping[str, Any]] = None, where: str = "degradation") -> "DegradationConfig":
        """Build from the YAML mapping; missing keys keep Real-ESRGAN's defaults.

        Raises:
            InputError: an unknown key or a bad value, with the key path, e.g.
                ``degradation.second_order.noise.gaussian_sigma: min must be <= max, got [25, 1]``.
        """
        if isinstance(options, DegradationConfig):
            return options
        stage_keys = [f.name for f in fields(StageConfig)]
        opts = _check_keys(options, stage_keys + ["second_order", "final"], where)
        first = StageConfig.from_dict({k: v for k, v in opts.items() if k in stage_keys}, where,
                                      StageConfig.first_order())
        second = StageConfig.from_dict(opts.get("second_order"), f"{where}.second_order", StageConfig.second_order())
        final = FinalConfig.from_dict(opts.get("final"), f"{where}.final")
        return cls(first=first, second=second, final=final)

    def to_dict(self) -> Dict[str, Any]:
        """The YAML layout of :meth:`from_dict` (lists instead of tuples), e.g. for logging the options used."""

        def plain(x: Any) -> Any:
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            if isinstance(x, (tuple, list)):
                return [plain(v) for v in x]
            return x

        def stage(s: StageConfig) -> Dict[str, Any]:
            return {"blur_prob": s.blur_prob, "blur": asdict(s.blur), "resize": asdict(s.resize),
                    "noise": asdict(s.noise), "jpeg": asdict(s.jpeg)}

        out = stage(self.first)
        out["second_order"] = stage(self.second)
        out["final"] = asdict(self.final)
        return plain(out)


# ------------------------------------------------------------------------------------------------- operations
def apply_kernel(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Filter an HWC float32 image with a 2-D kernel, mirrored borders (``BORDER_REFLECT_101``)."""
    if kernel.shape == (1, 1):
        return img * np.float32(kernel[0, 0])
    return cv2.filter2D(img, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)


def resize(img: np.ndarray, size: Tuple[int, int], mode: str) -> np.ndarray:
    """Resize an HWC image to ``size = (height, width)`` with ``mode`` in :data:`RESIZE_MODES` (OpenCV)."""
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise InputError(f"resize target must be at least 1x1, got {w}x{h} (WxH)")
    if mode not in _CV2_INTERP:
        raise InputError(f"resize mode must be one of {list(RESIZE_MODES)}, got {mode!r}")
    if img.shape[:2] == (h, w):
        return img
    out = cv2.resize(img, (w, h), interpolation=_CV2_INTERP[mode])
    return out.reshape(h, w, -1) if out.ndim == 2 else out


def add_gaussian_noise(img: np.ndarray, sigma: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """``clamp(img + N(0, (sigma/255)^2), 0, 1)``; ``gray``: one noise value per pixel, added to every channel."""
    h, w, c = img.shape
    shape = (h, w, 1) if gray else (h, w, c)
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return np.clip(img + noise, 0.0, 1.0)


def add_poisson_noise(img: np.ndarray, scale: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """Real-ESRGAN's Poisson (shot) noise, ``clamp(img + scale * (Poisson(q v)/v - q), 0, 1)``.

    ``q`` is the image (``gray``: its luminance) rounded to 8 bits and ``v`` the number of distinct 8-bit levels
    in ``q`` rounded up to a power of two, so a brighter, richer image gets relatively less noise, like photon
    counts. ``gray``: the luminance noise is added to every channel.
    """
    src = img @ _LUMA if gray else img
    q8 = np.clip(np.rint(src * 255.0), 0, 255).astype(np.uint8)
    levels = int(np.count_nonzero(np.bincount(q8.ravel(), minlength=256)))
    vals = float(2 ** math.ceil(math.log2(max(levels, 1))))
    q = q8.astype(np.float64) / 255.0
    noise = (rng.poisson(q * vals) / vals - q) * scale
    noise = noise.astype(np.float32)
    if gray:
        noise = noise[..., None]
    return np.clip(img + noise, 0.0, 1.0)


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode an RGB float image in [0, 1] as JPEG with integer ``quality`` (OpenCV, 4:2:0) and decode it."""
    q = int(quality)
    if not 0 <= q <= 100:
        raise InputError(f"JPEG quality must be in [0, 100], got {quality!r}")
    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), q])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 image
        raise RuntimeError("OpenCV failed to encode a JPEG")
    dec = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return dec.astype(np.float32) / np.float32(255.0)


def usm_sharpen(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: float = 10.0) -> np.ndarray:
    """Unsharp masking as Real-ESRGAN sharpens its GT (weight 0.5, radius 50, threshold 10 in 8-bit units).

    ``residual = img - GaussianBlur(img)``; the sharpened image ``clamp(img + weight * residual)`` is used where
    ``|residual|`` exceeds the threshold (a blurred mask, so the transition is soft) and ``img`` elsewhere, so flat
    areas, where sharpening would only amplify noise, are left alone. ``radius`` is the blur window (made odd).
    """
    k = int(radius) + (1 - int(radius) % 2)
    blurred = cv2.GaussianBlur(img, (k, k), 0)
    residual = img - blurred
    mask = (np.abs(residual) * 255.0 > threshold).astype(np.float32)
    soft = cv2.GaussianBlur(mask, (k, k), 0).reshape(img.shape)
    sharp = np.clip(img + np.float32(weight) * residual, 0.0, 1.0)
    return (soft * sharp + (1.0 - soft) * img).astype(np.float32)


# ------------------------------------------------------------------------------------------------- the pipeline
def _uniform(rng: np.random.Generator, r: FloatRange) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


class _Timer:
    """Adds the seconds spent in each stage to a caller's dict (or does nothing)."""

    def __init__(self, sink: Optional[Dict[str, float]]) -> None:
        self.sink = sink

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.sink is None:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sink[stage] = self.sink.get(stage, 0.0) + time.perf_counter() - t0


def _noise(img: np.ndarray, cfg: NoiseConfig, rng: np.random.Generator) -> Tuple[np.ndarray, Dict[str, Any]]:
    gray = bool(rng.uniform() < cfg.gray_prob)
    if rng.uniform() < cfg.gaussian_prob:
        sigma = _uniform(rng, cfg.gaussian_sigma)
        return add_gaussian_noise(img, sigma, gray, rng), {"type": "gaussian", "sigma": sigma, "scale": None,
                                                            "gray": gray}
    scale = _uniform(rng, cfg.poisson_scale)
    return add_poisson_noise(img, scale, gray, rng), {"type": "poisson", "sigma": None, "scale": scale, "gray": gray}


def _jpeg(img: np.ndarray, cfg: JpegConfig, rng: np.random.Generator) -> Tuple[np.ndarray, Dict[str, Any]]:
    drawn = _uniform(rng, cfg.quality)
    quality = int(round(drawn))
    return jpeg_compress(img, quality), {"quality_drawn": drawn, "quality": quality}


def _stage(
    img: np.ndarray, cfg: StageConfig, rng: np.random.Generator, ref_size: Tuple[int, int], timer: _Timer
) -> Tuple[np.ndarray, Dict[str, Any]]:
    record: Dict[str, Any] = {"blur": None}
    if rng.uniform() < cfg.blur_prob:
        with timer("blur"):
            kernel, params = random_kernel(rng, cfg.blur)
            img = apply_kernel(img, kernel)
        record["blur"] = params
    with timer("resize"):
        direction = RESIZE_DIRECTIONS[int(rng.choice(3, p=np.asarray(cfg.resize.prob)))]
        if direction == "up":
            factor = _uniform(rng, (1.0, cfg.resize.range[1]))
        elif direction == "down":
            factor = _uniform(rng, (cfg.resize.range[0], 1.0))
        else:
            factor = 1.0
        mode = cfg.resize.modes[int(rng.integers(len(cfg.resize.modes)))]
        size = (max(1, int(ref_size[0] * factor)), max(1, int(ref_size[1] * factor)))
        img = resize(img, size, mode)
    record["resize"] = {"direction": direction, "factor": factor, "mode": mode, "size": size}
    with timer("noise"):
        img, record["noise"] = _noise(img, cfg.noise, rng)
    with timer("jpeg"):
        img, record["jpeg"] = _jpeg(img, cfg.jpeg, rng)
    return img, record


def degrade(
    gt: np.ndarray,
    scale: int,
    cfg: Optional[DegradationConfig] = None,
    rng: Optional[np.random.Generator] = None,
    timings: Optional[Dict[str, float]] = None,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Degrade one sharp image into a realistic low-resolution one; returns ``(lq, record)``.

    Args:
        gt: HWC RGB image, float in [0, 1] (or uint8); ``H`` and ``W`` must be multiples of ``scale``.
        scale: the super-resolution factor (>= 1); the result is exactly ``(H // scale, W // scale, 3)``.
        cfg: the pipeline's parameters (default: Real-ESRGAN's, :class:`DegradationConfig`).
        rng: the only source of randomness (default: a fresh unseeded generator).
        timings: if given, the seconds spent in each stage are added to its keys ``blur`` (including the final
            sinc), ``resize``, ``noise`` and ``jpeg``.

    Returns:
        ``lq``: float32 HWC in [0, 1], rounded to 8-bit levels. ``record``: every value drawn, ``{"scale",
        "input_size", "output_size", "first": stage, "second": stage, "final": {"order", "resize": {"mode",
        "size"}, "sinc": {"type", "size", "cutoff"}, "jpeg": {"quality_drawn", "quality"}}}`` where a stage is
        ``{"blur": kernel params (kernels.random_kernel) or None, "resize": {"direction", "factor", "mode",
        "size"}, "noise": {"type": "gaussian"|"poisson", "sigma", "scale", "gray"}, "jpeg": {...}}``; ``order``
        is ``"sinc_then_jpeg"`` or ``"jpeg_then_sinc"``.

    Raises:
        InputError: a bad image shape, a scale that is not a positive integer, or a size not divisible by it.
    """
    cfg = cfg if cfg is not None else DegradationConfig()
    rng = rng if rng is not None else np.random.default_rng()
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale!r}")
    img = np.asarray(gt)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"degrade expects an HWC RGB image, got shape {img.shape}")
    H, W = img.shape[:2]
    if H % scale or W % scale:
        raise InputError(f"image size {W}x{H} (WxH) is not divisible by scale {scale}; crop it to a multiple first")
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32, copy=False)
    img = np.ascontiguousarray(img)  # OpenCV wants contiguous rows; a crop of a photo is a strided view
    timer = _Timer(timings)
    out_size = (H // scale, W // scale)
    record: Dict[str, Any] = {"scale": int(scale), "input_size": (H, W), "output_size": out_size}

    img, record["first"] = _stage(img, cfg.first, rng, (H, W), timer)
    # Real-ESRGAN: the second resize factor is relative to the final LR size, not to the current size.
    img, record["second"] = _stage(img, cfg.second, rng, out_size, timer)

    fin = cfg.final
    sinc_first = bool(rng.uniform() < fin.sinc_before_jpeg_prob)
    mode = fin.resize_modes[int(rng.integers(len(fin.resize_modes)))]
    kernel, sinc_params = random_final_sinc_kernel(rng, fin.sinc)

    def resize_and_sinc(x: np.ndarray) -> np.ndarray:
        with timer("resize"):
            x = resize(x, out_size, mode)
        with timer("blur"):
            return apply_kernel(x, kernel)

    if sinc_first:
        img = resize_and_sinc(img)
        with timer("jpeg"):
            img, jpeg_rec = _jpeg(img, fin.jpeg, rng)
    else:
        with timer("jpeg"):
            img, jpeg_rec = _jpeg(img, fin.jpeg, rng)
        img = resize_and_sinc(img)
    record["final"] = {"order": "sinc_then_jpeg" if sinc_first else "jpeg_then_sinc",
                       "resize": {"mode": mode, "size": out_size}, "sinc": sinc_params, "jpeg": jpeg_rec}
    lq = (np.clip(np.rint(img * 255.0), 0, 255) / 255.0).astype(np.float32)
    return np.ascontiguousarray(lq), record


def record_values(record: Mapping[str, Any]) -> List[Tuple[str, Any]]:
    """Flatten a :func:`degrade` record into ``(dotted key, value)`` pairs (handy for logs and tests)."""
    out: List[Tuple[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out.append((prefix, value))

    walk("", record)
    return out
