"""Super-resolution (x1..x4) training pairs made on the fly from sharp photos alone (Real-ESRGAN-style degradation).

For a user who has high-resolution photos but no paired low-resolution data: every item crops the photo,
augments it and degrades the crop with :func:`ddr_restore.data.real_degradation.degrade` (blur, resize, noise,
JPEG, twice; final resize to ``1/scale`` and sinc). Photos come from a folder (``dataroot_gt``) or, for demos and
tests that need no data at all, from the colour photos shipped with scikit-image (``images``; training and
validation defaults are disjoint, as in :mod:`ddr_restore.data.synthetic`).

Randomness follows :mod:`ddr_restore.data.synthetic`: a training item draws one number from torch's RNG and seeds
a numpy Generator with it for everything else (crop, flips, degradation). DataLoader seeds torch's RNG per worker
from the main process's RNG, so workers differ and a run seeded with ``torch.manual_seed`` gives the same batches
again (for the same ``num_workers``). Validation items are fixed: item ``i`` uses
``numpy.random.default_rng([seed, i])``, cached after the first use.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ddr_restore.data.real_degradation import DegradationConfig, degrade, usm_sharpen
from ddr_restore.data.synthetic import DEFAULT_TRAIN_PHOTOS, DEFAULT_VAL_PHOTOS, _load_skimage_photo
from ddr_restore.data.transforms import augment
from ddr_restore.errors import InputError
from ddr_restore.imageio import DATASET_HINT, check_image_files, check_policy, img2tensor, list_images, read_image
from ddr_restore.registry import DATASET_REGISTRY

__all__ = ["SyntheticSRDataset", "SR_SCALES"]

SR_SCALES = (1, 2, 3, 4)
PathLike = Union[str, os.PathLike]


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Mirror-pad (edge pixel repeated) at the bottom/right so both sides are at least ``size``."""
    h, w = img.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, [(0, ph), (0, pw), (0, 0)], mode="symmetric")


@DATASET_REGISTRY.register()
class SyntheticSRDataset(torch.utils.data.Dataset):
    """Real-world SR pairs synthesised on the fly from high-resolution photos (second-order degradation).

    Args:
        phase: ``"train"`` (random crops, a fresh degradation per item) or ``"val"`` (a fixed set).
        scale: SR factor 1..4 (the trainer passes the top-level ``scale``); ``lq`` is ``1/scale`` of ``gt``.
        gt_size: GT patch size, a multiple of ``scale``; required for training (photos smaller than it are
            mirror-padded). At validation: centre ``gt_size`` crops, or whole photos (cropped at the bottom/right to
            a multiple of ``scale``) when None.
        dataroot_gt: a folder of sharp photos. Every file's header is checked when the dataset is built (all bad
            files in one error); files are read when an item needs them, so large folders do not fill memory.
        images: scikit-image photo names instead of a folder (see ``ddr_restore.data.synthetic.SKIMAGE_PHOTOS``);
            default ``DEFAULT_TRAIN_PHOTOS`` / ``DEFAULT_VAL_PHOTOS`` by phase (disjoint).
        degradation: the pipeline's options (a mapping in the layout of
            :meth:`~ddr_restore.data.real_degradation.DegradationConfig.from_dict`; default: Real-ESRGAN's).
        gt_usm: sharpen the GT with unsharp masking before degrading it and use the sharpened GT as the target
            (Real-ESRGAN's ``gt_usm: true``); default False.
        length: items per (virtual) epoch for training (default 1000); validation items (default: one per
            photo), item ``i`` uses photo ``i % n_photos``.
        seed: seeds the validation set; training uses torch's RNG (see the module docstring).
        use_hflip, use_rot: training augmentation (BasicSR semantics), applied to the GT crop before degrading.
        gray, alpha: the file policy for ``dataroot_gt`` (:func:`ddr_restore.imageio.read_image`).
        name, io_backend: accepted for BasicSR option compatibility (io_backend must be disk).

    Items: ``{"lq": (3, h/scale, w/scale), "gt": (3, h, w)`` float32 in [0, 1], ``"lq_path"``, ``"gt_path"}``
    (for scikit-image photos the paths are names only, used for saved visualisations).
    """

    def __init__(
        self,
        phase: str = "train",
        scale: int = 4,
        gt_size: Optional[int] = None,
        dataroot_gt: Optional[PathLike] = None,
        images: Optional[Sequence[str]] = None,
        degradation: Optional[Mapping[str, Any]] = None,
        gt_usm: bool = False,
        length: Optional[int] = None,
        seed: int = 0,
        use_hflip: bool = True,
        use_rot: bool = True,
        gray: str = "error",
        alpha: str = "error",
        name: Optional[str] = None,
        io_backend: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        if phase not in ("train", "val"):
            raise InputError(f"phase must be 'train' or 'val', got {phase!r}")
        if isinstance(scale, bool) or scale not in SR_SCALES:
            raise InputError(f"scale must be one of {list(SR_SCALES)}, got {scale!r}")
        if gt_size is not None and (isinstance(gt_size, bool) or not isinstance(gt_size, int) or gt_size < 1):
            raise InputError(f"gt_size must be a positive integer, got {gt_size!r}")
        if phase == "train" and gt_size is None:
            raise InputError("gt_size is required for phase 'train' (the GT training patch size)")
        if gt_size is not None and gt_size % scale:
            raise InputError(f"gt_size {gt_size} must be a multiple of scale {scale}")
        if io_backend is not None and dict(io_backend).get("type") != "disk":
            raise InputError(f"io_backend {io_backend!r} is not supported; use {{type: disk}}")
        if images is not None and dataroot_gt is not None:
            raise InputError("give either images (scikit-image photos) or dataroot_gt (a folder), not both")
        check_policy(gray, alpha)

        self.phase = phase
        self.scale = int(scale)
        self.gt_size = gt_size
        self.cfg = DegradationConfig.from_dict(degradation, where="degradation")
        self.gt_usm = bool(gt_usm)
        self.seed = int(seed)
        self.use_hflip = bool(use_hflip)
        self.use_rot = bool(use_rot)
        self.gray, self.alpha = gray, alpha
        self.name = name

        # (name, path or None, pixels or None): folder photos are read per item, built-in ones kept in memory.
        self.photos: List[Tuple[str, Optional[Path], Optional[np.ndarray]]] = []
        if dataroot_gt is not None:
            folder = Path(os.path.expanduser(str(dataroot_gt)))
            files = list_images(folder)
            if not files:
                raise InputError(f"no images in dataroot_gt folder {folder}")
            headers = check_image_files(files, gray=gray, alpha=alpha, hint=DATASET_HINT,
                                        what=f"image files in {folder}")
            if gt_size is None:
                small = [f"{f.name} ({headers[f].width}x{headers[f].height})" for f in files
                         if min(headers[f].height, headers[f].width) < scale]
                if small:
                    raise InputError(f"images smaller than scale {scale} (WxH): {', '.join(small)}")
            self.photos = [(f.stem, f, None) for f in files]
        else:
            names = list(images) if images is not None else list(
                DEFAULT_TRAIN_PHOTOS if phase == "train" else DEFAULT_VAL_PHOTOS
            )
            if not names:
                raise InputError("images must name at least one photo")
            self.photos = [(n, None, _load_skimage_photo(n)) for n in names]

        default_len = 1000 if phase == "train" else len(self.photos)
        self.length = default_len if length is None else int(length)
        if self.length < 1:
            raise InputError(f"length must be >= 1, got {length!r}")
        self._val_cache: Dict[int, Dict[str, Any]] = {}

    def __len__(self) -> int:
        """Virtual epoch length (train) or number of fixed validation items."""
        return self.length

    def _photo(self, index: int) -> Tuple[str, np.ndarray, str]:
        name, path, pixels = self.photos[index % len(self.photos)]
        if pixels is None:
            assert path is not None
            return name, read_image(path, gray=self.gray, alpha=self.alpha, hint=DATASET_HINT), str(path)
        return name, pixels, f"{name}.png"

    def _pair(self, gt: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        if self.gt_usm:
            gt = usm_sharpen(gt)
        lq, _ = degrade(gt, self.scale, self.cfg, rng)
        return lq, gt

    def __getitem__(self, index: int) -> Dict[str, Any]:
        """Item ``index``: a fresh random pair (train) or the fixed pair number ``index`` (val)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        if self.phase == "val":
            if index not in self._val_cache:
                self._val_cache[index] = self._make_val(index)
            item = self._val_cache[index]
            return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in item.items()}
        # One draw from torch's RNG seeds everything else of this item (crop, flips, degradation).
        rng = np.random.default_rng(int(torch.randint(2**63 - 1, ()).item()))
        name, img, gt_path = self._photo(index)
        size = self.gt_size
        assert size is not None
        img = _pad_to(img, size)
        H, W = img.shape[:2]
        top, left = int(rng.integers(0, H - size + 1)), int(rng.integers(0, W - size + 1))
        gt = img[top : top + size, left : left + size]
        if self.use_hflip or self.use_rot:
            gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            (gt,) = augment([gt], hflip=self.use_hflip, rotation=self.use_rot, generator=gen)
        lq, gt = self._pair(np.ascontiguousarray(gt), rng)
        return {"lq": img2tensor(lq), "gt": img2tensor(gt), "lq_path": f"{name}_x{self.scale}_train.png",
                "gt_path": gt_path}

    def _make_val(self, index: int) -> Dict[str, Any]:
        rng = np.random.default_rng([self.seed, index])
        name, img, gt_path = self._photo(index)
        if self.gt_size is None:
            H, W = img.shape[:2]
            gt = img[: H - H % self.scale, : W - W % self.scale]
        else:
            img = _pad_to(img, self.gt_size)
            H, W = img.shape[:2]
            top, left = (H - self.gt_size) // 2, (W - self.gt_size) // 2
            gt = img[top : top + self.gt_size, left : left + self.gt_size]
        lq, gt = self._pair(np.ascontiguousarray(gt), rng)
        return {"lq": img2tensor(lq), "gt": img2tensor(gt), "lq_path": f"{name}_x{self.scale}_d{index}.png",
                "gt_path": gt_path}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(phase={self.phase!r}, scale={self.scale}, photos={len(self.photos)}, "
            f"length={self.length}, gt_size={self.gt_size}, gt_usm={self.gt_usm}, seed={self.seed})"
        )
