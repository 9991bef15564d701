"""Seeded synthetic camera-shake blur: random-trajectory motion kernels, convolution, noise and 8-bit quantisation.

All functions are pure given a ``numpy.random.Generator``: the same generator state gives the same kernel/noise.

The kernel model follows the idea of Boracchi & Foi (2012, "Modeling the performance of image restoration from
motion blur") as used by DeblurGAN: the camera's image-plane position is a random walk with inertia (a velocity of
constant speed whose direction is perturbed by small Gaussian jitter, occasional large shakes and a pull back
towards the start). The trajectory is sampled at equal time steps, so each step receives the same exposure; it is
densified to sub-pixel steps, scaled to a random extent and splatted bilinearly onto the kernel grid, which keeps
the kernel's centre of mass exactly at the kernel centre (so blurring does not shift the image).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ddr_restore.errors import InputError

__all__ = [
    "motion_trajectory",
    "rasterize_trajectory",
    "random_motion_kernel",
    "blur",
    "add_gaussian_noise",
    "quantize_8bit",
    "synthesize_motion_blur",
    "odd_kernel_sizes",
    "sample_range",
]

IntRange = Union[int, Sequence[int]]
FloatRange = Union[float, Sequence[float]]


def motion_trajectory(
    rng: np.random.Generator,
    n_points: int = 64,
    anxiety: float = 0.1,
    big_shake_prob: float = 0.05,
    centripetal: float = 0.05,
) -> np.ndarray:
    """A random camera-shake trajectory: (n_points, 2) float64 positions (x, y), in units of one step.

    Args:
        rng: numpy Generator.
        n_points: number of equal-time samples.
        anxiety: size of the Gaussian jitter added to the unit velocity per step (0 gives a straight line);
            the velocity carries over from step to step (inertia), so the path bends smoothly.
        big_shake_prob: probability per step of an abrupt random jerk.
        centripetal: strength of the pull back towards the starting point (keeps the path compact).
    """
    if n_points < 2:
        raise InputError(f"n_points must be >= 2, got {n_points}")
    pos = np.zeros((n_points, 2))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    vel = np.array([math.cos(angle), math.sin(angle)])
    for t in range(1, n_points):
        jitter = anxiety * rng.standard_normal(2)
        if rng.random() < big_shake_prob:
            kick = rng.uniform(0.0, 2.0 * math.pi)
            jitter = jitter + 2.0 * anxiety * np.array([math.cos(kick), math.sin(kick)]) * rng.uniform(0.5, 1.5)
        vel = vel + jitter - centripetal * anxiety * pos[t - 1]
        norm = np.linalg.norm(vel)
        # constant speed: only the direction wanders (the extent is set later by scaling)
        vel = vel / norm if norm > 1e-12 else np.array([math.cos(angle), math.sin(angle)])
        pos[t] = pos[t - 1] + vel
    return pos


def rasterize_trajectory(points: np.ndarray, size: int, extent: float) -> np.ndarray:
    """Splat a trajectory onto a ``size`` x ``size`` kernel, scaled so its bounding box spans about ``extent`` px.

    Each trajectory segment gets equal weight (equal exposure time); segments are subdivided into steps of at most
    a quarter pixel and each sub-sample is splatted bilinearly. The trajectory's weighted centroid is placed at the
    kernel centre ((size-1)/2, (size-1)/2), shrinking ``extent`` where needed to stay inside the grid. The result
    is non-negative and sums to 1.
    """
    if size < 3:
        raise InputError(f"kernel size must be >= 3, got {size}")
    pts = np.asarray(points, dtype=np.float64)
    span = float(np.max(pts.max(axis=0) - pts.min(axis=0)))
    if span < 1e-12:
        kernel = np.zeros((size, size))
        kernel[size // 2, size // 2] = 1.0  # a still camera
        return kernel
    max_scale = size / span
    seg = np.diff(pts, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    subs, weights = [], []
    for start, d, length in zip(pts[:-1], seg, seg_len):
        m = max(1, int(math.ceil(length * max_scale / 0.25)))
        frac = (np.arange(m) + 0.5) / m
        subs.append(start + frac[:, None] * d)
        weights.append(np.full(m, 1.0 / m))
    q = np.concatenate(subs)
    w = np.concatenate(weights)
    w = w / w.sum()
    centroid = (w[:, None] * q).sum(axis=0)
    dev = float(np.max(np.abs(q - centroid)))
    c = (size - 1) / 2.0
    scale = min(extent / span, (c - 1e-6) / dev) if dev > 0 else extent / span
    p = c + scale * (q - centroid)
    x0 = np.clip(np.floor(p[:, 0]).astype(int), 0, size - 2)
    y0 = np.clip(np.floor(p[:, 1]).astype(int), 0, size - 2)
    fx, fy = p[:, 0] - x0, p[:, 1] - y0
    kernel = np.zeros((size, size))
    np.add.at(kernel, (y0, x0), w * (1 - fx) * (1 - fy))
    np.add.at(kernel, (y0, x0 + 1), w * fx * (1 - fy))
    np.add.at(kernel, (y0 + 1, x0), w * (1 - fx) * fy)
    np.add.at(kernel, (y0 + 1, x0 + 1), w * fx * fy)
    kernel = np.clip(kernel, 0.0, None)  # remove -0.0 / round-off negatives
    return kernel / kernel.sum()


def odd_kernel_sizes(kernel_size: IntRange) -> np.ndarray:
    """The odd sizes allowed by ``kernel_size`` (an int or an inclusive [min, max] range); ValueError if none."""
    if isinstance(kernel_size, (int, np.integer)):
        lo = hi = int(kernel_size)
    else:
        vals = list(kernel_size)
        if len(vals) != 2:
            raise InputError(f"kernel_size must be an int or a [min, max] pair, got {kernel_size!r}")
        lo, hi = int(vals[0]), int(vals[1])
    if lo < 3 or hi < lo:
        raise InputError(f"kernel_size must satisfy 3 <= min <= max, got {kernel_size!r}")
    odd = np.arange(lo | 1, hi + 1, 2)
    if odd.size == 0:
        raise InputError(f"kernel_size range {kernel_size!r} contains no odd size")
    return odd


def random_motion_kernel(
    rng: np.random.Generator,
    kernel_size: IntRange = (11, 31),
    extent_range: Tuple[float, float] = (0.4, 1.0),
    anxiety_range: Tuple[float, float] = (0.0, 0.25),
) -> np.ndarray:
    """A random camera-shake kernel (float64, odd square size, non-negative, sums to 1, centroid at the centre).

    Args:
        rng: numpy Generator.
        kernel_size: odd size, or a [min, max] range from which an odd size is drawn uniformly.
        extent_range: trajectory extent as a fraction of ``size - 1`` (drawn uniformly).
        anxiety_range: curviness of the path (0 = straight line), drawn uniformly.
    """
    size = int(rng.choice(odd_kernel_sizes(kernel_size)))
    anxiety = rng.uniform(*anxiety_range)
    points = motion_trajectory(rng, n_points=64, anxiety=anxiety)
    extent = rng.uniform(*extent_range) * (size - 1)
    return rasterize_trajectory(points, size, extent)


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve an HWC (or HW) float image with ``kernel`` (true convolution, mirrored border), float32 output.

    The border repeats the edge pixel (cv2.BORDER_REFLECT = scipy.ndimage mode 'reflect'); cv2.filter2D computes a
    correlation, so the kernel is flipped first.
    """
    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise InputError(f"kernel must be a 2-D array with odd sizes, got shape {kernel.shape}")
    src = np.ascontiguousarray(img, dtype=np.float32)
    out = cv2.filter2D(src, -1, np.ascontiguousarray(kernel[::-1, ::-1]), borderType=cv2.BORDER_REFLECT)
    return out.reshape(src.shape)


def add_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. Gaussian noise of standard deviation ``sigma`` (in [0,1] intensity units); no clipping."""
    if sigma < 0:
        raise InputError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return img.astype(np.float32, copy=True)
    return (img + rng.normal(0.0, sigma, img.shape)).astype(np.float32)


def quantize_8bit(img: np.ndarray) -> np.ndarray:
    """Clip to [0,1] and round to the 8-bit grid (k/255), as saving a PNG would; float32 output."""
    return (np.round(np.clip(img, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def sample_range(value: FloatRange, rng: np.random.Generator, name: str) -> float:
    """``value`` itself, or a uniform draw from an inclusive [min, max] pair (both >= 0); ``name`` is for errors."""
    if isinstance(value, (int, float, np.floating, np.integer)):
        v = float(value)
        lo = hi = v
    else:
        vals = list(value)
        if len(vals) != 2:
            raise InputError(f"{name} must be a number or a [min, max] pair, got {value!r}")
        lo, hi = float(vals[0]), float(vals[1])
    if lo < 0 or hi < lo:
        raise InputError(f"{name} must satisfy 0 <= min <= max, got {value!r}")
    return lo if lo == hi else float(rng.uniform(lo, hi))


def synthesize_motion_blur(
    sharp: np.ndarray,
    rng: np.random.Generator,
    kernel_size: IntRange = (11, 31),
    noise_sigma: FloatRange = 0.0,
    quantize: bool = True,
    kernel: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Blur a sharp float HWC image with a random (or the given) motion kernel, add noise, quantise.

    Returns ``(blurred, kernel)``; ``noise_sigma`` may be a [min, max] range drawn per call.
    """
    if kernel is None:
        kernel = random_motion_kernel(rng, kernel_size)
    out = blur(sharp, kernel)
    sigma = sample_range(noise_sigma, rng, "noise_sigma")
    if sigma > 0:
        out = add_gaussian_noise(out, sigma, rng)
    if quantize:
        out = quantize_8bit(out)
    else:
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
    return out, kernel
