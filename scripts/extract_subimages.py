#!/usr/bin/env python
"""Cut every image of one or more folders into overlapping square sub-images (tiles) saved as PNG.

This is how the official NAFNet, Restormer and BasicSR recipes prepare GoPro/DIV2K training data: the training
loader then decodes a 512x512 PNG per sample instead of a whole 1280x720 frame (about 3.5x fewer pixels), and
still takes its random ``gt_size`` crop (256) from it. ``scripts/bench_loader.py`` measures the difference.

Tiling rule (one axis of length L, tile size c = ``--crop-size``, step s = ``--step``, t = ``--thresh-size``;
positions and sizes in the pixels of the largest image of a group, the ground truth of an SR pair):

* tiles start at 0, s, 2s, ... as long as the tile fits (start + c <= L);
* r = L - (last start + c) pixels are then left at the far edge. If r > t, one more tile is added at L - c,
  aligned with the border (it overlaps its neighbour by more than c - s). If r <= t those r pixels are not cut.
  With t = 0 (the default) every pixel is in at least one tile;
* an image with a side shorter than c is an error (it has no tile).

This is exactly the rule of BasicSR's ``scripts/data_preparation/extract_subimages.py`` (starts from
``np.arange(0, L - c + 1, s)``; the border tile is appended when ``L - (last + c) > thresh_size``, so a remainder
equal to ``thresh_size`` is dropped as well); BasicSR fails on an image smaller than c. NAFNet's GoPro preparation
(``scripts/data_preparation/gopro.py``) uses it with c = 512, s = 256, t = 0 and PNG compression level 3, which
gives 8 tiles per 1280x720 frame (rows at 0 and 208, columns at 0, 256, 512 and 768). Restormer's
``generate_patches_gopro.py`` always adds the border tile (starts below L - c, then L - c) and gives the same
8 tiles for GoPro.

Tiles are named ``<stem>_s001.png``, ``<stem>_s002.png``, ... numbered from 1 in row-major order (the top row from
left to right, then the next row), at least three digits as in BasicSR (which keeps the input's extension; here
tiles are always PNG, lossless). The pixels are written as they are read: bit depth (8/16) and channels (grey,
colour, alpha) are kept.

Folder groups: ``--input A B --output A_OUT B_OUT`` treats A and B as partners: every image stem must exist in both
(a missing partner is an error naming the file), the partners must have the same size, and both get the same
tiles. ``--input``/``--output`` may be repeated for more groups, and one folder per group cuts unpaired images.
With ``--scale S`` (super-resolution pairs) the first folder of each group is the low-resolution one: its images
must be exactly 1/S of their partners and its tile is ``c/S`` pixels at the partner's position divided by S.

Safety: everything (folders, partners, image headers, sizes, name collisions, output folders) is checked before
the first tile is written. An output folder that exists and is not empty is an error unless ``--overwrite``
(which first deletes the tiles of an earlier run there, files named ``*_s<digits>.png``, and leaves other files
alone). Each tile is written to a hidden temporary file in the output folder and renamed into place, so an
interrupted run never leaves a half-written PNG under a tile name.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ddr_restore.errors import InputError, MissingPathError, run_console
from ddr_restore.imageio import IMG_EXTENSIONS, format_problems, list_images, scan_image_files

__all__ = [
    "tile_starts",
    "tile_boxes",
    "tile_name",
    "ImageJob",
    "Summary",
    "plan_jobs",
    "cut_image",
    "extract_subimages",
    "main",
]

PROG = "extract_subimages.py"
PathLike = Union[str, os.PathLike]
TILE_NAME = re.compile(r"^.+_s\d{3,}\.png$")  # what --overwrite may delete
TMP_NAME = re.compile(r"^\..+\.tmp$")  # temporary files of an interrupted run
_SHOW = 5  # files listed by name in one error message

EPILOG = """\
example: the GoPro recipe of NAFNet/Restormer (512x512 tiles with stride 256: 8 per 1280x720 frame, 16,824 per
folder for the 2,103 training pairs)

  python scripts/extract_subimages.py \\
      --input  datasets/GoPro/train/input       datasets/GoPro/train/target \\
      --output datasets/GoPro/train/input_crops datasets/GoPro/train/target_crops --workers 8

  then train on the tiles: in the option file (options/nafnet_ddr.yml, nafnet_psnr.yml, ...) change

    datasets:
      train:
        dataroot_lq: datasets/GoPro/train/input_crops
        dataroot_gt: datasets/GoPro/train/target_crops

  or add  --set datasets.train.dataroot_lq=datasets/GoPro/train/input_crops
          --set datasets.train.dataroot_gt=datasets/GoPro/train/target_crops  to the train.py command.
  gt_size (256) stays: each sample is a random 256 crop of a 512 tile. Validation keeps the full test frames.

  --dry-run prints the number of tiles without writing anything. Super-resolution pairs (LR first):
  python scripts/extract_subimages.py --scale 4 --crop-size 480 --step 240 \\
      --input DIV2K/train_LR_x4 DIV2K/train_HR --output DIV2K/train_LR_x4_sub DIV2K/train_HR_sub
"""


# ---------------------------------------------------------------------------------------------- tiling
def tile_starts(length: int, crop: int, step: int, thresh: int = 0) -> List[int]:
    """Start offsets of the tiles along one axis (see the module docstring for the rule; BasicSR's rule).

    Returns an empty list when ``length < crop`` (no tile fits).
    """
    if length < crop:
        return []
    starts = list(range(0, length - crop + 1, step))
    if length - (starts[-1] + crop) > thresh:
        starts.append(length - crop)  # aligned with the border, overlapping its neighbour
    return starts


def tile_boxes(height: int, width: int, crop: int, step: int, thresh: int = 0) -> List[Tuple[int, int]]:
    """``(top, left)`` of every tile of a ``height`` x ``width`` image, in row-major order (the naming order)."""
    lefts = tile_starts(width, crop, step, thresh)
    return [(top, left) for top in tile_starts(height, crop, step, thresh) for left in lefts]


def tile_name(stem: str, index: int) -> str:
    """File name of tile ``index`` (counted from 1) of image ``stem``: ``<stem>_s001.png``."""
    return f"{stem}_s{index:03d}.png"


# ---------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class ImageJob:
    """One image (with its partners) to cut: the unit of work given to a worker process.

    ``sources[i]`` is cut into ``outputs[i]``; ``factors[i]`` divides positions and tile size for that folder
    (``scale`` for the low-resolution folder of an SR group, else 1). ``height``/``width`` are in the pixels of
    factor 1.
    """

    stem: str
    sources: Tuple[Path, ...]
    outputs: Tuple[Path, ...]
    factors: Tuple[int, ...]
    height: int
    width: int


@dataclass
class Summary:
    """What a run did (or, with ``dry_run``, would do)."""

    images: int = 0
    tiles: int = 0  # tiles per folder: the same number in every folder of a group, summed over groups
    files: int = 0  # tiles over all folders
    folders: List[Path] = field(default_factory=list)
    grids: Dict[Tuple[int, int], Tuple[int, int, int]] = field(default_factory=dict)  # (w, h) -> rows, cols, images
    seconds: float = 0.0
    dry_run: bool = False


def _few(items: Sequence[str]) -> str:
    shown = "; ".join(items[:_SHOW])
    return shown + (f"; ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def _images_by_stem(folder: Path) -> Dict[str, Path]:
    if not folder.is_dir():
        raise MissingPathError(f"input folder not found: {folder}")
    files = list_images(folder)
    if not files:
        raise InputError(f"no images ({', '.join(IMG_EXTENSIONS)}) in input folder {folder}")
    by_stem: Dict[str, Path] = {}
    clashes = []
    for p in files:
        if p.stem in by_stem:
            clashes.append(f"{by_stem[p.stem].name} and {p.name}")
        by_stem[p.stem] = p
    if clashes:  # both would be cut into <stem>_s001.png ...
        raise InputError(f"input folder {folder} has files with the same name stem (their tiles would have the same "
                         f"names): {_few(clashes)}")
    return by_stem


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def plan_jobs(
    groups: Sequence[Tuple[Sequence[PathLike], Sequence[PathLike]]],
    crop_size: int = 512,
    step: int = 256,
    thresh_size: int = 0,
    scale: int = 1,
) -> List[ImageJob]:
    """Check every input (folders, partners, image headers, sizes) and list the images to cut.

    Args:
        groups: ``(input_folders, output_folders)`` per group; the folders of a group are partners.
        crop_size, step, thresh_size, scale: see the module docstring.

    Raises:
        MissingPathError: an input folder does not exist, or an image has no partner in another folder of its group.
        InputError: a bad option, an empty folder, unreadable/truncated files, partners of different sizes,
            images smaller than ``crop_size``, or tiles of two images that would get the same output name.
    """
    _check_numbers(crop_size, step, thresh_size, scale)
    jobs: List[ImageJob] = []
    claimed: Dict[Tuple[Path, str], Path] = {}  # (resolved output folder, stem) -> source, for collisions
    all_inputs = [Path(os.path.expanduser(str(d))) for ins, _ in groups for d in ins]
    for inputs, outputs in groups:
        ins = [Path(os.path.expanduser(str(d))) for d in inputs]
        outs = [Path(os.path.expanduser(str(d))) for d in outputs]
        if not ins or len(ins) != len(outs):
            raise InputError(f"--input {' '.join(map(str, ins))} needs as many --output folders, got "
                             f"{len(outs)}: {' '.join(map(str, outs)) or '(none)'}")
        if scale > 1 and len(ins) < 2:
            raise InputError(f"--scale {scale} needs paired folders (low-resolution folder first); "
                             f"got the single folder {ins[0]}")
        for out in outs:
            for src in all_inputs:
                if out.exists() and src.exists() and _same_folder(out, src):
                    raise InputError(f"output folder {out} is also an input folder; tiles must go to another folder")
        if len({o.resolve() for o in outs}) < len(outs):
            raise InputError(f"the output folders of one group must differ: {' '.join(map(str, outs))}")
        stems = [_images_by_stem(d) for d in ins]
        jobs.extend(_plan_group(ins, outs, stems, crop_size, scale, claimed))
    return jobs


def _plan_group(ins: List[Path], outs: List[Path], stems: List[Dict[str, Path]], crop_size: int, scale: int,
                claimed: Dict[Tuple[Path, str], Path]) -> List[ImageJob]:
    # Partners: every stem must be in every folder.
    missing = []
    all_stems = sorted(set().union(*stems))
    for stem in all_stems:
        have = [s[stem] for s in stems if stem in s]
        for folder, s in zip(ins, stems):
            if stem not in s:
                missing.append(f"{have[0]} has no partner in {folder}")
    if missing:
        raise MissingPathError(f"{len(missing)} image(s) without a partner (files are paired by name stem): "
                               f"{_few(missing)}")
    files = [s[stem] for stem in all_stems for s in stems]
    headers, problems = scan_image_files(files, gray="replicate", alpha="drop")
    if problems:
        raise InputError(format_problems(problems, len(files)))
    factors = tuple([scale] + [1] * (len(ins) - 1)) if scale > 1 else (1,) * len(ins)
    ref = 1 if len(ins) > 1 else 0  # a full-resolution folder gives the tiling size
    bad: List[str] = []
    jobs: List[ImageJob] = []
    for stem in all_stems:
        paths = [s[stem] for s in stems]
        rw, rh = headers[paths[ref]].size
        ok = True
        for p, f in zip(paths, factors):
            w, h = headers[p].size
            if (w * f, h * f) != (rw, rh):
                want = f"{rw // f}x{rh // f}" + (f" (1/{f} of it)" if f > 1 else "")
                bad.append(f"{p} is {w}x{h} (WxH) but its partner {paths[ref]} is {rw}x{rh}; expected {want}")
                ok = False
        if not ok:
            continue
        if min(rw, rh) < crop_size:
            bad.append(f"{paths[ref]} is {rw}x{rh} (WxH), smaller than --crop-size {crop_size}")
            continue
        for p, out in zip(paths, outs):
            key = (out.resolve(), stem)
            if key in claimed:
                bad.append(f"{claimed[key]} and {p} would both be cut into {out / tile_name(stem, 1)}, ...")
            claimed[key] = p
        jobs.append(ImageJob(stem, tuple(paths), tuple(outs), factors, rh, rw))
    if bad:
        raise InputError(f"{len(bad)} problem(s) in {', '.join(map(str, ins))}: {_few(bad)}")
    return jobs


def _check_numbers(crop_size: int, step: int, thresh_size: int, scale: int) -> None:
    for name, value, low in (("--crop-size", crop_size, 1), ("--step", step, 1), ("--thresh-size", thresh_size, 0),
                             ("--scale", scale, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if crop_size % scale or step % scale:
        raise InputError(f"--crop-size {crop_size} and --step {step} must be multiples of --scale {scale} "
                         "(the low-resolution tile is crop/scale pixels at position/scale)")


def _prepare_outputs(folders: Sequence[Path], overwrite: bool, dry_run: bool,
                     log: Callable[[str], None]) -> None:
    """Refuse non-empty output folders (unless ``overwrite``); with it, delete earlier tiles; create folders."""
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"output {folder} exists and is not a folder")
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
        if not entries:
            if not dry_run:
                folder.mkdir(parents=True, exist_ok=True)
            continue
        if not overwrite:
            raise InputError(f"output folder {folder} is not empty ({len(entries)} entries, e.g. {entries[0].name}); "
                             "use --overwrite to replace the tiles there, or choose a new folder")
        stale = [p for p in entries if p.is_file() and (TILE_NAME.match(p.name) or TMP_NAME.match(p.name))]
        others = [p.name for p in entries if p not in stale]
        if dry_run:
            log(f"--overwrite: would delete {len(stale)} earlier tile(s) in {folder}")
        else:
            for p in stale:
                p.unlink()
            log(f"--overwrite: deleted {len(stale)} earlier tile(s) in {folder}")
        if others:
            log(f"note: {len(others)} other file(s) in {folder} are kept (a training set reading this folder sees "
                f"them): {', '.join(others[:_SHOW])}{', ...' if len(others) > _SHOW else ''}")


# ---------------------------------------------------------------------------------------------- cutting
def _decode(path: Path) -> np.ndarray:
    data = np.fromfile(str(path), dtype=np.uint8)  # also handles non-ASCII paths
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise InputError(f"cannot decode image file {path} (damaged pixel data?)")
    return img


def _write_atomic(path: Path, data: bytes) -> None:
    # The temporary name is hidden and does not end in an image extension, so a dataset never lists it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the whole new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cut_image(job: ImageJob, crop_size: int, step: int, thresh_size: int = 0, compression_level: int = 3) -> int:
    """Decode ``job``'s images, write their tiles; returns the number of tiles per folder."""
    boxes = tile_boxes(job.height, job.width, crop_size, step, thresh_size)
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression_level]
    for src, out, f in zip(job.sources, job.outputs, job.factors):
        img = _decode(src)
        want = (job.height // f, job.width // f)
        if img.shape[:2] != want:  # the file changed after the header check
            raise InputError(f"{src} decodes to {img.shape[1]}x{img.shape[0]} (WxH), its header said "
                             f"{want[1]}x{want[0]}")
        size = crop_size // f
        for index, (top, left) in enumerate(boxes, start=1):
            y, x = top // f, left // f
            tile = np.ascontiguousarray(img[y : y + size, x : x + size])
            ok, buf = cv2.imencode(".png", tile, params)
            if not ok:
                raise InputError(f"cannot encode a tile of {src} as PNG ({tile.dtype}, shape {tile.shape})")
            _write_atomic(out / tile_name(job.stem, index), buf.tobytes())
    return len(boxes)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def extract_subimages(
    groups: Sequence[Tuple[Sequence[PathLike], Sequence[PathLike]]],
    crop_size: int = 512,
    step: int = 256,
    thresh_size: int = 0,
    scale: int = 1,
    compression_level: int = 3,
    workers: Optional[int] = None,
    overwrite: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> Summary:
    """Cut the images of ``groups`` into tiles (see the module docstring); returns a :class:`Summary`.

    Args:
        groups: ``(input_folders, output_folders)`` per group; folders of one group are partners.
        crop_size, step, thresh_size, scale: the tiling (module docstring).
        compression_level: PNG compression 0-9 (3 = BasicSR's; higher is smaller and slower to write).
        workers: processes cutting images in parallel (default: the CPUs this process may use).
        overwrite: allow non-empty output folders (their earlier tiles are deleted first).
        dry_run: check everything and count the tiles, write nothing.
        log: where progress lines go.
    """
    if isinstance(compression_level, bool) or not isinstance(compression_level, int) or not 0 <= compression_level <= 9:
        raise InputError(f"--compression-level must be an integer from 0 to 9, got {compression_level!r}")
    workers = _default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers must be an integer >= 1, got {workers!r}")
    start = time.perf_counter()
    jobs = plan_jobs(groups, crop_size, step, thresh_size, scale)
    folders: List[Path] = []
    for job in jobs:
        for out in job.outputs:
            if out not in folders:
                folders.append(out)
    summary = Summary(folders=folders, dry_run=dry_run)
    for job in jobs:
        rows = len(tile_starts(job.height, crop_size, step, thresh_size))
        cols = len(tile_starts(job.width, crop_size, step, thresh_size))
        n = summary.grids.get((job.width, job.height), (rows, cols, 0))[2]
        summary.grids[(job.width, job.height)] = (rows, cols, n + 1)
        summary.images += 1
        summary.tiles += rows * cols
        summary.files += rows * cols * len(job.outputs)
    if step > crop_size:
        log(f"note: --step {step} > --crop-size {crop_size}: {step - crop_size}-pixel gaps between tiles are not cut")
    _prepare_outputs(folders, overwrite, dry_run, log)
    if dry_run:
        summary.seconds = time.perf_counter() - start
        return summary

    done = 0
    every = max(1, -(-len(jobs) // 10))  # about ten progress lines
    args = (crop_size, step, thresh_size, compression_level)
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            cut_image(job, *args)
            done += 1
            if done % every == 0 or done == len(jobs):
                log(f"{done}/{len(jobs)} images")
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            pending = {pool.submit(cut_image, job, *args) for job in jobs}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in finished:
                        fut.result()  # re-raises a worker's error (its message names the file)
                        done += 1
                        if done % every == 0 or done == len(jobs):
                            log(f"{done}/{len(jobs)} images")
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    summary.seconds = time.perf_counter() - start
    return summary


def describe(summary: Summary, crop_size: int) -> str:
    """Human summary, e.g. ``11 images -> 88 tiles of 512x512 per folder (176 files in 2 folders) ...``."""
    verb = "would be written (dry run, nothing written)" if summary.dry_run else f"written in {summary.seconds:.1f} s"
    grids = ", ".join(f"{w}x{h}: {r}x{c} tiles ({n} image{'s' if n != 1 else ''})"
                      for (w, h), (r, c, n) in sorted(summary.grids.items()))
    return (f"{summary.images} images -> {summary.tiles} tiles of {crop_size}x{crop_size} per folder "
            f"({summary.files} files in {len(summary.folders)} folders) {verb}; rows x columns per size: {grids}")


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (documented by ``--help``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Cut every image of one or more folders into overlapping square PNG tiles (the data preparation "
                    "of the NAFNet/Restormer/BasicSR recipes). Partner folders (--input LQ GT) get the same tiles.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", nargs="+", action="append", required=True, metavar="DIR",
                        help="a group of partner folders (images paired by name stem, same sizes; with --scale the "
                             "low-resolution folder first); repeat --input/--output for more groups")
    parser.add_argument("--output", nargs="+", action="append", required=True, metavar="DIR",
                        help="one output folder per --input folder, in the same order")
    parser.add_argument("--crop-size", type=int, default=512, help="tile size in pixels (default 512)")
    parser.add_argument("--step", type=int, default=256, help="distance between tiles (default 256)")
    parser.add_argument("--thresh-size", type=int, default=0,
                        help="a remainder of at most this many pixels at the right/bottom edge gets no border-aligned "
                             "tile (BasicSR's rule; default 0: every pixel is cut)")
    parser.add_argument("--scale", type=int, default=1,
                        help="super-resolution factor: the first folder of each group is 1/scale the size of the "
                             "others")
    parser.add_argument("--compression-level", type=int, default=3, help="PNG compression 0-9 (default 3, BasicSR's)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes (default: the CPUs available, here {_default_workers()})")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow non-empty output folders; earlier tiles (*_s<digits>.png) there are deleted first")
    parser.add_argument("--dry-run", action="store_true", help="check everything and print the tile count only")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of user errors")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: parse ``argv``, cut, print a summary; a user error prints one line and exits 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    groups = list(zip(args.input, args.output))

    def run() -> Summary:
        if len(args.input) != len(args.output):
            raise InputError(f"--input is given {len(args.input)} times but --output {len(args.output)} times; "
                             "give one --output (with as many folders) per --input")
        return extract_subimages(
            groups, crop_size=args.crop_size, step=args.step, thresh_size=args.thresh_size, scale=args.scale,
            compression_level=args.compression_level, workers=args.workers, overwrite=args.overwrite,
            dry_run=args.dry_run, log=lambda line: print(line, flush=True),
        )

    summary = run_console(PROG, run, debug=args.debug)
    print(describe(summary, args.crop_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
