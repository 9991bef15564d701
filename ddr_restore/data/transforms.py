"""Paired crops and geometric augmentation (HWC numpy), and Restormer's progressive-patch schedule (tensors).

Randomness comes from torch's RNG (the global one, or an explicit ``torch.Generator``): inside a DataLoader worker
torch seeds its RNG with ``base_seed + worker_id`` by itself, so workers draw different crops and a run seeded with
``torch.manual_seed`` is reproducible without any ``worker_init_fn``.
"""
from __future__ import annotations

import itertools
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ddr_restore.errors import InputError

__all__ = [
    "randint",
    "paired_random_crop",
    "center_crop",
    "paired_center_crop",
    "pad_pair_to_size",
    "augment",
    "progressive_stage",
    "progressive_crop",
]


def randint(high: int, generator: Optional[torch.Generator] = None) -> int:
    """A uniform integer in ``[0, high)`` from torch's RNG (``high`` >= 1)."""
    return int(torch.randint(0, high, (1,), generator=generator).item())


def _check_pair_sizes(lq: np.ndarray, gt: np.ndarray, scale: int, lq_name: str, gt_name: str) -> None:
    h, w = lq.shape[:2]
    if (h * scale, w * scale) != tuple(gt.shape[:2]):
        raise InputError(
            f"size mismatch: {lq_name} is {w}x{h} (WxH) but {gt_name} is {gt.shape[1]}x{gt.shape[0]}; "
            f"expected the ground truth to be {w * scale}x{h * scale} (lq size x scale {scale})"
        )


def paired_random_crop(
    lq: np.ndarray,
    gt: np.ndarray,
    gt_size: int,
    scale: int = 1,
    generator: Optional[torch.Generator] = None,
    lq_name: str = "lq",
    gt_name: str = "gt",
) -> Tuple[np.ndarray, np.ndarray]:
    """Crop an aligned ``gt_size`` patch from ``gt`` and the matching ``gt_size // scale`` patch from ``lq``.

    The position is drawn on the lq grid and multiplied by ``scale`` so the two patches cover the same scene area.
    Raises InputError (a ValueError, naming the files) when sizes disagree or the image is smaller than the patch.
    """
    if gt_size % scale:
        raise InputError(f"gt_size {gt_size} must be a multiple of scale {scale}")
    _check_pair_sizes(lq, gt, scale, lq_name, gt_name)
    lq_size = gt_size // scale
    h, w = lq.shape[:2]
    if h < lq_size or w < lq_size:
        raise InputError(
            f"{gt_name} is {gt.shape[1]}x{gt.shape[0]} (WxH), smaller than gt_size {gt_size}"
            f" (lq {lq_name}: {w}x{h}); use a smaller gt_size or pad_to_gt_size: true"
        )
    top = randint(h - lq_size + 1, generator)
    left = randint(w - lq_size + 1, generator)
    lq_patch = lq[top : top + lq_size, left : left + lq_size]
    gt_patch = gt[top * scale : (top + lq_size) * scale, left * scale : (left + lq_size) * scale]
    return lq_patch, gt_patch


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Centre ``size`` x ``size`` crop of an HWC array (top-left rounding down); raises if the image is smaller."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise InputError(f"image of {w}x{h} (WxH) is smaller than the centre crop {size}")
    top, left = (h - size) // 2, (w - size) // 2
    return img[top : top + size, left : left + size]


def paired_center_crop(
    lq: np.ndarray, gt: np.ndarray, gt_size: int, scale: int = 1
) -> Tuple[np.ndarray, np.ndarray]:
    """Aligned centre crops: ``gt_size`` from ``gt`` and ``gt_size // scale`` from ``lq`` (position on the lq grid)."""
    if gt_size % scale:
        raise InputError(f"gt_size {gt_size} must be a multiple of scale {scale}")
    _check_pair_sizes(lq, gt, scale, "lq", "gt")
    lq_size = gt_size // scale
    h, w = lq.shape[:2]
    if h < lq_size or w < lq_size:
        raise InputError(f"gt image of {w * scale}x{h * scale} (WxH) is smaller than the centre crop {gt_size}")
    top, left = (h - lq_size) // 2, (w - lq_size) // 2
    lq_patch = lq[top : top + lq_size, left : left + lq_size]
    gt_patch = gt[top * scale : (top + lq_size) * scale, left * scale : (left + lq_size) * scale]
    return lq_patch, gt_patch


def pad_pair_to_size(lq: np.ndarray, gt: np.ndarray, gt_size: int, scale: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Pad a pair at the bottom/right so ``gt`` is at least ``gt_size`` (and ``lq`` at least ``gt_size // scale``).

    Mirror padding that repeats the edge pixel ("symmetric", cv2's BORDER_REFLECT): it adds no artificial zero
    edges that a restorer would learn to reproduce, and its mirror axis is the image border itself, which is the
    same scene position on the lq and gt grids, so the padded pair stays aligned for any ``scale``.
    """
    h, w = lq.shape[:2]
    lq_size = -(-gt_size // scale)
    ph, pw = max(0, lq_size - h), max(0, lq_size - w)
    if ph == 0 and pw == 0:
        return lq, gt
    extra = [(0, 0)] * (lq.ndim - 2)
    lq = np.pad(lq, [(0, ph), (0, pw)] + extra, mode="symmetric")
    gt = np.pad(gt, [(0, ph * scale), (0, pw * scale)] + extra, mode="symmetric")
    return lq, gt


def augment(
    imgs: Sequence[np.ndarray],
    hflip: bool = True,
    rotation: bool = True,
    generator: Optional[torch.Generator] = None,
    contiguous: bool = True,
) -> List[np.ndarray]:
    """Apply one random geometric transform to every HWC array of ``imgs`` (BasicSR's augment semantics).

    With ``hflip``: horizontal flip with probability 1/2. With ``rotation``: vertical flip with probability 1/2,
    then a transpose of H and W (a 90-degree rotation combined with the flips) with probability 1/2. All three
    together give the 8 symmetries of the square, each with probability 1/8. Arrays of different sizes (lq/gt of
    an SR pair) get the same transform. The RNG draws are the same whatever the arrays' type.

    With ``contiguous=False`` the results are views (negative/swapped strides, no copy), for a caller that copies
    them once anyway, e.g. :func:`ddr_restore.imageio.img2tensor` converting a uint8 crop to float.
    """
    do_h = hflip and randint(2, generator) == 1
    do_v = rotation and randint(2, generator) == 1
    do_t = rotation and randint(2, generator) == 1
    out = []
    for img in imgs:
        if do_h:
            img = img[:, ::-1]
        if do_v:
            img = img[::-1]
        if do_t:
            img = img.swapaxes(0, 1)
        out.append(np.ascontiguousarray(img) if contiguous else img)
    return out


def _positive_int_list(values: Sequence[int], name: str) -> List[int]:
    try:
        items = list(values)
    except TypeError:
        raise InputError(f"{name} must be a list of positive integers, got {values!r}") from None
    if not items:
        raise InputError(f"{name} must not be empty")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise InputError(f"{name} must contain positive integers, got {v!r} in {items}")
    return [int(v) for v in items]


def progressive_stage(
    current_iter: int, iters: Sequence[int], mini_batch_sizes: Sequence[int], gt_sizes: Sequence[int]
) -> Tuple[int, int]:
    """(batch size, patch size) of the progressive-training stage that ``current_iter`` (1-based) falls in.

    ``iters`` are stage lengths: stage j covers iterations ``sum(iters[:j]) + 1`` .. ``sum(iters[:j+1])``.
    Iterations past the total stay in the last stage (Restormer's behaviour).
    """
    iters_l = _positive_int_list(iters, "iters")
    batches = _positive_int_list(mini_batch_sizes, "mini_batch_sizes")
    sizes = _positive_int_list(gt_sizes, "gt_sizes")
    if not len(iters_l) == len(batches) == len(sizes):
        raise InputError(
            f"iters, mini_batch_sizes and gt_sizes must have the same length, got {len(iters_l)}, "
            f"{len(batches)} and {len(sizes)}"
        )
    if isinstance(current_iter, bool) or not isinstance(current_iter, (int, np.integer)) or current_iter < 1:
        raise InputError(f"current_iter must be an integer >= 1, got {current_iter!r}")
    for j, end in enumerate(itertools.accumulate(iters_l)):
        if current_iter <= end:
            return batches[j], sizes[j]
    return batches[-1], sizes[-1]


def progressive_crop(
    lq: torch.Tensor,
    gt: torch.Tensor,
    batch: int,
    size: int,
    generator: Optional[torch.Generator] = None,
    *,
    scale: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Subsample ``batch`` items of a loader batch and crop aligned patches (``size`` on gt, ``size//scale`` on lq).

    ``lq`` is (B,C,h,w) and ``gt`` is (B,C,h*scale,w*scale). Items are drawn without replacement; when the loader
    batch holds fewer than ``batch`` items (a short last batch) all are kept. Each item gets its own crop position
    (more patch diversity than one shared position, at negligible cost).
    """
    if lq.dim() != 4 or gt.dim() != 4:
        raise InputError(f"progressive_crop expects (B,C,H,W) tensors, got lq {tuple(lq.shape)}, gt {tuple(gt.shape)}")
    for value, name in ((batch, "batch"), (size, "size"), (scale, "scale")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if size % scale:
        raise InputError(f"size {size} must be a multiple of scale {scale}")
    b, _, h, w = lq.shape
    if gt.shape[0] != b or tuple(gt.shape[2:]) != (h * scale, w * scale):
        raise InputError(f"lq {tuple(lq.shape)} and gt {tuple(gt.shape)} do not match for scale {scale}")
    lq_size = size // scale
    if lq_size > h or lq_size > w:
        raise InputError(f"patch size {size} is larger than the loader's gt patches {w * scale}x{h * scale} (WxH)")
    keep = torch.randperm(b, generator=generator)[: min(batch, b)]
    lq_out, gt_out = [], []
    for i in keep.tolist():
        top = randint(h - lq_size + 1, generator)
        left = randint(w - lq_size + 1, generator)
        lq_out.append(lq[i, :, top : top + lq_size, left : left + lq_size])
        gt_out.append(gt[i, :, top * scale : (top + lq_size) * scale, left * scale : (left + lq_size) * scale])
    return torch.stack(lq_out), torch.stack(gt_out)
