"""A no-download deblurring dataset: sharp photos shipped with scikit-image + seeded synthetic camera-shake blur.

It exists so the README demo (and CI) can train and validate end to end without any data folder. Default photos
are the colour images bundled in the scikit-image wheel (no network needed; public domain / CC0 per their
docstrings). Training and validation use different photos by default, so the validation numbers are held-out.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ddr_restore.data.degradations import (
    FloatRange,
    IntRange,
    odd_kernel_sizes,
    random_motion_kernel,
    sample_range,
    synthesize_motion_blur,
)
from ddr_restore.data.transforms import augment
from ddr_restore.errors import InputError
from ddr_restore.imageio import DATASET_HINT, check_image_files, check_policy, img2tensor, list_images, read_image
from ddr_restore.registry import DATASET_REGISTRY

__all__ = ["SyntheticMotionBlurDataset", "SKIMAGE_PHOTOS", "DEFAULT_TRAIN_PHOTOS", "DEFAULT_VAL_PHOTOS"]

# Colour photos bundled with scikit-image (loaders that need no download). Grey ones (camera, coins, ...) and the
# mostly-black hubble_deep_field / retina are left out.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "stereo_motorcycle")
DEFAULT_TRAIN_PHOTOS = ("astronaut", "rocket", "immunohistochemistry", "stereo_motorcycle")
DEFAULT_VAL_PHOTOS = ("chelsea", "coffee")

PathLike = Union[str, os.PathLike]


def _load_skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    if name not in SKIMAGE_PHOTOS:
        raise InputError(f"unknown scikit-image photo {name!r}; available: {', '.join(SKIMAGE_PHOTOS)}")
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
        img = img[0]
    return np.ascontiguousarray(img.astype(np.float32) / 255.0)


@DATASET_REGISTRY.register()
class SyntheticMotionBlurDataset(torch.utils.data.Dataset):
    """Synthetic camera-shake deblurring pairs made on the fly from sharp photos.

    Args:
        phase: ``"train"`` (random crops, a new random kernel per item) or ``"val"`` (a fixed set).
        gt_size: patch size; required for training. At validation: centre ``gt_size`` crops, or whole photos
            when None.
        length: number of items: the virtual epoch length for training (default 1000); for validation the
            number of fixed (photo, kernel) items, photo ``i % n_photos`` (default ``2 * n_photos``).
        seed: seeds the validation set (item i uses ``numpy.random.default_rng([seed, i])``). Training draws
            from torch's RNG instead, which DataLoader seeds per worker, so workers differ and a run seeded with
            ``torch.manual_seed`` is reproducible.
        kernel_size: odd kernel size or [min, max] range of motion-kernel sizes.
        noise_sigma: Gaussian noise std (in [0,1] units) added after blurring, or a [min, max] range.
        quantize: round the blurred image to 8 bits (as a saved PNG would be).
        images: scikit-image photo names (see ``SKIMAGE_PHOTOS``); default depends on the phase
            (``DEFAULT_TRAIN_PHOTOS`` / ``DEFAULT_VAL_PHOTOS``, disjoint).
        dataroot_gt: a folder of sharp images to use instead of the scikit-image photos. Every file's header is
            checked first and all bad files are reported in one error.
        gray, alpha: the project-wide file policy (:func:`ddr_restore.imageio.read_image`) for ``dataroot_gt``
            files: ``gray: replicate`` accepts greyscale files, ``alpha: drop`` files with an alpha channel;
            both are errors by default.
        use_hflip, use_rot: training augmentation (BasicSR semantics).
        scale: must be 1 (accepted because the trainer passes the top-level ``scale``).
        name, io_backend: accepted for BasicSR option compatibility (io_backend must be disk).

    Items: ``{"lq", "gt": (3,h,w) float32 [0,1], "lq_path": "<photo>_k<i>.png", "gt_path": "<photo>.png"}``
    (the paths are names only, used for saved visualisations).
    """

    def __init__(
        self,
        phase: str = "train",
        gt_size: Optional[int] = None,
        length: Optional[int] = None,
        seed: int = 0,
        kernel_size: IntRange = (11, 31),
        noise_sigma: FloatRange = 0.0,
        quantize: bool = True,
        images: Optional[Sequence[str]] = None,
        dataroot_gt: Optional[PathLike] = None,
        use_hflip: bool = True,
        use_rot: bool = True,
        scale: int = 1,
        name: Optional[str] = None,
        io_backend: Optional[Dict[str, Any]] = None,
        gray: str = "error",
        alpha: str = "error",
    ) -> None:
        super().__init__()
        if phase not in ("train", "val"):
            raise InputError(f"phase must be 'train' or 'val', got {phase!r}")
        if scale != 1:
            raise InputError(f"SyntheticMotionBlurDataset makes deblurring pairs only: scale must be 1, got {scale!r}")
        if gt_size is not None and (isinstance(gt_size, bool) or not isinstance(gt_size, int) or gt_size < 1):
            raise InputError(f"gt_size must be a positive integer, got {gt_size!r}")
        if phase == "train" and gt_size is None:
            raise InputError("gt_size is required for phase 'train' (the training patch size)")
        if io_backend is not None and dict(io_backend).get("type") != "disk":
            raise InputError(f"io_backend {io_backend!r} is not supported; use {{type: disk}}")
        check_policy(gray, alpha)
        odd_kernel_sizes(kernel_size)  # validate now rather than in the first __getitem__
        sample_range(noise_sigma, np.random.default_rng(0), "noise_sigma")
        if images is not None and dataroot_gt is not None:
            raise InputError("give either images (scikit-image photos) or dataroot_gt (a folder), not both")

        self.phase = phase
        self.gt_size = gt_size
        self.seed = int(seed)
        self.kernel_size = kernel_size
        self.noise_sigma = noise_sigma
        self.quantize = bool(quantize)
        self.use_hflip = bool(use_hflip)
        self.use_rot = bool(use_rot)
        self.name = name

        self.photos: List[Tuple[str, np.ndarray]] = []
        if dataroot_gt is not None:
            folder = Path(os.path.expanduser(str(dataroot_gt)))
            files = list_images(folder)
            if not files:
                raise InputError(f"no images in dataroot_gt folder {folder}")
            check_image_files(files, gray=gray, alpha=alpha, hint=DATASET_HINT, what=f"image files in {folder}")
            for f in files:
                self.photos.append((f.stem, read_image(f, gray=gray, alpha=alpha, hint=DATASET_HINT)))
        else:
            names = list(images) if images is not None else list(
                DEFAULT_TRAIN_PHOTOS if phase == "train" else DEFAULT_VAL_PHOTOS
            )
            if not names:
                raise InputError("images must name at least one photo")
            for n in names:
                self.photos.append((n, _load_skimage_photo(n)))
        if gt_size is not None:
            small = [f"{n} ({im.shape[1]}x{im.shape[0]})" for n, im in self.photos if min(im.shape[:2]) < gt_size]
            if small:
                raise InputError(f"images smaller than gt_size {gt_size} (WxH): {', '.join(small)}")

        default_len = 1000 if phase == "train" else 2 * len(self.photos)
        self.length = default_len if length is None else int(length)
        if self.length < 1:
            raise InputError(f"length must be >= 1, got {length!r}")
        self._val_cache: Dict[int, Dict[str, Any]] = {}

    def __len__(self) -> int:
        """Virtual epoch length (train) or number of fixed validation items."""
        return self.length

    def _blur_window(
        self, img: np.ndarray, top: int, left: int, h: int, w: int, rng: np.random.Generator
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Blur only the window around a crop; real neighbouring pixels (not a mirrored border) feed its edges."""
        kernel = random_motion_kernel(rng, self.kernel_size)
        r = kernel.shape[0] // 2
        H, W = img.shape[:2]
        t0, l0 = max(0, top - r), max(0, left - r)
        t1, l1 = min(H, top + h + r), min(W, left + w + r)
        window, _ = synthesize_motion_blur(
            img[t0:t1, l0:l1], rng, noise_sigma=self.noise_sigma, quantize=self.quantize, kernel=kernel
        )
        blurred = window[top - t0 : top - t0 + h, left - l0 : left - l0 + w]
        return blurred, kernel

    def __getitem__(self, index: int) -> Dict[str, Any]:
        """Item ``index``: a fresh random pair (train) or the fixed pair number ``index`` (val)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        if self.phase == "val":
            if index not in self._val_cache:
                self._val_cache[index] = self._make_val(index)
            item = self._val_cache[index]
            return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in item.items()}
        # one draw from torch's RNG seeds everything else for this item (crop, kernel, noise, flips)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        photo_name, img = self.photos[index % len(self.photos)]
        size = self.gt_size
        assert size is not None
        H, W = img.shape[:2]
        top, left = int(rng.integers(0, H - size + 1)), int(rng.integers(0, W - size + 1))
        lq, _ = self._blur_window(img, top, left, size, size, rng)
        gt = img[top : top + size, left : left + size]
        if self.use_hflip or self.use_rot:
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            lq, gt = augment([lq, gt], hflip=self.use_hflip, rotation=self.use_rot, generator=gen)
        return {"lq": img2tensor(lq), "gt": img2tensor(gt), "lq_path": f"{photo_name}_train.png",
                "gt_path": f"{photo_name}.png"}

    def _make_val(self, index: int) -> Dict[str, Any]:
        rng = np.random.default_rng([self.seed, index])
        photo_name, img = self.photos[index % len(self.photos)]
        H, W = img.shape[:2]
        if self.gt_size is None:
            top, left, h, w = 0, 0, H, W
        else:
            h = w = self.gt_size
            top, left = (H - h) // 2, (W - w) // 2
        lq, _ = self._blur_window(img, top, left, h, w, rng)
        gt = img[top : top + h, left : left + w]
        return {"lq": img2tensor(lq), "gt": img2tensor(gt), "lq_path": f"{photo_name}_k{index}.png",
                "gt_path": f"{photo_name}.png"}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(phase={self.phase!r}, photos={[n for n, _ in self.photos]}, "
            f"length={self.length}, gt_size={self.gt_size}, seed={self.seed})"
        )
