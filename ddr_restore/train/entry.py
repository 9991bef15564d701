"""Command line of ``python train.py`` / ``ddr-train``: parse arguments, resolve options, call :func:`train`."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ddr_restore.train.options import OptionsError, parse_options

__all__ = ["main", "build_parser", "apply_debug"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (BasicSR's flags, with ``--set`` instead of ``--force_yml``)."""
    p = argparse.ArgumentParser(
        prog="ddr-train",
        description="Train a restoration network from a BasicSR-style YAML option file.",
        epilog="Example: python train.py -opt options/demo/nafnet_ddr_demo.yml --set train.total_iter=50",
    )
    p.add_argument("-opt", "--opt", required=True, metavar="FILE.yml", help="option file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one option (VALUE parsed as YAML); repeatable, e.g. --set train.total_iter=1000")
    p.add_argument("--auto_resume", "--auto-resume", action="store_true",
                   help="continue from the newest complete checkpoint of this experiment, if any")
    p.add_argument("--launcher", choices=("none", "pytorch"), default="none",
                   help="'pytorch' when started by torchrun (reads RANK/LOCAL_RANK/WORLD_SIZE)")
    # torch.distributed.launch (deprecated) appends --local-rank=N; the rank is read from the environment instead.
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true",
                   help="quick check: print every iteration, validate and checkpoint every 8, no TensorBoard")
    return p


def apply_debug(opt: Dict[str, Any]) -> Dict[str, Any]:
    """BasicSR's debug mode: name prefixed ``debug_``, print every iteration, validate/save every 8, no TensorBoard."""
    opt = dict(opt)
    if "debug" not in opt["name"]:
        opt["name"] = f"debug_{opt['name']}"
    opt["logger"] = {**opt["logger"], "print_freq": 1, "save_checkpoint_freq": 8, "use_tb_logger": False}
    if opt.get("val"):
        opt["val"] = {**opt["val"], "val_freq": 8}
    return opt


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run training from command-line arguments; prints where the checkpoint, logs and before/after PNG are."""
    args = build_parser().parse_args(argv)
    from ddr_restore.train.distributed import shutdown
    from ddr_restore.train.trainer import TrainingDivergedError, train

    argv_list = list(sys.argv[1:] if argv is None else argv)
    try:
        opt = parse_options(args.opt, args.overrides)
    except (OptionsError, FileNotFoundError, KeyError, TypeError) as err:
        print(f"ddr-train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.debug:
        opt = apply_debug(opt)
    command = "python train.py " + " ".join(shlex.quote(a) for a in argv_list)
    try:
        result = train(opt, auto_resume=args.auto_resume, launcher=args.launcher, command_line=command,
                       options_name=Path(args.opt).name)
    except TrainingDivergedError as err:
        print(f"ddr-train: error: {err}", file=sys.stderr)
        shutdown()
        raise SystemExit(3) from None
    import torch.distributed as dist

    is_main = not dist.is_initialized() or dist.get_rank() == 0
    shutdown()
    if is_main:
        print(f"\nDone: {result.final_iter} iterations in {result.experiment_dir}")
        print(f"  checkpoint       : {result.checkpoint}")
        print(f"  TensorBoard logs : {result.tb_dir if result.tb_dir else '(off)'}"
              + (f"   (tensorboard --logdir {result.tb_dir})" if result.tb_dir else ""))
        print(f"  before/after PNG : {result.before_after or '(no validation set)'}  (input | restored | target)")
        print(f"  log file         : {result.log_file}")
        for label, values in result.metrics.items():
            print(f"  validation {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    return 0
