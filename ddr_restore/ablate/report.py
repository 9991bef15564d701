"""Reports of an ablation: results.csv (one row per cell), results.md (mean ± std over seeds, best marked) and plots.

Which way a metric improves, its title and unit come from the metric catalog (:mod:`ddr_restore.metrics`).
Files are rewritten only when their content changes, so a second invocation with nothing to do leaves them (and
their timestamps) as they were.

Plots (matplotlib, Agg): one PNG per grid axis, one panel per metric, mean with error bars of one standard
deviation over seeds. A numeric axis (e.g. λ_d) is a line plot, log-x when every value is positive, symmetric-log
(linear around 0 up to the smallest positive value) when 0 is one of them, one line per combination of the other
axes; any other axis (named variants, strings) is a bar chart whose best bar is drawn in another colour.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ddr_restore.ablate.grid import SEED_LABEL, AblationSpec, Axis, Cell, format_value

__all__ = ["GroupStats", "known_metrics", "metric_direction", "collect_rows", "summarize", "markdown_table",
           "write_reports", "random_weight_notes"]

PathLike = Union[str, os.PathLike]
Echo = Callable[[str], None]


# ------------------------------------------------------------------------------------------------- metric catalog
def known_metrics() -> List[str]:
    """The metric names ``ddr-ablate --metrics`` accepts: the metric catalog's (:mod:`ddr_restore.metrics`)."""
    from ddr_restore.metrics import list_metrics

    return list_metrics()


def metric_direction(name: str) -> str:
    """``"higher"`` or ``"lower"``: which way metric ``name`` improves, as the metric catalog declares it."""
    from ddr_restore.metrics import metric_direction as direction

    return direction(name)


def _title(name: str) -> str:
    from ddr_restore.metrics import metric_info

    try:
        info = metric_info(name)
    except KeyError:  # a column of an older done.json that the catalog no longer knows
        return name
    return (info.title or name) + (f" ({info.unit})" if info.unit else "")


def _arrow(name: str) -> str:
    try:
        return "↑" if metric_direction(name) == "higher" else "↓"
    except KeyError:
        return ""


# ------------------------------------------------------------------------------------------------------- rows
def collect_rows(out_dir: PathLike, cells: Sequence[Cell], axes: Sequence[Axis]) -> Tuple[List[Dict[str, Any]],
                                                                                          List[str]]:
    """One row per finished cell (``done.json``) and the metric names, in the cells' order."""
    from ddr_restore.ablate.runner import cell_dir_of, read_done

    rows: List[Dict[str, Any]] = []
    metrics: List[str] = []
    for cell in cells:
        done = read_done(cell_dir_of(out_dir, cell))
        if done is None:
            continue
        row: Dict[str, Any] = {"cell": cell.name, "group": cell.group, SEED_LABEL: cell.seed}
        for axis in axes:
            row[axis.label] = cell.values[axis.label]
        for name, value in done["metrics"].items():
            if name not in metrics:
                metrics.append(name)
            row[name] = value
        row["iterations"] = done.get("iterations")
        row["eval_seconds"] = done.get("eval_seconds")
        row["finished"] = done.get("finished")
        row["_options"] = done.get("options") or {}
        rows.append(row)
    return rows, metrics


def random_weight_notes(options: Mapping[str, Any]) -> List[str]:
    """Loss terms trained with random weights (``pretrained: none``): their rows measure only the machinery."""
    from ddr_restore.train.options import loss_terms

    train = options.get("train")
    if not isinstance(train, Mapping):
        return []
    notes = []
    for term in loss_terms(train):
        weights = term.cfg.get("pretrained")
        if isinstance(weights, str) and weights.lower() == "none":  # ~ (null) means the default weights
            notes.append(f"{term.name}: random {term.cfg.get('type')} weights (pretrained: none), measures the "
                         "machinery only")
    return notes


@dataclass
class GroupStats:
    """Mean and sample standard deviation (n - 1) of each metric over the seeds of one grid point."""

    group: str
    values: Dict[str, Any]
    n: int
    mean: Dict[str, float]
    std: Dict[str, float]
    notes: List[str]


def summarize(rows: Sequence[Mapping[str, Any]], axes: Sequence[Axis], metrics: Sequence[str],
              cells: Sequence[Cell]) -> List[GroupStats]:
    """Group rows by grid point (the cells' order), mean ± sample std over seeds (std is NaN for one seed)."""
    order: List[str] = []
    first: Dict[str, Cell] = {}
    for cell in cells:
        if cell.group not in first:
            order.append(cell.group)
            first[cell.group] = cell
    stats: List[GroupStats] = []
    for group in order:
        members = [r for r in rows if r["group"] == group]
        if not members:
            continue
        mean, std = {}, {}
        for m in metrics:
            vals = [float(r[m]) for r in members if r.get(m) is not None]
            mean[m] = sum(vals) / len(vals) if vals else math.nan
            std[m] = (math.sqrt(sum((v - mean[m]) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1
                      else math.nan)
        stats.append(GroupStats(group=group, values={a.label: first[group].values[a.label] for a in axes},
                                n=len(members), mean=mean, std=std,
                                notes=random_weight_notes(members[0].get("_options") or {})))
    return stats


def _best(stats: Sequence[GroupStats], metric: str) -> Optional[float]:
    means = [s.mean[metric] for s in stats if not math.isnan(s.mean[metric])]
    if len(means) < 2 or not _arrow(metric):
        return None
    return max(means) if metric_direction(metric) == "higher" else min(means)


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    digits = 2 if abs(mean) >= 10 else 4
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def markdown_table(stats: Sequence[GroupStats], axes: Sequence[Axis], metrics: Sequence[str]) -> str:
    """The summary table: one row per grid point, ``mean ± std`` per metric, the best mean of a column in bold."""
    headers = [a.label for a in axes] + [f"{_title(m)} {_arrow(m)}" for m in metrics] + ["seeds", "notes"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    best = {m: _best(stats, m) for m in metrics}
    for s in stats:
        cells = [format_value(s.values[a.label]) for a in axes]
        for m in metrics:
            text = _fmt(s.mean[m], s.std[m])
            cells.append(f"**{text}**" if best[m] is not None and s.mean[m] == best[m] else text)
        cells += [str(s.n), "; ".join(s.notes)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ writing
def _write_if_changed(path: Path, data: bytes) -> bool:
    """Replace ``path`` only when ``data`` differs (atomically); returns whether it was written."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def _csv_bytes(rows: Sequence[Mapping[str, Any]], axes: Sequence[Axis], metrics: Sequence[str]) -> bytes:
    columns = ["cell", "group", SEED_LABEL] + [a.label for a in axes] + list(metrics) + ["iterations",
                                                                                      "eval_seconds", "finished"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = dict(row)
        for a in axes:  # mappings and lists as their short text; numbers stay numbers
            if not isinstance(out[a.label], (int, float, str)) or isinstance(out[a.label], bool):
                out[a.label] = format_value(out[a.label])
        writer.writerow({k: ("" if out.get(k) is None else out[k]) for k in columns})
    return buf.getvalue().encode("utf-8")


_DATA_KEYS = ("dataroot", "layout", "dataroot_lq", "dataroot_gt", "meta_info_file", "gt_size", "length")


def _header(spec: AblationSpec, cells: Sequence[Cell], rows: Sequence[Mapping[str, Any]], out_dir: Path) -> str:
    from ddr_restore.ablate.runner import cell_dir_of

    lines = [f"# Ablation `{spec.name}`", ""]
    lines.append(f"- base options: `{spec.base}`" + (f"; grid file: `{spec.grid_file}`" if spec.grid_file else ""))
    for key, value in list(spec.common) + list(spec.last):
        lines.append(f"- every cell: `{key}` = `{format_value(value)}`")
    iters = sorted({r["iterations"] for r in rows if r.get("iterations") is not None})
    if iters:
        lines.append(f"- iterations (train.total_iter): {', '.join(map(str, iters))}")
    lines.append(f"- seeds: {', '.join(map(str, spec.seeds))}; values are mean ± sample standard deviation over the "
                 "finished seeds (column `seeds`); **bold**: the best mean of a column (↑ higher is better, "
                 "↓ lower is better)")
    evaluation = None
    for cell in cells:
        import json

        try:
            evaluation = json.loads((cell_dir_of(out_dir, cell) / "cell.json").read_text())["evaluation"]
            break
        except (OSError, ValueError, KeyError):
            continue
    if evaluation:
        test = evaluation["test"]
        source = test.get("dataset")
        if isinstance(source, Mapping):
            where = f"{source.get('type')} " + ", ".join(f"{k} `{source[k]}`" for k in _DATA_KEYS if source.get(k))
        else:
            where = ", ".join(f"{k} `{v}`" for k, v in test.items() if v)
        knobs = ", ".join(f"{k}={v}" for k, v in (evaluation.get("eval") or {}).items())
        lines.append(f"- test set: {where}; metrics by ddr-eval (gopro protocol unless the preset says otherwise)"
                     + (f"; {knobs}" if knobs else ""))
    lines.append("")
    return "\n".join(lines) + "\n"


def _plots(stats: Sequence[GroupStats], axes: Sequence[Axis], metrics: Sequence[str], out_dir: Path,
           echo: Echo) -> Dict[str, Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        echo("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return {}
    written: Dict[str, Path] = {}
    if not stats or not metrics:
        return written
    for axis in axes:
        if len({format_value(s.values[axis.label]) for s in stats}) < 2:
            continue
        fig, panels = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        for m, ax in zip(metrics, panels[0]):
            if axis.numeric:
                _line_panel(ax, stats, axis, axes, m)
            else:
                _bar_panel(ax, stats, axis, axes, m)
            ax.set_title(f"{_title(m)} {_arrow(m)}")
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
        plt.close(fig)
        path = out_dir / f"plot_{re.sub(r'[^A-Za-z0-9._-]+', '_', axis.label).strip('_') or 'axis'}.png"
        _write_if_changed(path, buf.getvalue())
        written[axis.label] = path
    return written


def _others(s: GroupStats, axis: Axis, axes: Sequence[Axis]) -> str:
    return ", ".join(f"{a.label}={format_value(s.values[a.label])}" for a in axes if a is not axis)


def _line_panel(ax: Any, stats: Sequence[GroupStats], axis: Axis, axes: Sequence[Axis], metric: str) -> None:
    series: Dict[str, List[GroupStats]] = {}
    for s in stats:
        series.setdefault(_others(s, axis, axes), []).append(s)
    xs_all = [float(s.values[axis.label]) for s in stats]
    for label, members in series.items():
        members = sorted(members, key=lambda s: float(s.values[axis.label]))
        xs = [float(s.values[axis.label]) for s in members]
        ys = [s.mean[metric] for s in members]
        es = [0.0 if math.isnan(s.std[metric]) else s.std[metric] for s in members]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label or None)
    positive = [x for x in xs_all if x > 0]
    if positive and all(x > 0 for x in xs_all):
        ax.set_xscale("log")
    elif positive and all(x >= 0 for x in xs_all):
        ax.set_xscale("symlog", linthresh=min(positive))  # 0 on a log-like axis
    ax.set_xlabel(axis.label)
    if len(series) > 1:
        ax.legend(fontsize=7)


def _bar_panel(ax: Any, stats: Sequence[GroupStats], axis: Axis, axes: Sequence[Axis], metric: str) -> None:
    labels = [format_value(s.values[axis.label]) + (f"\n{_others(s, axis, axes)}" if len(axes) > 1 else "")
              for s in stats]
    means = [s.mean[metric] for s in stats]
    errs = [0.0 if math.isnan(s.std[metric]) else s.std[metric] for s in stats]
    best = _best(stats, metric)
    colours = ["tab:orange" if best is not None and m == best else "tab:blue" for m in means]
    ax.bar(range(len(stats)), means, yerr=errs, capsize=3, color=colours)
    finite = [m for m in means if not math.isnan(m)]
    if finite:  # bars of PSNR-like values: zoom on their range instead of starting at 0
        low = min(m - e for m, e in zip(means, errs) if not math.isnan(m))
        high = max(m + e for m, e in zip(means, errs) if not math.isnan(m))
        pad = (high - low) * 0.15 or abs(high) * 0.01 or 0.01
        ax.set_ylim(low - pad, high + pad)
    ax.set_xticks(range(len(stats)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(axis.label)


def write_reports(out_dir: PathLike, spec: AblationSpec, cells: Sequence[Cell],
                  echo: Echo = print) -> Dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and ``plot_<axis>.png`` for the finished cells; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, metrics = collect_rows(out, cells, spec.axes)
    paths: Dict[str, Path] = {"csv": out / "results.csv", "md": out / "results.md"}
    _write_if_changed(paths["csv"], _csv_bytes(rows, spec.axes, metrics))
    stats = summarize(rows, spec.axes, metrics, cells)
    text = _header(spec, cells, rows, out)
    text += markdown_table(stats, spec.axes, metrics) if stats else "No cell has finished yet.\n"
    finished = {r["cell"] for r in rows}
    missing = [c.name for c in cells if c.name not in finished]
    if missing:
        text += (f"\nMissing ({len(missing)} of {len(cells)} cells; run the same command again): "
                 + ", ".join(missing) + "\n")
    plots = _plots(stats, spec.axes, metrics, out, echo)
    for label, path in plots.items():
        text += f"\n![{label}]({path.name})\n"
    _write_if_changed(paths["md"], text.encode("utf-8"))
    paths.update({f"plot:{k}": v for k, v in plots.items()})
    return paths
