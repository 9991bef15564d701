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
* Test set: a preset (:mod:`ddr_restore.eval.presets`: ``gopro``, ``realblur``, ``folder``, ``sr``, ``realsr``)
  and its folders, RealBlur list or RealSR/DRealSR root; pairs come from the data package.
* Super-resolution (``sr``/``realsr``, ``scale=N``): the HR target is cropped to ``LR size x N`` (at most ``N - 1``
  pixels; more is an error naming both files), PSNR/SSIM default to ``crop_border = N`` on the BT.601 Y channel
  (``psnr_y``, ``ssim_y``) and on RGB (``psnr_rgb``, ``ssim_rgb``); a network whose ``scale`` (``network_g.upscale``)
  is not N is an error, and so is a scale-1 network on true low-resolution inputs.
* Input row (``score_input``; on by default for the SR presets): the inputs are scored with the same metrics --
  for SR the LR image upsampled ``x N`` with the MATLAB-compatible bicubic ``imresize`` -- into the CSV's
  ``input_<column>`` columns and the summary's ``input_scores``; the grids show it as their first panel.
* Metrics (:mod:`ddr_restore.metrics.catalog`): ``metrics=None`` is the preset's default set (``psnr ssim lpips
  q_ddr``; for realblur ``psnr``/``ssim`` are the ECC-aligned variants); a metric of the default set whose weights
  cannot be loaded is skipped and the reason recorded. Named metrics (``["psnr", "lpips"]``, or a mapping
  ``{column: {type: <catalog name>, <options>}}`` like a training option file's ``val.metrics``) are required:
  a failure to load one is an error. ``metric_options`` sets options by name on every selected metric that has
  them (``{"crop_border": 4}``) or on one metric (``{"lpips.net": "vgg"}``); an option no selected metric takes
  is an error. The older keywords ``crop_border``, ``test_y_channel``, ``lpips_net``, ``ddr_pretrained``,
  ``ddr_backbone``, ``lpips=False`` and ``ddr=False`` are still accepted and translated (:data:`OLD_KEYWORDS`).
* Protocol: outputs clamped to [0,1] and quantised to 8 bits; every metric sees the 8-bit images; mean over images.
* Speed: ``device="auto"`` (the default) runs on CUDA when present, else on the CPU (printed at the start, recorded
  in the summary's ``runtime``). ``amp="bf16"``/``"fp16"`` autocasts the network's forward on CUDA (its output is
  float32 before the 8-bit quantisation); it is refused on the CPU (:data:`CPU_AMP_NOTE`). ``workers=N`` threads
  (default ``min(4, CPU count)``) read and decode the next pairs while the network and the metrics work on the
  current one, and one more writes the output PNGs and grids; ``workers=0`` does everything in turn in the calling
  thread. The results are the same bytes either way, in the same order, and a bad file stops the run when its
  pair is reached, with the same message (:mod:`ddr_restore.eval.prefetch`).

Outputs in ``out_dir`` (default ``results/<name>``): ``per_image.csv`` (columns from the catalog), ``summary.json``
(:func:`ddr_restore.eval.report.build_summary`), and optionally ``images/`` and ``grid/``. Earlier results there
are archived or replaced, never mixed (:mod:`ddr_restore.eval.outputs`).

Errors: every user mistake (a path, a pairing, an image, an option, a metric, a checkpoint) raises an
:class:`~ddr_restore.errors.InputError`/``MissingPathError``/``UnknownNameError``/``CheckpointError`` whose message
names the file, folder or key.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
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
from ddr_restore.eval.prefetch import BackgroundWriter, Prefetcher, check_workers
from ddr_restore.eval.presets import (PRESETS, EvalItem, apply_preset_defaults, attach_restored, check_scale,
                                      collect_items, preset_metrics, protocol_intro, sr_layout)
from ddr_restore.eval.report import MetricSlot
from ddr_restore.imageio import img2tensor, read_image, tensor2img, write_image
from ddr_restore.metrics.catalog import Metric, create_metric, metric_info

__all__ = ["TestSet", "Network", "Outputs", "EvalConfig", "OLD_KEYWORDS", "GRAY_CHOICES", "ALPHA_CHOICES",
           "CPU_AMP_NOTE", "evaluate"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
MetricsArg = Union[None, Sequence[str], Mapping[str, Any]]
GRAY_CHOICES = ("error", "replicate")
ALPHA_CHOICES = ("error", "drop")
#: Why ``amp`` is refused on CPU. Measured with ``scripts/bench_eval.py --device cpu`` on a Xeon with AMX-BF16 (the
#: best case for CPU bf16), one torch thread, random weights, torch 2.14, a 2-core machine shared with other jobs:
#: bf16 autocast ran NAFNetLocal-w32 at 0.71-0.83x the fp32 speed (128x96 to 192x128 px) and Restormer at 1.02-1.10x
#: (192x128, 256x192; one run at 2.0x was an fp32 run slowed by other jobs), 8-bit PSNR vs fp32 57.3 / 53.6 dB; CPUs
#: without bf16 hardware emulate it and are slower. Slower for one recipe network and no real gain for the other, so
#: CPU evaluation stays fp32 (one set of numbers); the benchmark re-measures it on any machine.
CPU_AMP_NOTE = ("on CPU, bf16 autocast measured 0.7-0.8x (NAFNet) and 1.0-1.1x (Restormer) the fp32 speed even "
                "with AMX, and is slower without bf16 hardware, so CPU evaluation is fp32")


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
    scale: Optional[int] = None  #: SR presets (sr, realsr): the upsampling factor (required there)
    layout: str = "auto"  #: realsr: "auto" (detected), "realsr" (RealSR V3) or "drealsr"
    cameras: Optional[Sequence[str]] = None  #: realsr layout: camera folders (default: Canon and Nikon)
    filename_tmpl: str = "{}"  #: folder pairing: target stem -> input stem (BasicSR's '{}x4')


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
    #: autocast of the network's forward on CUDA: ``"bf16"``, ``"fp16"``, or ``None``/``"none"`` (fp32); the output
    #: is float32 before quantisation either way. Refused on CPU (see :data:`CPU_AMP_NOTE`).
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
    #: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
    device: Union[str, torch.device] = "auto"
    #: threads reading (decoding) the next pairs while the current one is restored and scored, and writing the
    #: output PNGs; 0 reads and writes in the main thread; ``None``: ``min(4, CPU count)``. Results are identical.
    workers: Optional[int] = None
    #: also score the inputs (SR: bicubic-upsampled) with the same metrics; None: the preset's default
    score_input: Optional[bool] = None

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
    if net is not None:
        from ddr_restore.eval.inference import normalize_amp

        amp = normalize_amp(net.amp)
        if amp is not None and not model_mode:
            raise InputError(f"amp={net.amp!r} applies to running a network; restored_dir scores saved outputs")
    if test.gray not in GRAY_CHOICES:
        raise InputError(f"gray must be one of {', '.join(GRAY_CHOICES)}; got {test.gray!r}")
    if test.alpha not in ALPHA_CHOICES:
        raise InputError(f"alpha must be one of {', '.join(ALPHA_CHOICES)}; got {test.alpha!r}")
    check_scale(test.preset, test.scale)
    return model_mode


def _scale(cfg: EvalConfig) -> int:
    """The run's SR factor (1 for the presets without an SR protocol)."""
    return check_scale(cfg.test.preset, cfg.test.scale)


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``auto``: the current CUDA device when CUDA is present, else the CPU; anything else checked as given."""
    if str(device) == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
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


def device_name(dev: torch.device) -> str:
    """The device's name for the log line and the summary: the GPU's (``"NVIDIA H100 80GB HBM3"``), or the CPU's
    model and torch's thread count (``"Intel(R) Xeon(R) Processor, 2 threads"``)."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    model = platform.processor() or platform.machine() or dev.type
    try:  # Linux names the model here; platform.processor() is often only the architecture
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def _check_amp(spec: Optional[Network], dev: torch.device) -> Optional[str]:
    """The run's autocast dtype name (``None``: fp32); a request for autocast off CUDA is an error that says why."""
    from ddr_restore.eval.inference import normalize_amp

    amp = normalize_amp(spec.amp) if spec is not None else None
    if amp is not None and dev.type != "cuda":
        raise InputError(f"--amp {amp} autocasts the network on CUDA; the device is {dev} ({CPU_AMP_NOTE}): leave "
                         f"out --amp, or use --device cuda on a machine with a GPU")
    return amp


# ----------------------------------------------------------------------------------------------- metrics


def metric_specs(preset: str, metrics: MetricsArg, options: Mapping[str, Any],
                 scale: int = 1) -> Dict[str, Dict[str, Any]]:
    """``{column: {"type": catalog name, <options>}}`` for a run: names resolved by the preset, options applied,
    then the preset's protocol defaults (SR: ``crop_border = scale`` where no option set it).

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
    apply_preset_defaults(preset, specs, scale, lambda name: metric_info(name).options)
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
    specs = metric_specs(cfg.test.preset, cfg.metrics, cfg.metric_options, scale=_scale(cfg))
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
        "tlc": spec.tlc, "tile": spec.tile, "tile_overlap": spec.tile_overlap if spec.tile else None,
        "amp": _check_amp(spec, dev) or "none",
    }
    return net, info


def _check_net_scale(net: torch.nn.Module, cfg: EvalConfig, scale: int) -> int:
    """The network's scale (``model_scale``: 1 for NAFNet/Restormer as published, ``network_g.upscale`` for SR),
    checked against the run's ``scale`` (once, before any image is read)."""
    from ddr_restore.eval.inference import model_scale

    ns = int(model_scale(net))
    spec = cfg.network or Network()
    what = (f"the network of {spec.option_file} (checkpoint {spec.checkpoint})" if spec.option_file is not None
            else "the network")
    if ns > 1 and not PRESETS[cfg.test.preset].sr:
        raise InputError(f"{what} upsamples x{ns} (network_g.upscale: {ns}) but --preset {cfg.test.preset} compares "
                         f"images of one size; use --preset sr --scale {ns} (or realsr)")
    if ns > 1 and ns != scale:
        raise InputError(f"--scale {scale} but {what} upsamples x{ns} (network_g.upscale: {ns}); evaluate it with "
                         f"--scale {ns}, or give a x{scale} network")
    return ns


def _to_device(inp: np.ndarray, dev: torch.device) -> torch.Tensor:
    """The uint8 HWC input as a (1,3,H,W) float tensor in [0,1] on ``dev`` (the values of ``img2tensor``).

    On CUDA the uint8 image is copied (a quarter of the bytes of float32) and converted there: the same IEEE
    division by 255, so the same values. The divisor is a CUDA tensor, not a Python number: torch's CUDA division
    by a CPU scalar multiplies by its reciprocal instead, which can differ from ``x / 255`` in the last bit.
    """
    if dev.type != "cuda":
        return img2tensor(inp).unsqueeze(0)
    x = torch.from_numpy(np.ascontiguousarray(inp)).to(dev)
    # contiguous NCHW: a permuted view has channels-last strides, which would make cuDNN pick other kernels
    return x.permute(2, 0, 1).unsqueeze(0).contiguous().float().div_(torch.full((), 255.0, device=dev))


def _to_uint8(y: torch.Tensor) -> np.ndarray:
    """The output quantised as ``tensor2img`` does (clamp to [0,1], x255, round half to even); on CUDA on the GPU,
    so that a quarter of the bytes comes back (same float32 ops, same values)."""
    if y.device.type != "cuda":
        return tensor2img(y)
    t = y.detach().float()
    t = t[0] if t.dim() == 4 else t
    q = t.clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return q.permute(1, 2, 0).contiguous().cpu().numpy()


def _run_network(net: torch.nn.Module, spec: Network, inp: np.ndarray,
                 dev: torch.device) -> Tuple[np.ndarray, float]:
    """The 8-bit output of ``net`` for one input and the inference time in seconds (the forward pass, padding and
    tiling included; the transfers and the quantisation not)."""
    from ddr_restore.eval.inference import restore

    x = _to_device(inp, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    y = restore(net, x, tile=spec.tile, tile_overlap=spec.tile_overlap, amp=spec.amp)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    return _to_uint8(y), seconds


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """What the per-image loop needs, resolved once."""

    cfg: EvalConfig
    dev: torch.device
    out: Path
    slots: List[MetricSlot]
    scale: int = 1  #: SR factor (1: same-size restoration)
    score_input: bool = False
    workers: int = 0  #: read-ahead/writer threads (0: all in the main thread)
    net: Optional[torch.nn.Module] = None
    net_scale: int = 1
    #: how many inputs were seen per kind: "low-res" (upsampled for the input row) or "hr-size" (scored as they are)
    input_kinds: Dict[str, int] = field(default_factory=dict)

    @property
    def sr(self) -> bool:
        """Whether the run follows the SR protocol."""
        return PRESETS[self.cfg.test.preset].sr


def _wxh(img: np.ndarray) -> str:
    return f"{img.shape[1]}x{img.shape[0]}"


@dataclass
class _Pair:
    """One pair's images as they are compared: the target (SR: cropped to LR x scale) and the input baseline."""

    target: np.ndarray
    inp: Optional[np.ndarray]  #: the input as read (SR: the LR image)
    baseline: Optional[np.ndarray]  #: what the input row scores (SR: bicubic-upsampled LR), target-sized
    target_note: str = ""  #: how the target was cropped (for size errors)
    #: SR inputs: "low-res" (upsampled for the input row) or "hr-size" (scored as they are); counted by the main
    #: thread (pairs are read on worker threads)
    input_kind: Optional[str] = None
    restored: Optional[np.ndarray] = None  #: the saved output (restored_dir mode), read with the pair


Size = Tuple[int, int]  # (width, height)


def _sr_target_size(s: int, inp: Optional[Size], target: Size) -> Optional[Size]:
    """The (width, height) the SR protocol crops the target to; ``None`` when the sizes do not fit scale ``s``.

    An LR input: ``LR x s`` when the target is that or up to ``s - 1`` px larger (MATLAB modcrop, as the data
    package does); an input stored at the target's size (registered, RealSR V1/V2): the target as it is; no input
    (scoring saved outputs alone): the target cropped to a multiple of ``s``.
    """
    tw, th = target
    if inp is None:
        return tw - tw % s, th - th % s
    lw, lh = inp
    if (lw, lh) == (tw, th):
        return tw, th
    if (tw // s, th // s) == (lw, lh):
        return lw * s, lh * s
    return None


def _sr_size_error(s: int, it: EvalItem, inp: Size, target: Size) -> str:
    (lw, lh), (tw, th) = inp, target
    return (f"input {it.input_path} is {lw}x{lh} (WxH) but target {it.target_path} is {tw}x{th}; expected "
            f"{lw * s}x{lh * s} to {lw * s + s - 1}x{lh * s + s - 1} (LR size x scale {s}; a larger target is cropped "
            f"by at most {s - 1} px), or {tw}x{th} for an input stored at the target's size")


def _check_sr_sizes(s: int, items: Sequence[EvalItem]) -> None:
    """Every pair's sizes against scale ``s`` from the file headers, before any work: one error listing the bad
    pairs (both files named). Unreadable files are left to the reading, whose errors say more."""
    from ddr_restore.imageio import scan_image_files

    files = [p for it in items for p in (it.input_path, it.target_path, it.restored_path) if p is not None]
    headers, _ = scan_image_files(files, gray="replicate", alpha="drop")
    bad: List[str] = []
    for it in items:
        target = headers.get(it.target_path)
        inp = headers.get(it.input_path) if it.input_path is not None else None
        if target is None or (it.input_path is not None and inp is None):
            continue
        size = _sr_target_size(s, inp.size if inp else None, target.size)
        if size is None:
            bad.append(_sr_size_error(s, it, inp.size, target.size))
            continue
        restored = headers.get(it.restored_path) if it.restored_path is not None else None
        if restored is not None and restored.size != size:
            how = "LR size x scale" if inp is not None else "a multiple of scale"
            bad.append(f"restored {it.restored_path} is {restored.width}x{restored.height} (WxH) but target "
                       f"{it.target_path} is {target.width}x{target.height}"
                       + (f", cropped to {size[0]}x{size[1]} ({how} {s})" if size != target.size else ""))
    if bad:
        shown = 2
        more = f"; ... ({len(bad) - shown} more)" if len(bad) > shown else ""
        hint = f"; is --scale {s} right?" if len(bad) == len(items) > 1 else ""
        raise InputError(f"size mismatch at scale {s} ({len(bad)} of {len(items)} pairs): "
                         f"{'; '.join(bad[:shown])}{more}{hint}")


def _sr_pair(run: _Run, it: EvalItem, inp: Optional[np.ndarray], target: np.ndarray) -> _Pair:
    """The SR protocol's geometry: HR cropped to LR x scale (MATLAB modcrop), LR upsampled by MATLAB bicubic."""
    s = run.scale
    th, tw = target.shape[:2]
    inp_size = (inp.shape[1], inp.shape[0]) if inp is not None else None
    size = _sr_target_size(s, inp_size, (tw, th))
    if size is None:
        raise InputError(f"size mismatch at scale {s}: {_sr_size_error(s, it, inp_size, (tw, th))}")
    cropped = target[: size[1], : size[0]]
    how = "LR size x scale" if inp is not None else "a multiple of scale"
    note = f" (target {tw}x{th} cropped to {size[0]}x{size[1]}, {how} {s})" if size != (tw, th) else ""
    if inp is None:  # scoring saved outputs without the LR images
        return _Pair(cropped, None, None, note)
    if inp_size == (tw, th):  # an LR already stored at HR size (registered, RealSR V1/V2): nothing to upsample
        return _Pair(cropped, inp, inp, input_kind="hr-size")
    from ddr_restore.data.imresize import imresize

    return _Pair(cropped, inp, imresize(inp, scale=s), note, input_kind="low-res")


def _read_pair(run: _Run, it: EvalItem) -> _Pair:
    """Read one pair and bring it to the protocol's geometry (checked; errors name both files).

    Runs on the read-ahead threads: it reads ``run`` and changes nothing shared.
    """
    test = run.cfg.test
    target = _read_uint8(it.target_path, "target image", test)
    inp = _read_uint8(it.input_path, "input image", test) if it.input_path is not None else None
    pair = _sr_pair(run, it, inp, target) if run.sr else _Pair(target, inp, inp)
    if run.net is None and it.restored_path is not None:
        pair.restored = _read_uint8(it.restored_path, "restored image", test)
    return pair


def _check_network_input(run: _Run, it: EvalItem, pair: _Pair) -> None:
    """Whether the network can turn this input into a target-sized output; errors name the files and the fix."""
    inp, target = pair.inp, pair.target
    same = inp.shape == target.shape
    if not run.sr:
        if not same:
            raise InputError(f"input {it.input_path} is {_wxh(inp)} but target {it.target_path} is {_wxh(target)}")
        return
    spec = run.cfg.network or Network()
    where = f" of {spec.option_file}" if spec.option_file is not None else ""
    if not same and run.net_scale == 1:
        raise InputError(f"input {it.input_path} is {_wxh(inp)}, 1/{run.scale} of target {it.target_path}, but "
                         f"the network{where} does not upsample (scale 1); give network_g an upsampling head "
                         f"(network_g.upscale: {run.scale}) and a checkpoint trained with it, or inputs stored at "
                         f"the target's size")
    if same and run.net_scale > 1:
        raise InputError(f"input {it.input_path} is already the size of target {it.target_path} ({_wxh(inp)}) but "
                         f"the network{where} upsamples x{run.net_scale}; give the low-resolution inputs")


def _restored_image(run: _Run, it: EvalItem, pair: _Pair) -> Tuple[np.ndarray, Optional[float]]:
    """The image to score for one pair (network output or saved output), checked against the target's size."""
    target = pair.target
    if run.net is not None:
        _check_network_input(run, it, pair)
        restored, seconds = _run_network(run.net, run.cfg.network, pair.inp, run.dev)
        if restored.shape != target.shape:
            raise InputError(f"network output for {it.input_path} is {restored.shape}, target "
                             f"{it.target_path} is {target.shape}{pair.target_note} (does the option file "
                             f"describe a network for this task?)")
        return restored, seconds
    restored = pair.restored
    if restored is None:  # the pair was read before the mode was known (never in evaluate(); kept for safety)
        restored = _read_uint8(it.restored_path, "restored image", run.cfg.test)
    if restored.shape != target.shape:
        raise InputError(f"size mismatch: restored {it.restored_path} is {_wxh(restored)} but target "
                         f"{it.target_path} is {_wxh(target)}{pair.target_note}")
    return restored, None


def _input_label(run: _Run, pair: _Pair) -> str:
    if run.sr and pair.inp is not None and pair.inp.shape != pair.target.shape:
        return f"bicubic x{run.scale}"
    return "input"


def _evaluate_item(run: _Run, it: EvalItem, pair: _Pair, with_grid: bool,
                   writer: BackgroundWriter) -> Dict[str, Any]:
    """Score one pair read by :func:`_read_pair` (and its input, for the input row); hand its output image and
    grid to ``writer`` when asked.

    Returns its CSV row.
    """
    out_opts = run.cfg.outputs
    if pair.input_kind is not None:
        run.input_kinds[pair.input_kind] = run.input_kinds.get(pair.input_kind, 0) + 1
    restored, seconds = _restored_image(run, it, pair)
    row: Dict[str, Any] = {"name": it.name, **_score(run.slots, restored, pair.target), "seconds": seconds}
    baseline = pair.baseline
    input_values: Dict[str, Any] = {}
    if run.score_input and baseline is not None:
        if baseline.shape != pair.target.shape:
            raise InputError(f"input {it.input_path} is {_wxh(baseline)} but target {it.target_path} is "
                             f"{_wxh(pair.target)}: the input row compares images of one size")
        scores = _score(run.slots, baseline, pair.target)
        input_values = {s.column: scores[s.column] for s in run.slots}
        row.update({report.input_column(c): v for c, v in input_values.items()})
    saved = run.out / "images" / it.out_rel if out_opts.save_images else None
    if saved is not None:
        writer.submit(write_image, saved, restored)
    if with_grid:
        panels = []
        if baseline is not None and baseline.shape == restored.shape:
            label = _input_label(run, pair)
            panels.append((report.grid_caption(run.slots, input_values, label) if input_values else label, baseline))
        panels += [(report.grid_caption(run.slots, row), restored), ("target", pair.target)]
        writer.submit(_write_grid, run.out / "grid" / it.out_rel, panels)
    row.update({"target_path": str(it.target_path), "input_path": str(it.input_path) if it.input_path else "",
                "restored_path": str(saved or it.restored_path or "")})
    return row


def _write_grid(path: Path, panels: Sequence[Tuple[str, np.ndarray]]) -> None:
    """Compose and write one grid (on the writer thread: composing is part of the cost)."""
    write_image(path, report.make_grid(panels))


def _input_text(run: _Run, rows: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """How the input row was made (the summary's protocol text and ``input_scores.description``)."""
    if not run.score_input or not any(report.input_column(s.column) in r for r in rows for s in run.slots):
        return None
    if not run.sr:
        return "the inputs themselves, scored against the targets with the same metrics"
    parts = []
    if run.input_kinds.get("low-res"):
        parts.append(f"each LR input upsampled x{run.scale} with the MATLAB-compatible bicubic imresize "
                     f"(ddr_restore.data.imresize: Keys cubic a=-0.5, antialiased, computed in float64 from uint8 "
                     f"and rounded to uint8 after each pass as MATLAB does) ({run.input_kinds['low-res']} images)")
    if run.input_kinds.get("hr-size"):
        parts.append(f"inputs already stored at HR size scored as they are ({run.input_kinds['hr-size']} images)")
    return "; ".join(parts) + ", against the same cropped HR with the same metrics"


def _table_label(run: _Run) -> str:
    """The input row's name in the printed table: ``bicubic xN`` when every SR input was upsampled."""
    if run.sr and run.input_kinds.get("low-res") and not run.input_kinds.get("hr-size"):
        return f"bicubic x{run.scale}"
    return "input"


def _crop_border(slots: Sequence[MetricSlot]) -> Optional[int]:
    """The border the run's computed PSNR/SSIM remove (the first active metric with that option)."""
    for slot in slots:
        if slot.active and "crop_border" in slot.info.options:
            return int(slot.metric.options["crop_border"])
    return None


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
        "scale": _scale(cfg),
        "data": {"root": text(test.root), "input_dir": text(test.input_dir), "target_dir": text(test.target_dir),
                 "list_file": text(test.list_file), "restored_dir": text(cfg.restored_dir), "gray": test.gray,
                 "alpha": test.alpha, "filename_tmpl": test.filename_tmpl,
                 **({"layout": sr_layout(test.root, test.layout),
                     "cameras": list(test.cameras) if test.cameras is not None else None, "split": "test"}
                    if test.preset == "realsr" else {})},
        "device": str(dev),
        "outputs": {"csv": str(out / "per_image.csv"), "images": str(out / "images") if o.save_images else None,
                    "grid": str(out / "grid") if o.grid else None},
    }


def _evaluate_items(run: _Run, items: Sequence[EvalItem]) -> List[Dict[str, Any]]:
    """The CSV rows of every pair, in order: the next pairs are read on ``run.workers`` threads (at most
    ``2 x workers`` ahead) and the output PNGs written on another while the current pair is restored and scored;
    ``workers=0`` does it all in this thread. Results and errors are the same either way (a file error is raised
    when its pair is reached, naming the file)."""
    from tqdm import tqdm

    o = run.cfg.outputs
    rows: List[Dict[str, Any]] = []
    with tqdm(total=len(items), desc=f"ddr-eval {run.cfg.test.preset}", disable=not o.progress, unit="img") as bar, \
            Prefetcher(functools.partial(_read_pair, run), items, run.workers) as pairs, \
            BackgroundWriter(enabled=run.workers > 0) as writer:
        for i, (it, pair) in enumerate(pairs):
            rows.append(_evaluate_item(run, it, pair, with_grid=i < o.grid, writer=writer))
            bar.update()
    return rows


def _runtime(cfg: EvalConfig, dev: torch.device, amp: Optional[str], workers: int) -> Dict[str, Any]:
    """How the run ran (the summary's ``runtime``): the device, its name, whether ``auto`` chose it, autocast,
    reader threads, torch version."""
    return {"device": str(dev), "device_name": device_name(dev), "requested_device": str(cfg.device),
            "auto": str(cfg.device) == "auto", "amp": amp or "none", "workers": workers, "torch": torch.__version__}


def _with_runtime(summary: Dict[str, Any], runtime: Dict[str, Any]) -> Dict[str, Any]:
    """The summary with ``runtime`` placed after its ``device`` entry."""
    out: Dict[str, Any] = {}
    for key, value in summary.items():
        out[key] = value
        if key == "device":
            out["runtime"] = runtime
    out.setdefault("runtime", runtime)
    return out


def evaluate(config: Union[EvalConfig, str, None] = None, **keywords: Any) -> Dict[str, Any]:
    """Evaluate a network or saved outputs on a test set; write ``per_image.csv``/``summary.json``; return the summary.

    ``config`` is an :class:`EvalConfig`, or a preset name (``"gopro"``, ``"realblur"``, ``"folder"``, ``"sr"``,
    ``"realsr"``) with the fields as keywords: ``evaluate("folder", input_dir=..., target_dir=..., option_file=...,
    checkpoint=..., metrics=["psnr", "lpips"], out_dir=...)``, ``evaluate("sr", scale=4, input_dir=<LR>,
    target_dir=<HR>, restored_dir=...)``. See the module docstring for metrics, outputs and errors.

    The summary holds ``mean`` (``{column: mean value or None}``), ``metrics`` (``{column: {type, better, status,
    <what the metric records>}}``), ``input_scores`` (the input row: ``{description, mean}``, or ``None``),
    ``num_images``, ``scale``, ``protocol``, the run's inputs and timings.
    """
    if isinstance(config, EvalConfig):
        if keywords:
            raise InputError(f"evaluate: give an EvalConfig or keywords, not both ({', '.join(keywords)})")
        cfg = config
    else:
        cfg = EvalConfig.from_keywords(config or "folder", **keywords)
    t_start = time.perf_counter()
    model_mode = _check_config(cfg)
    workers = check_workers(cfg.workers)
    dev = _resolve_device(cfg.device)
    amp = _check_amp(cfg.network if model_mode else None, dev)
    test, o = cfg.test, cfg.outputs

    scale = _scale(cfg)
    items = collect_items(test.preset, test.root, test.input_dir, test.target_dir, test.list_file,
                          need_inputs=model_mode, scale=test.scale, layout=test.layout, cameras=test.cameras,
                          filename_tmpl=test.filename_tmpl)
    if test.max_images is not None:
        items = items[: max(0, int(test.max_images))]
    if not model_mode:
        attach_restored(items, Path(cfg.restored_dir))
    if PRESETS[test.preset].sr and not model_mode:  # model mode: after the network's scale is checked
        _check_sr_sizes(scale, items)
    opt_name = _option_name(cfg.network)  # also reads the option file early: its errors come before any work
    name = o.name or opt_name or (Path(cfg.restored_dir).name if cfg.restored_dir is not None else test.preset)
    out = Path(o.out_dir) if o.out_dir is not None else Path("results") / str(name)
    net = cfg.network or Network()
    # Checked before the slow parts (metrics, network) so a refusal comes at once; acted on just before writing.
    holds_results = outputs.check_out_dir(out, [test.root, test.input_dir, test.target_dir, test.list_file,
                                                cfg.restored_dir, net.option_file, net.checkpoint])
    score_input = PRESETS[test.preset].score_input if cfg.score_input is None else bool(cfg.score_input)
    run = _Run(cfg, dev, out, _build_slots(cfg, dev), scale=scale, score_input=score_input, workers=workers)
    network_info: Dict[str, Any] = {}
    if model_mode:
        run.net, network_info = _load_network(net, dev)
        run.net_scale = network_info["scale"] = _check_net_scale(run.net, cfg, scale)
        if run.sr:
            _check_sr_sizes(scale, items)
        if items:  # the first pair's sizes against the network before earlier results are moved away
            _check_network_input(run, items[0], _read_pair(run, items[0]))

    previous = outputs.prepare_out_dir(out, holds_results, o.overwrite)
    runtime = _runtime(cfg, dev, amp, workers)
    line = (f"device {runtime['device']} ({runtime['device_name']}{', auto' if runtime['auto'] else ''}), amp "
            f"{runtime['amp']}, {workers} reader thread(s)")
    logger.info("ddr-eval: %s", line)
    if o.progress:
        print(f"[ddr-eval] {line}", file=sys.stderr)
    rows = _evaluate_items(run, items)
    input_text = _input_text(run, rows)
    report.write_csv(out / "per_image.csv", rows, report.csv_columns(run.slots, input_row=input_text is not None))
    infer = [r["seconds"] for r in rows if r["seconds"] is not None]
    timing = {"inference": float(np.mean(infer)) if infer else None,
              "total": (time.perf_counter() - t_start) / max(1, len(rows))}
    description = {**_run_description(cfg, name, model_mode, network_info, dev, out), "previous_results": previous}
    intro = protocol_intro(test.preset, scale, _crop_border(run.slots), input_text)
    summary = report.build_summary(description, intro, run.slots, rows, timing, input_text=input_text,
                                   input_label=_table_label(run))
    summary = _with_runtime(summary, runtime)
    report.write_summary(out / "summary.json", summary)
    return summary
