"""Command line of ``ddr-ablate``: parse arguments, build the spec, call :func:`ddr_restore.ablate.run_ablation`.

Exit status: 0 every cell finished; 1 some cells failed (diverged or crashed; the others ran); 2 a user error
(one ``ddr-ablate: error: ...`` line); 130 interrupted (Ctrl-C/SIGTERM: running cells saved their iteration; run
the same command again to finish what is missing).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any, Dict, Optional, Sequence

from ddr_restore.errors import InputError, run_console

__all__ = ["build_parser", "main", "parse_test_set"]

EXIT_FAILED_CELLS = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The ``ddr-ablate`` argument parser."""
    from ddr_restore.cli import add_debug_argument, add_version_argument

    p = argparse.ArgumentParser(
        prog="ddr-ablate",
        description="Train every cell of a grid of option values x seeds, evaluate each final checkpoint on a test "
                    "set, and write results.csv, results.md (mean ± std over seeds, best marked) and plots.",
        epilog="Examples:\n"
               "  ddr-ablate -opt options/demo/nafnet_ddr_demo.yml --grid train.ddr_opt.loss_weight=0,0.1,1 "
               "--seeds 0,1 --set train.total_iter=100\n"
               "  ddr-ablate --grid-file options/ablation/gopro_mini_losses.yml\n"
               "Running it again skips finished cells and resumes interrupted ones.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-opt", "--opt", metavar="BASE.yml", help="base option file (or base: in the grid file)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY.PATH=v1,v2,...",
                   help="one axis of the grid (values read as YAML); repeat for a product of axes")
    p.add_argument("--grid-file", metavar="GRID.yml", help="a grid file (base, seeds, set, grid, variants, test, "
                                                           "metrics); see options/ablation/")
    p.add_argument("--seeds", metavar="0,1,2", help="seeds (manual_seed) of every cell (default: the grid file's, "
                                                    "else 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one option in every cell (VALUE read as YAML); repeatable")
    p.add_argument("--out", metavar="DIR", help="the ablation folder (default ablations/<name>)")
    p.add_argument("--name", help="the ablation's name (default: the grid file's stem, else the base file's)")
    p.add_argument("--test-set", metavar="SPEC",
                   help="what every final checkpoint is scored on: a datasets.* phase of the base options (default "
                        "val), or PRESET:PATH with PRESET gopro (PATH = datasets/GoPro), folder (PATH holds "
                        "input/ and target/), sr (PATH holds LR input/ and HR target/) or realsr (PATH = a RealSR V3 "
                        "or DRealSR root); sr/realsr use the base options' scale")
    p.add_argument("--metrics", nargs="+", metavar="NAME", help="metrics (default: the grid file's, else psnr ssim "
                                                                "lpips)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="cells trained at the same time (default 1)")
    p.add_argument("--launcher", choices=("subprocess", "torchrun", "inline"), default="subprocess",
                   help="subprocess (default): one worker process per cell; torchrun: each cell on --nproc "
                        "processes (GPUs); inline: in this process")
    p.add_argument("--nproc", type=int, default=1, metavar="N", help="processes per cell with --launcher torchrun")
    p.add_argument("--dry-run", action="store_true", help="list the cells and what would run, then stop")
    add_version_argument(p)
    add_debug_argument(p)
    return p


def parse_test_set(text: str) -> Dict[str, Any]:
    """``val`` -> ``{dataset: val}``; ``gopro:datasets/GoPro`` / ``folder:DIR`` -> ``{preset: ..., root: ...}``."""
    if ":" not in text:
        return {"dataset": text}
    preset, path = text.split(":", 1)
    if preset not in ("gopro", "folder", "sr", "realsr") or not path:
        raise InputError(f"--test-set {text!r}: expected a datasets.* phase (e.g. val), gopro:PATH, folder:PATH, "
                         "sr:PATH or realsr:PATH (RealBlur lists: use test: in a grid file)")
    return {"preset": preset, "root": path}


def _run(args: argparse.Namespace) -> int:
    from ddr_restore.ablate.grid import load_spec
    from ddr_restore.ablate.runner import AblationInterrupted, run_ablation

    if not args.opt and not args.grid_file:
        raise InputError("give a base option file (-opt BASE.yml) or a grid file (--grid-file GRID.yml)")
    spec = load_spec(base=args.opt, grid=args.grid, seeds=args.seeds, grid_file=args.grid_file,
                     overrides=args.overrides)
    if args.name:
        spec.name = args.name
    if args.test_set:
        spec.test = {**{k: v for k, v in (spec.test or {}).items() if k not in ("dataset", "preset", "root",
                                                                                  "input_dir", "target_dir",
                                                                                  "list_file")},
                     **parse_test_set(args.test_set)}
    if args.metrics:
        spec.metrics = list(args.metrics)
    try:
        result = run_ablation(spec, out_dir=args.out, jobs=args.jobs, launcher=args.launcher, nproc=args.nproc,
                              dry_run=args.dry_run)
    except AblationInterrupted as stop:
        missing = stop.result.missing
        print(f"ddr-ablate: interrupted; {len(missing)} cell(s) still to run. To finish them run the same command "
              f"again: {' '.join(shlex.quote(a) for a in ['ddr-ablate'] + sys.argv[1:])}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.dry_run:
        return 0
    print(f"ran {len(result.ran)}, skipped {len(result.skipped)} finished, failed {len(result.failed)}")
    for key in ("csv", "md"):
        print(f"  {result.reports[key]}")
    for key, path in result.reports.items():
        if key.startswith("plot:"):
            print(f"  {path}")
    if result.failed:
        print("failed cells (run again to retry): " + ", ".join(f"{k} ({v})" for k, v in result.failed.items()),
              file=sys.stderr)
        return EXIT_FAILED_CELLS
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``ddr-ablate``; returns (and, run as a script, exits with) the status in the module docstring."""
    args = build_parser().parse_args(argv)
    status = run_console("ddr-ablate", lambda: _run(args), debug=args.debug)
    if argv is None and status:
        raise SystemExit(status)
    return status


if __name__ == "__main__":  # python -m ddr_restore.ablate.entry ...
    main()
