"""Training logs: a text log file + console, TensorBoard scalars/images, and a tqdm progress bar (rank 0 only).

TensorBoard events go to ``experiments/<name>/tb_logger`` (inside the run folder, unlike BasicSR's
``<root>/tb_logger/<name>``): one folder per run is easier to copy, archive and delete, and an archived run keeps
its curves. ``tensorboard --logdir experiments`` shows every run.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

__all__ = ["setup_text_logger", "MetricWriter", "Progress", "LOGGER_NAME"]

LOGGER_NAME = "ddr_restore.train"


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints above an active tqdm bar instead of breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # never let logging kill training
            self.handleError(record)


def setup_text_logger(log_file: Optional[Path], is_main: bool = True, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``ddr_restore.train`` logger: console + ``log_file`` on rank 0, warnings only elsewhere."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level if is_main else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    console = _TqdmHandler()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if is_main and log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def close_text_logger() -> None:
    """Close the file handlers (so the log file is complete and can be moved)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


class MetricWriter:
    """TensorBoard writer that does nothing when disabled (other ranks, ``logger.use_tb_logger: false``)."""

    def __init__(self, log_dir: Optional[Path], enabled: bool = True) -> None:
        self.writer = None
        self.log_dir = log_dir
        if enabled and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """Log each ``name: value`` as ``prefix + name``."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(prefix + name, float(value), step)

    def image(self, tag: str, img_hwc_uint8: np.ndarray, step: int) -> None:
        """Log one HWC uint8 RGB image."""
        if self.writer is not None:
            self.writer.add_image(tag, img_hwc_uint8, step, dataformats="HWC")

    def close(self) -> None:
        """Flush and close."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


class Progress:
    """tqdm bar over iterations (rank 0) plus the ETA figures the text log prints."""

    def __init__(self, start_iter: int, total_iter: int, enabled: bool = True) -> None:
        self.start_iter, self.total_iter = start_iter, total_iter
        self.t0 = time.time()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total_iter, initial=start_iter, unit="it", dynamic_ncols=True, file=sys.stderr,
                            mininterval=1.0)

    def update(self, postfix: Optional[Dict[str, Any]] = None) -> None:
        """Advance one iteration."""
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def eta(self, current_iter: int) -> str:
        """Estimated time left, from the average time per iteration of this run."""
        done = current_iter - self.start_iter
        if done <= 0:
            return "?"
        left = (time.time() - self.t0) / done * (self.total_iter - current_iter)
        return time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} days"

    def seconds_per_iter(self, current_iter: int) -> float:
        """Average seconds per iteration so far."""
        done = current_iter - self.start_iter
        return (time.time() - self.t0) / done if done > 0 else float("nan")

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
