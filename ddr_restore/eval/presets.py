"""Test-set presets of ``ddr-eval``: where the pairs are, how they are paired, which metrics a preset reports.

Pairing goes through the data package (:class:`ddr_restore.data.PairedImageDataset`, the same code that pairs
training and validation data): folders are matched by file name (extension ignored), RealBlur list files are read
by its ``realblur`` layout. This module only says where a preset's folders are and names each pair.

* ``gopro``: ``<root>/test/{input,target}`` (NAFNet layout ``datasets/GoPro``) or ``<root>/{input,target}``
  (Restormer layout ``Datasets/test/GoPro``), or explicit input/target folders.
* ``realblur``: a RealBlur list file (lines ``gt_rel blur_rel``) under ``root``, or input/target folders; PSNR
  and SSIM are the RealBlur-aligned catalog metrics (``psnr_realblur``/``ssim_realblur``).
* ``folder``: any two folders of images paired by file name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ddr_restore.errors import InputError, MissingPathError, UnknownNameError
from ddr_restore.imageio import IMG_EXTENSIONS, list_images

__all__ = ["Preset", "PRESETS", "EvalItem", "collect_items", "attach_restored", "preset_metrics"]

PathLike = Union[str, os.PathLike]

_DEFAULT_SET = ("psnr", "ssim", "lpips", "q_ddr")


@dataclass(frozen=True)
class Preset:
    """A test-set layout and protocol: its summary intro and the catalog metric behind each short name."""

    name: str
    intro: str  #: first part of the summary's ``protocol`` text
    #: short metric name -> catalog metric for this protocol (names not listed are catalog names themselves)
    metric_names: Mapping[str, str] = field(default_factory=dict)
    default_metrics: Tuple[str, ...] = _DEFAULT_SET  #: what ``ddr-eval`` reports without ``--metrics``


PRESETS: Dict[str, Preset] = {
    "gopro": Preset("gopro", "GoPro protocol: full-resolution output clamped to [0,1] and quantised to uint8"),
    "realblur": Preset("realblur", "RealBlur protocol: output clamped to [0,1] and quantised to uint8",
                       metric_names={"psnr": "psnr_realblur", "ssim": "ssim_realblur"}),
    "folder": Preset("folder", "paired folders: full-resolution output clamped to [0,1] and quantised to uint8"),
}


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UnknownNameError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_metrics(preset: str, names: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, str]]:
    """``{column: {"type": catalog name}}`` for metric ``names`` (default: the preset's set) under ``preset``.

    A short name the preset maps (realblur: ``psnr`` -> ``psnr_realblur``) keeps its short name as the column.
    """
    p = _preset(preset)
    chosen = list(p.default_metrics if names is None else names)
    dupes = sorted({n for n in chosen if chosen.count(n) > 1})
    if dupes:
        raise InputError(f"metrics: {', '.join(dupes)} named twice")
    return {n: {"type": p.metric_names.get(n, n)} for n in chosen}


@dataclass
class EvalItem:
    """One test pair: ``name`` (relative output path without extension) and its files."""

    name: str
    target_path: Path
    input_path: Optional[Path] = None
    restored_path: Optional[Path] = None

    @property
    def out_rel(self) -> str:
        """Relative path of the saved output (PNG)."""
        return self.name + ".png"


def _missing_error(what: str, names: Sequence[str], where: PathLike) -> InputError:
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return InputError(f"{len(names)} {what} missing in {where}: {shown}")


def _unique(items: List[EvalItem], where: str) -> List[EvalItem]:
    """``items`` sorted by name; two pairs with one name would write one output file: an error."""
    seen: Dict[str, EvalItem] = {}
    for it in items:
        if it.name in seen:
            raise InputError(f"{where}: two images named {it.name!r}: {seen[it.name].target_path.name}, "
                             f"{it.target_path.name} (names must be unique without their extension)")
        seen[it.name] = it
    return sorted(items, key=lambda it: it.name)


def _paired_dataset(lq_root: Path, gt_root: Path, list_file: Optional[Path] = None):
    """The data package's pairing, without its image checks (ddr-eval reads and checks every image itself)."""
    from ddr_restore.data.paired import PairedImageDataset

    layout = "realblur" if list_file is not None else "folder"
    return PairedImageDataset(lq_root, gt_root, phase="val", layout=layout, meta_info_file=list_file,
                              check_files=False)


def _folder_pairs(input_dir: Optional[Path], target_dir: Path) -> List[EvalItem]:
    if input_dir is None:
        targets = list_images(target_dir)
        if not targets:
            raise MissingPathError(f"target folder {target_dir} contains no images ({', '.join(IMG_EXTENSIONS)})")
        return _unique([EvalItem(name=p.stem, target_path=p) for p in targets], f"target folder {target_dir}")
    try:
        pairs = _paired_dataset(input_dir, target_dir).pairs
    except (InputError, MissingPathError) as err:
        raise type(err)(f"pairing inputs with targets by file name: {err}") from err
    items = [EvalItem(name=gt.stem, target_path=gt, input_path=lq) for lq, gt in pairs]
    return _unique(items, f"target folder {target_dir}")


def _realblur_list_pairs(root: Path, list_file: Path) -> List[EvalItem]:
    if not list_file.is_file():
        raise MissingPathError(f"RealBlur list file not found: {list_file}")
    if not root.is_dir():
        raise MissingPathError(f"RealBlur root folder not found: {root}")
    try:
        pairs = _paired_dataset(root, root, list_file).pairs
    except (InputError, MissingPathError) as err:
        raise type(err)(f"RealBlur list (paths relative to {root}): {err}") from err
    items = []
    for blur, gt in pairs:
        # the output keeps the blurred image's relative path, so scenes with equal file names stay apart
        rel = Path(os.path.relpath(blur, root)).with_suffix("")
        items.append(EvalItem(name=rel.as_posix(), target_path=gt, input_path=blur))
    names = [it.name for it in items]
    if len(set(names)) != len(names):
        raise InputError(f"RealBlur list file {list_file} lists the same blurred image twice")
    return items


def _gopro_dirs(root: Path) -> Tuple[Path, Path]:
    for base in (root / "test", root):
        if (base / "input").is_dir() and (base / "target").is_dir():
            return base / "input", base / "target"
    raise MissingPathError(
        f"GoPro root {root}: expected {root / 'test' / 'input'} and {root / 'test' / 'target'} "
        f"(NAFNet layout) or {root / 'input'} and {root / 'target'} (Restormer layout)"
    )


def collect_items(
    preset: str,
    root: Optional[PathLike] = None,
    input_dir: Optional[PathLike] = None,
    target_dir: Optional[PathLike] = None,
    list_file: Optional[PathLike] = None,
    need_inputs: bool = True,
) -> List[EvalItem]:
    """The test pairs of a preset; errors name the folder/file and list unmatched images.

    Folder pairs are sorted by name; RealBlur pairs keep the list's order. ``need_inputs=False`` (scoring saved
    outputs) lets the input folder be absent; when it is present inputs are still paired (for grids).
    """
    _preset(preset)
    in_dir = Path(input_dir) if input_dir is not None else None
    tgt_dir = Path(target_dir) if target_dir is not None else None
    if preset == "realblur" and list_file is not None:
        if root is None:
            raise InputError("realblur: --list needs --root (the folder the list's paths are relative to)")
        return _realblur_list_pairs(Path(root), Path(list_file))
    if preset == "gopro" and tgt_dir is None:
        if root is None:
            raise InputError("gopro: give --root (datasets/GoPro) or --target-dir (and --input-dir)")
        gi, gt = _gopro_dirs(Path(root))
        in_dir, tgt_dir = in_dir or gi, gt
    if tgt_dir is None:
        if root is not None and (Path(root) / "target").is_dir():
            tgt_dir = Path(root) / "target"
            in_dir = in_dir or (Path(root) / "input")
        else:
            extra = " or --list with --root" if preset == "realblur" else ""
            raise InputError(f"{preset}: give --target-dir (and --input-dir){extra}")
    if not tgt_dir.is_dir():
        raise MissingPathError(f"target folder not found: {tgt_dir}")
    if in_dir is not None and not in_dir.is_dir():
        if need_inputs:
            raise MissingPathError(f"input folder not found: {in_dir}")
        in_dir = None
    if need_inputs and in_dir is None:
        raise InputError(f"{preset}: running a network needs an input folder (--input-dir or --root)")
    return _folder_pairs(in_dir, tgt_dir)


def attach_restored(items: List[EvalItem], restored_dir: Path) -> None:
    """Point every item at its saved output ``<restored_dir>/<name>.<ext>``; error listing the missing ones.

    This is a look-up of outputs by the pairs' names (PNG first, then the other image extensions), not a second
    pairing: extra files in ``restored_dir`` are ignored.
    """
    if not restored_dir.is_dir():
        raise MissingPathError(f"restored-images folder not found: {restored_dir}")
    exts = (".png",) + tuple(e for e in IMG_EXTENSIONS if e != ".png")
    missing: List[str] = []
    for it in items:
        candidates = (restored_dir / (it.name + e) for ext in exts for e in (ext, ext.upper()))
        it.restored_path = next((c for c in candidates if c.is_file()), None)
        if it.restored_path is None:
            missing.append(it.name)
    if missing:
        raise _missing_error("restored images (matched to targets by file name)", missing, restored_dir)
