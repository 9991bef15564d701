"""``ddr-eval`` command line: parse the arguments, call :func:`ddr_restore.eval.evaluate`, print the result line.

Presets and protocols: :mod:`ddr_restore.eval.presets` (``gopro``, ``realblur``, ``folder``; super-resolution:
``sr --scale N`` on LR/HR folders and ``realsr --scale N --root <RealSR V3 or DRealSR>``); metrics: ``--metrics``
names catalog metrics (``ddr_restore.metrics.list_metrics()``; default: the preset's set ``psnr ssim lpips q_ddr``,
for SR ``psnr_y ssim_y psnr_rgb ssim_rgb lpips q_ddr`` with ``crop_border = scale``). Modes:
``--opt OPTION.yml --checkpoint net_g_X.pth`` runs the network on every input; ``--restored DIR`` scores existing
outputs matched to the targets by file name. Writes ``per_image.csv``, ``summary.json`` and optionally the outputs
(``--save-images``) and side-by-side grids (``--grid N``) to ``--out`` (default ``results/<name>``); earlier
results there are archived or replaced, never mixed.

Speed: ``--device`` defaults to ``auto`` (CUDA when present, else the CPU; printed); ``--amp bf16|fp16`` autocasts
the network on CUDA (refused on the CPU); ``--workers N`` threads read the next pairs and write the PNGs while the
network runs (``0``: all in turn; the results are identical). Ctrl-C stops with one line and exit status 130.

Images are RGB: a greyscale or RGBA file stops the run unless ``--gray replicate`` / ``--alpha drop`` says what
to do with it. Every user error is one ``ddr-eval: error: ...`` line and exit status 2; ``--debug`` adds the
traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ddr_restore.errors import run_console

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``ddr-eval`` argument parser."""
    from ddr_restore.cli import add_version_argument
    from ddr_restore.eval.evaluate import ALPHA_CHOICES, GRAY_CHOICES
    from ddr_restore.eval.inference import AMP_CHOICES
    from ddr_restore.eval.presets import PRESETS

    p = argparse.ArgumentParser(
        prog="ddr-eval",
        description="Evaluate a restoration or super-resolution network (or saved outputs) on GoPro, RealBlur, "
                    "RealSR/DRealSR or paired folders.",
        epilog="Super-resolution (--preset sr|realsr --scale N): the HR target is cropped to LR size x N (at most N-1 "
               "px, MATLAB modcrop; more is an error naming both files); psnr_y/ssim_y on the BT.601 Y channel and "
               "psnr_rgb/ssim_rgb on RGB, all with crop_border N (--crop-border overrides), LPIPS and Q_DDR on the "
               "cropped image; the LR inputs upsampled xN with MATLAB-compatible bicubic imresize are scored too "
               "(the 'bicubic xN' row, input_<metric> CSV columns) and are the first panel of the grids (bicubic | "
               "restored | target). A network must upsample by N (network_g.upscale: N). "
               "An existing results folder is never mixed with a new run: it is moved to "
               "<out>_archived_<timestamp>, or replaced with --overwrite. Errors are one line and exit status 2 "
               "(--debug adds the traceback). Examples: ddr-eval --preset gopro --root datasets/GoPro "
               "--opt experiments/<name>/<file>.yml --checkpoint experiments/<name>/models/net_g_latest.pth "
               "--metrics psnr ssim lpips; ddr-eval --preset realsr --scale 4 --root datasets/RealSR_V3 --opt "
               "experiments/<name>/<file>.yml --checkpoint experiments/<name>/models/net_g_latest.pth; ddr-eval "
               "--preset sr --scale 4 --input-dir LR --target-dir HR --restored results/x4",
    )
    add_version_argument(p)
    p.add_argument("--preset", choices=list(PRESETS), default="folder",
                   help="dataset layout and protocol (default folder)")
    p.add_argument("--root", help="dataset root: datasets/GoPro (gopro), the RealBlur folder (realblur, with --list), "
                                  "the RealSR V3 folder holding Canon/Nikon or a DRealSR folder (realsr), a folder "
                                  "holding input/+target/, lq/+gt/ or LR/+HR/ (sr)")
    p.add_argument("--input-dir", help="folder of degraded inputs, for sr the low-resolution images (overrides the "
                                       "preset layout)")
    p.add_argument("--target-dir", help="folder of ground-truth images, for sr the high-resolution ones (overrides "
                                        "the preset layout)")
    p.add_argument("--list", dest="list_file", help="RealBlur list file (lines 'gt_rel blur_rel'), relative to --root")
    p.add_argument("--filename-tmpl", default="{}", metavar="TMPL",
                   help="input file stem from the target stem, as BasicSR's filename_tmpl (default '{}'; e.g. '{}x4' "
                        "pairs HR 0001.png with LR 0001x4.png)")
    sr = p.add_argument_group("super-resolution (--preset sr or realsr)")
    sr.add_argument("--scale", type=int, default=None, metavar="N",
                    help="upsampling factor (required for sr/realsr; realsr: 2, 3 or 4): HR = LR x N, crop_border N")
    sr.add_argument("--layout", choices=["auto", "realsr", "drealsr"], default="auto",
                    help="realsr: RealSR V3 (Canon|Nikon/Test/N/<name>_HR.png + <name>_LRN.png) or DRealSR "
                         "(xN/Test_xN/{test_HR,test_LR}); default auto: RealSR when --root holds Canon or Nikon")
    sr.add_argument("--camera", dest="cameras", nargs="+", metavar="NAME",
                    help="realsr layout: camera folders to evaluate (default: Canon and Nikon, those present)")
    sr.add_argument("--score-input", action=argparse.BooleanOptionalAction, default=None,
                    help="also score the inputs with the same metrics (SR: LR upsampled with MATLAB bicubic); "
                         "default: on for sr/realsr, off otherwise")
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
    src.add_argument("--amp", choices=list(AMP_CHOICES), default=None,
                     help="autocast the network's forward on CUDA to bf16 or fp16 (default none: fp32); the output "
                          "is float32 before the 8-bit quantisation either way. Refused on CPU, where bf16 measured "
                          "0.7-0.8x (NAFNet) and 1.0-1.1x (Restormer) the fp32 speed, slower without bf16 hardware")
    p.add_argument("--device", default="auto",
                   help="auto (default: CUDA when present, else CPU; printed at the start), cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="threads reading the next image pairs (and writing output PNGs) while the network runs on "
                        "the current one; 0: everything in the main thread; results are identical (default "
                        "min(4, CPU count))")
    m = p.add_argument_group("metrics (the metric catalog: ddr-train --list metrics)")
    m.add_argument("--metrics", nargs="+", metavar="NAME",
                   help="catalog metrics to report, one CSV column each, e.g. --metrics psnr ssim lpips q_ddr "
                        "(default: psnr ssim lpips q_ddr, for sr/realsr psnr_y ssim_y psnr_rgb ssim_rgb lpips q_ddr; "
                        "those whose weights cannot be loaded are skipped; for --preset realblur psnr/ssim are the "
                        "ECC-aligned variants, for sr/realsr the Y-channel ones). A named metric that cannot "
                        "be loaded is an error")
    m.add_argument("--crop-border", type=int, default=None, help="pixels cropped from each border (PSNR/SSIM; "
                                                                  "default 0, for sr/realsr the scale)")
    m.add_argument("--test-y-channel", action="store_true", default=None,
                   help="PSNR/SSIM on BT.601 Y instead of RGB (sr/realsr report both: psnr_y, psnr_rgb, ...)")
    m.add_argument("--lpips-net", default=None, choices=["alex", "vgg"], help="LPIPS backbone (default alex)")
    m.add_argument("--ddr-pretrained", default=None,
                   help="CLIP weights for Q_DDR: an open_clip tag, a checkpoint path, or 'none' (random CLIP; "
                        "recorded as such); default $DDR_CLIP_CHECKPOINT if set, else 'openai'")
    m.add_argument("--ddr-backbone", default=None, help="open_clip model name for Q_DDR (default ViT-B-32)")
    m.add_argument("--no-lpips", action="store_true",
                   help="deprecated, use --metrics: keep the LPIPS column of the default set empty")
    m.add_argument("--no-ddr", action="store_true",
                   help="deprecated, use --metrics: keep the Q_DDR column of the default set empty")
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
    o.add_argument("--grid", type=int, default=0, metavar="N",
                   help="write input|restored|target PNGs for N images (SR: bicubic|restored|target, equal sizes)")
    o.add_argument("--max-images", type=int, default=None, help="evaluate only the first N pairs (smoke tests)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true",
                   help="print the full traceback of an error (default: one 'ddr-eval: error: ...' line, exit 2)")
    return p


def _keywords(args: argparse.Namespace) -> Dict[str, Any]:
    """The :func:`ddr_restore.eval.evaluate` keywords of the parsed arguments (flags given map to metric options)."""
    kw: Dict[str, Any] = dict(
        root=args.root, input_dir=args.input_dir, target_dir=args.target_dir, list_file=args.list_file,
        max_images=args.max_images, gray=args.gray, alpha=args.alpha, restored_dir=args.restored,
        scale=args.scale, layout=args.layout, cameras=args.cameras, filename_tmpl=args.filename_tmpl,
        score_input=args.score_input,
        metrics=args.metrics, device=args.device, workers=args.workers,
        out_dir=args.out, name=args.name, overwrite=args.overwrite, save_images=args.save_images, grid=args.grid,
        progress=not args.no_progress,
        # the older flags are the older keywords of evaluate(), translated there into catalog metric options
        crop_border=args.crop_border, test_y_channel=args.test_y_channel, lpips_net=args.lpips_net,
        ddr_pretrained=args.ddr_pretrained, ddr_backbone=args.ddr_backbone,
        disabled={column: f"--no-{flag}" for column, flag, off in (("lpips", "lpips", args.no_lpips),
                                                                     ("q_ddr", "ddr", args.no_ddr)) if off},
    )
    if args.restored is None:
        kw.update(option_file=args.opt, checkpoint=args.checkpoint, overrides=args.overrides,
                  prefer_ema=not args.no_ema, tlc=not args.no_tlc, tile=args.tile, tile_overlap=args.tile_overlap,
                  amp=args.amp)
    return kw


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
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0 (0: read in the main thread), got {args.workers}")
    if args.amp not in (None, "none") and args.restored is not None:
        parser.error("--amp applies to running a network (--opt/--checkpoint), not to --restored outputs")
    if args.metrics is not None and (args.no_lpips or args.no_ddr):
        parser.error("--no-lpips/--no-ddr apply to the default metric set; with --metrics leave the metric out")

    from ddr_restore.eval.evaluate import evaluate
    from ddr_restore.eval.report import result_table

    try:
        summary = run_console("ddr-eval", lambda: evaluate(args.preset, **_keywords(args)), debug=args.debug)
    except KeyboardInterrupt:
        # Ctrl-C: the read-ahead and writer threads are cancelled on the way out; no CSV/summary is written for a
        # partial run. One line and the shell's usual status for SIGINT, instead of a traceback.
        print("ddr-eval: interrupted (no per_image.csv/summary.json written for this run)", file=sys.stderr)
        raise SystemExit(130) from None
    print(result_table(summary))
    runtime = summary.get("runtime") or {}
    if runtime:
        print(f"device {runtime['device']} ({runtime['device_name']}), amp {runtime['amp']}, "
              f"{runtime['workers']} reader thread(s)")
    print(f"wrote {summary['outputs']['csv']} and {Path(summary['outputs']['csv']).with_name('summary.json')}")
    return summary


if __name__ == "__main__":  # pragma: no cover
    main()
