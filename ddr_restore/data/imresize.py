"""MATLAB-compatible bicubic ``imresize`` (the classical super-resolution benchmark protocol).

Low-resolution benchmark inputs (Set5/Set14/DIV2K "bicubic" tracks) are made with MATLAB's
``imresize(hr, 1/scale, 'bicubic')``. OpenCV's ``INTER_CUBIC`` (a = -0.75, no antialiasing) and
PIL's ``BICUBIC`` (different support and boundary handling) give measurably different pixels, so
numbers computed on their LR images are not comparable with published tables. This module
re-implements the algorithm MATLAB documents for ``imresize``:

* cubic convolution kernel with a = -0.5 (Keys 1981);
* when shrinking (scale < 1) with antialiasing, the kernel is stretched by ``1/scale`` and its
  amplitude scaled by ``scale`` (a low-pass filter matched to the new sampling rate);
* output pixel ``x`` (1-based) maps to input coordinate ``u = x/scale + 0.5 * (1 - 1/scale)``
  (pixel centres aligned, not corners);
* every output pixel uses ``ceil(kernel_width) + 2`` taps whose weights are normalised to sum
  to one; taps outside the image are mirrored *symmetrically* (edge pixel repeated:
  ``..., 2, 1, 1, 2, ...``);
* the resize is separable and the dimension with the smaller scale factor is processed first
  (MATLAB sorts the scale factors; ties keep the row dimension first);
* the output size for a scale factor is ``ceil(scale * input_size)``;
* ``uint8`` images are computed in double precision and, like MATLAB's ``imresizemex`` (which
  returns the class of its input after each dimension), rounded half away from zero and
  saturated to [0, 255] after each of the two passes.

Both numpy arrays (``HW`` or ``HWC``, float or uint8) and torch tensors (``(C, H, W)`` or
``(B, C, H, W)``) are accepted. The torch path applies each pass as a matrix product with a
dense weight matrix, so it is differentiable with respect to the image and runs on any device.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence, Tuple, Union, overload

import numpy as np
import torch

from ddr_restore.errors import InputError

__all__ = ["cubic_kernel", "imresize", "resize_weights", "output_size"]

ScaleArg = Union[float, Sequence[float], None]
ShapeArg = Union[Sequence[int], None]


def cubic_kernel(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's ``imresize`` uses.

    Args:
        x: distances from the sample position (any shape).

    Returns:
        Kernel values, same shape as ``x`` (float64); zero for ``|x| > 2``.
    """
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return inner + outer


@functools.lru_cache(maxsize=16)  # dense matrices: keep the cache small
def _weight_matrix_cached(in_len: int, out_len: int, scale: float, antialiasing: bool) -> np.ndarray:
    kernel_width = 4.0
    if scale < 1.0 and antialiasing:
        # Stretched kernel h(x) = scale * cubic(scale * x): a low-pass filter for the coarser grid.
        def kernel(d: np.ndarray) -> np.ndarray:
            return scale * cubic_kernel(scale * d)

        kernel_width = kernel_width / scale
    else:
        kernel = cubic_kernel

    # 1-based output coordinates mapped to 1-based input coordinates, centres aligned.
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based input indices
    weights = kernel(u[:, None] - idx)
    weights = weights / weights.sum(axis=1, keepdims=True)

    # Symmetric boundary: 1-based index i outside [1, in_len] is mirrored with the edge repeated.
    period = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])  # 0-based
    idx0 = period[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]

    # Accumulate into a dense (out, in) matrix; mirrored taps can land on the same input pixel.
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], idx0.shape)
    np.add.at(mat, (rows, idx0), weights)
    mat.setflags(write=False)
    return mat


def resize_weights(in_len: int, out_len: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """The ``(out_len, in_len)`` matrix that resizes one dimension the MATLAB way.

    Args:
        in_len: input length along the dimension.
        out_len: output length along the dimension.
        scale: scale factor for the dimension (``out_len / in_len`` when a size was given).
        antialiasing: widen the kernel when shrinking (MATLAB's default for bicubic).

    Returns:
        A read-only float64 matrix ``W`` with ``out = W @ in`` along that dimension; rows sum to 1.
    """
    return _weight_matrix_cached(int(in_len), int(out_len), float(scale), bool(antialiasing))


def _pair(value: Union[float, Sequence[float]], name: str) -> Tuple[float, float]:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value), float(value)
    try:
        items = tuple(value)
    except TypeError:
        raise InputError(f"imresize: {name} must be a number or a pair, got {value!r}") from None
    if len(items) != 2:
        raise InputError(f"imresize: {name} must have 2 entries (height, width), got {value!r}")
    return float(items[0]), float(items[1])


def output_size(
    in_hw: Tuple[int, int], scale: ScaleArg = None, output_shape: ShapeArg = None
) -> Tuple[Tuple[int, int], Tuple[float, float]]:
    """Output ``(H, W)`` and per-dimension scale factors, following MATLAB's rules.

    With a scale factor the size is ``ceil(scale * size)`` and the given scale is used for the
    weights (not the ratio of the rounded sizes); with an output shape the scale is the ratio.

    Args:
        in_hw: input (height, width).
        scale: one factor or a (height, width) pair; exclusive with ``output_shape``.
        output_shape: target (height, width).

    Returns:
        ``((out_h, out_w), (scale_h, scale_w))``.

    Raises:
        InputError: neither or both given, or a non-positive value.
    """
    if (scale is None) == (output_shape is None):
        raise InputError("imresize: give exactly one of scale and output_shape")
    if scale is not None:
        scales = _pair(scale, "scale")
        if not all(math.isfinite(s) and s > 0 for s in scales):
            raise InputError(f"imresize: scale must be positive, got {scale!r}")
        # MATLAB: ceil(scale .* size) in double precision, no tolerance.
        sizes = tuple(int(math.ceil(s * n)) for s, n in zip(scales, in_hw))
        return (sizes[0], sizes[1]), scales
    shape = _pair(output_shape, "output_shape")
    if not all(float(v).is_integer() and v > 0 for v in shape):
        raise InputError(f"imresize: output_shape must be positive integers, got {output_shape!r}")
    sizes = (int(shape[0]), int(shape[1]))
    return sizes, (sizes[0] / in_hw[0], sizes[1] / in_hw[1])


def _round_uint8(x: np.ndarray) -> np.ndarray:
    # MATLAB casts to uint8 by rounding half away from zero and saturating.
    return np.floor(np.clip(x, 0.0, 255.0) + 0.5)


def _pass_order(scales: Tuple[float, float]) -> Tuple[int, int]:
    # MATLAB: [~, order] = sort(scale) -> smaller scale first, stable on ties (rows first).
    return (1, 0) if scales[1] < scales[0] else (0, 1)


@overload
def imresize(
    img: np.ndarray, scale: ScaleArg = ..., output_shape: ShapeArg = ..., antialiasing: bool = ...
) -> np.ndarray: ...


@overload
def imresize(
    img: torch.Tensor, scale: ScaleArg = ..., output_shape: ShapeArg = ..., antialiasing: bool = ...
) -> torch.Tensor: ...


def imresize(img, scale=None, output_shape=None, antialiasing=True):
    """Resize an image like MATLAB's ``imresize(img, scale_or_size, 'bicubic')``.

    Args:
        img: numpy ``(H, W)`` or ``(H, W, C)`` array (float or uint8), or a torch tensor
            ``(C, H, W)`` / ``(B, C, H, W)`` (float, or uint8).
        scale: factor (e.g. ``0.25`` for x4 LR) or a (height, width) pair.
        output_shape: target (height, width); exclusive with ``scale``.
        antialiasing: widen the kernel when shrinking (MATLAB's default ``true``).

    Returns:
        The resized image, same type, layout and dtype as ``img``. uint8 results are rounded
        and saturated as MATLAB does; float results are not clipped (cubic overshoot kept).
        Torch float inputs stay differentiable.

    Raises:
        InputError: wrong layout, empty image, or bad ``scale`` / ``output_shape``.
    """
    if isinstance(img, torch.Tensor):
        return _imresize_torch(img, scale, output_shape, antialiasing)
    if isinstance(img, np.ndarray):
        return _imresize_numpy(img, scale, output_shape, antialiasing)
    raise InputError(f"imresize: expected a numpy array or torch tensor, got {type(img).__name__}")


def _imresize_numpy(img: np.ndarray, scale: ScaleArg, output_shape: ShapeArg, antialiasing: bool) -> np.ndarray:
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise InputError(f"imresize: numpy image must be HW or HWC and non-empty, got shape {img.shape}")
    is_uint8 = img.dtype == np.uint8
    if not (is_uint8 or np.issubdtype(img.dtype, np.floating)):
        raise InputError(f"imresize: numpy image must be uint8 or float, got {img.dtype}")
    (out_h, out_w), scales = output_size(img.shape[:2], scale, output_shape)
    out_dtype = img.dtype
    x = img.astype(np.float64)
    outs = (out_h, out_w)
    for dim in _pass_order(scales):
        mat = resize_weights(x.shape[dim], outs[dim], scales[dim], antialiasing)
        # tensordot puts the resized axis first; move it back into place.
        x = np.moveaxis(np.tensordot(mat, x, axes=([1], [dim])), 0, dim)
        if is_uint8:
            x = _round_uint8(x)
    return np.ascontiguousarray(x.astype(out_dtype))


def _imresize_torch(img: torch.Tensor, scale: ScaleArg, output_shape: ShapeArg, antialiasing: bool) -> torch.Tensor:
    if img.dim() not in (3, 4) or img.shape[-1] == 0 or img.shape[-2] == 0:
        raise InputError(f"imresize: tensor must be (C,H,W) or (B,C,H,W) and non-empty, got {tuple(img.shape)}")
    is_uint8 = img.dtype == torch.uint8
    if not (is_uint8 or img.dtype.is_floating_point):
        raise InputError(f"imresize: tensor must be uint8 or floating point, got {img.dtype}")
    (out_h, out_w), scales = output_size(tuple(img.shape[-2:]), scale, output_shape)
    # uint8 is computed in float64 like MATLAB; float inputs keep their precision (and autograd).
    work_dtype = torch.float64 if is_uint8 else img.dtype
    x = img.to(work_dtype)
    outs = (out_h, out_w)
    for dim in _pass_order(scales):
        axis = x.dim() - 2 + dim
        mat = torch.from_numpy(resize_weights(x.shape[axis], outs[dim], scales[dim], antialiasing).copy())
        mat = mat.to(device=x.device, dtype=work_dtype)
        if dim == 0:
            x = torch.matmul(mat, x)  # (out_h, H) @ (..., H, W)
        else:
            x = torch.matmul(x, mat.t())  # (..., H, W) @ (W, out_w)
        if is_uint8:
            x = torch.floor(x.clamp(0.0, 255.0) + 0.5)
    return x.to(img.dtype)
