"""One cell of an ablation in its own process: ``python -m ddr_restore.ablate.worker CELL_DIR [--launcher pytorch]``.

Started by :func:`ddr_restore.ablate.runner.run_ablation` (also under torchrun). Exit status: 0 done (done.json
written); 2 a user error (one line; the traceback is in the experiment's log file); 3 the loss diverged; 130
interrupted (Ctrl-C/SIGINT: the current iteration was saved; the next run resumes it).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ddr_restore.errors import run_console

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run :func:`ddr_restore.ablate.runner.run_cell` on CELL_DIR; see the module docstring for the exit status."""
    parser = argparse.ArgumentParser(prog="ddr-ablate-worker", description="Train and evaluate one ablation cell.")
    parser.add_argument("cell_dir", help="the cell's folder (holds cell.json and options.yml)")
    parser.add_argument("--launcher", choices=("none", "pytorch"), default="none")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a user error")
    args = parser.parse_args(argv)

    from ddr_restore.ablate.runner import run_cell
    from ddr_restore.train.trainer import TrainingDivergedError

    try:
        run_console("ddr-ablate", lambda: run_cell(args.cell_dir, launcher=args.launcher), debug=args.debug)
    except TrainingDivergedError as err:
        print(f"ddr-ablate: error: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:  # TrainingInterrupted (saved) or a Ctrl-C outside the loop
        print("ddr-ablate: cell interrupted; run ddr-ablate again to resume it", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
