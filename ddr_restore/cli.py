"""Console scripts. Each is a thin wrapper: the work is done by a library function a user can call from Python."""
from __future__ import annotations

from typing import Optional, Sequence


def train_main(argv: Optional[Sequence[str]] = None) -> None:
    """`ddr-train -opt FILE.yml [...]`: same as `python train.py`."""
    from ddr_restore.train.entry import main

    main(argv)


def score_main(argv: Optional[Sequence[str]] = None) -> None:
    """`ddr-score PATH... [--csv out.csv]`: blind Q_DDR scores of image files or folders."""
    from ddr_restore.ddr.score import main

    main(argv)


def eval_main(argv: Optional[Sequence[str]] = None) -> None:
    """`ddr-eval --preset gopro|realblur|folder ...`: PSNR/SSIM/LPIPS/Q_DDR evaluation."""
    from ddr_restore.eval.evaluate import main

    main(argv)


def fetch_lpips_main(argv: Optional[Sequence[str]] = None) -> None:
    """`ddr-fetch-lpips`: fetch and verify offline ImageNet AlexNet/VGG16 weights for LPIPS."""
    from ddr_restore.weights import main

    main(argv)
