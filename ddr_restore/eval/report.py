"""What ``ddr-eval`` writes: the per-image CSV, the JSON summary, side-by-side grids and the one-line result.

Columns and summary entries come from the metric catalog: one column per selected metric (its name in the run),
then, when the inputs were scored (the input row; SR: bicubic-upsampled LR), ``input_<column>`` for each metric,
then ``seconds``, then the per-image diagnostics the metrics declare (``MetricInfo.details``, e.g.
``ecc_converged``), then the file paths. Each summary ``metrics`` entry holds the metric's catalog name
(``type``), its direction (``better``), whether it was computed (``status``) and what the metric itself records
(:meth:`ddr_restore.metrics.Metric.describe`).
"""
from __future__ import annotations

import csv
import datetime
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ddr_restore.metrics.catalog import Metric, MetricInfo

__all__ = ["CAPTION_HEIGHT", "MetricSlot", "make_grid", "grid_caption", "input_column", "csv_columns", "write_csv",
           "mean_values", "build_summary", "write_summary", "result_line", "result_table"]

CAPTION_HEIGHT = 32  # pixels of the caption band above each grid panel
PATH_COLUMNS = ("input_path", "target_path", "restored_path")
INPUT_PREFIX = "input_"  # CSV columns of the input row: input_<metric column>


@dataclass
class MetricSlot:
    """One metric of an evaluation run: its column, the catalog metric (``None`` when it could not be built)
    and its status (``"ok"``, ``"disabled (...)"``, ``"skipped: ..."``)."""

    column: str
    info: MetricInfo
    metric: Optional[Metric]
    status: str

    @property
    def active(self) -> bool:
        """Whether this metric is computed for every image."""
        return self.metric is not None and self.status == "ok"


# ----------------------------------------------------------------------------------------------- grids


def make_grid(panels: Sequence[Tuple[str, np.ndarray]]) -> np.ndarray:
    """Side-by-side uint8 RGB panels of equal size, each with a caption band of ``CAPTION_HEIGHT`` pixels above.

    Returns an array of shape (H + CAPTION_HEIGHT, n * W, 3).
    """
    import cv2

    h, w = panels[0][1].shape[:2]
    cols = []
    for caption, img in panels:
        if img.shape[:2] != (h, w):
            raise ValueError(f"grid panels must share one size; {caption!r} is {img.shape[:2]}, expected {(h, w)}")
        band = np.zeros((CAPTION_HEIGHT, w, 3), dtype=np.uint8)
        scale = 0.6
        (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        if tw > w - 8:  # narrow panels: shrink the text to fit
            scale *= max(0.2, (w - 8) / tw)
            (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.putText(band, caption, (4, (CAPTION_HEIGHT + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
        cols.append(np.concatenate([band, img], axis=0))
    return np.concatenate(cols, axis=1)


def grid_caption(slots: Sequence[MetricSlot], row: Mapping[str, Any], label: str = "restored") -> str:
    """Caption of a panel: ``label`` and the first computed metric of the row, e.g. ``"restored PSNR 27.31 dB"``.

    A Y-channel metric says so (``"bicubic x4 PSNR-Y 25.10 dB"``).
    """
    for slot in slots:
        value = row.get(slot.column)
        if slot.active and value is not None:
            unit = f" {slot.info.unit}" if slot.info.unit else ""
            y = "-Y" if slot.metric.options.get("test_y_channel") else ""
            return f"{label} {slot.info.title}{y} {value:.2f}{unit}"
    return label


# ----------------------------------------------------------------------------------------------- CSV


def input_column(column: str) -> str:
    """The CSV column of the input row's value of metric ``column`` (``input_psnr_y``)."""
    return INPUT_PREFIX + column


def csv_columns(slots: Sequence[MetricSlot], input_row: bool = False) -> List[str]:
    """``name``, one column per metric, (``input_<metric>`` each), ``seconds``, the metrics' per-image
    diagnostics, the file paths."""
    details: List[str] = []
    for slot in slots:
        details += [d for d in slot.info.details if d not in details]
    inputs = [input_column(s.column) for s in slots] if input_row else []
    return ["name", *(s.column for s in slots), *inputs, "seconds", *details, *PATH_COLUMNS]


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """One line per image; a value that was not computed is an empty cell."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    return path


# ----------------------------------------------------------------------------------------------- summary


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def mean_values(slots: Sequence[MetricSlot], rows: Sequence[Mapping[str, Any]]) -> Dict[str, Optional[float]]:
    """Mean of each metric column over the images (NaN and missing values left out; ``None`` if none)."""
    return {s.column: _mean([r.get(s.column) for r in rows]) for s in slots}


def _metric_entry(slot: MetricSlot) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"type": slot.info.name, "better": slot.info.better, "status": slot.status}
    if slot.metric is not None:
        entry.update(slot.metric.describe())
    return entry


def _clip_weights(slots: Sequence[MetricSlot]) -> Optional[str]:
    """``"random"``/``"pretrained"`` when a computed metric runs CLIP (Q_DDR), else ``None``."""
    for slot in slots:
        if slot.active:
            random = slot.metric.describe().get("clip_random")
            if random is not None:
                return "random" if random else "pretrained"
    return None


def build_summary(run: Mapping[str, Any], intro: str, slots: Sequence[MetricSlot],
                  rows: Sequence[Mapping[str, Any]], timing: Mapping[str, Optional[float]],
                  input_text: Optional[str] = None, input_label: str = "input") -> Dict[str, Any]:
    """The ``summary.json`` dict.

    ``run`` holds what describes the run itself (name, preset, mode, scale, option_file, overrides, checkpoint,
    network, data, device, outputs, previous_results); ``intro`` is the preset's protocol intro; ``timing`` holds
    ``inference`` and ``total`` seconds per image; ``input_text`` says how the input row was made (``None``: the
    inputs were not scored) and ``input_label`` names it in tables (``"bicubic x4"``); its means are those of the
    ``input_<column>`` values of ``rows``.
    """
    import ddr_restore

    protocol = "; ".join([intro] + [s.metric.protocol() for s in slots if s.active] + ["mean over images"])
    head = {k: run.get(k) for k in ("name", "preset", "mode", "scale")}
    input_scores = None
    if input_text is not None:
        scored = [r for r in rows if any(input_column(s.column) in r for s in slots)]
        input_scores = {"label": input_label, "description": input_text, "num_images": len(scored),
                        "mean": {s.column: _mean([r.get(input_column(s.column)) for r in scored]) for s in slots}}
    tail = {k: run.get(k) for k in ("device", "outputs", "previous_results")}
    return {
        **head,
        "ddr_restore_version": ddr_restore.__version__,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        **{k: run.get(k) for k in ("option_file", "overrides", "checkpoint", "network", "data")},
        "protocol": protocol,
        "metrics": {s.column: _metric_entry(s) for s in slots},
        "clip_weights": _clip_weights(slots),
        "num_images": len(rows),
        "mean": mean_values(slots, rows),
        "input_scores": input_scores,
        "seconds_per_image": dict(timing),
        **tail,
    }


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    """Write the summary as indented JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return path


def result_line(summary: Mapping[str, Any]) -> str:
    """``"<name>: <n> images | PSNR 27.9762 | SSIM 0.8623"``: the means that were computed."""
    parts = [f"{k.upper()} {v:.4f}" for k, v in summary["mean"].items() if v is not None]
    return f"{summary['name']}: {summary['num_images']} images | " + " | ".join(parts)


def result_table(summary: Mapping[str, Any]) -> str:
    """What ``ddr-eval`` prints: :func:`result_line`, then, when the inputs were scored, a table of the mean of
    every metric for the input row (``bicubic xN`` for SR) and for the restored images (``-`` = not computed)."""
    line = result_line(summary)
    scores = summary.get("input_scores")
    if not scores:
        return line
    columns = list(summary["mean"])
    rows = [(str(scores.get("label") or "input"), scores["mean"]), ("restored", summary["mean"])]

    def cell(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.4f}"

    label_w = max(len(label) for label, _ in rows)
    widths = [max(len(c), 8) for c in columns]
    out = [line, " " * label_w + "  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    for label, means in rows:
        cells = (cell(means.get(c)).rjust(w) for c, w in zip(columns, widths))
        out.append(label.ljust(label_w) + "  " + "  ".join(cells))
    return "\n".join(out)
