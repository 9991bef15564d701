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
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["setup_text_logger", "close_text_logger", "log_to_file_only", "MetricWriter", "Progress", "LOGGER_NAME",
           "before_after_image", "detailed_crop"]

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


def log_to_file_only(message: str, level: int = logging.ERROR, exc_info: Any = None) -> bool:
    """Write one record (with an optional traceback) to the run's log file only, not to the console.

    Used for the traceback of an error whose one-line message the console already shows. Returns False when no
    log file is open.
    """
    logger = logging.getLogger(LOGGER_NAME)
    files = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return False
    record = logger.makeRecord(logger.name, level, __file__, 0, message, (), exc_info)
    for handler in files:
        handler.handle(record)
    return True


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


# ------------------------------------------------------------------------------------------ before/after image
_GAP = 4  # white pixels between panels and rows


def detailed_crop(img: np.ndarray, crop_h: int, crop_w: int) -> Tuple[int, int]:
    """(top, left) of the ``crop_h`` x ``crop_w`` window of ``img`` (HWC uint8) with the most edge energy.

    Edges are where blur and its removal show; a flat patch (sky, wall) would make input and output look alike.
    Windows are tried on a grid of a quarter crop; ties go to the one nearest the centre.
    """
    h, w = img.shape[:2]
    crop_h, crop_w = min(crop_h, h), min(crop_w, w)
    gray = img.astype(np.float64).mean(axis=2) if img.ndim == 3 else img.astype(np.float64)
    energy = np.zeros((h, w))
    energy[:, 1:] += np.abs(np.diff(gray, axis=1))
    energy[1:, :] += np.abs(np.diff(gray, axis=0))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    step_y, step_x = max(1, crop_h // 4), max(1, crop_w // 4)
    best, best_key = (0, 0), None
    for top in list(range(0, h - crop_h + 1, step_y)) + [h - crop_h]:
        for left in list(range(0, w - crop_w + 1, step_x)) + [w - crop_w]:
            total = (integral[top + crop_h, left + crop_w] - integral[top, left + crop_w]
                     - integral[top + crop_h, left] + integral[top, left])
            off_centre = abs(top + crop_h / 2 - h / 2) + abs(left + crop_w / 2 - w / 2)
            key = (round(total, 6), -off_centre)
            if best_key is None or key > best_key:
                best, best_key = (top, left), key
    return best


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner on a dark box (skipped for panels too small to hold it)."""
    import cv2

    h, w = panel.shape[:2]
    scale = max(0.35, min(1.0, w / 640))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw + 8 > w or th + base + 8 > h // 3:
        return panel
    out = panel.copy()
    out[: th + base + 6, : tw + 8] = (out[: th + base + 6, : tw + 8] * 0.35).astype(np.uint8)
    cv2.putText(out, text, (4, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def before_after_image(panels: Sequence[np.ndarray], labels: Sequence[str] = (), max_width: int = 1536,
                       zoom: int = 3) -> np.ndarray:
    """A before/after figure: the full images side by side, and below them the same detailed crop, zoomed.

    Args:
        panels: HWC uint8 RGB images, e.g. (input, restored, target); resized (nearest) to the last one's size
            when they differ (super-resolution inputs).
        labels: optional text drawn in the corner of each full panel (e.g. "input 26.01 dB").
        max_width: the full row is scaled down (area interpolation) to at most this width.
        zoom: nearest-neighbour magnification of the crop row (2 when the image is too small for 3).

    Returns:
        An HWC uint8 image: row 1 the full panels (the crop marked on the first), row 2 the crop of each panel
        at ``zoom`` x, each as wide as a full panel; white gaps between panels and rows. Images under 32 px wide
        get the full row only.
    """
    import cv2

    h, w = panels[-1].shape[:2]
    same = [p if p.shape[:2] == (h, w) else cv2.resize(p, (w, h), interpolation=cv2.INTER_NEAREST) for p in panels]
    same = [np.repeat(p, 3, axis=2) if p.ndim == 3 and p.shape[2] == 1 else p for p in same]
    n = len(same)
    panel_w = min(w, max(16, (max_width - _GAP * (n - 1)) // n))
    panel_h = max(1, round(h * panel_w / w))
    full = [p if panel_w == w else cv2.resize(p, (panel_w, panel_h), interpolation=cv2.INTER_AREA) for p in same]
    rows: List[np.ndarray] = []
    if w >= 32:
        z = zoom if w // zoom >= 16 and h // zoom >= 16 else 2
        # the crop, in original pixels, that fills one panel at z x (its last row/column cut to the panel size)
        crop_w, crop_h = min(w, -(-panel_w // z)), min(h, -(-panel_h // z))
        top, left = detailed_crop(same[-1], crop_h, crop_w)
        crops = [np.repeat(np.repeat(p[top:top + crop_h, left:left + crop_w], z, axis=0), z, axis=1)[:panel_h, :panel_w]
                 for p in same]
        # mark the crop on the first full panel (in its possibly scaled coordinates)
        f = panel_w / w
        x0, y0 = int(left * f), int(top * f)
        x1, y1 = int((left + crop_w) * f) - 1, int((top + crop_h) * f) - 1
        full[0] = full[0].copy()
        cv2.rectangle(full[0], (x0, y0), (max(x0, x1), max(y0, y1)), (255, 255, 0), 1)
        rows.append(_row(crops))
    full = [_label(p, t) for p, t in zip(full, labels)] + full[len(labels):]
    rows.insert(0, _row(full))
    width = max(r.shape[1] for r in rows)
    rows = [r if r.shape[1] == width else np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    out = rows[0]
    for r in rows[1:]:
        out = np.concatenate([out, np.full((_GAP, width, 3), 255, np.uint8), r], axis=0)
    return out


def _row(images: Sequence[np.ndarray]) -> np.ndarray:
    h = max(im.shape[0] for im in images)
    parts: List[np.ndarray] = []
    for i, im in enumerate(images):
        if im.shape[0] < h:
            im = np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=255)
        if i:
            parts.append(np.full((h, _GAP, 3), 255, np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)
