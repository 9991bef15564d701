"""Image files <-> arrays <-> tensors, with errors that name the file.

Convention everywhere in ddr_restore: images in memory are **RGB**; numpy arrays are HWC (float32 in [0,1] or
uint8), tensors are (3,H,W) or (B,3,H,W) float in [0,1]. OpenCV (BGR) is used only inside this module.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Union

import cv2
import numpy as np
import torch

__all__ = ["IMG_EXTENSIONS", "read_image", "write_image", "list_images", "img2tensor", "tensor2img"]

PathLike = Union[str, os.PathLike]
IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image(path: PathLike, gray: str = "error", alpha: str = "error") -> np.ndarray:
    """Read an image file as float32 RGB HWC in [0, 1] (8- and 16-bit files).

    Args:
        path: image file.
        gray: what to do with a 1-channel image: ``"error"`` (default) or ``"replicate"`` to 3 channels.
        alpha: what to do with a 4-channel image: ``"error"`` (default) or ``"drop"`` the alpha channel.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded, or has a channel layout that was not allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile + imdecode also handles non-ASCII paths
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"cannot decode image file (corrupt or unsupported format): {path}")
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif img.dtype in (np.float32, np.float64):
        img = img.astype(np.float32)
    else:
        raise ValueError(f"unsupported pixel type {img.dtype} in {path}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        if gray != "replicate":
            raise ValueError(f"{path} is a greyscale (1-channel) image; RGB images are expected")
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    elif img.shape[2] == 4:
        if alpha != "drop":
            raise ValueError(f"{path} has 4 channels (RGBA); RGB images are expected")
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise ValueError(f"{path} has {img.shape[2]} channels; RGB images are expected")
    return np.ascontiguousarray(img)


def write_image(path: PathLike, img: np.ndarray) -> Path:
    """Write an RGB HWC image (uint8, or float in [0,1] which is clamped and rounded); creates parent folders."""
    path = Path(path)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", img)
    if not ok:
        raise ValueError(f"cannot encode image for {path} (extension {path.suffix!r})")
    buf.tofile(str(path))
    return path


def list_images(folder: PathLike, recursive: bool = False) -> List[Path]:
    """Sorted image files (by extension) in ``folder``; raises if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def img2tensor(img: np.ndarray) -> torch.Tensor:
    """HWC RGB array (float [0,1] or uint8) -> float32 tensor (3,H,W) in [0,1]."""
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def tensor2img(tensor: torch.Tensor) -> np.ndarray:
    """(3,H,W) or (1,3,H,W) tensor in [0,1] -> uint8 HWC RGB: clamped to [0,1], x255, rounded (BasicSR semantics)."""
    t = tensor.detach().float().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"tensor2img expects one image, got a batch of {t.shape[0]}")
        t = t[0]
    arr = t.clamp(0, 1).numpy().transpose(1, 2, 0)  # not in place: never alter the caller's tensor
    return (arr * 255.0).round().astype(np.uint8)
