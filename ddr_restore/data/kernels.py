"""Random blur kernels of the Real-ESRGAN kind: (generalised) Gaussian, plateau and 2-D sinc, seeded.

This module is the blur-kernel stage of the second-order degradation pipeline of Real-ESRGAN (Wang, Xie, Dong &
Shan, "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data", ICCV Workshops 2021,
§3.2 "Blur" and "Sinc filters"). Written from the paper's formulas; the defaults are the published training
options of Real-ESRGAN (``options/train_realesrnet_x4plus.yml``):

* kernel sizes: odd, 7..21 (``kernel_range = [2*v+1 for v in range(3, 11)]``);
* kernel types ``iso, aniso, generalized_iso, generalized_aniso, plateau_iso, plateau_aniso`` with probabilities
  ``[0.45, 0.25, 0.12, 0.03, 0.12, 0.03]``;
* standard deviations sigma in [0.2, 3] (first order) and [0.2, 1.5] (second order); rotation in [-pi, pi] for
  anisotropic kernels (isotropic kernels have sigma_y = sigma_x and no rotation);
* generalised-Gaussian shape beta in [0.5, 4], plateau shape beta in [1, 2];
* a sinc (ideal circular low-pass) kernel replaces the above with probability 0.1 in both orders, with cutoff
  omega_c in [pi/3, pi] for kernel sizes < 13 and [pi/5, pi] otherwise (small kernels cannot represent a very low
  cutoff without strong truncation ringing);
* a final sinc filter (applied after the last resize) with probability 0.8, cutoff in [pi/3, pi]; otherwise the
  identity kernel.

Formulas (``d = (x, y)`` is the offset from the kernel centre, ``x`` along columns, ``y`` along rows, and
``Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T`` with ``R`` the rotation taking the x axis towards the
y axis, i.e. counter-clockwise in x-right/y-up coordinates, clockwise on screen where rows go down):

* Gaussian: ``exp(-1/2 d^T Sigma^-1 d)``;
* generalised Gaussian: ``exp(-1/2 (d^T Sigma^-1 d)^beta)``;
* plateau: ``1 / (1 + (d^T Sigma^-1 d)^beta)``;
* sinc: ``omega_c J1(omega_c |d|) / (2 pi |d|)`` (the inverse Fourier transform of a disc of radius omega_c),
  with the centre value ``omega_c^2 / (4 pi)`` (the limit at 0).

Every kernel is normalised to sum 1 so that blurring keeps the mean brightness.

Shape sampling (``beta_sampling="split"``, the Real-ESRGAN/BasicSR behaviour): with probability 1/2 beta is drawn
uniformly from ``[beta_lo, 1]``, otherwise from ``[1, beta_hi]``, so shapes sharper and flatter than a Gaussian
are equally likely. Note that for the plateau range [1, 2] this makes beta exactly 1 half of the time; use
``beta_sampling="uniform"`` for a plain uniform draw over the range.

All random functions take a ``numpy.random.Generator``; the same generator state gives the same kernel.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
from scipy import special

from ddr_restore.errors import InputError

__all__ = [
    "KERNEL_TYPES",
    "KernelConfig",
    "FinalSincConfig",
    "gaussian_kernel",
    "generalized_gaussian_kernel",
    "plateau_kernel",
    "sinc_kernel",
    "identity_kernel",
    "pad_kernel",
    "random_kernel",
    "random_final_sinc_kernel",
]

KERNEL_TYPES: Tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)

FloatRange = Tuple[float, float]


# ----------------------------------------------------------------------------------------------------------------
# deterministic kernels
# ----------------------------------------------------------------------------------------------------------------
def _check_size(size: int) -> int:
    if isinstance(size, bool) or int(size) != size or size < 1 or size % 2 == 0:
        raise InputError(f"kernel size must be a positive odd integer, got {size!r}")
    return int(size)


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """``d^T Sigma^-1 d`` on the kernel grid (rows = y, columns = x), float64."""
    size = _check_size(size)
    if not (sigma_x > 0 and sigma_y > 0 and math.isfinite(sigma_x) and math.isfinite(sigma_y)):
        raise InputError(f"kernel sigmas must be finite and > 0, got sigma_x={sigma_x!r}, sigma_y={sigma_y!r}")
    if not math.isfinite(theta):
        raise InputError(f"kernel rotation must be finite, got theta={theta!r}")
    r = size // 2
    ax = np.arange(-r, r + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)  # xx varies along columns, yy along rows
    c, s = math.cos(theta), math.sin(theta)
    # Rotate the offsets into the kernel's principal axes: u = R^T d, then Sigma^-1 is diagonal there.
    u = c * xx + s * yy
    v = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalise(k: np.ndarray) -> np.ndarray:
    total = k.sum()
    if not (math.isfinite(total) and total > 0):
        raise InputError("kernel has a non-positive or non-finite sum; check its parameters")
    return k / total


def _check_beta(beta: float) -> float:
    if not (math.isfinite(beta) and beta > 0):
        raise InputError(f"kernel shape beta must be finite and > 0, got {beta!r}")
    return float(beta)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0) -> np.ndarray:
    """Anisotropic (or, with ``sigma_x == sigma_y``, isotropic) Gaussian kernel, ``size x size``, sums to 1.

    ``theta`` (radians) turns the ``sigma_x`` axis from the column (x) axis towards the row (y) axis; at
    ``theta = pi/2`` the result is the transpose of the ``theta = 0`` kernel.
    """
    q = _quadratic_form(size, sigma_x, sigma_y, theta)
    return _normalise(np.exp(-0.5 * q))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """Generalised Gaussian ``exp(-1/2 (d^T Sigma^-1 d)^beta)``; beta = 1 is the Gaussian. Sums to 1."""
    beta = _check_beta(beta)
    q = _quadratic_form(size, sigma_x, sigma_y, theta)
    return _normalise(np.exp(-0.5 * np.power(q, beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0, beta: float = 1.0) -> np.ndarray:
    """Plateau-shaped kernel ``1 / (1 + (d^T Sigma^-1 d)^beta)`` (flat top, heavy tails). Sums to 1."""
    beta = _check_beta(beta)
    q = _quadratic_form(size, sigma_x, sigma_y, theta)
    return _normalise(1.0 / (1.0 + np.power(q, beta)))


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """Ideal circular low-pass (2-D "sinc") kernel with angular cutoff ``cutoff`` in (0, pi], sums to 1.

    ``omega_c J1(omega_c r) / (2 pi r)`` is the inverse Fourier transform of the indicator of the disc
    ``|omega| <= omega_c``; truncated to ``size x size`` it keeps DC gain 1 (after normalisation) and attenuates
    frequencies above the cutoff, with some ringing from the truncation (which is what the sinc stage models).
    """
    size = _check_size(size)
    if not (math.isfinite(cutoff) and 0 < cutoff <= math.pi + 1e-12):
        raise InputError(f"sinc cutoff must be in (0, pi], got {cutoff!r}")
    r = size // 2
    ax = np.arange(-r, r + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    rad = np.hypot(xx, yy)
    k = np.empty_like(rad)
    nz = rad > 0
    k[nz] = cutoff * special.j1(cutoff * rad[nz]) / (2.0 * math.pi * rad[nz])
    # Limit of J1(a r)/r at r -> 0 is a/2, so the centre is cutoff^2 / (4 pi).
    k[~nz] = cutoff**2 / (4.0 * math.pi)
    return _normalise(k)


def identity_kernel(size: int = 1) -> np.ndarray:
    """A ``size x size`` kernel with a single 1 at the centre (blurring with it changes nothing)."""
    size = _check_size(size)
    k = np.zeros((size, size), dtype=np.float64)
    k[size // 2, size // 2] = 1.0
    return k


def pad_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a square odd kernel symmetrically to ``size x size`` (so kernels of a batch can be stacked)."""
    size = _check_size(size)
    k = np.asarray(kernel)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
        raise InputError(f"kernel must be square with odd size, got shape {k.shape}")
    if k.shape[0] > size:
        raise InputError(f"cannot pad a {k.shape[0]}x{k.shape[0]} kernel to the smaller size {size}")
    p = (size - k.shape[0]) // 2
    return np.pad(k, p)


# ----------------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------------
def _as_range(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf, positive: bool = False) -> FloatRange:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a pair [min, max] of numbers, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a > b:
        raise InputError(f"{name} must be a finite range with min <= max, got {value!r}")
    if positive and a <= 0:
        raise InputError(f"{name} must be > 0, got {value!r}")
    if a < lo - 1e-12 or b > hi + 1e-12:
        raise InputError(f"{name} must lie within [{lo:g}, {hi:g}], got {value!r}")
    return (a, b)


def _as_sizes(value: Any, name: str) -> Tuple[int, int]:
    try:
        a, b = (int(v) for v in value)
        ok = all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a pair [min, max] of odd integers, got {value!r}") from None
    if not ok or a < 1 or a > b or a % 2 == 0 or b % 2 == 0:
        raise InputError(f"{name} must be a pair [min, max] of odd integers >= 1 with min <= max, got {value!r}")
    return (a, b)


def _as_prob(value: Any, name: str) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a probability in [0, 1], got {value!r}") from None
    if not (0.0 <= p <= 1.0):
        raise InputError(f"{name} must be a probability in [0, 1], got {value!r}")
    return p


@dataclass
class KernelConfig:
    """Every range and probability of one blur stage; the defaults are Real-ESRGAN's first-order options.

    Use :meth:`first_order` / :meth:`second_order` for the two published stages, :meth:`from_dict` for YAML.
    Construction validates everything and raises :class:`~ddr_restore.errors.InputError` naming the field.
    """

    kernel_size: Tuple[int, int] = (7, 21)  # odd sizes, both ends included
    kernel_types: Tuple[str, ...] = KERNEL_TYPES
    kernel_probs: Tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma: FloatRange = (0.2, 3.0)
    rotation: FloatRange = (-math.pi, math.pi)
    betag: FloatRange = (0.5, 4.0)  # generalised-Gaussian shape
    betap: FloatRange = (1.0, 2.0)  # plateau shape
    beta_sampling: str = "split"  # "split" (Real-ESRGAN: half below 1, half above) or "uniform"
    sinc_prob: float = 0.1
    sinc_cutoff_small: FloatRange = (math.pi / 3, math.pi)  # for kernel sizes < sinc_small_below
    sinc_cutoff_large: FloatRange = (math.pi / 5, math.pi)
    sinc_small_below: int = 13

    def __post_init__(self) -> None:
        self.kernel_size = _as_sizes(self.kernel_size, "kernel_size")
        types = tuple(str(t) for t in self.kernel_types)
        unknown = [t for t in types if t not in KERNEL_TYPES]
        if not types or unknown:
            raise InputError(f"kernel_types must be a non-empty list from {list(KERNEL_TYPES)}, got {list(types)}")
        if len(set(types)) != len(types):
            raise InputError(f"kernel_types has duplicates: {list(types)}")
        self.kernel_types = types
        try:
            probs = tuple(float(p) for p in self.kernel_probs)
        except (TypeError, ValueError):
            raise InputError(f"kernel_probs must be a list of numbers, got {self.kernel_probs!r}") from None
        if len(probs) != len(types):
            raise InputError(f"kernel_probs has {len(probs)} entries but kernel_types has {len(types)}")
        if any(not (math.isfinite(p) and p >= 0) for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise InputError(f"kernel_probs must be >= 0 and sum to 1, got {list(probs)}")
        self.kernel_probs = probs
        self.sigma = _as_range(self.sigma, "sigma", positive=True)
        self.rotation = _as_range(self.rotation, "rotation", -math.pi, math.pi)
        self.betag = _as_range(self.betag, "betag", positive=True)
        self.betap = _as_range(self.betap, "betap", positive=True)
        if self.beta_sampling not in ("split", "uniform"):
            raise InputError(f"beta_sampling must be 'split' or 'uniform', got {self.beta_sampling!r}")
        if self.beta_sampling == "split":
            # The split draw uses [lo, 1] and [1, hi]; it needs 1 inside the range.
            for name in ("betag", "betap"):
                lo, hi = getattr(self, name)
                if not lo <= 1.0 <= hi:
                    raise InputError(f"{name} must contain 1 with beta_sampling='split', got {[lo, hi]}")
        self.sinc_prob = _as_prob(self.sinc_prob, "sinc_prob")
        self.sinc_cutoff_small = _as_range(self.sinc_cutoff_small, "sinc_cutoff_small", 0.0, math.pi, positive=True)
        self.sinc_cutoff_large = _as_range(self.sinc_cutoff_large, "sinc_cutoff_large", 0.0, math.pi, positive=True)
        if isinstance(self.sinc_small_below, bool) or int(self.sinc_small_below) != self.sinc_small_below:
            raise InputError(f"sinc_small_below must be an integer, got {self.sinc_small_below!r}")
        self.sinc_small_below = int(self.sinc_small_below)

    @classmethod
    def first_order(cls, **overrides: Any) -> "KernelConfig":
        """Real-ESRGAN's first blur stage (sigma in [0.2, 3])."""
        return cls(**overrides)

    @classmethod
    def second_order(cls, **overrides: Any) -> "KernelConfig":
        """Real-ESRGAN's second blur stage (sigma in [0.2, 1.5]; everything else as the first)."""
        kw: Dict[str, Any] = {"sigma": (0.2, 1.5)}
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_dict(cls, options: Optional[Mapping[str, Any]], base: Optional["KernelConfig"] = None) -> "KernelConfig":
        """Build from a YAML mapping; missing keys keep ``base``'s values (default: first order). Unknown keys fail."""
        start = asdict(base) if base is not None else asdict(cls())
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown blur-kernel option(s) {unknown}; known: {sorted(known)}")
        start.update(options)
        return cls(**start)

    def sizes(self) -> np.ndarray:
        """All odd kernel sizes of the configured range."""
        return np.arange(self.kernel_size[0], self.kernel_size[1] + 1, 2)


@dataclass
class FinalSincConfig:
    """Real-ESRGAN's final sinc filter: with ``prob`` a sinc kernel (cutoff in ``cutoff``), else the identity."""

    prob: float = 0.8
    kernel_size: Tuple[int, int] = (7, 21)
    cutoff: FloatRange = (math.pi / 3, math.pi)

    def __post_init__(self) -> None:
        self.prob = _as_prob(self.prob, "final sinc prob")
        self.kernel_size = _as_sizes(self.kernel_size, "final sinc kernel_size")
        self.cutoff = _as_range(self.cutoff, "final sinc cutoff", 0.0, math.pi, positive=True)

    @classmethod
    def from_dict(cls, options: Optional[Mapping[str, Any]]) -> "FinalSincConfig":
        """Build from a YAML mapping; unknown keys fail."""
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown final-sinc option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)


# ----------------------------------------------------------------------------------------------------------------
# random kernels
# ----------------------------------------------------------------------------------------------------------------
def _uniform(rng: np.random.Generator, r: FloatRange) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def _sample_beta(rng: np.random.Generator, r: FloatRange, how: str) -> float:
    if how == "uniform":
        return _uniform(rng, r)
    # Real-ESRGAN: sharper-than-Gaussian (beta < 1) and flatter (beta > 1) shapes are equally likely.
    if rng.uniform() < 0.5:
        return _uniform(rng, (r[0], 1.0))
    return _uniform(rng, (1.0, r[1]))


def random_kernel(
    rng: np.random.Generator, cfg: Optional[KernelConfig] = None
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Draw one blur kernel of a Real-ESRGAN blur stage; returns ``(kernel, params)``.

    ``kernel`` is a float64 ``size x size`` array summing to 1 (not padded; see :func:`pad_kernel`). ``params``
    records what was drawn: ``type`` (one of :data:`KERNEL_TYPES` or ``"sinc"``), ``size`` and, by type,
    ``sigma_x, sigma_y, theta, beta`` or ``cutoff`` (absent entries are ``None``).
    """
    cfg = cfg if cfg is not None else KernelConfig()
    size = int(rng.choice(cfg.sizes()))
    params: Dict[str, Any] = {
        "type": None, "size": size, "sigma_x": None, "sigma_y": None, "theta": None, "beta": None, "cutoff": None,
    }
    if rng.uniform() < cfg.sinc_prob:
        cutoff_range = cfg.sinc_cutoff_small if size < cfg.sinc_small_below else cfg.sinc_cutoff_large
        cutoff = _uniform(rng, cutoff_range)
        params.update(type="sinc", cutoff=cutoff)
        return sinc_kernel(size, cutoff), params

    ktype = cfg.kernel_types[int(rng.choice(len(cfg.kernel_types), p=np.asarray(cfg.kernel_probs)))]
    sigma_x = _uniform(rng, cfg.sigma)
    if ktype.endswith("aniso"):
        sigma_y = _uniform(rng, cfg.sigma)
        theta = _uniform(rng, cfg.rotation)
    else:
        sigma_y, theta = sigma_x, 0.0
    params.update(type=ktype, sigma_x=sigma_x, sigma_y=sigma_y, theta=theta)
    if ktype.startswith("generalized"):
        beta = _sample_beta(rng, cfg.betag, cfg.beta_sampling)
        params["beta"] = beta
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, beta), params
    if ktype.startswith("plateau"):
        beta = _sample_beta(rng, cfg.betap, cfg.beta_sampling)
        params["beta"] = beta
        return plateau_kernel(size, sigma_x, sigma_y, theta, beta), params
    return gaussian_kernel(size, sigma_x, sigma_y, theta), params


def random_final_sinc_kernel(
    rng: np.random.Generator, cfg: Optional[FinalSincConfig] = None
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Draw Real-ESRGAN's final filter: a sinc kernel with probability ``cfg.prob``, else a 1x1 identity.

    Returns ``(kernel, params)`` with ``params = {"type": "sinc"|"identity", "size", "cutoff"}``.
    """
    cfg = cfg if cfg is not None else FinalSincConfig()
    if rng.uniform() < cfg.prob:
        size = int(rng.choice(np.arange(cfg.kernel_size[0], cfg.kernel_size[1] + 1, 2)))
        cutoff = _uniform(rng, cfg.cutoff)
        return sinc_kernel(size, cutoff), {"type": "sinc", "size": size, "cutoff": cutoff}
    return identity_kernel(1), {"type": "identity", "size": 1, "cutoff": None}
