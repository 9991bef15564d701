"""Full-resolution inference: build a trained network from its option file + checkpoint, and run it on whole images.

Two public functions:

* :func:`load_restoration_model` builds ``network_g`` from a BasicSR-style YAML option file and loads a
  checkpoint (``params_ema`` preferred, else ``params``, else a bare state dict). For NAFNet it builds
  ``NAFNetLocal`` (TLC, test-time local statistics) by default, because NAFNet's published GoPro numbers are
  measured that way (plain NAFNet at 1280x720 loses about 0.6 dB). The weights are the same for both classes.
* :func:`restore` runs a network on one full-resolution image, with padding to the arch's ``size_multiple``,
  optional overlapping tiles blended without seams, and optional autocast on CUDA. Super-resolution networks
  (an arch attribute ``scale`` > 1, read by :func:`model_scale`) are tiled at the input resolution and blended
  at the output resolution.
"""
from __future__ import annotations

import copy
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ddr_restore.errors import CheckpointError, InputError, MissingPathError, UserError

__all__ = [
    "load_option_file",
    "network_options",
    "load_checkpoint_state",
    "load_restoration_model",
    "restore",
    "tile_starts",
    "tile_weight",
    "model_size_multiple",
    "model_scale",
    "AMP_CHOICES",
    "normalize_amp",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# Arch types whose test-time counterpart is a TLC ("Local") variant with the same state dict.
_TLC_VARIANTS = {"NAFNet": "NAFNetLocal"}
_TLC_ONLY_KEYS = ("train_size", "fast_imp")
_DEFAULT_TLC_SIZE = 256
_ZERO_PAD_ARCHS = ("NAFNet",)


def _one_line(err: BaseException) -> str:
    """A parser's message on one line (YAML errors span several, with a caret marker that means nothing here)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip() and line.strip() != "^")


def load_option_file(path: PathLike, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Read a YAML option file with ``yaml.safe_load`` and apply ``--set KEY.PATH=VALUE`` overrides to it.

    The overrides are parsed and applied by the trainer's own functions
    (:func:`ddr_restore.train.options.apply_overrides`), so ``ddr-eval --set`` means what ``train.py --set`` means.

    Raises:
        MissingPathError: the file does not exist.
        InputError: the file is not valid YAML, its top level is not a mapping, or an override is malformed.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"option file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            opt = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise InputError(f"option file {path} is not valid YAML: {_one_line(err)}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"option file {path} is not a UTF-8 text file: {err}") from err
    if not isinstance(opt, dict):
        raise InputError(f"option file {path}: expected a mapping at the top level, got {type(opt).__name__}")
    if overrides:
        from ddr_restore.train.options import OptionsError, apply_overrides

        try:
            opt = apply_overrides(opt, list(overrides))
        except OptionsError as err:  # a ValueError of the trainer's; one line, naming the file it applies to
            raise InputError(f"{_one_line(err)} (applied to {path})") from err
    return opt


def _train_gt_size(opt: Mapping[str, Any]) -> Optional[int]:
    """``datasets.train.gt_size`` (the training crop), if the option file has one."""
    datasets = opt.get("datasets")
    if not isinstance(datasets, Mapping):
        return None
    train = datasets.get("train")
    if not isinstance(train, Mapping):
        return None
    gt_size = train.get("gt_size")
    return int(gt_size) if isinstance(gt_size, (int, float)) and gt_size > 0 else None


def network_options(
    opt: Optional[Mapping[str, Any]] = None,
    network_opt: Optional[Mapping[str, Any]] = None,
    tlc: bool = True,
    where: str = "network_g",
) -> Dict[str, Any]:
    """The ``network_g`` dict to build for testing, with the TLC switch applied.

    ``network_opt`` (if given) wins over ``opt['network_g']``. With ``tlc=True`` a ``NAFNet`` becomes
    ``NAFNetLocal`` with ``train_size=(1, 3, gt, gt)``, ``gt`` being ``datasets.train.gt_size`` of the option
    file (default 256, NAFNet's GoPro crop); for a super-resolution net (``upscale: s`` > 1) ``train_size`` is
    the network's input, the low-resolution crop ``gt // s``. An explicit ``train_size`` is kept. With
    ``tlc=False`` a ``NAFNetLocal`` becomes plain ``NAFNet`` (its TLC-only keys are dropped; ``upscale`` and
    ``upsampler`` stay).
    """
    if network_opt is None:
        if opt is None:
            raise InputError("need an option file or a network_opt dict to know which network to build")
        if "network_g" not in opt:
            raise InputError(f"{where}: the option file has no 'network_g' section (keys: {', '.join(map(str, opt))})")
        network_opt = opt["network_g"]
    if not isinstance(network_opt, Mapping) or "type" not in network_opt:
        raise InputError(f"{where}: expected a mapping with a 'type' key, got {network_opt!r}")
    net_opt = copy.deepcopy(dict(network_opt))
    arch = net_opt["type"]
    local_names = set(_TLC_VARIANTS.values())
    if tlc and arch in _TLC_VARIANTS:
        net_opt["type"] = _TLC_VARIANTS[arch]
        arch = net_opt["type"]
    elif not tlc and arch in local_names:
        net_opt["type"] = next(k for k, v in _TLC_VARIANTS.items() if v == arch)
        for key in _TLC_ONLY_KEYS:
            net_opt.pop(key, None)
        arch = net_opt["type"]
    if arch in local_names and "train_size" not in net_opt:
        gt = _train_gt_size(opt) if opt is not None else None
        gt = gt or _DEFAULT_TLC_SIZE
        upscale = net_opt.get("upscale", 1)
        if isinstance(upscale, int) and not isinstance(upscale, bool) and upscale > 1:
            # gt_size is the HR crop, train_size the LR input; a bad upscale is reported by the arch itself.
            gt = max(1, gt // upscale)
        net_opt["train_size"] = (1, 3, gt, gt)
    elif arch in local_names:
        net_opt["train_size"] = tuple(int(v) for v in net_opt["train_size"])
    return net_opt


def load_checkpoint_state(
    checkpoint: PathLike, prefer_ema: bool = True, map_location: Union[str, torch.device] = "cpu"
) -> Tuple[Dict[str, torch.Tensor], str]:
    """Read the network weights of a checkpoint; returns ``(state_dict, key_used)``.

    Accepts the trainer's ``{"params": ..., "params_ema": ...}`` dicts (``params_ema`` is used when present
    and ``prefer_ema``) and bare state dicts (``key_used`` is then ``"<state_dict>"``). A leading
    ``module.`` (DataParallel/DDP) is stripped. The file is read by the trainer's
    :func:`ddr_restore.train.checkpoint.safe_load` (``weights_only=True``).

    Raises:
        MissingPathError: the file does not exist.
        CheckpointError: the file cannot be read, or holds no network weights.
    """
    state, key_used = _select_state(checkpoint, prefer_ema, map_location)
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    return state, key_used


def _select_state(
    checkpoint: PathLike, prefer_ema: bool, map_location: Union[str, torch.device] = "cpu"
) -> Tuple[Mapping[str, Any], str]:
    """``(state dict as stored, key_used)`` of a checkpoint file; see :func:`load_checkpoint_state`."""
    from ddr_restore.train.checkpoint import safe_load

    path = Path(checkpoint)
    if not path.is_file():  # checked here too so that the error class does not depend on safe_load's version
        raise MissingPathError(f"checkpoint file not found: {path}")
    ckpt = safe_load(path, map_location=map_location)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"checkpoint {path}: expected a dict of weights, got {type(ckpt).__name__}")
    order = ["params_ema", "params"] if prefer_ema else ["params", "params_ema"]
    key_used = next((k for k in order if k in ckpt), None)
    if key_used is not None:
        state = ckpt[key_used]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"checkpoint {path}: '{key_used}' is a {type(state).__name__}, not a state dict")
        return state, key_used
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, "<state_dict>"
    raise CheckpointError(
        f"checkpoint {path}: no 'params_ema' or 'params' key and not a bare state dict "
        f"(top-level keys: {', '.join(map(str, list(ckpt)[:20]))})"
    )


def _build_network(net_opt: Mapping[str, Any], where: str) -> nn.Module:
    """``ARCH_REGISTRY.build`` with its option errors (unknown type, bad keyword) turned into one-line user errors."""
    from ddr_restore.registry import ARCH_REGISTRY

    try:
        return ARCH_REGISTRY.build(dict(net_opt), where=where)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        # The registry names the option path in its messages; KeyError would quote them, so take args[0].
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise InputError(str(message)) from err


def load_restoration_model(
    option_file: Optional[PathLike] = None,
    checkpoint: Optional[PathLike] = None,
    network_opt: Optional[Mapping[str, Any]] = None,
    prefer_ema: bool = True,
    tlc: bool = True,
    device: Union[str, torch.device] = "cpu",
    overrides: Sequence[str] = (),
) -> nn.Module:
    """Build ``network_g`` for testing and load its trained weights.

    Args:
        option_file: YAML option file (BasicSR keys); its ``network_g`` section is used.
        checkpoint: ``net_g_<iter>.pth``; ``None`` keeps the random initialisation (benchmarks only; warns).
        network_opt: a ``network_g`` dict that replaces the option file's (either one is required).
        prefer_ema: load ``params_ema`` when the checkpoint has it (else ``params``).
        tlc: NAFNet is built as ``NAFNetLocal`` (TLC; ``train_size`` from ``datasets.train.gt_size``, default
            256); ``False`` builds plain ``NAFNet`` even if the option file names ``NAFNetLocal``.
        device: where to put the network.
        overrides: ``KEY.PATH=VALUE`` strings applied to the option file first (``--set`` of the trainer).

    Returns:
        The network in eval mode with ``requires_grad`` off. Attributes ``ddr_checkpoint_key`` (the key
        loaded) and ``ddr_network_opt`` (the dict built) record what was done.

    Raises:
        MissingPathError / InputError naming the file or key; CheckpointError (from
        :func:`ddr_restore.train.checkpoint.load_network`) naming the option file, the checkpoint and the first
        mismatched tensors when the checkpoint does not fit the network.
    """
    from ddr_restore.train.checkpoint import load_network

    opt = load_option_file(option_file, overrides) if option_file is not None else None
    if opt and opt.get("imports"):  # the user's own networks, registered by the modules the option file names
        from ddr_restore.plugins import import_modules

        import_modules(opt["imports"], key=f"{option_file}: imports")
    where = f"{option_file}: network_g" if option_file is not None else "network_g"
    net_opt = network_options(opt, network_opt, tlc=tlc, where=where)
    net = _build_network(net_opt, where)
    key_used = "<random init>"
    if checkpoint is not None:
        _, key_used = _select_state(checkpoint, prefer_ema)
        # The trainer's loader does the strict load and explains a mismatch in one paragraph; NAFNet and
        # NAFNetLocal share one state dict, so the TLC switch never causes a mismatch.
        try:
            load_network(net, checkpoint, param_key=None if key_used == "<state_dict>" else key_used, strict=True,
                         options_file=option_file)
        except CheckpointError as err:
            if not overrides:
                raise
            # The network was built from the option file *and* the overrides; say so, or the shapes look wrong.
            raise CheckpointError(f"{err} (network options: {option_file} with --set "
                                  f"{' '.join(overrides)})") from err
    else:
        logger.warning("no checkpoint given: %s keeps its RANDOM initialisation", net_opt["type"])
    net.eval().requires_grad_(False)
    net.to(device)
    net.ddr_checkpoint_key = key_used
    net.ddr_network_opt = net_opt
    return net


def _arch_attr(net: nn.Module, name: str, default: Any) -> Any:
    """Attribute ``name`` of the network inside DataParallel/DDP/EMA (``AveragedModel``) wrappers, else ``default``.

    The wrappers keep the network in ``.module``; the innermost one that declares ``name`` wins.
    """
    chain = [net]
    while len(chain) < 4 and isinstance(getattr(chain[-1], "module", None), nn.Module):
        chain.append(chain[-1].module)
    for candidate in reversed(chain):
        if hasattr(candidate, name):
            return getattr(candidate, name)
    return default


def model_size_multiple(net: nn.Module) -> int:
    """The arch's ``size_multiple`` (1 when it declares none); DataParallel/DDP/EMA wrappers are looked through."""
    return max(1, int(_arch_attr(net, "size_multiple", 1)))


def model_scale(net: nn.Module) -> int:
    """The arch's ``scale``, its output/input size ratio (1 when it declares none: a restoration network).

    Looks through DataParallel/DDP/EMA wrappers as :func:`model_size_multiple` does. ``NAFNet`` and
    ``Restormer`` set it from their ``upscale`` option.

    Raises:
        InputError: the network declares a ``scale`` that is not a positive integer.
    """
    value = _arch_attr(net, "scale", 1)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        name = type(getattr(net, "module", net)).__name__
        raise InputError(f"{name}.scale must be a positive integer (output size / input size), got {value!r}")
    return int(value)


def tile_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap`` overlap.

    The last tile is aligned to the end (``length - tile``), so the whole range is covered even when the
    stride does not divide it; a single tile when ``length <= tile``.
    """
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise InputError(f"need 0 <= tile_overlap < tile, got tile={tile}, tile_overlap={overlap}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(overlap: int) -> torch.Tensor:
    """Blend ramp over an overlap: 0 on the outer quarter, raised cosine 0->1 over the middle half.

    The zero margin discards each tile's edge pixels (wrong because the net saw padding there), so a net whose
    receptive-field radius is <= overlap/4 gives the untiled result exactly up to float rounding.
    """
    margin = overlap // 4
    n = overlap - 2 * margin  # width of the raised-cosine part (>= 1 when overlap >= 1)
    ramp = torch.ones(overlap, dtype=torch.float64)
    ramp[:margin] = 0.0
    idx = torch.arange(1, n + 1, dtype=torch.float64)
    ramp[margin:margin + n] = 0.5 - 0.5 * torch.cos(math.pi * idx / (n + 1))
    return ramp


def tile_weight(length: int, tile: int, start: int, overlap: int) -> torch.Tensor:
    """1-D blend weights of one tile along one axis (float64, length ``min(tile, length)``).

    Only edges that lie inside the image are ramped; at the image border the tile's output is as good as the
    untiled one, so its weight stays 1 there. Overlapping tiles' weights sum to > 0 at every pixel.
    """
    size = min(tile, length)
    w = torch.ones(size, dtype=torch.float64)
    if overlap <= 0 or size == length:
        return w
    ramp = _ramp(overlap)
    if start > 0:
        w[:overlap] = torch.minimum(w[:overlap], ramp)
    if start + size < length:
        w[size - overlap:] = torch.minimum(w[size - overlap:], ramp.flip(0))
    return w


#: What ``amp`` may be (``ddr-eval --amp``): no autocast (fp32), or autocast to bfloat16 / float16.
AMP_CHOICES = ("none", "bf16", "fp16")
_AMP_ALIASES = {"none": None, "fp32": None, "float32": None, "": None, "bf16": "bf16", "bfloat16": "bf16",
                "fp16": "fp16", "float16": "fp16", "half": "fp16"}
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def normalize_amp(amp: Optional[str]) -> Optional[str]:
    """``"bf16"``/``"fp16"`` for an autocast request (aliases ``bfloat16``, ``float16``, ``half``), ``None`` for fp32
    (``None``, ``False``, ``"none"``, ``"fp32"``).

    Raises:
        InputError: any other value (named, with the choices).
    """
    if amp is None or amp is False:
        return None
    if not isinstance(amp, str) or amp.lower() not in _AMP_ALIASES:
        raise InputError(f"amp must be one of {', '.join(AMP_CHOICES)} (or None); got {amp!r}")
    return _AMP_ALIASES[amp.lower()]


def _autocast_dtype(amp: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    name = normalize_amp(amp)
    if name is None:
        return None
    if device.type != "cuda":
        # Autocast on CPU changes numerics for no real gain (bf16 measured 0.7-0.8x for NAFNet, 1.0-1.1x for
        # Restormer, on a Xeon with AMX; see evaluate.CPU_AMP_NOTE); the evaluation protocol is fp32 there.
        # ddr-eval refuses --amp on CPU before it gets here.
        logger.warning("amp=%r ignored on %s: CPU inference runs in fp32", amp, device.type)
        return None
    return _AMP_DTYPES[name]


def _default_pad_mode(net: nn.Module) -> str:
    inner = getattr(net, "module", net)
    declared = getattr(inner, "pad_mode", None)
    if declared in ("reflect", "replicate", "zeros"):
        return declared
    # NAFNet zero-pads inside its forward; padding the same way outside keeps results identical to it.
    return "zeros" if any(c.__name__ in _ZERO_PAD_ARCHS for c in type(inner).__mro__) else "reflect"


def _pad_to_multiple(x: torch.Tensor, multiple: int, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"  # reflect padding needs pad < size; tiny images fall back to edge replication
    if mode == "zeros":
        return F.pad(x, (0, pw, 0, ph))
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def restore(
    net: nn.Module,
    img: torch.Tensor,
    tile: Optional[int] = None,
    tile_overlap: int = 32,
    amp: Optional[str] = None,
    pad_mode: Optional[str] = None,
) -> torch.Tensor:
    """Run ``net`` on one full-resolution image.

    Args:
        net: a restoration network (B,3,H,W) -> (B,3,H*s,W*s), ``s`` being its ``scale`` attribute (1 when it
            has none, see :func:`model_scale`); its ``size_multiple`` attribute is honoured.
        img: (3,H,W) or (1,3,H,W) float tensor in [0,1], any H, W (the low-resolution input of an SR net).
        tile: tile side in input pixels (rounded down to a multiple of ``size_multiple``); ``None`` = whole
            image. Each input tile's output is the ``s`` times larger region it maps to.
        tile_overlap: overlap between neighbouring tiles in input pixels (tiles are blended, at the output
            resolution, with weights that are zero on the outer quarter of each overlap and a raised cosine
            across the middle, so there are no seams; must be < tile / 2).
        amp: ``None`` (fp32), ``"bf16"`` or ``"fp16"`` autocast; only used on CUDA (ignored with a warning on
            CPU, where inference is fp32).
        pad_mode: how the image is padded to ``size_multiple`` before the net sees it: ``"reflect"``,
            ``"replicate"`` or ``"zeros"``; ``None`` follows each arch's official test code (NAFNet: zeros, as its
            internal padding; anything else: reflect, as Restormer's test script; an arch may declare its own
            ``pad_mode``, as NAFNet and Restormer do with ``upscale > 1``: replicate). The pad is cropped off
            (``(H*s, W*s)`` is kept of the output).

    Returns:
        The float32 output, (3,H*s,W*s) or (1,3,H*s,W*s), on the input's device, not clamped (evaluation
        clamps and quantises).

    Raises:
        InputError: bad ``tile_overlap``/``amp``/``pad_mode``, or the network's output is not ``s`` times its
            input (a wrong ``scale``).
    """
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"restore expects a torch.Tensor, got {type(img).__name__}")
    squeeze = img.dim() == 3
    x = img.unsqueeze(0) if squeeze else img
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"restore expects a (3,H,W) or (1,3,H,W) tensor, got shape {tuple(img.shape)}")
    if pad_mode is None:
        pad_mode = _default_pad_mode(net)
    if pad_mode not in ("reflect", "replicate", "zeros"):
        raise InputError(f"pad_mode must be 'reflect', 'replicate' or 'zeros', got {pad_mode!r}")
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else x.device
    autocast_dtype = _autocast_dtype(amp, device)
    multiple = model_size_multiple(net)
    s = model_scale(net)
    h, w = x.shape[-2:]

    def run(t: torch.Tensor) -> torch.Tensor:
        if autocast_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                out = net(t)
        else:
            out = net(t)
        if isinstance(out, (list, tuple)):  # deep-supervision nets: the last output is the image
            out = out[-1]
        if out.dim() != 4 or out.shape[0] != t.shape[0] or tuple(out.shape[-2:]) != (t.shape[-2] * s,
                                                                                        t.shape[-1] * s):
            what = "the size of its input" if s == 1 else f"{s} times its input (its scale is {s})"
            raise InputError(f"{type(getattr(net, 'module', net)).__name__}: the output must be {what}; got "
                             f"{tuple(out.shape)} for a {tuple(t.shape)} input")
        return out.float()

    with torch.inference_mode():
        xin = _pad_to_multiple(x.to(device=device, dtype=torch.float32), multiple, pad_mode)
        hp, wp = xin.shape[-2:]
        if tile is None or (tile >= hp and tile >= wp):
            out = run(xin)
        else:
            # Tiles are cut from the input; tile (top, left) of size (ph, pw) gives output rows top*s..(top+ph)*s
            # and columns likewise. Blend weights are built at the output resolution (overlap * s wide), so the
            # discarded margin is the same fraction of the overlap at every scale.
            tile_eff = max(multiple, (int(tile) // multiple) * multiple)
            if tile_overlap < 0 or 2 * tile_overlap >= tile_eff:
                raise InputError(
                    f"tile_overlap must be >= 0 and < tile/2 (tile {tile} -> {tile_eff} after rounding to a "
                    f"multiple of {multiple}), got {tile_overlap}"
                )
            acc: Optional[torch.Tensor] = None
            weight = torch.zeros((1, 1, hp * s, wp * s), dtype=torch.float32, device=device)
            for top in tile_starts(hp, tile_eff, tile_overlap):
                wy = tile_weight(hp * s, tile_eff * s, top * s, tile_overlap * s)
                for left in tile_starts(wp, tile_eff, tile_overlap):
                    wx = tile_weight(wp * s, tile_eff * s, left * s, tile_overlap * s)
                    patch = xin[..., top:top + tile_eff, left:left + tile_eff]
                    pred = run(patch)  # (1, C_out, ph * s, pw * s), checked in run()
                    if acc is None:  # the output's channels are known once the net has run
                        acc = torch.zeros((1, pred.shape[1], hp * s, wp * s), dtype=torch.float32, device=device)
                    wt = (wy[:, None] * wx[None, :]).to(device=device, dtype=torch.float32)[None, None]
                    oh, ow = pred.shape[-2:]
                    acc[..., top * s:top * s + oh, left * s:left * s + ow] += pred * wt
                    weight[..., top * s:top * s + oh, left * s:left * s + ow] += wt
            out = acc / weight
        out = out[..., :h * s, :w * s]
    # Clone outside inference mode: callers may modify the result in place (inference tensors forbid that).
    out = out.to(img.device).clone()
    return out[0] if squeeze else out
