"""Test-set presets of ``ddr-eval``: where the pairs are, how they are paired, which metrics a preset reports.

Pairing goes through the data package (:class:`ddr_restore.data.PairedImageDataset`, the same code that pairs
training and validation data; :class:`ddr_restore.data.realsr.RealSRPairedDataset` for RealSR/DRealSR): folders are
matched by file name (extension ignored; ``filename_tmpl`` maps a target stem to the input stem, BasicSR's
``'{}x4'``), RealBlur list files are read by its ``realblur`` layout. This module only says where a preset's
folders are, names each pair and declares each preset's protocol.

* ``gopro``: ``<root>/test/{input,target}`` (NAFNet layout ``datasets/GoPro``) or ``<root>/{input,target}``
  (Restormer layout ``Datasets/test/GoPro``), or explicit input/target folders.
* ``realblur``: a RealBlur list file (lines ``gt_rel blur_rel``) under ``root``, or input/target folders; PSNR
  and SSIM are the RealBlur-aligned catalog metrics (``psnr_realblur``/``ssim_realblur``).
* ``folder``: any two folders of images paired by file name.
* ``sr`` (needs ``scale``): super-resolution on folders: low-resolution inputs (``input_dir``, or
  ``<root>/{input,lq,LR}``) paired by name with high-resolution targets (``target_dir``, or
  ``<root>/{target,gt,HR}``). The SR convention of BasicSR and the Real-ESRGAN papers: the HR image is cropped to
  ``LR size x scale`` (MATLAB ``modcrop``: at most ``scale - 1`` pixels at the bottom/right; a larger difference is
  an error naming both files), ``psnr_y``/``ssim_y`` on the BT.601 Y channel and ``psnr_rgb``/``ssim_rgb`` on RGB,
  all four with ``crop_border = scale`` pixels removed on each side (``crop_border`` overrides), plus LPIPS and
  Q_DDR on the whole cropped image. The inputs are scored too (the summary's ``input`` entry and the CSV's
  ``input_<metric>`` columns): the LR image upsampled ``x scale`` with the MATLAB-compatible bicubic
  :func:`ddr_restore.data.imresize.imresize`; an input already stored at HR size (registered) is scored as it is.
  The short names ``psnr``/``ssim`` mean the Y-channel variants here (so ``--metrics psnr ssim`` and ``ddr-ablate``
  metric lists follow the SR convention).
* ``realsr`` (needs ``scale`` 2, 3 or 4): the Test split of a RealSR V3 root (``Canon|Nikon/Test/<scale>/
  <name>_HR.png + <name>_LR<scale>.png``, both cameras by default) or of a DRealSR root (``x<scale>/Test_x<scale>/
  {test_HR,test_LR}``); the layout is detected (a ``Canon`` or ``Nikon`` folder means RealSR) or given. Same
  protocol as ``sr``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ddr_restore.errors import InputError, MissingPathError, UnknownNameError
from ddr_restore.imageio import IMG_EXTENSIONS, list_images

__all__ = ["Preset", "PRESETS", "SR_PRESETS", "SR_LAYOUT_CHOICES", "EvalItem", "collect_items", "attach_restored",
           "preset_metrics", "apply_preset_defaults", "protocol_intro", "check_scale", "sr_layout"]

PathLike = Union[str, os.PathLike]
MetricName = Union[str, Mapping[str, Any]]

_DEFAULT_SET = ("psnr", "ssim", "lpips", "q_ddr")
_SR_DEFAULT_SET = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "lpips", "q_ddr")
_Y = {"type": "psnr", "test_y_channel": True}
_SR_METRICS: Dict[str, MetricName] = {
    "psnr": _Y, "psnr_y": _Y, "psnr_rgb": {"type": "psnr", "test_y_channel": False},
    "ssim": {"type": "ssim", "test_y_channel": True}, "ssim_y": {"type": "ssim", "test_y_channel": True},
    "ssim_rgb": {"type": "ssim", "test_y_channel": False},
}
#: ``layout`` values of the realsr preset (``auto``: RealSR when the root holds a Canon or Nikon folder)
SR_LAYOUT_CHOICES = ("auto", "realsr", "drealsr")


@dataclass(frozen=True)
class Preset:
    """A test-set layout and protocol: its summary intro and the catalog metric behind each short name."""

    name: str
    intro: str  #: first part of the summary's ``protocol`` text (SR presets: ``{scale}`` is filled in)
    #: short metric name -> catalog metric for this protocol, as a catalog name or ``{type: ..., <options>}``
    #: (names not listed are catalog names themselves)
    metric_names: Mapping[str, MetricName] = field(default_factory=dict)
    default_metrics: Tuple[str, ...] = _DEFAULT_SET  #: what ``ddr-eval`` reports without ``--metrics``
    #: super-resolution protocol: needs ``scale``; HR cropped to LR x scale; ``crop_border`` defaults to ``scale``
    sr: bool = False
    score_input: bool = False  #: score the (bicubic-upsampled) inputs too, by default


PRESETS: Dict[str, Preset] = {
    "gopro": Preset("gopro", "GoPro protocol: full-resolution output clamped to [0,1] and quantised to uint8"),
    "realblur": Preset("realblur", "RealBlur protocol: output clamped to [0,1] and quantised to uint8",
                       metric_names={"psnr": "psnr_realblur", "ssim": "ssim_realblur"}),
    "folder": Preset("folder", "paired folders: full-resolution output clamped to [0,1] and quantised to uint8"),
    "sr": Preset("sr", "SR x{scale} protocol on paired LR/HR folders", metric_names=_SR_METRICS,
                 default_metrics=_SR_DEFAULT_SET, sr=True, score_input=True),
    "realsr": Preset("realsr", "SR x{scale} protocol on the RealSR/DRealSR Test split", metric_names=_SR_METRICS,
                     default_metrics=_SR_DEFAULT_SET, sr=True, score_input=True),
}
SR_PRESETS = tuple(n for n, p in PRESETS.items() if p.sr)


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UnknownNameError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_metrics(preset: str, names: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    """``{column: {"type": catalog name, <options>}}`` for metric ``names`` (default: the preset's set) under
    ``preset``.

    A short name the preset maps (realblur: ``psnr`` -> ``psnr_realblur``; sr: ``psnr_y`` -> ``psnr`` with
    ``test_y_channel``) keeps its short name as the column.
    """
    p = _preset(preset)
    chosen = list(p.default_metrics if names is None else names)
    dupes = sorted({n for n in chosen if chosen.count(n) > 1})
    if dupes:
        raise InputError(f"metrics: {', '.join(dupes)} named twice")
    specs: Dict[str, Dict[str, Any]] = {}
    for n in chosen:
        mapped = p.metric_names.get(n, n)
        specs[n] = {"type": mapped} if isinstance(mapped, str) else dict(mapped)
    return specs


def check_scale(preset: str, scale: Any) -> int:
    """The SR factor of a run: an integer >= 2 for the SR presets (2, 3 or 4 for realsr), 1 for the others.

    Raises InputError for a missing or bad scale, or a scale given to a preset without an SR protocol.
    """
    p = _preset(preset)
    if not p.sr:
        if scale is not None and scale != 1:
            raise InputError(f"--scale {scale}: preset {preset} compares images of one size; for super-resolution "
                             f"use --preset {' or '.join(SR_PRESETS)}")
        return 1
    if scale is None:
        raise InputError(f"preset {preset} needs --scale (the upsampling factor, e.g. --scale 4)")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
        raise InputError(f"preset {preset}: --scale must be an integer >= 2, got {scale!r}")
    if preset == "realsr":
        from ddr_restore.data.realsr import SR_FACTORS

        if scale not in SR_FACTORS:
            raise InputError(f"preset realsr: --scale must be one of {', '.join(map(str, SR_FACTORS))} (the "
                             f"RealSR/DRealSR factors), got {scale}")
    return scale


def apply_preset_defaults(preset: str, specs: Dict[str, Dict[str, Any]], scale: int,
                          takes: Callable[[str], Mapping[str, Any]]) -> None:
    """Fill a preset's protocol defaults into ``specs`` (in place) where the run did not set them.

    SR presets: every metric that has a ``crop_border`` option gets ``crop_border = scale`` (the SR convention) unless
    ``specs`` already says otherwise (``--crop-border`` / ``metric_options``). ``takes(type_name)`` returns the
    options of a catalog metric (a mapping or set of option names).
    """
    if not _preset(preset).sr:
        return
    for column, spec in specs.items():
        if "crop_border" in takes(spec.get("type", column)):
            spec.setdefault("crop_border", scale)


def protocol_intro(preset: str, scale: int = 1, crop_border: Optional[int] = None,
                   input_text: Optional[str] = None) -> str:
    """The first part of the summary's ``protocol`` text: the preset's intro and, for SR, how images are prepared.

    ``crop_border``: the border the Y/RGB PSNR and SSIM remove (``None``: not used by any metric); ``input_text``:
    how the input row was made (``None``: no input row).
    """
    p = _preset(preset)
    parts = [p.intro]
    if p.sr:
        parts[0] = p.intro.format(scale=scale)
        parts.append(f"HR target cropped at the bottom/right to LR size x {scale} (MATLAB modcrop: at most "
                     f"{scale - 1} px per side; a larger difference is an error)")
        parts.append("output clamped to [0,1] and quantised to uint8 before every metric")
        if crop_border is not None:
            parts.append(f"PSNR/SSIM with crop_border={crop_border} px removed on each side"
                         + (" (= scale, the SR convention)" if crop_border == scale
                            else " (set by --crop-border / metric_options)")
                         + "; the Y-channel metrics (psnr_y, ssim_y; psnr/ssim mean these here) on the BT.601 luma "
                           "of MATLAB rgb2ycbcr, Y = 16 + (65.481 R + 128.553 G + 24.966 B) with RGB in [0,1], not "
                           "rounded, computed from the 8-bit images; psnr_rgb/ssim_rgb on R, G, B; metrics "
                           "without a crop_border option (LPIPS, Q_DDR) see the whole images")
    if input_text:
        parts.append(f"input row: {input_text}")
    return "; ".join(parts)


@dataclass
class EvalItem:
    """One test pair: ``name`` (relative output path without extension) and its files.

    ``aliases``: other stems under which a saved output of this pair is looked up (``--restored``), e.g. the LR
    file's stem ``Canon_001_LR4`` for the RealSR pair named ``Canon_001``.
    """

    name: str
    target_path: Path
    input_path: Optional[Path] = None
    restored_path: Optional[Path] = None
    aliases: Tuple[str, ...] = ()

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


def _paired_dataset(lq_root: Path, gt_root: Path, list_file: Optional[Path] = None, scale: int = 1,
                    filename_tmpl: str = "{}"):
    """The data package's pairing, without its image checks (ddr-eval reads and checks every image itself)."""
    from ddr_restore.data.paired import PairedImageDataset

    layout = "realblur" if list_file is not None else "folder"
    return PairedImageDataset(lq_root, gt_root, phase="val", layout=layout, meta_info_file=list_file,
                              scale=scale, filename_tmpl=filename_tmpl, check_files=False)


def _folder_pairs(input_dir: Optional[Path], target_dir: Path, scale: int = 1,
                  filename_tmpl: str = "{}") -> List[EvalItem]:
    if input_dir is None:
        targets = list_images(target_dir)
        if not targets:
            raise MissingPathError(f"target folder {target_dir} contains no images ({', '.join(IMG_EXTENSIONS)})")
        return _unique([EvalItem(name=p.stem, target_path=p) for p in targets], f"target folder {target_dir}")
    try:
        pairs = _paired_dataset(input_dir, target_dir, scale=scale, filename_tmpl=filename_tmpl).pairs
    except (InputError, MissingPathError) as err:
        raise type(err)(f"pairing inputs with targets by file name: {err}") from err
    items = [EvalItem(name=gt.stem, target_path=gt, input_path=lq,
                      aliases=(lq.stem,) if lq.stem != gt.stem else ()) for lq, gt in pairs]
    return _unique(items, f"target folder {target_dir}")


# Output names of RealSR/DRealSR pairs: the file stem without its role suffix (_HR, _LR4; DRealSR's _x1/_x4), so
# "Canon_001_HR.png" + "Canon_001_LR4.png" is written as Canon_001.png. Pairing itself is the dataset's.
_SR_ROLE_SUFFIX = re.compile(r"_(HR|LR\d+|x\d+)$")


def sr_layout(root: PathLike, layout: str = "auto") -> str:
    """The realsr preset's layout for ``root``: ``layout`` itself, or for ``"auto"`` ``"realsr"`` when the root
    holds a ``Canon`` or ``Nikon`` folder (RealSR V3), else ``"drealsr"``."""
    from ddr_restore.data.realsr import REALSR_CAMERAS

    if layout != "auto":
        return layout
    return "realsr" if any((Path(root) / c).is_dir() for c in REALSR_CAMERAS) else "drealsr"


def _realsr_pairs(root: Path, scale: int, layout: str, cameras: Optional[Sequence[str]]) -> List[EvalItem]:
    """The Test split of a RealSR V3 or DRealSR root, as :class:`~ddr_restore.data.realsr.RealSRPairedDataset`
    pairs it (LR at 1/scale: ``scale = factor``; the sizes are checked when each image is read)."""
    from ddr_restore.data.realsr import REALSR_CAMERAS, RealSRPairedDataset

    if not root.is_dir():
        raise MissingPathError(f"realsr: dataset root folder not found: {root}")
    if layout not in SR_LAYOUT_CHOICES:
        raise InputError(f"realsr: layout must be one of {', '.join(SR_LAYOUT_CHOICES)}, got {layout!r}")
    chosen = sr_layout(root, layout)
    if cameras is not None and chosen != "realsr":
        raise InputError(f"realsr: cameras ({', '.join(cameras)}) apply to the RealSR layout; {root} is read as "
                         f"{chosen}")
    try:
        ds = RealSRPairedDataset(root, layout=chosen, factor=scale, scale=scale, split="test", cameras=cameras,
                                 phase="val", check_files=False)
    except (InputError, MissingPathError) as err:
        note = ""
        if layout == "auto":
            note = (f" (layout detected as {chosen}: {root} has "
                    f"{'a' if chosen == 'realsr' else 'no'} {'/'.join(REALSR_CAMERAS)} folder; --layout sets it)")
        raise type(err)(f"realsr: {err}{note}") from err
    items = []
    for lq, gt in ds.pairs:
        name = _SR_ROLE_SUFFIX.sub("", gt.stem) or gt.stem
        items.append(EvalItem(name=name, target_path=gt, input_path=lq,
                              aliases=tuple(dict.fromkeys(s for s in (lq.stem, gt.stem) if s != name))))
    return _unique(items, f"realsr root {root}")


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
    *,
    scale: Optional[int] = None,
    layout: str = "auto",
    cameras: Optional[Sequence[str]] = None,
    filename_tmpl: str = "{}",
) -> List[EvalItem]:
    """The test pairs of a preset; errors name the folder/file and list unmatched images.

    Folder pairs are sorted by name; RealBlur pairs keep the list's order. ``need_inputs=False`` (scoring saved
    outputs) lets the input folder be absent; when it is present inputs are still paired (for grids).
    ``scale`` (SR presets), ``layout``/``cameras`` (realsr) and ``filename_tmpl`` (folder pairing: target stem ->
    input stem, e.g. ``'{}x4'``) are passed to the data package.
    """
    factor = check_scale(preset, scale)
    in_dir = Path(input_dir) if input_dir is not None else None
    tgt_dir = Path(target_dir) if target_dir is not None else None
    if cameras is not None and preset != "realsr":
        raise InputError(f"{preset}: cameras apply to --preset realsr only")
    if preset == "realsr":
        if root is None:
            raise InputError("realsr: give --root (a RealSR V3 folder holding Canon/Nikon, or a DRealSR folder)")
        if in_dir is not None or tgt_dir is not None or list_file is not None:
            raise InputError("realsr: the pairs come from --root; for LR/HR folders use --preset sr")
        return _realsr_pairs(Path(root), factor, layout, list(cameras) if cameras is not None else None)
    if layout != "auto":
        raise InputError(f"{preset}: --layout applies to --preset realsr only")
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
        # SR folders are often called lq/gt (BasicSR) or LR/HR; the other presets use input/target
        names = [("input", "target"), ("lq", "gt"), ("LR", "HR")] if PRESETS[preset].sr else [("input", "target")]
        found = next(((i, t) for i, t in names if root is not None and (Path(root) / t).is_dir()), None)
        if found is not None:
            tgt_dir = Path(root) / found[1]
            in_dir = in_dir or (Path(root) / found[0])
        else:
            extra = " or --list with --root" if preset == "realblur" else ""
            folders = " or ".join(f"{i}/ + {t}/" for i, t in names)
            where = f" or a --root holding {folders}" if root is None else f" ({root} holds no {folders})"
            raise InputError(f"{preset}: give --target-dir (and --input-dir){extra}{where}")
    if not tgt_dir.is_dir():
        raise MissingPathError(f"target folder not found: {tgt_dir}")
    if in_dir is not None and not in_dir.is_dir():
        if need_inputs:
            raise MissingPathError(f"input folder not found: {in_dir}")
        in_dir = None
    if need_inputs and in_dir is None:
        raise InputError(f"{preset}: running a network needs an input folder (--input-dir or --root)")
    return _folder_pairs(in_dir, tgt_dir, scale=factor, filename_tmpl=filename_tmpl)


def attach_restored(items: List[EvalItem], restored_dir: Path) -> None:
    """Point every item at its saved output ``<restored_dir>/<name>.<ext>``; error listing the missing ones.

    This is a look-up of outputs by the pairs' names (PNG first, then the other image extensions; then the
    item's ``aliases``, e.g. an SR output saved under its LR file's name), not a second pairing: extra files in
    ``restored_dir`` are ignored.
    """
    if not restored_dir.is_dir():
        raise MissingPathError(f"restored-images folder not found: {restored_dir}")
    exts = (".png",) + tuple(e for e in IMG_EXTENSIONS if e != ".png")
    missing: List[str] = []
    for it in items:
        stems = [it.name] + [str(Path(it.name).with_name(a)) for a in it.aliases]
        candidates = (restored_dir / (stem + e) for stem in stems for ext in exts for e in (ext, ext.upper()))
        it.restored_path = next((c for c in candidates if c.is_file()), None)
        if it.restored_path is None:
            missing.append(it.name)
    if missing:
        raise _missing_error("restored images (matched to targets by file name)", missing, restored_dir)
