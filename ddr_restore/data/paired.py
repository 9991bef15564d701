"""Paired (degraded, ground-truth) image datasets from folders, GoPro_Large trees or list files (RealBlur).

Every problem with the data is reported when the dataset is built, naming the files, so a bad file stops a run
before its first iteration rather than at a validation hours later: a missing folder, an empty folder, lq/gt files
without a partner, list-file entries that do not exist (with line numbers), and, from the image headers of every
file (:func:`ddr_restore.imageio.scan_image_files`), unreadable or truncated files, bit depths other than 8/16,
greyscale or alpha files the ``gray``/``alpha`` options do not allow, pairs whose sizes disagree and images smaller
than ``gt_size``. All bad files are listed in one :class:`~ddr_restore.errors.InputError`. The header check costs
about 0.03-0.07 ms a file (0.2 s for 3,000 1280x720 PNGs) against 40-90 ms for decoding one such PNG on a 2-core
machine (``scripts/bench_header_check.py``), so it stays cheap for the 2,103 GoPro training pairs; sizes and
channels are checked again after decoding.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ddr_restore.data.transforms import augment, pad_pair_to_size, paired_center_crop, paired_random_crop
from ddr_restore.errors import InputError, MissingPathError
from ddr_restore.imageio import (
    DATASET_HINT,
    IMG_EXTENSIONS,
    ImageHeader,
    ImageProblem,
    check_policy,
    format_problems,
    img2tensor,
    list_images,
    read_image_native,
    scan_image_files,
    summarize_headers,
)
from ddr_restore.registry import DATASET_REGISTRY

__all__ = ["PairedImageDataset", "LAYOUTS"]

PathLike = Union[str, os.PathLike]
LAYOUTS = ("folder", "realblur", "gopro")
CHECK_FILES = (True, False, "header", "decode", "off")
_SHOW = 5  # how many offending names an error message lists


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(str(n) for n in names[:_SHOW])
    return shown + (f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else "")


@DATASET_REGISTRY.register()
class PairedImageDataset(torch.utils.data.Dataset):
    """Pairs of degraded (lq) and ground-truth (gt) images, BasicSR-style options.

    Layouts (``layout``):
      * ``"folder"`` (default; GoPro/NAFNet/Restormer ``input``/``target`` folders): ``dataroot_lq`` and
        ``dataroot_gt`` hold files with matching names. As in BasicSR, ``filename_tmpl`` maps a **gt** stem to the
        lq stem (``'{}x4'``: ``0001.png`` <- ``0001x4.png``); extensions may differ. With ``meta_info_file`` the
        pairs come from a list instead, relative to the two roots: one gt name per line (BasicSR meta-info lines
        ``name (h,w,c)`` also work), or ``lq_name gt_name`` per line.
      * ``"realblur"``: ``meta_info_file`` is a RealBlur list (``RealBlur_J_test_list.txt``): each line is
        ``<gt_rel_path> <blur_rel_path>``, relative to ``dataroot_gt`` and ``dataroot_lq`` (usually one folder).
      * ``"gopro"``: a GOPRO_Large split, ``<root>/<sequence>/{blur,sharp}/*.png``, with ``dataroot_lq`` and
        ``dataroot_gt`` the split folder (the same one). Sample names get the sequence as prefix because frame
        names repeat across sequences.
    Blank lines and ``#`` comments in list files are skipped; paths in list files cannot contain spaces.

    Phases:
      * ``"train"``: a random aligned ``gt_size`` crop (the lq crop is ``gt_size // scale``), then the random
        flips/rotation of ``use_hflip``/``use_rot`` (BasicSR's ``augment``). ``gt_size`` is required.
      * ``"val"``: whole images; when ``gt_size`` is given, the centre ``gt_size`` crop instead (Restormer's
        validation protocol; deterministic). For SR (``scale > 1``) a gt up to ``scale - 1`` pixels larger than
        ``lq * scale`` is cropped to it, as BasicSR does.
    Images smaller than ``gt_size`` are an error unless ``pad_to_gt_size`` is true; then they are mirror-padded
    at the bottom/right (edge pixel repeated; no black borders for the network to learn).

    Randomness uses torch's RNG, which DataLoader seeds per worker (``base_seed + worker_id``), so workers differ
    and a run seeded with ``torch.manual_seed`` is reproducible without a ``worker_init_fn``.

    Files (the project-wide policy of :func:`ddr_restore.imageio.read_image`): 8- or 16-bit PNG, JPEG, BMP, TIFF,
    WebP or PPM/PGM; 16-bit files are read at full precision. ``gray: replicate`` accepts greyscale files (the
    channel repeated into RGB) and ``alpha: drop`` files with an alpha channel (it is ignored); both are errors by
    default (``error``), because a greyscale or RGBA file in an RGB dataset is more often a mistake than not.

    Checks at build time (``check_files``): ``true``/``"header"`` (default) reads every file's header (format,
    channels, bit depth, size; a truncated file is recognised from its end) and reports all bad files in one
    InputError; ``"decode"`` also decodes every file (finds damage inside compressed pixel data; about as slow as
    one epoch of reading); ``false``/``"off"`` checks nothing (problems then surface when an item is loaded).
    ``check_sizes: false`` is the older spelling of ``check_files: false``.

    Items: ``{"lq": (3,h,w) float32 [0,1] RGB, "gt": (3,H,W), "lq_path": str, "gt_path": str}``.

    Aliases accepted for option files of the original projects: ``use_flip`` (NAFNet) for ``use_hflip`` and
    ``geometric_augs`` (Restormer: all 8 flips/rotations) for ``use_hflip`` + ``use_rot``. Only the ``disk``
    ``io_backend`` is supported (lmdb is not).
    """

    def __init__(
        self,
        dataroot_lq: PathLike,
        dataroot_gt: PathLike,
        phase: str = "train",
        gt_size: Optional[int] = None,
        use_hflip: bool = False,
        use_rot: bool = False,
        meta_info_file: Optional[PathLike] = None,
        layout: str = "folder",
        filename_tmpl: str = "{}",
        pad_to_gt_size: bool = False,
        scale: int = 1,
        name: Optional[str] = None,
        io_backend: Optional[Mapping[str, Any]] = None,
        use_flip: Optional[bool] = None,
        geometric_augs: Optional[bool] = None,
        gray: str = "error",
        alpha: str = "error",
        check_files: Union[bool, str] = True,
        check_sizes: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if phase not in ("train", "val"):
            raise InputError(f"phase must be 'train' or 'val', got {phase!r}")
        if layout not in LAYOUTS:
            raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise InputError(f"scale must be a positive integer, got {scale!r}")
        if gt_size is not None and (isinstance(gt_size, bool) or not isinstance(gt_size, int) or gt_size < 1):
            raise InputError(f"gt_size must be a positive integer, got {gt_size!r}")
        if phase == "train" and gt_size is None:
            raise InputError("gt_size is required for phase 'train' (the training patch size)")
        if gt_size is not None and gt_size % scale:
            raise InputError(f"gt_size {gt_size} must be a multiple of scale {scale}")
        if io_backend is not None:
            backend = io_backend.get("type") if isinstance(io_backend, Mapping) else io_backend
            if backend != "disk":
                raise InputError(f"io_backend type {backend!r} is not supported; use {{type: disk}}")
        if "{}" not in filename_tmpl:
            raise InputError(f"filename_tmpl must contain '{{}}', got {filename_tmpl!r}")
        check_policy(gray, alpha)
        if check_files not in CHECK_FILES or isinstance(check_files, int) and not isinstance(check_files, bool):
            raise InputError(f"check_files must be true, false, 'header', 'decode' or 'off'; got {check_files!r}")
        if check_sizes is not None:
            if not check_sizes:
                check_files = False
            elif check_files in (False, "off"):
                raise InputError("check_sizes: true contradicts check_files: false; give only check_files")
        if use_flip is not None:
            if use_hflip and not use_flip:
                raise InputError("use_flip (NAFNet alias) contradicts use_hflip; give only one")
            use_hflip = bool(use_flip)
        if geometric_augs:
            use_hflip = use_rot = True

        self.name = name
        self.phase = phase
        self.gt_size = gt_size
        self.scale = scale
        self.use_hflip = bool(use_hflip)
        self.use_rot = bool(use_rot)
        self.pad_to_gt_size = bool(pad_to_gt_size)
        self.layout = layout
        self.filename_tmpl = filename_tmpl
        self.gray = gray
        self.alpha = alpha
        self.check_files = "header" if check_files is True else ("off" if check_files is False else check_files)
        self.headers: Dict[Path, ImageHeader] = {}  # filled by the build-time check
        self.lq_root = Path(os.path.expanduser(str(dataroot_lq)))
        self.gt_root = Path(os.path.expanduser(str(dataroot_gt)))
        self.meta_info_file = Path(os.path.expanduser(str(meta_info_file))) if meta_info_file is not None else None

        if layout == "realblur":
            if self.meta_info_file is None:
                raise InputError("layout 'realblur' needs meta_info_file (a list of '<gt_path> <blur_path>' lines)")
            self.pairs = self._pairs_from_list(realblur=True)
        elif layout == "gopro":
            self.pairs = self._pairs_from_gopro()
        elif self.meta_info_file is not None:
            self.pairs = self._pairs_from_list(realblur=False)
        else:
            self.pairs = self._pairs_from_folders()
        if self.check_files != "off":
            self._check_files()

    # ------------------------------------------------------------------ pair discovery
    def _folder_check(self, folder: Path, key: str) -> None:
        if not folder.is_dir():
            raise MissingPathError(f"{key} folder not found: {folder}")

    def _pairs_from_folders(self) -> List[Tuple[Path, Path]]:
        self._folder_check(self.lq_root, "dataroot_lq")
        self._folder_check(self.gt_root, "dataroot_gt")
        return self._match(self.lq_root, self.gt_root, prefix="")

    def _match(self, lq_dir: Path, gt_dir: Path, prefix: str) -> List[Tuple[Path, Path]]:
        gt_files = list_images(gt_dir)
        lq_files = list_images(lq_dir)
        if not gt_files:
            raise InputError(f"no images ({', '.join(IMG_EXTENSIONS)}) in dataroot_gt folder {gt_dir}")
        if not lq_files:
            raise InputError(f"no images ({', '.join(IMG_EXTENSIONS)}) in dataroot_lq folder {lq_dir}")
        lq_by_stem: Dict[str, List[Path]] = {}
        for p in lq_files:
            lq_by_stem.setdefault(p.stem, []).append(p)
        pairs, missing, ambiguous, used = [], [], [], set()
        for gt in gt_files:
            want = self.filename_tmpl.format(gt.stem)
            cands = lq_by_stem.get(want, [])
            exact = [p for p in cands if p.suffix == gt.suffix]
            if exact:
                cands = exact  # the BasicSR case: same extension
            if not cands:
                missing.append(prefix + gt.name)
            elif len(cands) > 1:
                ambiguous.append(prefix + want)
            else:
                pairs.append((cands[0], gt))
                used.add(cands[0])
        if ambiguous:
            raise InputError(f"several lq files with the same name stem in {lq_dir}: {_few(ambiguous)}")
        orphans = [prefix + p.name for p in lq_files if p not in used]
        if missing or orphans:
            parts = []
            if missing:
                parts.append(
                    f"{len(missing)} gt image(s) in {gt_dir} have no lq partner in {lq_dir} "
                    f"(filename_tmpl {self.filename_tmpl!r}): {_few(missing)}"
                )
            if orphans:
                parts.append(f"{len(orphans)} lq image(s) in {lq_dir} have no gt partner in {gt_dir}: {_few(orphans)}")
            raise MissingPathError("; ".join(parts))
        return pairs

    def _pairs_from_gopro(self) -> List[Tuple[Path, Path]]:
        self._folder_check(self.lq_root, "dataroot_lq")
        self._folder_check(self.gt_root, "dataroot_gt")
        seqs = sorted(p.name for p in self.gt_root.iterdir() if (p / "sharp").is_dir())
        if not seqs:
            raise InputError(f"layout 'gopro': no <sequence>/sharp folders in dataroot_gt {self.gt_root}")
        no_blur = [s for s in seqs if not (self.lq_root / s / "blur").is_dir()]
        if no_blur:
            raise MissingPathError(
                f"layout 'gopro': sequences without a blur folder in {self.lq_root}: {_few(no_blur)}"
            )
        pairs: List[Tuple[Path, Path]] = []
        for s in seqs:
            pairs.extend(self._match(self.lq_root / s / "blur", self.gt_root / s / "sharp", prefix=f"{s}/"))
        return pairs

    def _pairs_from_list(self, realblur: bool) -> List[Tuple[Path, Path]]:
        path = self.meta_info_file
        assert path is not None
        if not path.is_file():
            raise MissingPathError(f"meta_info_file not found: {path}")
        pairs: List[Tuple[Path, Path]] = []
        missing: List[str] = []
        with open(path, "r", encoding="utf-8") as fh:
            for lineno, raw in enumerate(fh, start=1):
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                tokens = line.split()
                if realblur:
                    if len(tokens) != 2:
                        raise InputError(
                            f"{path}, line {lineno}: expected '<gt_path> <blur_path>', got {line!r}"
                        )
                    gt, lq = self.gt_root / tokens[0], self.lq_root / tokens[1]
                elif len(tokens) == 1 or (len(tokens) >= 2 and tokens[1].startswith("(")):
                    gt_name = Path(tokens[0])  # one gt name (BasicSR meta-info may add "(h,w,c)")
                    gt = self.gt_root / gt_name
                    lq = self.lq_root / gt_name.with_name(self.filename_tmpl.format(gt_name.stem) + gt_name.suffix)
                elif len(tokens) == 2:
                    lq, gt = self.lq_root / tokens[0], self.gt_root / tokens[1]
                else:
                    raise InputError(f"{path}, line {lineno}: expected 'name' or '<lq_name> <gt_name>', got {line!r}")
                for p in (lq, gt):
                    if not p.is_file():
                        missing.append(f"line {lineno}: {p}")
                pairs.append((lq, gt))
        if missing:
            raise MissingPathError(f"{len(missing)} file(s) listed in {path} do not exist: {_few(missing)}")
        if not pairs:
            raise InputError(f"meta_info_file {path} lists no image pairs")
        return pairs

    def _check_files(self) -> None:
        """Read every file's header; raise one InputError naming all bad files and pairs (see the class doc)."""
        files = [p for pair in self.pairs for p in pair]
        self.headers, problems = scan_image_files(
            files, gray=self.gray, alpha=self.alpha, decode=self.check_files == "decode"
        )
        small = False
        for lq, gt in self.pairs:
            lq_h, gt_h = self.headers.get(lq), self.headers.get(gt)
            if lq_h is None or gt_h is None:
                continue  # already reported
            (lw, lh), (gw, gh) = lq_h.size, gt_h.size
            if not self._sizes_ok(lw, lh, gw, gh):
                problems.append(ImageProblem(lq, "size", f"{lw}x{lh} (WxH) but its gt {gt} is {gw}x{gh}; "
                                                         f"{self._expected_gt(lw, lh)}"))
            elif self.gt_size is not None and not self.pad_to_gt_size and min(gw, gh) < self.gt_size:
                problems.append(ImageProblem(gt, "small", f"{gw}x{gh} (WxH), smaller than gt_size {self.gt_size}"))
                small = True
        if problems:
            n_files = len(self.headers) + sum(p.kind not in ("size", "small") for p in problems)
            message = format_problems(problems, n_files, hint=DATASET_HINT)
            if small:
                message += ". Use a smaller gt_size or pad_to_gt_size: true"
            raise InputError(f"dataset {self.name!r}: {message}" if self.name else message)

    def file_summary(self) -> str:
        """What the build-time check saw, e.g. ``"22 files: 22 8-bit RGB PNG; 1280x720"`` (empty when off)."""
        return summarize_headers(self.headers.values()) if self.headers else ""

    def _expected_gt(self, lw: int, lh: int) -> str:
        s = self.scale
        if self.phase == "val" and s > 1:
            return f"expected {lw * s}x{lh * s} to {lw * s + s - 1}x{lh * s + s - 1} (lq size x scale {s})"
        return f"expected {lw * s}x{lh * s} (lq size x scale {s})"

    def _sizes_ok(self, lw: int, lh: int, gw: int, gh: int) -> bool:
        s = self.scale
        if self.phase == "val" and s > 1:
            return (gw // s, gh // s) == (lw, lh)  # BasicSR crops such a gt to lq*scale at validation
        return (lw * s, lh * s) == (gw, gh)

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        """Number of (lq, gt) pairs."""
        return len(self.pairs)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        """Load, check and (train) crop/augment pair ``index``; see the class docstring for the item format."""
        lq_path, gt_path = self.pairs[index]
        # The stored integers (uint8/uint16) as RGB views: cropping, padding and flipping move integers, and only
        # the patch is converted to float by img2tensor (the values read_image would give; same RNG draws), which
        # saves converting and copying whole frames (scripts/bench_loader.py).
        lq = read_image_native(lq_path, gray=self.gray, alpha=self.alpha, hint=DATASET_HINT)
        gt = read_image_native(gt_path, gray=self.gray, alpha=self.alpha, hint=DATASET_HINT)
        lh, lw = lq.shape[:2]
        gh, gw = gt.shape[:2]
        if not self._sizes_ok(lw, lh, gw, gh):
            raise InputError(
                f"size mismatch: {lq_path} is {lw}x{lh} (WxH) but {gt_path} is {gw}x{gh}; "
                f"{self._expected_gt(lw, lh)}"
            )
        if self.scale > 1:
            gt = gt[: lh * self.scale, : lw * self.scale]
        if self.gt_size is not None:
            if self.pad_to_gt_size:
                lq, gt = pad_pair_to_size(lq, gt, self.gt_size, self.scale)
            elif min(gt.shape[:2]) < self.gt_size:
                raise InputError(
                    f"{gt_path} is {gw}x{gh} (WxH), smaller than gt_size {self.gt_size}; "
                    "use a smaller gt_size or pad_to_gt_size: true"
                )
            if self.phase == "train":
                lq, gt = paired_random_crop(
                    lq, gt, self.gt_size, self.scale, lq_name=str(lq_path), gt_name=str(gt_path)
                )
            else:
                lq, gt = paired_center_crop(lq, gt, self.gt_size, self.scale)
        if self.phase == "train" and (self.use_hflip or self.use_rot):
            lq, gt = augment([lq, gt], hflip=self.use_hflip, rotation=self.use_rot, contiguous=False)
        return {"lq": img2tensor(lq), "gt": img2tensor(gt), "lq_path": str(lq_path), "gt_path": str(gt_path)}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, phase={self.phase!r}, layout={self.layout!r}, "
            f"pairs={len(self)}, gt_size={self.gt_size}, scale={self.scale})"
        )
