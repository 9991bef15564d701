"""Evaluation entry point (``ddr-eval``): PSNR/SSIM (+ LPIPS, Q_DDR) of a trained network or of saved outputs.

Presets:

* ``gopro``: ``<root>/test/{input,target}`` (NAFNet layout ``datasets/GoPro``) or ``<root>/{input,target}``
  (Restormer layout ``Datasets/test/GoPro``), or explicit ``--input-dir/--target-dir``. Protocol: full-resolution
  output clamped to [0,1] and quantised to 8 bits; RGB PSNR (peak 255, no border crop); BasicSR SSIM
  (11x11 Gaussian, sigma 1.5, per RGB channel, averaged); mean over images.
* ``realblur``: a RealBlur list file (lines ``gt_rel blur_rel``) under ``--root`` (``<scene>/blur/blur_N.png``,
  ``<scene>/gt/gt_N.png``), or folder-style ``--input-dir/--target-dir``; PSNR/SSIM after the official RealBlur
  ECC alignment of the output onto the ground truth.
* ``folder``: any two folders of images paired by file name (extension ignored); gopro protocol.

Modes: ``--opt OPTION.yml --checkpoint net_g_X.pth`` runs the network on every input; ``--restored DIR`` scores
existing outputs matched to the targets by file name (every target must have one). Writes ``per_image.csv``,
``summary.json`` and optionally the outputs (``--save-images``) and side-by-side grids (``--grid N``) to
``--out`` (default ``results/<name>``).

An output folder that already holds results is never mixed with the new ones: it is moved to
``<out>_archived_<YYYYmmdd_HHMMSS>`` first (as the trainer does with experiment folders), or, with
``--overwrite``, its previous results are deleted. A folder holding files ddr-eval does not write is left alone
(the run stops and says so).

Images are RGB: a greyscale or RGBA file stops the run unless ``--gray replicate`` / ``--alpha drop`` says what
to do with it (the same rule as training and ``ddr-score``). Every user error (a path, a pairing, an image, an
option, a checkpoint that does not fit) is one ``ddr-eval: error: ...`` line and exit status 2; ``--debug``
adds the traceback.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ddr_restore.errors import InputError, MissingPathError, UnknownNameError, run_console
from ddr_restore.imageio import IMG_EXTENSIONS, img2tensor, list_images, read_image, tensor2img, write_image

__all__ = ["PRESETS", "PROTOCOLS", "CAPTION_HEIGHT", "RESULT_ENTRIES", "EvalItem", "collect_items", "evaluate",
           "make_grid", "build_parser", "main"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
PRESETS = ("gopro", "realblur", "folder")
CAPTION_HEIGHT = 32  # pixels of the caption band above each grid panel
# What ddr-eval writes in its output folder; only a folder holding nothing else is archived or replaced.
RESULT_ENTRIES = ("per_image.csv", "summary.json", "images", "grid")

_PIXEL_PROTOCOL = (
    "full-resolution output clamped to [0,1] and quantised to uint8; PSNR on RGB uint8 (peak 255, crop_border={cb}, "
    "{y}); SSIM BasicSR-style (float64, 11x11 Gaussian window sigma 1.5, per channel then averaged, "
    "crop_border={cb}, {y}); mean over images"
)
PROTOCOLS = {
    "gopro": "GoPro protocol: " + _PIXEL_PROTOCOL,
    "folder": "paired folders: " + _PIXEL_PROTOCOL,
    "realblur": (
        "RealBlur protocol: output clamped to [0,1] and quantised to uint8; official RealBlur ECC evaluation "
        "(intensity scaling of the output to the GT, ECC homography aligning the output onto the GT, masked PSNR "
        "and masked Gaussian SSIM); mean over images"
    ),
}


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


# ----------------------------------------------------------------------------------------------- discovery


def _index_by_stem(folder: Path, what: str) -> Dict[str, Path]:
    files = list_images(folder)
    index: Dict[str, Path] = {}
    for p in files:
        if p.stem in index:
            raise InputError(f"{what} folder {folder} has two images named {p.stem!r}: {index[p.stem].name}, {p.name}")
        index[p.stem] = p
    if not index:
        raise MissingPathError(f"{what} folder {folder} contains no images ({', '.join(IMG_EXTENSIONS)})")
    return index


def _missing_error(what: str, names: Sequence[str], where: PathLike) -> InputError:
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return InputError(f"{len(names)} {what} missing in {where}: {shown}")


def _gopro_dirs(root: Path) -> Tuple[Path, Path]:
    for base in (root / "test", root):
        if (base / "input").is_dir() and (base / "target").is_dir():
            return base / "input", base / "target"
    raise MissingPathError(
        f"GoPro root {root}: expected {root / 'test' / 'input'} and {root / 'test' / 'target'} "
        f"(NAFNet layout) or {root / 'input'} and {root / 'target'} (Restormer layout)"
    )


def _folder_pairs(input_dir: Optional[Path], target_dir: Path) -> List[EvalItem]:
    targets = _index_by_stem(target_dir, "target")
    if input_dir is None:
        return [EvalItem(name=s, target_path=p) for s, p in sorted(targets.items())]
    inputs = _index_by_stem(input_dir, "input")
    no_target = sorted(set(inputs) - set(targets))
    if no_target:
        raise _missing_error("target images (for these inputs)", no_target, target_dir)
    no_input = sorted(set(targets) - set(inputs))
    if no_input:
        raise _missing_error("input images (for these targets)", no_input, input_dir)
    return [EvalItem(name=s, target_path=targets[s], input_path=inputs[s]) for s in sorted(targets)]


def _realblur_list_pairs(root: Path, list_file: Path) -> List[EvalItem]:
    if not list_file.is_file():
        raise MissingPathError(f"RealBlur list file not found: {list_file}")
    if not root.is_dir():
        raise MissingPathError(f"RealBlur root folder not found: {root}")
    items: List[EvalItem] = []
    missing: List[str] = []
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise InputError(f"{list_file}:{lineno}: expected 'gt_path blur_path', got {line.strip()!r}")
        gt_rel, blur_rel = parts[0], parts[1]
        gt_path, blur_path = root / gt_rel, root / blur_rel
        missing += [str(p) for p in (gt_path, blur_path) if not p.is_file()]
        name = str(Path(blur_rel).with_suffix("")).replace("\\", "/")
        items.append(EvalItem(name=name, target_path=gt_path, input_path=blur_path))
    if missing:
        raise _missing_error(f"files listed in {list_file} are", missing, root)
    if not items:
        raise InputError(f"RealBlur list file {list_file} lists no image pairs")
    names = [it.name for it in items]
    if len(set(names)) != len(names):
        raise InputError(f"RealBlur list file {list_file} lists the same blurred image twice")
    return items


def collect_items(
    preset: str,
    root: Optional[PathLike] = None,
    input_dir: Optional[PathLike] = None,
    target_dir: Optional[PathLike] = None,
    list_file: Optional[PathLike] = None,
    need_inputs: bool = True,
) -> List[EvalItem]:
    """The test pairs of a preset, sorted by name; errors name the folder/file and list unmatched images.

    ``need_inputs=False`` (scoring saved outputs) lets the input folder be absent; when it is present inputs are
    still paired (they are only used for grids then).
    """
    if preset not in PRESETS:
        raise UnknownNameError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
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


def _attach_restored(items: List[EvalItem], restored_dir: Path) -> None:
    """Point every item at its saved output ``<restored_dir>/<name>.<ext>``; error listing the missing ones."""
    if not restored_dir.is_dir():
        raise MissingPathError(f"restored-images folder not found: {restored_dir}")
    missing: List[str] = []
    for it in items:
        found = None
        for ext in (".png",) + tuple(e for e in IMG_EXTENSIONS if e != ".png"):
            for cand in (restored_dir / (it.name + ext), restored_dir / (it.name + ext.upper())):
                if cand.is_file():
                    found = cand
                    break
            if found:
                break
        if found is None:
            missing.append(it.name)
        it.restored_path = found
    if missing:
        raise _missing_error("restored images (matched to targets by file name)", missing, restored_dir)


# ----------------------------------------------------------------------------------------------- metrics


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)


GRAY_CHOICES = ("error", "replicate")
ALPHA_CHOICES = ("error", "drop")


def _layout_hint(path: Path, gray: str, alpha: str, message: str) -> str:
    """The switch that would accept ``path`` when it was refused for its channel layout, else ``""``.

    Found by decoding again with the permissive setting (only on this error path), so the hint does not depend
    on the wording of :func:`read_image`'s messages.
    """
    def readable(g: str, a: str) -> bool:
        try:
            read_image(path, gray=g, alpha=a)
            return True
        except (OSError, ValueError):
            return False

    if gray == "replicate" and alpha == "drop":
        return ""
    if gray != "replicate" and readable("replicate", alpha):
        flag, effect = "--gray replicate", "to copy its grey channel to R, G and B"
    elif alpha != "drop" and readable(gray, "drop"):
        flag, effect = "--alpha drop", "to evaluate its colour channels and ignore the alpha channel"
    else:
        return ""
    return "" if flag in message else f" (pass {flag} {effect})"


def _read_uint8(path: Path, what: str, gray: str = "error", alpha: str = "error") -> np.ndarray:
    try:
        img = read_image(path, gray=gray, alpha=alpha)
    except FileNotFoundError as err:
        raise MissingPathError(f"{what}: {err}") from err
    except ValueError as err:
        raise InputError(f"{what}: {err}{_layout_hint(path, gray, alpha, str(err))}") from err
    return _to_uint8(img)


# ----------------------------------------------------------------------------------------------- output folder


def _timestamp() -> str:
    return time.strftime("%Y%m%d_%H%M%S")


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _check_out_dir(out: Path, used_paths: Sequence[Optional[PathLike]]) -> bool:
    """Whether ``out`` holds earlier results that must be archived or replaced; errors when that is unsafe.

    Unsafe: ``out`` is a file, holds anything ddr-eval does not write (it may be a folder the user keeps other
    things in), contains the working directory, or contains a file this run reads (``--restored``, the data, the
    option file, the checkpoint), which archiving or replacing would take away.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise InputError(f"output folder {out} is a file; choose another --out")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return False
    foreign = [e for e in entries if e not in RESULT_ENTRIES]
    if foreign:
        shown = ", ".join(foreign[:8]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 8 else "")
        raise InputError(
            f"output folder {out} exists and holds files ddr-eval does not write ({shown}); ddr-eval only archives "
            f"or replaces its own results ({', '.join(RESULT_ENTRIES)}): choose another --out"
        )
    absolute = out.resolve()
    if _is_within(Path.cwd(), absolute):
        raise InputError(f"output folder {out} holds earlier results and contains the working directory; "
                         f"run ddr-eval from elsewhere or choose another --out")
    for used in used_paths:
        if used is not None and _is_within(Path(used), absolute):
            raise InputError(f"{used} lies inside the output folder {out}, whose earlier results this run would "
                             f"archive or replace; choose another --out")
    return True


def _prepare_out_dir(out: Path, holds_results: bool, overwrite: bool) -> Optional[Dict[str, str]]:
    """Make ``out`` ready for new results; returns what was done with earlier ones (``None``: there were none).

    Earlier results are moved to ``<out>_archived_<timestamp>`` (a new name, never an existing archive) or,
    with ``overwrite``, deleted; either way no stale image or grid stays next to the new summary.
    """
    previous = None
    if holds_results and overwrite:
        for name in RESULT_ENTRIES:
            entry = out / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
        previous = {"action": "replaced", "folder": str(out)}
        message = f"--overwrite: deleted the previous results in {out}"
    elif holds_results:
        # _check_out_dir refused '.', '..' and any folder holding the working directory, so out.name is a name.
        target = out.with_name(f"{out.name}_archived_{_timestamp()}")
        n = 1
        while target.exists() or target.is_symlink():  # two runs within one second: never overwrite an archive
            target = out.with_name(f"{out.name}_archived_{_timestamp()}_{n}")
            n += 1
        os.replace(out, target)
        previous = {"action": "archived", "folder": str(out), "moved_to": str(target)}
        message = f"previous results in {out} moved to {target} (--overwrite replaces them instead)"
    if previous is not None:
        logger.info(message)
        print(f"[ddr-eval] {message}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    return previous


class _OptionalMetric:
    """A metric that may be unavailable (weights missing); remembers why it was skipped."""

    def __init__(self) -> None:
        self.module: Any = None
        self.status = "disabled"
        self.info: Dict[str, Any] = {}


def _build_lpips(enabled: bool, net: str, device: torch.device) -> _OptionalMetric:
    m = _OptionalMetric()
    if not enabled:
        m.status = "disabled (--no-lpips)"
        return m
    try:
        from ddr_restore.metrics.lpips_metric import build_lpips

        m.module = build_lpips(net=net).to(device).eval()
        m.status = "ok"
    except Exception as err:  # weights not cached, lpips missing, ...: skip with the reason, never fake it
        m.status = f"skipped: {type(err).__name__}: {err}"
        print(f"[ddr-eval] LPIPS skipped: {err}", file=sys.stderr)
    m.info = {"net": net, "version": "0.1", "input": "uint8 outputs scaled to [-1,1]"}
    return m


def _build_ddr(enabled: bool, pretrained: Optional[str], backbone: str, device: torch.device) -> _OptionalMetric:
    m = _OptionalMetric()
    m.info = {"backbone": backbone, "pretrained": pretrained, "clip_random": None,
              "score": "DDR.quality_score of the quantised restored image (official full-image patch protocol)"}
    if not enabled:
        m.status = "disabled (--no-ddr)"
        return m
    try:
        from ddr_restore.ddr.descriptor import DDR

        m.module = DDR(backbone=backbone, pretrained=pretrained).to(device).eval()
        m.info["clip_random"] = bool(getattr(m.module, "pretrained_is_random", pretrained == "none"))
        m.info["clip_source"] = str(getattr(m.module, "source", pretrained))
        m.info["degradations"] = list(getattr(m.module, "degradations", []))
        m.status = "ok"
        if m.info["clip_random"]:
            print("[ddr-eval] WARNING: Q_DDR uses a RANDOMLY initialised CLIP; its values are not meaningful "
                  "quality scores", file=sys.stderr)
    except Exception as err:
        m.status = f"skipped: {type(err).__name__}: {err}"
        print(f"[ddr-eval] Q_DDR skipped: {err}", file=sys.stderr)
    return m


def _pixel_metrics(restored: np.ndarray, target: np.ndarray, preset: str, crop_border: int,
                   test_y_channel: bool) -> Dict[str, Any]:
    if preset == "realblur":
        from ddr_restore.metrics.alignment import realblur_score

        s = realblur_score(restored, target)
        return {"psnr": float(s.psnr), "ssim": float(s.ssim), "ecc_converged": bool(s.ecc_converged)}
    from ddr_restore.metrics.psnr_ssim import calculate_psnr, calculate_ssim

    kw = dict(crop_border=crop_border, input_order="HWC", test_y_channel=test_y_channel)
    return {"psnr": float(calculate_psnr(restored, target, **kw)),
            "ssim": float(calculate_ssim(restored, target, **kw))}


# ----------------------------------------------------------------------------------------------- grids


def make_grid(panels: Sequence[Tuple[str, np.ndarray]]) -> np.ndarray:
    """Side-by-side uint8 RGB panels of equal size, each with a caption band of ``CAPTION_HEIGHT`` pixels above.

    Returns an array of shape (H + CAPTION_HEIGHT, n * W, 3).
    """
    import cv2

    h, w = panels[0][1].shape[:2]
    cols = []
    for caption, img in panels:
        if img.shape[:2] != (h, w):
            raise ValueError(f"grid panels must share one size; {caption!r} is {img.shape[:2]}, expected {(h, w)}")
        band = np.zeros((CAPTION_HEIGHT, w, 3), dtype=np.uint8)
        scale = 0.6
        (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        if tw > w - 8:  # narrow panels: shrink the text to fit
            scale *= max(0.2, (w - 8) / tw)
            (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.putText(band, caption, (4, (CAPTION_HEIGHT + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
        cols.append(np.concatenate([band, img], axis=0))
    return np.concatenate(cols, axis=1)


# ----------------------------------------------------------------------------------------------- main routine


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InputError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from err
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device {device!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return dev


def _new_keys(opt: Dict[str, Any], overrides: Sequence[str]) -> List[str]:
    """The ``--set`` key paths that the option file did not have (likely typos; they are applied anyway)."""
    from ddr_restore.train.options import parse_override

    new = []
    for text in overrides:
        parts, _ = parse_override(text)
        node: Any = opt
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                new.append(".".join(parts))
                break
            node = node[part]
    return new


def _mean(values: List[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def evaluate(
    preset: str = "folder",
    *,
    root: Optional[PathLike] = None,
    input_dir: Optional[PathLike] = None,
    target_dir: Optional[PathLike] = None,
    list_file: Optional[PathLike] = None,
    restored_dir: Optional[PathLike] = None,
    option_file: Optional[PathLike] = None,
    checkpoint: Optional[PathLike] = None,
    net: Optional[torch.nn.Module] = None,
    out_dir: Optional[PathLike] = None,
    name: Optional[str] = None,
    prefer_ema: bool = True,
    tlc: bool = True,
    tile: Optional[int] = None,
    tile_overlap: int = 32,
    amp: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    lpips: bool = True,
    lpips_net: str = "alex",
    ddr: bool = True,
    ddr_pretrained: Optional[str] = None,
    ddr_backbone: str = "ViT-B-32",
    crop_border: int = 0,
    test_y_channel: bool = False,
    save_images: bool = False,
    grid: int = 0,
    max_images: Optional[int] = None,
    progress: bool = True,
    overwrite: bool = False,
    overrides: Sequence[str] = (),
    gray: str = "error",
    alpha: str = "error",
) -> Dict[str, Any]:
    """Evaluate a network (``option_file`` + ``checkpoint``, or a built ``net``) or saved outputs (``restored_dir``).

    Writes ``<out_dir>/per_image.csv`` and ``<out_dir>/summary.json`` (plus ``images/`` with ``save_images`` and
    ``grid/`` for the first ``grid`` images) and returns the summary dict. ``out_dir`` defaults to
    ``results/<name>``. An ``out_dir`` holding earlier results is moved to ``<out_dir>_archived_<timestamp>``
    first, or with ``overwrite=True`` emptied of them (see :data:`RESULT_ENTRIES`); one holding anything else
    is refused. ``overrides`` are ``KEY.PATH=VALUE`` strings applied to the option file (the trainer's
    ``--set``). ``gray``/``alpha`` say what to do with greyscale/RGBA image files (``"error"``: refuse,
    ``"replicate"``/``"drop"``). LPIPS and Q_DDR are optional: when their weights cannot be loaded they are
    skipped and the reason is recorded (``summary['metrics']['lpips'|'q_ddr']['status']``). See the module
    docstring for the presets and protocols.

    Raises:
        InputError / MissingPathError / UnknownNameError / CheckpointError (``ddr_restore.errors``) for every
        mistake in the arguments, the files or their pairing; the message names the file, folder or key.
    """
    t_start = time.perf_counter()
    model_mode = restored_dir is None
    if model_mode and net is None and (option_file is None or checkpoint is None):
        raise InputError("give either option_file and checkpoint (run the network) or restored_dir (score outputs)")
    if not model_mode and (net is not None or option_file is not None or checkpoint is not None):
        raise InputError("restored_dir scores saved outputs; do not combine it with option_file/checkpoint/net")
    if overrides and option_file is None:
        raise InputError("--set overrides apply to an option file; give one with --opt")
    if crop_border < 0:
        raise InputError(f"crop_border must be >= 0, got {crop_border}")
    if tile is not None and (tile < 1 or tile_overlap < 0 or 2 * tile_overlap >= tile):
        raise InputError(f"need tile >= 1 and 0 <= tile_overlap < tile/2, got tile={tile}, tile_overlap={tile_overlap}")
    if gray not in GRAY_CHOICES:
        raise InputError(f"gray must be one of {', '.join(GRAY_CHOICES)}; got {gray!r}")
    if alpha not in ALPHA_CHOICES:
        raise InputError(f"alpha must be one of {', '.join(ALPHA_CHOICES)}; got {alpha!r}")
    overrides = list(overrides)
    dev = _resolve_device(device)

    items = collect_items(preset, root, input_dir, target_dir, list_file, need_inputs=model_mode)
    if max_images is not None:
        items = items[: max(0, int(max_images))]
    if not model_mode:
        _attach_restored(items, Path(restored_dir))

    opt_name = None
    if option_file is not None:
        from ddr_restore.eval.inference import load_option_file

        opt = load_option_file(option_file, overrides)
        opt_name = opt.get("name")
        for key in _new_keys(load_option_file(option_file), overrides) if overrides else []:
            print(f"[ddr-eval] note: --set {key}: {option_file} has no such key; it is added", file=sys.stderr)
    if name is None:
        name = opt_name or (Path(restored_dir).name if restored_dir is not None else preset)
    out = Path(out_dir) if out_dir is not None else Path("results") / str(name)
    # Checked before the slow parts (metrics, network) so a refusal comes at once; acted on just before writing.
    holds_results = _check_out_dir(out, [root, input_dir, target_dir, list_file, restored_dir, option_file,
                                         checkpoint])

    # Optional metrics are built before any inference so that a failure shows up at once.
    lp = _build_lpips(lpips, lpips_net, dev)
    dd = _build_ddr(ddr, ddr_pretrained, ddr_backbone, dev)

    network_info: Dict[str, Any] = {}
    if model_mode:
        if net is None:
            from ddr_restore.eval.inference import load_restoration_model

            net = load_restoration_model(option_file, checkpoint, prefer_ema=prefer_ema, tlc=tlc, device=dev,
                                         overrides=overrides)
        else:
            net = net.to(dev).eval()
        network_info = {
            "network_g": getattr(net, "ddr_network_opt", {"type": type(net).__name__}),
            "checkpoint_key": getattr(net, "ddr_checkpoint_key", None),
            "tlc": tlc, "tile": tile, "tile_overlap": tile_overlap if tile else None, "amp": amp,
        }

    from tqdm import tqdm

    previous = _prepare_out_dir(out, holds_results, overwrite)
    rows: List[Dict[str, Any]] = []
    infer_seconds: List[float] = []
    n_grid = 0
    for it in tqdm(items, desc=f"ddr-eval {preset}", disable=not progress, unit="img"):
        target = _read_uint8(it.target_path, "target image", gray, alpha)
        inp = _read_uint8(it.input_path, "input image", gray, alpha) if it.input_path is not None else None
        seconds = None
        if model_mode:
            if inp.shape != target.shape:
                raise InputError(f"input {it.input_path} is {inp.shape[1]}x{inp.shape[0]} but target "
                                 f"{it.target_path} is {target.shape[1]}x{target.shape[0]}")
            from ddr_restore.eval.inference import restore

            x = img2tensor(inp).unsqueeze(0).to(dev)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            y = restore(net, x, tile=tile, tile_overlap=tile_overlap, amp=amp)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - t0
            infer_seconds.append(seconds)
            restored = tensor2img(y)
            if restored.shape != target.shape:
                raise InputError(f"network output for {it.input_path} is {restored.shape}, target "
                                 f"{it.target_path} is {target.shape} (does the option file describe a "
                                 f"network for this task?)")
        else:
            restored = _read_uint8(it.restored_path, "restored image", gray, alpha)
            if restored.shape != target.shape:
                raise InputError(f"size mismatch: restored {it.restored_path} is {restored.shape[1]}x"
                                 f"{restored.shape[0]} but target {it.target_path} is "
                                 f"{target.shape[1]}x{target.shape[0]}")

        pix = _pixel_metrics(restored, target, preset, crop_border, test_y_channel)
        psnr = pix["psnr"]
        row: Dict[str, Any] = {"name": it.name, **pix, "lpips": None, "q_ddr": None, "seconds": seconds}
        if lp.module is not None or dd.module is not None:
            rt = img2tensor(restored).unsqueeze(0).to(dev)
            with torch.inference_mode():
                if lp.module is not None:
                    tt = img2tensor(target).unsqueeze(0).to(dev)
                    row["lpips"] = float(lp.module(rt * 2 - 1, tt * 2 - 1).mean())
                if dd.module is not None:
                    row["q_ddr"] = float(dd.module.quality_score(rt).mean())
        saved = None
        if save_images:
            saved = write_image(out / "images" / it.out_rel, restored)
        if n_grid < grid:
            panels = []
            if inp is not None and inp.shape == restored.shape:
                panels.append(("input", inp))
            label = "restored (aligned) PSNR" if preset == "realblur" else "restored PSNR"
            panels += [(f"{label} {psnr:.2f} dB", restored), ("target", target)]
            write_image(out / "grid" / it.out_rel, make_grid(panels))
            n_grid += 1
        row.update({
            "target_path": str(it.target_path),
            "input_path": str(it.input_path) if it.input_path else "",
            "restored_path": str(saved or it.restored_path or ""),
        })
        rows.append(row)

    columns = ["name", "psnr", "ssim", "lpips", "q_ddr", "seconds"]
    columns += ["ecc_converged"] if preset == "realblur" else []
    columns += ["input_path", "target_path", "restored_path"]
    with open(out / "per_image.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})

    import ddr_restore

    total = time.perf_counter() - t_start
    protocol = PROTOCOLS[preset].format(cb=crop_border, y="Y channel (BT.601)" if test_y_channel else "no Y conversion")
    summary: Dict[str, Any] = {
        "name": name,
        "preset": preset,
        "mode": "model" if model_mode else "restored",
        "ddr_restore_version": ddr_restore.__version__,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "option_file": str(option_file) if option_file is not None else None,
        "overrides": overrides,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "network": network_info or None,
        "data": {
            "root": str(root) if root is not None else None,
            "input_dir": str(input_dir) if input_dir is not None else None,
            "target_dir": str(target_dir) if target_dir is not None else None,
            "list_file": str(list_file) if list_file is not None else None,
            "restored_dir": str(restored_dir) if restored_dir is not None else None,
            "gray": gray,
            "alpha": alpha,
        },
        "protocol": protocol,
        "metrics": {
            "psnr": {"crop_border": crop_border, "test_y_channel": test_y_channel,
                     "aligned": preset == "realblur"},
            **({"ecc_failures": sum(1 for r in rows if not r.get("ecc_converged", True))}
               if preset == "realblur" else {}),
            "ssim": {"crop_border": crop_border, "test_y_channel": test_y_channel, "variant": (
                "RealBlur masked SSIM" if preset == "realblur" else "BasicSR per-channel 2-D Gaussian")},
            "lpips": {"status": lp.status, **lp.info},
            "q_ddr": {"status": dd.status, **dd.info},
        },
        "clip_weights": (None if dd.module is None else ("random" if dd.info["clip_random"] else "pretrained")),
        "num_images": len(rows),
        "mean": {
            "psnr": _mean([r["psnr"] for r in rows]),
            "ssim": _mean([r["ssim"] for r in rows]),
            "lpips": _mean([r["lpips"] for r in rows]),
            "q_ddr": _mean([r["q_ddr"] for r in rows]),
        },
        "seconds_per_image": {
            "inference": _mean(infer_seconds) if infer_seconds else None,
            "total": total / max(1, len(rows)),
        },
        "device": str(dev),
        "outputs": {"csv": str(out / "per_image.csv"), "images": str(out / "images") if save_images else None,
                    "grid": str(out / "grid") if grid else None},
        "previous_results": previous,
    }
    with open(out / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


# ----------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The ``ddr-eval`` argument parser."""
    import ddr_restore

    p = argparse.ArgumentParser(
        prog="ddr-eval",
        description="Evaluate a restoration network (or saved outputs) on GoPro, RealBlur or paired folders.",
        epilog="An existing results folder is never mixed with a new run: it is moved to "
               "<out>_archived_<timestamp>, or replaced with --overwrite. Errors are one line and exit status 2 "
               "(--debug adds the traceback). Example: ddr-eval --preset gopro --root datasets/GoPro "
               "--opt experiments/<name>/<file>.yml --checkpoint experiments/<name>/models/net_g_latest.pth",
    )
    # Same line as the other console scripts: "<prog> (ddr_restore) <version>".
    p.add_argument("--version", action="version", version=f"%(prog)s (ddr_restore) {ddr_restore.__version__}",
                   help="print the program's version and exit")
    p.add_argument("--preset", choices=PRESETS, default="folder", help="dataset layout and protocol (default folder)")
    p.add_argument("--root", help="dataset root: datasets/GoPro (gopro), the RealBlur folder (realblur, with --list)")
    p.add_argument("--input-dir", help="folder of degraded inputs (overrides the preset layout)")
    p.add_argument("--target-dir", help="folder of ground-truth images (overrides the preset layout)")
    p.add_argument("--list", dest="list_file", help="RealBlur list file (lines 'gt_rel blur_rel'), relative to --root")
    src = p.add_argument_group("what to score (either --opt and --checkpoint, or --restored)")
    src.add_argument("-opt", "--opt", help="training/test option file (YAML); its network_g is built (use the copy "
                     "in experiments/<name>/: it is the one the checkpoint was trained with)")
    src.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override one option of --opt (VALUE parsed as YAML, as train.py --set); repeatable, "
                          "e.g. --set network_g.width=32")
    src.add_argument("--checkpoint", help="net_g_<iter>.pth (params_ema preferred, else params)")
    src.add_argument("--restored", help="folder of existing outputs, matched to targets by file name")
    src.add_argument("--no-ema", action="store_true", help="load 'params' even when 'params_ema' exists")
    src.add_argument("--no-tlc", action="store_true", help="build NAFNet instead of NAFNetLocal (TLC)")
    src.add_argument("--tile", type=int, default=None, help="tile side for tiled inference (default: whole image)")
    src.add_argument("--tile-overlap", type=int, default=32, help="overlap between tiles in pixels (default 32)")
    src.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype on CUDA (default fp32)")
    src.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    m = p.add_argument_group("metrics")
    m.add_argument("--crop-border", type=int, default=0, help="pixels cropped from each border (default 0)")
    m.add_argument("--test-y-channel", action="store_true", help="PSNR/SSIM on BT.601 Y instead of RGB")
    m.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    m.add_argument("--lpips-net", default="alex", choices=["alex", "vgg"], help="LPIPS backbone (default alex)")
    m.add_argument("--no-ddr", action="store_true", help="skip the Q_DDR quality score")
    m.add_argument("--ddr-pretrained", default=None,
                   help="CLIP weights for Q_DDR: an open_clip tag, a checkpoint path, or 'none' (random CLIP; "
                        "recorded as such); default $DDR_CLIP_CHECKPOINT if set, else 'openai'")
    m.add_argument("--ddr-backbone", default="ViT-B-32", help="open_clip model name for Q_DDR (default ViT-B-32)")
    img = p.add_argument_group("image files (RGB expected, as in training and ddr-score)")
    img.add_argument("--gray", choices=GRAY_CHOICES, default="error",
                     help="greyscale files: 'error' (default) stops with the file's name, 'replicate' copies the "
                          "grey channel to R, G and B")
    img.add_argument("--alpha", choices=ALPHA_CHOICES, default="error",
                     help="RGBA files: 'error' (default) stops with the file's name, 'drop' ignores the alpha "
                          "channel")
    o = p.add_argument_group("outputs")
    o.add_argument("--name", help="run name (default: the option file's name, or the restored folder's name)")
    o.add_argument("--out", help="output folder (default results/<name>); if it holds earlier results they are "
                                 "moved to <out>_archived_<timestamp> (see --overwrite)")
    o.add_argument("--overwrite", action="store_true",
                   help="delete the earlier results in the output folder instead of archiving them")
    o.add_argument("--save-images", action="store_true", help="write the restored images (PNG, same names)")
    o.add_argument("--grid", type=int, default=0, metavar="N", help="write input|restored|target PNGs for N images")
    o.add_argument("--max-images", type=int, default=None, help="evaluate only the first N pairs (smoke tests)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true",
                   help="print the full traceback of an error (default: one 'ddr-eval: error: ...' line, exit 2)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Console script ``ddr-eval``; prints the mean metrics and where the files went.

    A user error prints one ``ddr-eval: error: ...`` line and exits with status 2 (``--debug``: with traceback).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.restored is None and (args.opt is None or args.checkpoint is None):
        parser.error("give --opt and --checkpoint (run a network) or --restored DIR (score saved outputs)")
    if args.restored is not None and (args.opt is not None or args.checkpoint is not None):
        parser.error("--restored cannot be combined with --opt/--checkpoint")
    if args.overrides and args.opt is None:
        parser.error("--set applies to the option file; it needs --opt")

    def run() -> Dict[str, Any]:
        return evaluate(
            args.preset, root=args.root, input_dir=args.input_dir, target_dir=args.target_dir,
            list_file=args.list_file, restored_dir=args.restored, option_file=args.opt, checkpoint=args.checkpoint,
            out_dir=args.out, name=args.name, prefer_ema=not args.no_ema, tlc=not args.no_tlc, tile=args.tile,
            tile_overlap=args.tile_overlap, amp=args.amp, device=args.device, lpips=not args.no_lpips,
            lpips_net=args.lpips_net, ddr=not args.no_ddr, ddr_pretrained=args.ddr_pretrained,
            ddr_backbone=args.ddr_backbone, crop_border=args.crop_border, test_y_channel=args.test_y_channel,
            save_images=args.save_images, grid=args.grid, max_images=args.max_images,
            progress=not args.no_progress, overwrite=args.overwrite, overrides=args.overrides, gray=args.gray,
            alpha=args.alpha,
        )

    summary = run_console("ddr-eval", run, debug=args.debug)
    mean = summary["mean"]
    parts = [f"{k.upper()} {v:.4f}" for k, v in mean.items() if v is not None]
    print(f"{summary['name']}: {summary['num_images']} images | " + " | ".join(parts))
    print(f"wrote {summary['outputs']['csv']} and {Path(summary['outputs']['csv']).with_name('summary.json')}")
    return summary


if __name__ == "__main__":  # pragma: no cover
    main()
