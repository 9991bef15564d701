"""Evaluate a trained network (or saved outputs) on a test set with catalog metrics: :func:`evaluate`.

Python use (what ``ddr-eval`` and ``ddr-ablate`` call)::

    from ddr_restore.eval import evaluate

    summary = evaluate("folder", input_dir="test/input", target_dir="test/target",
                       option_file="experiments/run/options.yml", checkpoint="experiments/run/models/net_g_latest.pth",
                       metrics=["psnr", "ssim", "lpips"], out_dir="results/run", overwrite=True, progress=False)
    summary["mean"]["lpips"], summary["metrics"]["lpips"]["better"]      # 0.21, "lower"

or, equivalently, ``evaluate(EvalConfig(test=TestSet(...), network=Network(...), metrics=[...],
outputs=Outputs(...)))``. The keyword form routes each keyword to the field of that name in :class:`TestSet`,
:class:`Network`, :class:`Outputs` or :class:`EvalConfig`.

* What is scored: ``option_file`` + ``checkpoint`` (or a built ``net``) run on every input at full resolution
  (:mod:`ddr_restore.eval.inference`: padding, TLC, tiles), or ``restored_dir``: saved outputs matched to the
  targets by name.
* Test set: a preset (:mod:`ddr_restore.eval.presets`: ``gopro``, ``realblur``, ``folder``) and its folders or
  RealBlur list; pairs come from the data package.
* Metrics (:mod:`ddr_restore.metrics.catalog`): ``metrics=None`` is the preset's default set (``psnr ssim lpips
  q_ddr``; for realblur ``psnr``/``ssim`` are the ECC-aligned variants); a metric of the default set whose weights
  cannot be loaded is skipped and the reason recorded. Named metrics (``["psnr", "lpips"]``, or a mapping
  ``{column: {type: <catalog name>, <options>}}`` like a training option file's ``val.metrics``) are required:
  a failure to load one is an error. ``metric_options`` sets options by name on every selected metric that has
  them (``{"crop_border": 4}``) or on one metric (``{"lpips.net": "vgg"}``); an option no selected metric takes
  is an error. The older keywords ``crop_border``, ``test_y_channel``, ``lpips_net``, ``ddr_pretrained``,
  ``ddr_backbone``, ``lpips=False`` and ``ddr=False`` are still accepted and translated (:data:`OLD_KEYWORDS`).
* Protocol: outputs clamped to [0,1] and quantised to 8 bits; every metric sees the 8-bit images; mean over images.

Outputs in ``out_dir`` (default ``results/<name>``): ``per_image.csv`` (columns from the catalog), ``summary.json``
(:func:`ddr_restore.eval.report.build_summary`), and optionally ``images/`` and ``grid/``. Earlier results there
are archived or replaced, never mixed (:mod:`ddr_restore.eval.outputs`).

Errors: every user mistake (a path, a pairing, an image, an option, a metric, a checkpoint) raises an
:class:`~ddr_restore.errors.InputError`/``MissingPathError``/``UnknownNameError``/``CheckpointError`` whose message
names the file, folder or key.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ddr_restore.errors import InputError, MissingPathError, UserError
from ddr_restore.eval import outputs, report
from ddr_restore.eval.presets import PRESETS, EvalItem, attach_restored, collect_items, preset_metrics
from ddr_restore.eval.report import MetricSlot
from ddr_restore.imageio import img2tensor, read_image, tensor2img, write_image
from ddr_restore.metrics.catalog import Metric, create_metric, metric_info

__all__ = ["TestSet", "Network", "Outputs", "EvalConfig", "OLD_KEYWORDS", "GRAY_CHOICES", "ALPHA_CHOICES",
           "evaluate"]

PathLike = Union[str, os.PathLike]
MetricsArg = Union[None, Sequence[str], Mapping[str, Any]]
GRAY_CHOICES = ("error", "replicate")
ALPHA_CHOICES = ("error", "drop")


# ----------------------------------------------------------------------------------------------- configuration


@dataclass
class TestSet:
    """Where the test pairs are: a preset and its folders or list file (see :mod:`ddr_restore.eval.presets`)."""

    __test__ = False  # not a pytest test class, whatever its name
    preset: str = "folder"
    root: Optional[PathLike] = None
    input_dir: Optional[PathLike] = None
    target_dir: Optional[PathLike] = None
    list_file: Optional[PathLike] = None
    max_images: Optional[int] = None  #: only the first N pairs (smoke tests)
    gray: str = "error"  #: greyscale files: "error" or "replicate"
    alpha: str = "error"  #: RGBA files: "error" or "drop"


@dataclass
class Network:
    """The network whose outputs are scored: ``option_file`` + ``checkpoint`` (or a built ``net``)."""

    option_file: Optional[PathLike] = None
    checkpoint: Optional[PathLike] = None
    net: Optional[torch.nn.Module] = None
    overrides: Sequence[str] = ()  #: ``KEY.PATH=VALUE`` applied to the option file (the trainer's ``--set``)
    prefer_ema: bool = True
    tlc: bool = True
    tile: Optional[int] = None
    tile_overlap: int = 32
    amp: Optional[str] = None


@dataclass
class Outputs:
    """Where and what to write."""

    out_dir: Optional[PathLike] = None  #: default ``results/<name>``
    name: Optional[str] = None  #: default: the option file's ``name``, the restored folder's name, the preset
    overwrite: bool = False  #: delete earlier results instead of archiving them
    save_images: bool = False
    grid: int = 0  #: input|restored|target PNGs for the first N images
    progress: bool = True


@dataclass
class EvalConfig:
    """One evaluation run. Give ``network`` (run it) or ``restored_dir`` (score saved outputs)."""

    test: TestSet = field(default_factory=TestSet)
    network: Optional[Network] = None
    restored_dir: Optional[PathLike] = None
    metrics: MetricsArg = None  #: None (preset default set), names, or ``{column: {type: ..., <options>}}``
    metric_options: Mapping[str, Any] = field(default_factory=dict)  #: ``{"crop_border": 4, "lpips.net": "vgg"}``
    disabled: Mapping[str, str] = field(default_factory=dict)  #: column -> reason: listed, not computed
    outputs: Outputs = field(default_factory=Outputs)
    device: Union[str, torch.device] = "cpu"

    @classmethod
    def from_keywords(cls, preset: str = "folder", **keywords: Any) -> "EvalConfig":
        """Build a config from flat keywords (each the name of a field of a part, or an :data:`OLD_KEYWORDS`)."""
        parts: Dict[type, Dict[str, Any]] = {TestSet: {"preset": preset}, Network: {}, Outputs: {}, cls: {}}
        names = {f.name: part for part in parts for f in dataclasses.fields(part)
                 if part is not cls or f.name not in ("test", "network", "outputs")}
        old: Dict[str, Any] = {}
        for key, value in keywords.items():
            if key in OLD_KEYWORDS:
                old[key] = value
            elif key in names:
                parts[names[key]][key] = value
            else:
                raise InputError(f"evaluate: unknown keyword {key!r}; accepted: {', '.join(sorted(names))} "
                                 f"(and the older {', '.join(OLD_KEYWORDS)})")
        top = parts[cls]
        options = dict(top.pop("metric_options", None) or {})
        disabled = dict(top.pop("disabled", None) or {})
        _translate_old(old, options, disabled)
        network = Network(**parts[Network]) if parts[Network] else None
        return cls(test=TestSet(**parts[TestSet]), network=network, outputs=Outputs(**parts[Outputs]),
                   metric_options=options, disabled=disabled, **top)


#: Keywords of the earlier ``evaluate()`` that are options of catalog metrics now: keyword -> metric option
#: (``"<option>"``: every selected metric that has it; ``"<metric>.<option>"``: that metric). ``lpips=False`` and
#: ``ddr=False`` list the metric without computing it (as ``--no-lpips``/``--no-ddr`` did).
OLD_KEYWORDS: Dict[str, str] = {
    "crop_border": "crop_border",
    "test_y_channel": "test_y_channel",
    "lpips_net": "lpips.net",
    "ddr_pretrained": "q_ddr.pretrained",
    "ddr_backbone": "q_ddr.backbone",
    "lpips": "lpips",
    "ddr": "q_ddr",
}


def _translate_old(old: Mapping[str, Any], options: Dict[str, Any], disabled: Dict[str, str]) -> None:
    for key, value in old.items():
        if key in ("lpips", "ddr"):
            if not value:
                disabled.setdefault(OLD_KEYWORDS[key], f"{key}=False")
        elif value is not None:
            options.setdefault(OLD_KEYWORDS[key], value)


def _check_config(cfg: EvalConfig) -> bool:
    """Errors in the arguments themselves (before any file is touched); returns whether a network is run."""
    net, test = cfg.network, cfg.test
    model_mode = cfg.restored_dir is None
    if model_mode and (net is None or (net.net is None and (net.option_file is None or net.checkpoint is None))):
        raise InputError("give either option_file and checkpoint (run the network) or restored_dir (score outputs)")
    if not model_mode and net is not None and (net.net is not None or net.option_file is not None
                                               or net.checkpoint is not None):
        raise InputError("restored_dir scores saved outputs; do not combine it with option_file/checkpoint/net")
    if net is not None and net.overrides and net.option_file is None:
        raise InputError("--set overrides apply to an option file; give one with --opt")
    if net is not None and net.tile is not None and (net.tile < 1 or net.tile_overlap < 0
                                                     or 2 * net.tile_overlap >= net.tile):
        raise InputError(f"need tile >= 1 and 0 <= tile_overlap < tile/2, got tile={net.tile}, "
                         f"tile_overlap={net.tile_overlap}")
    if test.gray not in GRAY_CHOICES:
        raise InputError(f"gray must be one of {', '.join(GRAY_CHOICES)}; got {test.gray!r}")
    if test.alpha not in ALPHA_CHOICES:
        raise InputError(f"alpha must be one of {', '.join(ALPHA_CHOICES)}; got {test.alpha!r}")
    return model_mode


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InputError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from err
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device {device!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return dev


# ----------------------------------------------------------------------------------------------- metrics


def metric_specs(preset: str, metrics: MetricsArg, options: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """``{column: {"type": catalog name, <options>}}`` for a run: names resolved by the preset, options applied.

    Raises InputError for an option no selected metric takes (it would silently do nothing).
    """
    if metrics is None or (isinstance(metrics, Sequence) and not isinstance(metrics, str)):
        specs = preset_metrics(preset, metrics)
    elif isinstance(metrics, Mapping):
        specs = {str(col): ({"type": cfg} if isinstance(cfg, str) else dict(cfg)) for col, cfg in metrics.items()}
    else:
        raise InputError(f"metrics: expected a list of metric names or a mapping, got {metrics!r}")
    for key, value in options.items():
        column, _, option = key.rpartition(".")
        targets = [column] if column else list(specs)
        if column and column not in specs:
            raise InputError(f"metric option {key}: {column} is not among the metrics ({', '.join(specs)})")
        takers = [c for c in targets if option in metric_info(specs[c].get("type", c)).options]
        if not takers:
            raise InputError(f"metric option {key}: none of the metrics ({', '.join(targets)}) has an option "
                             f"{option!r}")
        for c in takers:
            specs[c].setdefault(option, value)
    return specs


def _load(column: str, metric: Metric, dev: torch.device, required: bool) -> str:
    """Load ``metric`` on ``dev``; returns its status. A named (required) metric that cannot load is an error."""
    try:
        metric.to(dev).load()
    except Exception as err:  # weights not cached, a package missing: skip with the reason, never fake it
        if required:
            if isinstance(err, UserError):
                raise
            raise InputError(f"metric {column} ({metric.info.name}) cannot be loaded: {type(err).__name__}: "
                             f"{err}") from err
        print(f"[ddr-eval] {metric.info.title} skipped: {err}", file=sys.stderr)
        return f"skipped: {type(err).__name__}: {err}"
    for note in metric.caveats():
        print(f"[ddr-eval] WARNING: {note}", file=sys.stderr)
    return "ok"


def _build_slots(cfg: EvalConfig, dev: torch.device) -> List[MetricSlot]:
    """Create (and load) every metric of the run once, before any image is read, so a failure shows at once."""
    specs = metric_specs(cfg.test.preset, cfg.metrics, cfg.metric_options)
    unknown = [c for c in cfg.disabled if c not in specs]
    if unknown:
        raise InputError(f"disabled: {', '.join(unknown)} not among the metrics ({', '.join(specs)})")
    slots = []
    for column, spec in specs.items():
        options = {k: v for k, v in spec.items() if k != "type"}
        metric = create_metric(spec.get("type", column), where=f"metrics.{column}", **options)
        if hasattr(metric, "switch_hint"):  # Q_DDR: a missing CLIP names ddr-eval's own flag
            metric.switch_hint = "--ddr-pretrained"
        status = (f"disabled ({cfg.disabled[column]})" if column in cfg.disabled
                  else _load(column, metric, dev, required=cfg.metrics is not None))
        slots.append(MetricSlot(column, metric.info, metric, status))
    return slots


def _score(slots: Sequence[MetricSlot], restored: np.ndarray, target: np.ndarray) -> Dict[str, Any]:
    """The metric values and per-image diagnostics of one image (``None`` for metrics not computed)."""
    row: Dict[str, Any] = {}
    for slot in slots:
        row.setdefault(slot.column, None)
        if slot.active:
            value, details = slot.metric.compute(restored, target)
            row[slot.column] = value
            for k, v in details.items():
                row.setdefault(k, v)
    return row


# ----------------------------------------------------------------------------------------------- images


def _layout_hint(path: Path, gray: str, alpha: str, message: str) -> str:
    """The switch that would accept ``path`` when it was refused for its channel layout, else ``""``.

    Found by decoding again with the permissive setting (only on this error path), so the hint does not depend
    on the wording of :func:`read_image`'s messages.
    """
    def readable(g: str, a: str) -> bool:
        try:
            read_image(path, gray=g, alpha=a)
            return True
        except (OSError, ValueError):
            return False

    if gray == "replicate" and alpha == "drop":
        return ""
    if gray != "replicate" and readable("replicate", alpha):
        flag, effect = "--gray replicate", "to copy its grey channel to R, G and B"
    elif alpha != "drop" and readable(gray, "drop"):
        flag, effect = "--alpha drop", "to evaluate its colour channels and ignore the alpha channel"
    else:
        return ""
    return "" if flag in message else f" (pass {flag} {effect})"


def _read_uint8(path: Path, what: str, test: TestSet) -> np.ndarray:
    try:
        img = read_image(path, gray=test.gray, alpha=test.alpha)
    except FileNotFoundError as err:
        raise MissingPathError(f"{what}: {err}") from err
    except ValueError as err:
        raise InputError(f"{what}: {err}{_layout_hint(path, test.gray, test.alpha, str(err))}") from err
    return (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------------- network


def _new_keys(opt: Dict[str, Any], overrides: Sequence[str]) -> List[str]:
    """The ``--set`` key paths that the option file did not have (likely typos; they are applied anyway)."""
    from ddr_restore.train.options import parse_override

    new = []
    for text in overrides:
        parts, _ = parse_override(text)
        node: Any = opt
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                new.append(".".join(parts))
                break
            node = node[part]
    return new


def _option_name(net: Optional[Network]) -> Optional[str]:
    """The option file's ``name`` (after ``--set``), noting overrides of keys the file does not have."""
    if net is None or net.option_file is None:
        return None
    from ddr_restore.eval.inference import load_option_file

    overrides = list(net.overrides)
    opt = load_option_file(net.option_file, overrides)
    for key in _new_keys(load_option_file(net.option_file), overrides) if overrides else []:
        print(f"[ddr-eval] note: --set {key}: {net.option_file} has no such key; it is added", file=sys.stderr)
    return opt.get("name")


def _load_network(spec: Network, dev: torch.device) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The network in eval mode on ``dev`` and what the summary records about it."""
    if spec.net is None:
        from ddr_restore.eval.inference import load_restoration_model

        net = load_restoration_model(spec.option_file, spec.checkpoint, prefer_ema=spec.prefer_ema, tlc=spec.tlc,
                                     device=dev, overrides=list(spec.overrides))
    else:
        net = spec.net.to(dev).eval()
    info = {
        "network_g": getattr(net, "ddr_network_opt", {"type": type(net).__name__}),
        "checkpoint_key": getattr(net, "ddr_checkpoint_key", None),
        "tlc": spec.tlc, "tile": spec.tile, "tile_overlap": spec.tile_overlap if spec.tile else None, "amp": spec.amp,
    }
    return net, info


def _run_network(net: torch.nn.Module, spec: Network, inp: np.ndarray,
                 dev: torch.device) -> Tuple[np.ndarray, float]:
    """The 8-bit output of ``net`` for one input and the inference time in seconds."""
    from ddr_restore.eval.inference import restore

    x = img2tensor(inp).unsqueeze(0).to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    y = restore(net, x, tile=spec.tile, tile_overlap=spec.tile_overlap, amp=spec.amp)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return tensor2img(y), time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """What the per-image loop needs, resolved once."""

    cfg: EvalConfig
    dev: torch.device
    out: Path
    slots: List[MetricSlot]
    net: Optional[torch.nn.Module] = None


def _restored_image(run: _Run, it: EvalItem, inp: Optional[np.ndarray],
                    target: np.ndarray) -> Tuple[np.ndarray, Optional[float]]:
    """The image to score for one pair (network output or saved output), checked against the target's size."""
    if run.net is not None:
        if inp.shape != target.shape:
            raise InputError(f"input {it.input_path} is {inp.shape[1]}x{inp.shape[0]} but target "
                             f"{it.target_path} is {target.shape[1]}x{target.shape[0]}")
        restored, seconds = _run_network(run.net, run.cfg.network, inp, run.dev)
        if restored.shape != target.shape:
            raise InputError(f"network output for {it.input_path} is {restored.shape}, target "
                             f"{it.target_path} is {target.shape} (does the option file describe a "
                             f"network for this task?)")
        return restored, seconds
    restored = _read_uint8(it.restored_path, "restored image", run.cfg.test)
    if restored.shape != target.shape:
        raise InputError(f"size mismatch: restored {it.restored_path} is {restored.shape[1]}x"
                         f"{restored.shape[0]} but target {it.target_path} is "
                         f"{target.shape[1]}x{target.shape[0]}")
    return restored, None


def _evaluate_item(run: _Run, it: EvalItem, with_grid: bool) -> Dict[str, Any]:
    """Score one pair; write its output image and grid when asked. Returns its CSV row."""
    test, out_opts = run.cfg.test, run.cfg.outputs
    target = _read_uint8(it.target_path, "target image", test)
    inp = _read_uint8(it.input_path, "input image", test) if it.input_path is not None else None
    restored, seconds = _restored_image(run, it, inp, target)
    row: Dict[str, Any] = {"name": it.name, **_score(run.slots, restored, target), "seconds": seconds}
    saved = write_image(run.out / "images" / it.out_rel, restored) if out_opts.save_images else None
    if with_grid:
        panels = [("input", inp)] if inp is not None and inp.shape == restored.shape else []
        panels += [(report.grid_caption(run.slots, row), restored), ("target", target)]
        write_image(run.out / "grid" / it.out_rel, report.make_grid(panels))
    row.update({"target_path": str(it.target_path), "input_path": str(it.input_path) if it.input_path else "",
                "restored_path": str(saved or it.restored_path or "")})
    return row


def _run_description(cfg: EvalConfig, name: str, model_mode: bool, network_info: Mapping[str, Any],
                     dev: torch.device, out: Path) -> Dict[str, Any]:
    """The summary's description of the run (everything but the metrics and timings)."""
    test, net, o = cfg.test, cfg.network, cfg.outputs

    def text(p: Any) -> Optional[str]:
        return str(p) if p is not None else None

    return {
        "name": name, "preset": test.preset, "mode": "model" if model_mode else "restored",
        "option_file": text(net.option_file) if net else None,
        "overrides": list(net.overrides) if net else [],
        "checkpoint": text(net.checkpoint) if net else None,
        "network": dict(network_info) or None,
        "data": {"root": text(test.root), "input_dir": text(test.input_dir), "target_dir": text(test.target_dir),
                 "list_file": text(test.list_file), "restored_dir": text(cfg.restored_dir), "gray": test.gray,
                 "alpha": test.alpha},
        "device": str(dev),
        "outputs": {"csv": str(out / "per_image.csv"), "images": str(out / "images") if o.save_images else None,
                    "grid": str(out / "grid") if o.grid else None},
    }


def evaluate(config: Union[EvalConfig, str, None] = None, **keywords: Any) -> Dict[str, Any]:
    """Evaluate a network or saved outputs on a test set; write ``per_image.csv``/``summary.json``; return the summary.

    ``config`` is an :class:`EvalConfig`, or a preset name (``"gopro"``, ``"realblur"``, ``"folder"``) with the
    fields as keywords: ``evaluate("folder", input_dir=..., target_dir=..., option_file=..., checkpoint=...,
    metrics=["psnr", "lpips"], out_dir=...)``. See the module docstring for metrics, outputs and errors.

    The summary holds ``mean`` (``{column: mean value or None}``), ``metrics`` (``{column: {type, better, status,
    <what the metric records>}}``), ``num_images``, ``protocol``, the run's inputs and timings.
    """
    if isinstance(config, EvalConfig):
        if keywords:
            raise InputError(f"evaluate: give an EvalConfig or keywords, not both ({', '.join(keywords)})")
        cfg = config
    else:
        cfg = EvalConfig.from_keywords(config or "folder", **keywords)
    t_start = time.perf_counter()
    model_mode = _check_config(cfg)
    dev = _resolve_device(cfg.device)
    test, o = cfg.test, cfg.outputs

    items = collect_items(test.preset, test.root, test.input_dir, test.target_dir, test.list_file,
                          need_inputs=model_mode)
    if test.max_images is not None:
        items = items[: max(0, int(test.max_images))]
    if not model_mode:
        attach_restored(items, Path(cfg.restored_dir))
    opt_name = _option_name(cfg.network)  # also reads the option file early: its errors come before any work
    name = o.name or opt_name or (Path(cfg.restored_dir).name if cfg.restored_dir is not None else test.preset)
    out = Path(o.out_dir) if o.out_dir is not None else Path("results") / str(name)
    net = cfg.network or Network()
    # Checked before the slow parts (metrics, network) so a refusal comes at once; acted on just before writing.
    holds_results = outputs.check_out_dir(out, [test.root, test.input_dir, test.target_dir, test.list_file,
                                                cfg.restored_dir, net.option_file, net.checkpoint])
    run = _Run(cfg, dev, out, _build_slots(cfg, dev))
    network_info: Dict[str, Any] = {}
    if model_mode:
        run.net, network_info = _load_network(net, dev)

    from tqdm import tqdm

    previous = outputs.prepare_out_dir(out, holds_results, o.overwrite)
    rows = [_evaluate_item(run, it, with_grid=i < o.grid)
            for i, it in enumerate(tqdm(items, desc=f"ddr-eval {test.preset}", disable=not o.progress, unit="img"))]
    report.write_csv(out / "per_image.csv", rows, report.csv_columns(run.slots))
    infer = [r["seconds"] for r in rows if r["seconds"] is not None]
    timing = {"inference": float(np.mean(infer)) if infer else None,
              "total": (time.perf_counter() - t_start) / max(1, len(rows))}
    description = {**_run_description(cfg, name, model_mode, network_info, dev, out), "previous_results": previous}
    summary = report.build_summary(description, PRESETS[test.preset].intro, run.slots, rows, timing)
    report.write_summary(out / "summary.json", summary)
    return summary
