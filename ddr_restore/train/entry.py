"""Command line of ``python train.py`` / ``ddr-train``: parse arguments, resolve options, call :func:`train`.

Exit status: 0 done; 2 a user error (options, data, checkpoint; one message, the traceback only with ``--debug``
and in the run's log file); 3 the loss diverged (NaN/inf); 130 interrupted with Ctrl-C (after Ctrl-C the last
completed iteration is saved and the command that resumes it is printed).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ddr_restore.errors import InputError, run_console
from ddr_restore.train.options import parse_options

__all__ = ["main", "build_parser", "apply_debug", "list_names", "LIST_KINDS", "resume_command"]

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C


def _names(kind: str) -> Callable[[], List[str]]:
    def names() -> List[str]:
        from ddr_restore import registry
        from ddr_restore.train import schedulers

        return {
            "archs": registry.ARCH_REGISTRY.keys,
            "losses": registry.LOSS_REGISTRY.keys,
            "datasets": registry.DATASET_REGISTRY.keys,
            "metrics": registry.METRIC_REGISTRY.keys,
            "optimizers": schedulers.available_optimizers,
            "schedulers": schedulers.available_schedulers,
        }[kind]()

    return names


#: what ``--list`` can show: the names accepted by network_g.type, train.*_opt.type, datasets.*.type,
#: val.metrics.*.type, train.optim_g.type and train.scheduler.type
LIST_KINDS = ("archs", "losses", "datasets", "metrics", "optimizers", "schedulers")


def list_names(kind: str) -> List[str]:
    """The registered names of one kind of part (see :data:`LIST_KINDS`), sorted."""
    if kind not in LIST_KINDS:
        raise InputError(f"--list: unknown kind {kind!r}; choose one of {', '.join(LIST_KINDS)}")
    return list(_names(kind)())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (BasicSR's flags, with ``--set`` instead of ``--force_yml``)."""
    from ddr_restore import __version__

    p = argparse.ArgumentParser(
        prog="ddr-train",
        description="Train a restoration network from a BasicSR-style YAML option file.",
        epilog="Example: python train.py -opt options/demo/nafnet_ddr_demo.yml --set train.total_iter=50",
    )
    p.add_argument("-opt", "--opt", metavar="FILE.yml", help="option file (required unless --list/--version)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one option (VALUE parsed as YAML); repeatable, e.g. --set train.total_iter=1000")
    p.add_argument("--auto_resume", "--auto-resume", action="store_true",
                   help="continue from the newest complete checkpoint of this experiment, if any")
    p.add_argument("--launcher", choices=("none", "pytorch"), default="none",
                   help="'pytorch' when started by torchrun (reads RANK/LOCAL_RANK/WORLD_SIZE)")
    # torch.distributed.launch (deprecated) appends --local-rank=N; the rank is read from the environment instead.
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true",
                   help="quick check: print every iteration, validate and checkpoint every 8, no TensorBoard; "
                        "errors show their traceback")
    p.add_argument("--list", choices=LIST_KINDS, metavar="{" + ",".join(LIST_KINDS) + "}",
                   help="print the registered names of one kind of part, one per line, and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s (ddr_restore) {__version__}")
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


def _program(argv_given: bool) -> List[str]:
    """How this process was started, for the resume command (``python train.py`` or ``ddr-train``)."""
    script = sys.argv[0] if sys.argv and not argv_given else ""
    if script.endswith(".py"):
        return ["python", script]
    if script and Path(script).name.startswith("ddr-train"):
        return ["ddr-train"]
    return ["python", "train.py"]


def resume_command(program: Sequence[str], argv: Sequence[str], launcher: str = "none") -> str:
    """The command that continues a run: the original arguments plus ``--auto_resume`` (once)."""
    args = list(argv)
    if not any(a in ("--auto_resume", "--auto-resume") for a in args):
        args.append("--auto_resume")
    prefix = list(program)
    if launcher == "pytorch":
        nproc = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or "N"
        prefix = ["torchrun", f"--nproc_per_node={nproc}"] + prefix[1:]
    return " ".join(shlex.quote(a) for a in prefix + args)


def _summary(result: Any, scale: int = 1) -> None:
    first = "bicubic" if scale > 1 else "input"  # SR validation draws and scores the bicubic upsampling of the LR
    resumed = f" (resumed at iteration {result.start_iter})" if result.start_iter else ""
    print(f"\nDone: {result.final_iter} iterations{resumed} in {result.experiment_dir}")
    print(f"  checkpoint       : {result.checkpoint}")
    print(f"  TensorBoard logs : {result.tb_dir if result.tb_dir else '(off)'}"
          + (f"   (tensorboard --logdir {result.tb_dir})" if result.tb_dir else ""))
    print(f"  before/after PNG : {result.before_after or '(no validation set)'}  ({first} | restored | target; "
          "below: a zoomed crop)")
    print(f"  log file         : {result.log_file}")
    for label, values in result.metrics.items():
        inputs = (getattr(result, "input_metrics", None) or {}).get(label, {})
        parts = []
        for name, value in values.items():
            if name in inputs:
                unit = " dB" if "psnr" in name.lower() else ""
                parts.append(f"{name} {value:.4f} ({first} {inputs[name]:.4f}, {value - inputs[name]:+.2f}{unit})")
            else:
                parts.append(f"{name} {value:.4f}")
        print(f"  validation {label}: " + ", ".join(parts))


def _run(args: argparse.Namespace, argv_list: List[str], program: List[str]) -> int:
    from ddr_restore.train.distributed import shutdown
    from ddr_restore.train.trainer import TrainingDivergedError, TrainingInterrupted, train

    try:
        opt = parse_options(args.opt, args.overrides)
    except (KeyError, TypeError) as err:  # registry lookups outside the schema check: still the user's options
        raise InputError(f"{args.opt}: {err.args[0] if err.args else err}") from err
    if args.debug:
        opt = apply_debug(opt)
    command = " ".join(shlex.quote(a) for a in program + argv_list)
    try:
        result = train(opt, auto_resume=args.auto_resume, launcher=args.launcher, command_line=command,
                       options_name=args.opt)
    except TrainingDivergedError as err:
        print(f"ddr-train: error: {err}", file=sys.stderr)
        shutdown()
        raise SystemExit(EXIT_DIVERGED) from None
    except TrainingInterrupted as stop:
        if _is_main():
            print(f"\nInterrupted at iteration {stop.iteration}; saved {stop.checkpoint} and {stop.state}.\n"
                  f"To continue: {resume_command(program, argv_list, args.launcher)}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the loop started
        if _is_main():
            print("\nddr-train: aborted (Ctrl-C); nothing was saved after the last checkpoint. To continue from it: "
                  f"{resume_command(program, argv_list, args.launcher)}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    main_rank = _is_main()
    shutdown()
    if main_rank:
        _summary(result, int(opt.get("scale") or 1))
    return 0


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run training from command-line arguments; prints where the checkpoint, logs and before/after PNG are.

    ``--list KIND`` prints registered names instead; ``--version`` the package version.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(list_names(args.list)))
        return 0
    if not args.opt:
        parser.error("the following arguments are required: -opt/--opt (or use --list/--version)")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    program = _program(argv_given=argv is not None)
    return run_console("ddr-train", lambda: _run(args, argv_list, program), debug=args.debug)
