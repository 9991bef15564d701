"""Blind image quality with DDR: ``score_paths`` (library) and the ``ddr-score`` console script.

``ddr-score PATH... [--csv out.csv] [--backbone ViT-B-32] [--pretrained TAG|FILE|none] [--degradations ...]
[--device cpu|cuda] [--gray error|replicate] [--alpha error|drop] [--recursive] [--debug] [--version]``

PATHs are image files or folders (their images, sorted; ``--recursive`` for sub-folders). Each image gets Q_DDR (the
official BIQA patch protocol, higher = better) and one DDR column per degradation type. RGB 8/16-bit images are
accepted; greyscale and RGBA files are errors unless ``--gray replicate`` / ``--alpha drop`` is given. A file that
cannot be scored is reported in its row (``error`` column) and the command exits with status 1; nothing is skipped
silently. A user error (missing path, unknown option value, CLIP weights unavailable) prints one line
``ddr-score: error: ...`` and exits with status 2 (the traceback with ``--debug``).

``--pretrained none`` (random CLIP) uses the same seeded weights in every run, so the scores of a file repeat.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch

from ddr_restore.errors import InputError, MissingPathError, run_console
from ddr_restore.imageio import CLI_HINT, IMG_EXTENSIONS, list_images, read_image

__all__ = ["collect_images", "score_paths", "format_table", "write_csv", "main"]

PathLike = Union[str, os.PathLike]

_RANDOM_BANNER = (
    "*" * 78 + "\n"
    "*  WARNING: CLIP is RANDOMLY INITIALISED (--pretrained none). The scores below are\n"
    "*  MEANINGLESS as image quality; they only exercise the pipeline.\n" + "*" * 78
)


def collect_images(paths: Iterable[PathLike], recursive: bool = False) -> List[Path]:
    """Expand files and folders into a list of image files (folders: sorted by name, filtered by extension).

    Raises:
        MissingPathError (a FileNotFoundError): a path that does not exist.
        InputError (a ValueError): a folder without images.
    """
    files: List[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = list_images(path, recursive=recursive)
            if not found:
                raise InputError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in folder {path}")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise MissingPathError(f"no such file or folder: {path}")
    return files


def _flush(ddr: Any, batch: List[torch.Tensor], rows: List[Dict[str, Any]], max_batch: Optional[int]) -> None:
    device = ddr.text_directions.device
    x = torch.stack(batch).to(device)
    scores = ddr.quality_score(x, per_type=True, max_batch=max_batch).double().cpu()
    for row, s in zip(rows, scores):
        row["q_ddr"] = float(s.mean())
        for name, v in zip(ddr.degradations, s):
            row[f"ddr_{name}"] = float(v)
    batch.clear()
    rows.clear()


def score_paths(
    paths: Iterable[PathLike],
    ddr: Optional[Any] = None,
    batch_size: int = 4,
    progress: bool = True,
    gray: str = "error",
    alpha: str = "error",
    on_error: str = "raise",
    recursive: bool = False,
    max_batch: Optional[int] = None,
    hint: Optional[Mapping[str, str]] = None,
) -> List[Dict[str, Any]]:
    """Q_DDR and per-type DDR of image files and folders.

    Args:
        paths: image files and/or folders.
        ddr: a :class:`~ddr_restore.ddr.descriptor.DDR` (default: ``DDR()``, i.e. ``$DDR_CLIP_CHECKPOINT`` or the
            ``openai`` tag); its device is used.
        batch_size: images per CLIP call (consecutive images of the same size are batched).
        progress: show a tqdm progress bar (stderr).
        gray, alpha: passed to :func:`ddr_restore.imageio.read_image` (``"error"`` or ``"replicate"``/``"drop"``);
            a grey or RGBA file refused by them gets an error that names the setting which accepts it.
        hint: how the caller's users set ``gray``/``alpha``, named in such an error (``read_image``'s ``hint``;
            ``ddr-score`` passes :data:`ddr_restore.imageio.CLI_HINT`: ``--gray replicate`` / ``--alpha drop``).
        on_error: ``"raise"`` stops at the first bad file; ``"report"`` records the message in the row's ``error``
            field (``q_ddr`` None) and continues.
        recursive: search folders recursively.
        max_batch: most patches per CLIP call.

    Returns:
        One dict per image, in input order: ``path, width, height, q_ddr, ddr_<type>..., error``.
    """
    if on_error not in ("raise", "report"):
        raise ValueError(f"on_error must be 'raise' or 'report', got {on_error!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    files = collect_images(paths, recursive=recursive)
    if ddr is None:
        from ddr_restore.ddr.descriptor import DDR

        ddr = DDR()
    results: List[Dict[str, Any]] = []
    batch: List[torch.Tensor] = []
    pending: List[Dict[str, Any]] = []

    def flush() -> None:
        try:
            _flush(ddr, batch, pending, max_batch)
        except (RuntimeError, ValueError) as err:
            if on_error == "raise":
                raise
            # A failure while scoring concerns every image of that batch: report it on each of them.
            for other in pending:
                other["error"] = f"{type(err).__name__}: {err}"
            batch.clear()
            pending.clear()

    iterator: Iterable[Path] = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="ddr-score", unit="img", file=sys.stderr)
    for path in iterator:
        row: Dict[str, Any] = {"path": str(path), "width": None, "height": None, "q_ddr": None}
        row.update({f"ddr_{d}": None for d in ddr.degradations})
        row["error"] = ""
        results.append(row)
        try:
            img = read_image(path, gray=gray, alpha=alpha, hint=hint)
        except (OSError, ValueError) as err:
            if on_error == "raise":
                raise
            row["error"] = f"{type(err).__name__}: {err}"
            if str(path) not in row["error"]:
                row["error"] += f" [{path}]"
            continue
        tensor = torch.from_numpy(img.transpose(2, 0, 1).copy())
        row["height"], row["width"] = int(tensor.shape[1]), int(tensor.shape[2])
        if batch and batch[0].shape != tensor.shape:
            flush()  # only same-size images share a tensor
        batch.append(tensor)
        pending.append(row)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return results


def format_table(rows: Sequence[Dict[str, Any]], degradations: Sequence[str]) -> str:
    """A plain-text table: path, Q_DDR, one column per type (errors shown in place of the numbers)."""
    header = ["path", "Q_DDR"] + list(degradations)
    lines = [header]
    for r in rows:
        if r.get("error"):
            lines.append([r["path"], "ERROR", r["error"]])
        else:
            lines.append([r["path"], f"{r['q_ddr']:.4f}"] + [f"{r[f'ddr_{d}']:.4f}" for d in degradations])
    width = max(len(line[0]) for line in lines)
    out = []
    for line in lines:
        if len(line) == 3 and line[1] == "ERROR":
            out.append(f"{line[0]:<{width}}  ERROR  {line[2]}")
        else:
            out.append(f"{line[0]:<{width}}  " + "  ".join(f"{c:>8}" for c in line[1:]))
    return "\n".join(out)


def write_csv(
    rows: Sequence[Dict[str, Any]], path: PathLike, degradations: Sequence[str], clip_weights: Optional[str] = None
) -> Path:
    """Write rows as CSV with columns ``path,width,height,q_ddr,ddr_<type>...,error`` (+ ``clip_weights``).

    ``clip_weights`` ("random" or "pretrained"), when given, is written on every row so a score file can never be
    mistaken for real quality scores when CLIP was random.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["path", "width", "height", "q_ddr"] + [f"ddr_{d}" for d in degradations] + ["error"]
    if clip_weights is not None:
        fields.append("clip_weights")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            row = {k: ("" if r.get(k) is None else r.get(k)) for k in fields}
            if clip_weights is not None:
                row["clip_weights"] = clip_weights
            writer.writerow(row)
    return path


def _parser() -> argparse.ArgumentParser:
    from ddr_restore.cli import add_debug_argument, add_version_argument
    from ddr_restore.ddr.prompts import ALL_DEGRADATIONS, DEFAULT_DEGRADATIONS

    p = argparse.ArgumentParser(
        prog="ddr-score",
        description="Blind image quality (Q_DDR, higher = better) with the official DDR patch protocol.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    p.add_argument("--csv", metavar="FILE", help="also write the scores to this CSV file")
    p.add_argument("--backbone", default="ViT-B-32", help="CLIP backbone (default ViT-B-32 = OpenAI ViT-B/32)")
    p.add_argument(
        "--pretrained",
        default=None,
        help="open_clip tag, checkpoint file, or 'none' (random, meaningless scores). "
        "Default: $DDR_CLIP_CHECKPOINT if set, else 'openai'",
    )
    p.add_argument(
        "--degradations",
        nargs="+",
        default=list(DEFAULT_DEGRADATIONS),
        metavar="TYPE",
        help=f"degradation types to average (from {', '.join(ALL_DEGRADATIONS)}; default: %(default)s)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=4, help="images per CLIP call (default 4)")
    p.add_argument("--antialias", action="store_true", help="antialiased resize (official: off)")
    p.add_argument("--gray", choices=("error", "replicate"), default="error",
                   help="greyscale files: refuse (default) or replicate to RGB")
    p.add_argument("--alpha", choices=("error", "drop"), default="error",
                   help="RGBA files: refuse (default) or drop the alpha channel")
    p.add_argument("--recursive", action="store_true", help="search folders recursively")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_debug_argument(p)
    add_version_argument(p)
    return p


def _device(name: Optional[str]) -> str:
    """The device to score on; a bad name or an unavailable CUDA is a user error, not a torch traceback."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device name (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return str(device)


def _run(args: argparse.Namespace) -> int:
    from ddr_restore.ddr.descriptor import DDR

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    files = collect_images(args.paths, recursive=args.recursive)
    device = _device(args.device)
    ddr = DDR(
        backbone=args.backbone, pretrained=args.pretrained, degradations=args.degradations, antialias=args.antialias,
        switch_hint="--pretrained",
    ).to(device)
    if ddr.pretrained_is_random:
        print(_RANDOM_BANNER, file=sys.stderr)
    print(f"# DDR: {ddr.model_name}, weights {ddr.source}, types {', '.join(ddr.degradations)}, device {device}")
    rows = score_paths(
        files,
        ddr=ddr,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        gray=args.gray,
        alpha=args.alpha,
        on_error="report",
        hint=CLI_HINT,
    )
    print(format_table(rows, ddr.degradations))
    if args.csv:
        weights = "random" if ddr.pretrained_is_random else "pretrained"
        print(f"# wrote {write_csv(rows, args.csv, ddr.degradations, clip_weights=weights)}")
    if ddr.pretrained_is_random:
        print(_RANDOM_BANNER, file=sys.stderr)
    failed = [r for r in rows if r["error"]]
    if failed:
        print(f"ddr-score: {len(failed)} of {len(rows)} file(s) could not be scored:", file=sys.stderr)
        for r in failed:
            print(f"  {r['path']}: {r['error']}", file=sys.stderr)
        raise SystemExit(1)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``ddr-score``. Returns 0 when every image was scored; raises SystemExit(1) when some failed and
    SystemExit(2) on user errors (missing path, empty folder, bad option, CLIP weights unavailable: one line on
    stderr, the traceback with ``--debug``)."""
    args = _parser().parse_args(argv)
    return run_console("ddr-score", lambda: _run(args), debug=args.debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
