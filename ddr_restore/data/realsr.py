"""Real-world super-resolution pairs: the RealSR (Cai et al. 2019) and DRealSR (Wei et al. 2020) folder layouts.

What the datasets' own documentation says (checked for this module; sources in brackets):

* **RealSR** [README of github.com/csjcai/RealSR]: Version 1 (234 scenes, the ICCV 2019 paper) and Version 2
  (more than 500 scenes): "HR have the same resolution as LR" (the LR images were registered to the HR ones and
  stored at HR size). Version 3 (more than 500 scenes, the one usually called "RealSR" today and the one in the
  ``Canon|Nikon/{Train,Test}/{2,3,4}`` layout): "HR and LR have different resolution", i.e. ``<name>_LR4.png`` is
  about a quarter of ``<name>_HR.png`` on each side. Third-party loaders of V3 crop the HR to ``LR size x scale``
  before comparing, and the authors' ``Test/Test.m`` applies MATLAB ``modcrop(img, 4)``, so an HR a few pixels
  larger than ``LR x scale`` is expected and cropped (see ``modcrop`` below). Layout of V3::

      <dataroot>/Canon/Train/4/Canon_001_HR.png, Canon_001_LR4.png, ...
      <dataroot>/Nikon/Test/2/Nikon_050_HR.png,  Nikon_050_LR2.png, ...

* **DRealSR** [README of github.com/xiezw5/Component-Divide-and-Conquer-for-Real-World-Image-Super-Resolution;
  its ``CDC/CDC_test.py`` runs an ``upscale=scale`` network on the LR and scores against the HR]: LR images are
  stored at 1/scale (true low resolution); 31,970 192x192 training patches and 93 test pairs, for x2, x3 and x4.
  The folder names ``x4/Train_x4/{train_HR,train_LR}`` and ``x4/Test_x4/{test_HR,test_LR}`` come from public
  BasicSR-style preparation scripts, not from the authors' README, and so does the file suffix ``_x1`` (HR) /
  ``_x4`` (LR); one third-party script uses the suffixes the other way round. This module therefore pairs DRealSR
  files by name with any trailing ``_x<digits>`` removed, which works for either convention and for unsuffixed
  names. Layout accepted::

      <dataroot>/x4/Train_x4/train_HR/<name>[_x1].png  with  <dataroot>/x4/Train_x4/train_LR/<name>[_x4].png
      (or <dataroot> = the x4 folder, or <dataroot> = the Train_x4 folder itself)

Generic ``lq``/``gt`` folders with matching names (and ``filename_tmpl`` for ``0001x4.png`` style names) are the
``folder`` layout of :class:`~ddr_restore.data.paired.PairedImageDataset`, which takes the same ``scale`` option.

Which ``scale`` to use: ``scale`` is the stored size ratio GT/LQ, the factor the network must upsample by.

* ``scale: 1`` -- LR files stored at GT size (RealSR V1/V2, or LR that you pre-upsampled, e.g. with bicubic):
  same-size pairs, the networks run as NAFNet/Restormer are built.
* ``scale: 2|3|4`` (equal to ``factor``) -- true low-resolution files (RealSR V3, DRealSR): the GT must be
  ``scale x`` the LR size (up to ``scale - 1`` extra pixels with ``modcrop``); the network needs an upsampling
  step (bicubic pre-upsampling or a pixel-shuffle head; chosen in the option file).

A wrong size ratio (e.g. V3 data with ``scale: 1``) is an :class:`~ddr_restore.errors.InputError` naming both
files and both sizes, raised when the dataset is built; a file without a partner is a
:class:`~ddr_restore.errors.MissingPathError` naming the file and the partner name that was looked for.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ddr_restore.data.paired import PairedImageDataset
from ddr_restore.errors import InputError, MissingPathError
from ddr_restore.imageio import IMG_EXTENSIONS, list_images
from ddr_restore.registry import DATASET_REGISTRY

__all__ = ["RealSRPairedDataset", "SR_LAYOUTS", "REALSR_CAMERAS", "SR_FACTORS"]

PathLike = Union[str, os.PathLike]
SR_LAYOUTS = ("realsr", "drealsr")
REALSR_CAMERAS = ("Canon", "Nikon")
SR_FACTORS = (2, 3, 4)
SPLITS = ("train", "test")
_SHOW = 5
# Options of PairedImageDataset that this dataset sets itself from `dataroot`/`layout`.
_OWN_KEYS = ("dataroot_lq", "dataroot_gt", "meta_info_file", "filename_tmpl")
_DREALSR_SUFFIX = re.compile(r"_x\d+$")


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(str(n) for n in names[:_SHOW])
    return shown + (f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def _positive_choice(value: Any, allowed: Sequence[int], name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


@DATASET_REGISTRY.register()
class RealSRPairedDataset(PairedImageDataset):
    """Paired real-world SR data in the RealSR V3 or DRealSR folder layout (see the module docstring for both).

    Args:
        dataroot: the dataset root: for ``realsr`` the folder holding ``Canon``/``Nikon`` (e.g. ``RealSR(V3)``);
            for ``drealsr`` the folder holding ``x2``/``x3``/``x4``, or one ``x<factor>`` folder, or one
            ``Train_x<factor>``/``Test_x<factor>`` folder.
        layout: ``"realsr"`` or ``"drealsr"``.
        factor: which subset, 2, 3 or 4 (the RealSR ``{2,3,4}`` folder / the DRealSR ``x<factor>`` folder).
        scale: stored GT/LQ size ratio: 1 (LQ at GT size) or ``factor`` (true low resolution).
        split: ``"train"`` or ``"test"``; default ``"train"`` for phase ``train`` and ``"test"`` otherwise.
        cameras: ``realsr`` only: camera folders to use (default: those of ``Canon``, ``Nikon`` that exist).
        modcrop: with ``scale > 1``, accept a GT up to ``scale - 1`` pixels larger than ``LQ x scale`` on each
            side and crop its bottom/right (MATLAB ``modcrop``, as RealSR's ``Test.m`` and BasicSR do). Any other
            ratio is an error. ``false``: the GT must be exactly ``LQ x scale``.
        phase: ``"train"`` (random aligned ``gt_size`` crops; ``gt_size // scale`` on the LQ, at a position on
            the LQ grid times ``scale``) or ``"val"`` (whole images, or the centre ``gt_size`` crop).
        **kwargs: the other options of :class:`~ddr_restore.data.paired.PairedImageDataset` (``gt_size``,
            ``use_hflip``, ``use_rot``, ``pad_to_gt_size``, ``name``, ``io_backend``, ``gray``, ``alpha``,
            ``check_files``, ...); ``dataroot_lq``/``dataroot_gt``/``meta_info_file``/``filename_tmpl`` are
            replaced by ``dataroot`` and ``layout``.

    Items are those of :class:`~ddr_restore.data.paired.PairedImageDataset`:
    ``{"lq", "gt", "lq_path", "gt_path"}``; every file is checked when the dataset is built (``check_files``).
    """

    def __init__(
        self,
        dataroot: PathLike,
        layout: str = "realsr",
        factor: int = 4,
        scale: int = 1,
        split: Optional[str] = None,
        cameras: Optional[Union[str, Sequence[str]]] = None,
        modcrop: bool = True,
        phase: str = "train",
        **kwargs: Any,
    ) -> None:
        given = [k for k in _OWN_KEYS if k in kwargs]
        if given:
            raise InputError(
                f"{', '.join(given)}: not used by RealSRPairedDataset (give dataroot and layout); "
                "for plain lq/gt folders use type PairedImageDataset"
            )
        if layout not in SR_LAYOUTS:
            raise InputError(f"layout must be one of {SR_LAYOUTS}, got {layout!r}")
        factor = _positive_choice(factor, SR_FACTORS, "factor")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale not in (1, factor):
            raise InputError(
                f"scale must be 1 (LQ files stored at GT size) or the factor {factor} (LQ files at 1/{factor} "
                f"of the GT size); got {scale!r}"
            )
        if split is None:
            split = "train" if phase == "train" else "test"
        if not isinstance(split, str) or split.lower() not in SPLITS:
            raise InputError(f"split must be 'train' or 'test', got {split!r}")
        if cameras is not None:
            if layout != "realsr":
                raise InputError("cameras is an option of layout 'realsr' only")
            cameras = [cameras] if isinstance(cameras, str) else list(cameras)
            if not cameras or not all(isinstance(c, str) and c for c in cameras):
                raise InputError(f"cameras must be a non-empty list of folder names, got {cameras!r}")
        # Set before PairedImageDataset.__init__, which calls _pairs_from_folders and _sizes_ok.
        self.sr_layout = layout
        self.factor = factor
        self.split = split.lower()
        self.cameras = cameras
        self.modcrop = bool(modcrop)
        super().__init__(
            dataroot_lq=dataroot, dataroot_gt=dataroot, phase=phase, scale=scale, layout="folder", **kwargs
        )
        self.layout = layout

    # ------------------------------------------------------------------ pair discovery
    def _pairs_from_folders(self) -> List[Tuple[Path, Path]]:
        root = self.gt_root
        if not root.is_dir():
            raise MissingPathError(f"dataroot folder not found: {root}")
        if self.sr_layout == "realsr":
            return self._realsr_pairs(root)
        return self._drealsr_pairs(root)

    def _realsr_pairs(self, root: Path) -> List[Tuple[Path, Path]]:
        f = self.factor
        want = f"<dataroot>/{{{','.join(REALSR_CAMERAS)}}}/{{Train,Test}}/{{2,3,4}}/<name>_HR.png + <name>_LR{f}.png"
        cameras = self.cameras or [c for c in REALSR_CAMERAS if (root / c).is_dir()]
        if not cameras:
            raise MissingPathError(f"layout 'realsr': no camera folder ({', '.join(REALSR_CAMERAS)}) in {root}; "
                                   f"expected {want}")
        pairs: List[Tuple[Path, Path]] = []
        for cam in cameras:
            folder = root / cam / self.split.capitalize() / str(f)
            if not folder.is_dir():
                raise MissingPathError(f"layout 'realsr': folder not found: {folder} (camera {cam!r}, split "
                                       f"{self.split!r}, factor {f}); expected {want}")
            pairs += self._match(
                gt_dir=folder,
                lq_dir=folder,
                gt_key=lambda stem: stem[:-3] if stem.endswith("_HR") else None,
                lq_key=lambda stem, f=f: stem[: -len(f"_LR{f}")] if stem.endswith(f"_LR{f}") else None,
                gt_name=lambda base: f"{base}_HR",
                lq_name=lambda base, f=f: f"{base}_LR{f}",
            )
        return pairs

    def _drealsr_pairs(self, root: Path) -> List[Tuple[Path, Path]]:
        f, sp = self.factor, self.split
        sub = f"{sp.capitalize()}_x{f}"
        candidates = [root / f"x{f}" / sub, root / sub, root]
        base = next((c for c in candidates if (c / f"{sp}_HR").is_dir()), None)
        if base is None:
            raise MissingPathError(
                f"layout 'drealsr': no {sp}_HR folder in {', '.join(str(c) for c in candidates)}; expected "
                f"<dataroot>/x{f}/{sub}/{{{sp}_HR,{sp}_LR}}"
            )
        gt_dir, lq_dir = base / f"{sp}_HR", base / f"{sp}_LR"
        if not lq_dir.is_dir():
            raise MissingPathError(f"layout 'drealsr': LR folder not found: {lq_dir} (next to {gt_dir})")

        def strip(stem: str) -> str:
            return _DREALSR_SUFFIX.sub("", stem)

        return self._match(gt_dir, lq_dir, gt_key=strip, lq_key=strip,
                           gt_name=lambda b: f"{b}[_x1]", lq_name=lambda b, f=f: f"{b}[_x{f}]")

    def _match(self, gt_dir: Path, lq_dir: Path, gt_key: Any, lq_key: Any, gt_name: Any,
               lq_name: Any) -> List[Tuple[Path, Path]]:
        """Pair the images of two folders by a key derived from each file's stem (``None``: not a candidate)."""
        exts = "/".join(e.lstrip(".") for e in IMG_EXTENSIONS)

        def index(folder: Path, key: Any, what: str) -> Dict[str, Path]:
            by_key: Dict[str, Path] = {}
            for p in list_images(folder):
                k = key(p.stem)
                if k is None:
                    continue  # e.g. an _LR2 file next to _LR4 ones, or an HR file in the shared RealSR folder
                if k in by_key:
                    raise InputError(f"two {what} files for the same pair name {k!r}: {by_key[k]} and {p}")
                by_key[k] = p
            return by_key

        gts, lqs = index(gt_dir, gt_key, "GT"), index(lq_dir, lq_key, "LQ")
        if not gts:
            raise InputError(f"no GT images named {gt_name('<name>')}.{{{exts}}} in {gt_dir}")
        missing = [f"{gts[k]} (expected {lq_dir / lq_name(k)}.<ext>)" for k in sorted(gts) if k not in lqs]
        orphans = [f"{lqs[k]} (expected {gt_dir / gt_name(k)}.<ext>)" for k in sorted(lqs) if k not in gts]
        if missing or orphans:
            parts = []
            if missing:
                parts.append(f"{len(missing)} GT file(s) without an LQ partner: {_few(missing)}")
            if orphans:
                parts.append(f"{len(orphans)} LQ file(s) without a GT partner: {_few(orphans)}")
            raise MissingPathError("; ".join(parts))
        return [(lqs[k], gts[k]) for k in sorted(gts)]

    # ------------------------------------------------------------------ size rules
    def _sizes_ok(self, lw: int, lh: int, gw: int, gh: int) -> bool:
        s = self.scale
        if s > 1 and self.modcrop:
            return (gw // s, gh // s) == (lw, lh)  # the GT is cropped to LQ x scale when loaded
        return (lw * s, lh * s) == (gw, gh)

    def _expected_gt(self, lw: int, lh: int) -> str:
        s = self.scale
        if s > 1 and self.modcrop:
            return f"expected {lw * s}x{lh * s} to {lw * s + s - 1}x{lh * s + s - 1} (LQ size x scale {s})"
        hint = "" if s > 1 else "; for LQ files stored at 1/factor size set scale to the factor"
        return f"expected {lw * s}x{lh * s} (LQ size x scale {s}){hint}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, phase={self.phase!r}, layout={self.layout!r}, "
            f"split={self.split!r}, factor={self.factor}, pairs={len(self)}, gt_size={self.gt_size}, "
            f"scale={self.scale})"
        )
