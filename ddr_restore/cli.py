"""Console scripts. Each is a thin wrapper: the work is done by a library function a user can call from Python."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

__all__ = ["version_text", "add_version_argument", "add_debug_argument", "train_main", "score_main", "eval_main",
           "fetch_lpips_main", "ablate_main"]


def version_text(prog: str) -> str:
    """The ``--version`` line of a console script: ``"<prog> (ddr_restore) <version>"``."""
    from ddr_restore import __version__

    return f"{prog} (ddr_restore) {__version__}"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--version`` (prints :func:`version_text` of the parser's prog and exits 0) to ``parser``."""
    parser.add_argument("--version", action="version", version=version_text(parser.prog),
                        help="print the program's version and exit")


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug``: show the traceback of a user error (default: one ``prog: error: ...`` line, exit 2)."""
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")


def train_main(argv: Optional[Sequence[str]] = None) -> None:
    """`ddr-train -opt FILE.yml [...]`: same as `python train.py`."""
    from ddr_restore.train.entry import main

    main(argv)


def score_main(argv: Optional[Sequence[str]] = None) -> None:
    """`ddr-score PATH... [--csv out.csv]`: blind Q_DDR scores of image files or folders."""
    from ddr_restore.ddr.score import main

    main(argv)


def eval_main(argv: Optional[Sequence[str]] = None) -> None:
    """`ddr-eval --preset gopro|realblur|folder ... [--metrics psnr ssim lpips q_ddr]`: catalog-metric evaluation."""
    from ddr_restore.eval.entry import main

    main(argv)


def fetch_lpips_main(argv: Optional[Sequence[str]] = None) -> None:
    """`ddr-fetch-lpips`: fetch and verify offline ImageNet AlexNet/VGG16 weights for LPIPS."""
    from ddr_restore.weights import main

    main(argv)


def ablate_main(argv: Optional[Sequence[str]] = None) -> None:
    """`ddr-ablate -opt BASE.yml --grid KEY=v1,v2 --seeds 0,1,2`: train, evaluate and tabulate a grid of runs."""
    from ddr_restore.ablate.entry import main

    main(argv)
