"""Training options: load a BasicSR-style YAML file, apply ``--set`` overrides, validate, fill defaults.

Everything is checked before any work starts: unknown keys, wrong types, missing required keys, unknown ``type:``
names and keyword arguments the named class does not accept. Every message starts with the dotted option path,
e.g. ``train.optim_g.lrr: unknown key``.

Key names follow BasicSR (``docs/Config.md``); see :data:`SCHEMA` for the full list. Differences, on purpose:

* ``model_type`` is optional: there is one training model; the BasicSR/NAFNet/Restormer names
  (``SRModel``, ``ImageRestorationModel``, ``ImageCleanModel``) and ``DDRModel`` are accepted as aliases.
* ``path.experiments_root`` is the folder that holds the run folders (default ``experiments`` under the current
  working directory); it is made absolute when the options are resolved, so a resumed run finds its states
  wherever it is started from. The run folder is ``<experiments_root>/<name>``.
* ``imports: [my_project.archs, ...]`` (not in BasicSR): modules imported before the rest is validated, so that the
  parts they register with ddr_restore's decorators can be named by ``type:`` (see :mod:`ddr_restore.plugins`).
* ``--set a.b=VALUE`` replaces BasicSR's ``--force_yml`` (which used ``exec``/``eval``): VALUE is parsed with
  ``yaml.safe_load``.

Loss terms (:func:`loss_terms`). ``train.losses`` maps a term name to a registered loss::

    losses:
      pix: {type: PSNRLoss, loss_weight: 1.0}
      lpips: {type: LPIPSLoss, loss_weight: 0.1, net: vgg}
      ddr: {type: DDRLoss, loss_weight: 0.05}

Each term is logged under its name (text log, TensorBoard ``losses/<name>``, the iteration callback) and the total,
``l_total``, is their sum (each loss already includes its ``loss_weight``). Names are letters, digits, ``_`` and
``-`` (so that ``--set train.losses.<name>.loss_weight=...`` reaches them); ``l_total`` and ``lr`` are taken by
the log. A term set to ``~`` is switched off (``--set train.losses.lpips=~`` removes a term of the base file).
Whether a loss is given the target is declared by its class (``requires_target``), not here.
BasicSR's single-loss keys remain, as aliases of one term each (:data:`LOSS_ALIASES`): ``pixel_opt`` is the term
``l_pix``, ``perceptual_opt`` is ``l_percep`` and ``ddr_opt`` is ``l_ddr``; their terms come first, then those of
``train.losses`` in file order. A name defined twice (``pixel_opt`` and ``losses.l_pix``) is an error. BasicSR's
``PerceptualLoss`` type is not ours: ``perceptual_opt`` takes any registered loss (e.g. ``LPIPSLoss``).

Speed options (``train``; none changes what is trained, see :mod:`ddr_restore.train.trainer` for the details):

* ``amp: bf16 | fp16 | false`` (default false): the forward pass and the losses under ``torch.autocast``. bf16
  works on CUDA (GPUs with bfloat16) and on the CPU; fp16 is CUDA only, with a ``GradScaler`` (on the CPU it is
  ignored with a warning and the run trains in fp32: fp16 arithmetic is emulated there, slower than fp32, so no
  CPU user wants it, while refusing it would break the CPU smoke runs of GPU option files). ``true`` is refused as
  ambiguous.
* ``tf32: true | false`` (default true): TF32 tensor cores for fp32 matmuls and convolutions on CUDA
  (``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``); ``false`` makes both
  strict fp32. No effect on the CPU (the log says so).
* ``channels_last: true | false`` (default false): network weights and input batches in
  ``torch.channels_last`` memory format (faster convolutions on tensor cores for some networks; measure).
* ``compile: false | true | <mode>`` (default false): ``torch.compile`` of the network used for training;
  ``true`` is the default mode, or one of :data:`COMPILE_MODES`. Checkpoints keep the plain parameter names.
* Not an option: Adam/AdamW use the fused CUDA implementation when every parameter is a CUDA float tensor, unless
  ``train.optim_g`` sets ``fused`` or ``foreach`` itself.

Option changes on resume (:func:`resume_changes`). Every training state stores the resolved options it was
trained with (older states: the option file copied into the experiment folder is read instead). When a run is
resumed, the new options are compared with those, key by key:

* applied (logged as ``old -> new``): ``train.total_iter`` (above the checkpoint's iteration), everything under
  ``logger`` and ``val``, the validation sets ``datasets.val*``, the loader's speed settings
  ``datasets.train.{num_worker_per_gpu, pin_memory, persistent_workers, prefetch_mode}`` (the data order and
  per-sample seeds do not depend on them), process placement (``num_gpu``, ``dist_params``,
  ``find_unused_parameters``), ``path.*`` (the weights come from the checkpoint), ``name``, ``model_type``,
  ``is_train``, a loss term's ``switch_hint`` (it only names an option in error messages); ``manual_seed: null``
  takes the checkpoint's seed; the speed options ``train.amp``, ``train.tf32``, ``train.channels_last``,
  ``train.compile`` and the optimizer's implementation switches ``train.optim_g.fused`` / ``foreach``: they change
  how the same model, optimizer state and data order are computed, not what is trained (the trainer re-lays the
  restored optimizer state out for the new memory format and implementation; a GradScaler state is used only by
  ``amp: fp16`` and starts afresh when the checkpoint has none). Like moving a run to another GPU, such a resume
  is not bit-identical to the uninterrupted run.
* refused, with one message listing every differing key: ``network_g``, ``scale``, ``manual_seed`` (another
  number), every other ``train.*`` key (optimizer, scheduler, warm-up, EMA, clipping, accumulation, losses)
  and every other ``datasets.train`` key (data, crops, batch size, sampling). Changing them mid-run would make a
  run that is neither the old one nor the new one (BasicSR silently keeps the old optimizer and scheduler state);
  start a new experiment (another ``name``, optionally ``path.pretrain_network_g``) instead.

Loss terms are compared by name, whichever way they are written: a run started with ``pixel_opt`` resumes with
``losses: {l_pix: ...}`` (the same term) and vice versa; adding, removing or changing a term is refused.
"""
from __future__ import annotations

import copy
import inspect
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

# datasets.<phase> keys consumed by the trainer/loader (defined with the datasets); the rest go to the dataset.
from ddr_restore.data import LOADER_KEYS
from ddr_restore.errors import InputError, MissingPathError

__all__ = [
    "OptionsError",
    "SCHEMA",
    "MODEL_TYPE_ALIASES",
    "COMPILE_MODES",
    "LOADER_KEYS",
    "load_options",
    "parse_options",
    "apply_overrides",
    "parse_override",
    "validate_options",
    "dump_options",
    "flatten_options",
    "plain_options",
    "resume_changes",
    "RESUME_MUTABLE",
    "LOSS_ALIASES",
    "RESERVED_LOSS_NAMES",
    "LossTerm",
    "loss_terms",
]


class OptionsError(InputError):
    """A problem in the training options; the message starts with the dotted key path.

    A user error (:class:`ddr_restore.errors.InputError`, hence also a ``ValueError``): console scripts print it as
    one message and exit with status 2.
    """


MODEL_TYPE_ALIASES = ("DDRModel", "ImageRestorationModel", "SRModel", "ImageCleanModel")

#: ``train.compile`` strings: ``torch.compile`` modes (``true`` is ``"default"``)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_MISSING = object()


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` (no dot) as a float, as YAML 1.2 and users expect.

    PyYAML follows YAML 1.1, where ``lr: 1e-3`` is the *string* "1e-3" (BasicSR files write ``!!float 1e-3``).
    Still the safe loader: no Python objects can be constructed.
    """


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text safely (see :class:`_SafeLoader`)."""
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass


# --------------------------------------------------------------------------------------------------- schema types
@dataclass
class Key:
    """One option: accepted value kinds, whether it is required, its default, and its sub-schema (mappings).

    kinds: names from :data:`_KIND_CHECKS` ("int", "float", "str", "bool", "none", "list[int]", "list[float]",
    "list[str]", "map"). ``children``: fixed sub-keys of a mapping. ``open``: a mapping whose extra keys are
    checked elsewhere (kwargs of a registered class). ``pattern``: for mappings of named entries, a check on the
    entry names and the schema of each entry.
    """

    kinds: Tuple[str, ...]
    required: bool = False
    default: Any = _MISSING
    children: Optional[Dict[str, "Key"]] = None
    open: bool = False
    choices: Optional[Tuple[Any, ...]] = None
    entry: Optional["Key"] = None  # schema of every value in a name -> entry mapping (e.g. val.metrics)
    entry_name_check: Optional[Callable[[str], Optional[str]]] = None
    check: Optional[Callable[[Any], Optional[str]]] = None  # extra check; returns an error text or None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or _is_float_str(v)


def _is_float_str(v: Any) -> bool:
    # YAML 1.1 (PyYAML) reads "1e-3" (no dot) as a string; accept it as the float users meant.
    if not isinstance(v, str):
        return False
    try:
        float(v)
    except ValueError:
        return False
    return not v.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity")


_KIND_CHECKS: Dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "float": _is_num,
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "none": lambda v: v is None,
    "list[int]": lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) for x in v),
    "list[float]": lambda v: isinstance(v, (list, tuple)) and all(_is_num(x) for x in v),
    "list[str]": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
    "map": lambda v: isinstance(v, Mapping),
}


def _positive(v: Any) -> Optional[str]:
    return None if v is None or (_is_int(v) and v > 0) else f"must be a positive integer, got {v!r}"


def _non_negative(v: Any) -> Optional[str]:
    return None if v is None or (_is_int(v) and v >= 0) else f"must be >= 0, got {v!r}"


def _ema_decay(v: Any) -> Optional[str]:
    return None if v is None or 0.0 <= float(v) < 1.0 else f"must be in [0, 1), got {v!r}"


def _num_gpu(v: Any) -> Optional[str]:
    return None if v == "auto" or (_is_int(v) and v >= 0) else f"must be 'auto' or an integer >= 0, got {v!r}"


def _dataset_phase(name: str) -> Optional[str]:
    return None if name == "train" or name.startswith("val") else "dataset phases are 'train' and 'val*' (val, val_1, ...)"


def _typed_entry(**children: Key) -> Key:
    """A mapping with a required registry ``type`` whose other keys are kwargs checked against the class."""
    return Key(("map",), children={"type": Key(("str",), required=True), **children}, open=True)


_DATASET = Key(
    ("map",),
    open=True,  # dataset-specific keys go to the dataset class, checked against its signature
    children={
        "name": Key(("str",)),
        "type": Key(("str",), required=True),
        "batch_size_per_gpu": Key(("int",), default=1, check=_positive),
        "num_worker_per_gpu": Key(("int",), default=0, check=_non_negative),
        "dataset_enlarge_ratio": Key(("int",), default=1, check=_positive),
        "prefetch_mode": Key(("none", "str"), default=None, choices=(None, "cpu", "cuda")),
        "pin_memory": Key(("bool",), default=False),
        "persistent_workers": Key(("bool",), default=False),
        "use_shuffle": Key(("bool",), default=True),
        "mini_batch_sizes": Key(("list[int]", "none"), default=None),
        "gt_sizes": Key(("list[int]", "none"), default=None),
        "iters": Key(("list[int]", "none"), default=None),
    },
)

_METRIC = Key(
    ("map",),
    open=True,  # crop_border, test_y_channel, ... go to the metric function
    children={
        "type": Key(("str",), required=True),
        # only for a plain registered function; a catalog metric declares its own (ddr_restore.metrics.catalog)
        "better": Key(("str", "none"), default=None, choices=("higher", "lower", None)),
    },
)

# A loss term: a registered loss ``type`` and its keyword arguments (checked against the class), or ``~`` (no term).
_LOSS_TERM = Key(("map", "none"), default=None, children={"type": Key(("str",), required=True)}, open=True)

SCHEMA: Dict[str, Key] = {
    "name": Key(("str",), required=True),
    # users' modules that register parts (ddr_restore.plugins), imported before the rest is validated
    "imports": Key(("list[str]", "none"), default=[]),
    "model_type": Key(("str", "none"), default="DDRModel", choices=MODEL_TYPE_ALIASES + (None,)),
    "scale": Key(("int",), default=1, check=_positive),
    "num_gpu": Key(("int", "str"), default="auto", check=_num_gpu),
    "manual_seed": Key(("int", "none"), default=None),
    "find_unused_parameters": Key(("bool",), default=False),
    "dist_params": Key(("map", "none"), default=None, children={"backend": Key(("str",)), "port": Key(("int",))}),
    "is_train": Key(("bool",), default=True),  # BasicSR writes it; accepted for round-tripping
    "datasets": Key(("map",), required=True, entry=_DATASET, entry_name_check=_dataset_phase),
    "network_g": _typed_entry(),
    "path": Key(
        ("map",),
        default={},
        children={
            "pretrain_network_g": Key(("str", "none"), default=None),
            "param_key_g": Key(("str",), default="params"),
            "strict_load_g": Key(("bool",), default=True),
            "resume_state": Key(("str", "none"), default=None),
            "experiments_root": Key(("str", "none"), default=None),
        },
    ),
    "train": Key(
        ("map",),
        required=True,
        children={
            "optim_g": _typed_entry(),
            "scheduler": Key(("map", "none"), default=None, children={"type": Key(("str",), required=True)}, open=True),
            "total_iter": Key(("int",), required=True, check=_positive),
            "warmup_iter": Key(("int",), default=-1),
            "ema_decay": Key(("float", "none"), default=0.0, check=_ema_decay),
            "use_grad_clip": Key(("bool",), default=False),
            "grad_clip_norm": Key(("float",), default=0.01),
            "accumulate_grad_batches": Key(("int",), default=1, check=_positive),
            # speed options (see "Speed options" in the module docstring); each may change on resume
            "amp": Key(("bool", "str", "none"), default=False, choices=(False, None, "bf16", "fp16")),
            "tf32": Key(("bool",), default=True),
            "channels_last": Key(("bool",), default=False),
            "compile": Key(("bool", "str"), default=False, choices=(False, True) + COMPILE_MODES),
            # one loss term each (see loss_terms): the BasicSR aliases and the catalog of named terms
            "pixel_opt": _LOSS_TERM,
            "perceptual_opt": _LOSS_TERM,
            "ddr_opt": _LOSS_TERM,
            "losses": Key(("map", "none"), default=None, entry=_LOSS_TERM),
        },
    ),
    "val": Key(
        ("map", "none"),
        default=None,
        children={
            "val_freq": Key(("int", "float"), default=5000),
            "save_img": Key(("bool",), default=False),
            "suffix": Key(("str", "none"), default=None),
            "pbar": Key(("bool",), default=False),
            "max_save_images": Key(("int",), default=4, check=_non_negative),
            "metrics": Key(("map", "none"), default=None, entry=_METRIC),
        },
    ),
    "logger": Key(
        ("map",),
        default={},
        children={
            "print_freq": Key(("int",), default=100, check=_positive),
            "save_checkpoint_freq": Key(("int", "float"), default=5000),
            "use_tb_logger": Key(("bool",), default=True),
            "wandb": Key(
                ("map", "none"),
                default=None,
                children={"project": Key(("str", "none"), default=None), "resume_id": Key(("str", "none"), default=None)},
            ),
        },
    ),
}


# ----------------------------------------------------------------------------------------------------- loss terms
#: BasicSR's single-loss keys of ``train`` and the term each one is (its log name), in the order they are summed.
LOSS_ALIASES: Dict[str, str] = {"pixel_opt": "l_pix", "perceptual_opt": "l_percep", "ddr_opt": "l_ddr"}

#: Names the training log already uses: no loss term may take them.
RESERVED_LOSS_NAMES: Tuple[str, ...] = ("l_total", "lr")

# Before loss classes declared ``requires_target``, the trainer called the ``ddr_opt`` loss as ``loss(output)`` and
# the others as ``loss(output, target)``; an undeclared (user) class keeps the call its alias always made.
_ALIAS_TARGET_DEFAULT = {"pixel_opt": True, "perceptual_opt": True, "ddr_opt": False}

_TERM_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class LossTerm:
    """One term of the training loss.

    Attributes:
        name: the log name (``l_pix`` for ``pixel_opt``, the key under ``train.losses`` otherwise).
        where: its dotted option path, for messages (``train.pixel_opt``, ``train.losses.ddr``).
        cfg: the loss options (``type`` + keyword arguments).
        target_default: whether the target is passed to a loss class that does not declare ``requires_target``.
    """

    name: str
    where: str
    cfg: Mapping[str, Any]
    target_default: bool = True


def loss_terms(train_opt: Mapping[str, Any]) -> List[LossTerm]:
    """The loss terms of the ``train`` options: the aliases (``pixel_opt``, ``perceptual_opt``, ``ddr_opt``) first,
    then ``train.losses`` in file order; terms set to ``~`` are left out. Validation (:func:`validate_options`) has
    already refused duplicate or reserved names."""
    terms: List[LossTerm] = []
    for key, name in LOSS_ALIASES.items():
        cfg = train_opt.get(key)
        if isinstance(cfg, Mapping):
            terms.append(LossTerm(name, f"train.{key}", cfg, _ALIAS_TARGET_DEFAULT[key]))
    losses = train_opt.get("losses")
    for name, cfg in (losses.items() if isinstance(losses, Mapping) else ()):
        if isinstance(cfg, Mapping):
            terms.append(LossTerm(str(name), f"train.losses.{name}", cfg))
    return terms


def _check_loss_names(train: Mapping[str, Any], errors: List[str]) -> None:
    """At least one term; names that fit a dotted path and the log; no name defined twice."""
    losses = train.get("losses")
    aliased = {name: key for key, name in LOSS_ALIASES.items() if train.get(key) is not None}
    for name, cfg in (losses.items() if isinstance(losses, Mapping) else ()):
        where = f"train.losses.{name}"
        if not isinstance(name, str) or not _TERM_NAME.match(name):
            errors.append(f"{where}: a term name is letters, digits, '_' or '-' (it is used in --set paths and "
                          "log tags)")
        elif name in RESERVED_LOSS_NAMES:
            errors.append(f"{where}: the name {name!r} is taken by the training log ({', '.join(RESERVED_LOSS_NAMES)}"
                          "); choose another")
        elif name in aliased and cfg is not None:
            errors.append(f"{where}: the term {name!r} is also defined by train.{aliased[name]} (whose log name is "
                          f"{name}); keep one of them")
    if not loss_terms(train):
        errors.append("train: needs at least one loss (train.losses: {<name>: {type: ...}}, or train.pixel_opt / "
                      "perceptual_opt / ddr_opt)")


# ------------------------------------------------------------------------------------------------- loading & --set
def load_options(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read an option YAML file (``yaml.safe_load``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"option file not found: {path}")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise OptionsError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise OptionsError(f"{path}: the top level must be a mapping of options, got {type(data).__name__}")
    return data


def parse_override(text: str) -> Tuple[List[str], Any]:
    """Parse one ``a.b.c=VALUE`` override into (["a","b","c"], value); VALUE is read as YAML (safe loader)."""
    if "=" not in text:
        raise OptionsError(f"--set {text!r}: expected KEY.PATH=VALUE (e.g. train.total_iter=1000)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p or not all(c.isalnum() or c in "_-" for c in p) for p in parts):
        raise OptionsError(f"--set {text!r}: bad key path {key!r} (dotted names of letters, digits, '_' or '-')")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise OptionsError(f"--set {text!r}: cannot parse the value {raw!r} as YAML: {err}") from err
    return parts, value


def apply_overrides(opt: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Return a copy of ``opt`` with every ``a.b.c=VALUE`` override applied (missing mappings are created; the
    schema check that follows rejects keys it does not allow)."""
    opt = copy.deepcopy(opt)
    for text in overrides:
        parts, value = parse_override(text)
        node = opt
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise OptionsError(f"--set {text!r}: {where} is a {type(child).__name__}, not a mapping of options")
            node = child
        node[parts[-1]] = value
    return opt


# ------------------------------------------------------------------------------------------------------ validation
def _kind_ok(value: Any, kinds: Sequence[str]) -> bool:
    return any(_KIND_CHECKS[k](value) for k in kinds)


def _check(value: Any, key: Key, where: str, errors: List[str]) -> Any:
    """Validate ``value`` against ``key``; returns the value with defaults filled in (errors are collected)."""
    if not _kind_ok(value, key.kinds):
        errors.append(f"{where}: expected {' or '.join(key.kinds)}, got {type(value).__name__} {value!r}")
        return value
    if key.choices is not None and value not in key.choices:
        errors.append(f"{where}: {value!r} is not one of {[c for c in key.choices]}")
    if key.check is not None and not isinstance(value, Mapping):
        problem = key.check(value)
        if problem:
            errors.append(f"{where}: {problem}")
    if _is_float_str(value) and "float" in key.kinds and "str" not in key.kinds:
        value = float(value)
    if isinstance(value, Mapping):
        value = dict(value)
        if key.entry is not None:
            for name, sub in value.items():
                if key.entry_name_check and (msg := key.entry_name_check(str(name))):
                    errors.append(f"{where}.{name}: unknown key ({msg})")
                    continue
                value[name] = _check(sub, key.entry, f"{where}.{name}", errors)
        elif key.children is not None:
            value = _check_mapping(value, key.children, where, errors, allow_extra=key.open)
    return value


def _check_mapping(
    data: Mapping[str, Any], schema: Mapping[str, Key], where: str, errors: List[str], allow_extra: bool = False
) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    prefix = f"{where}." if where else ""
    for name, value in data.items():
        if name not in schema:
            if allow_extra:
                out[name] = value
            else:
                errors.append(f"{prefix}{name}: unknown key (allowed: {', '.join(schema)})")
            continue
        out[name] = _check(value, schema[name], f"{prefix}{name}", errors)
    for name, key in schema.items():
        if name in out:
            continue
        if key.required:
            errors.append(f"{prefix}{name}: missing required key")
        elif key.default is not _MISSING:
            default = copy.deepcopy(key.default)
            out[name] = _check(default, key, f"{prefix}{name}", errors) if isinstance(default, dict) else default
    return out


def _check_kwargs(factory: Callable[..., Any], kwargs: Mapping[str, Any], where: str, skip: int = 0) -> List[str]:
    """Keyword names ``factory`` does not accept (unless it takes ``**kwargs``), as error lines."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    params = list(sig.parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return []
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    errors = [f"{where}.{k}: unknown key for {getattr(factory, '__name__', factory)} (accepted: {', '.join(sorted(names))})"
              for k in kwargs if k not in names]
    return errors


def _check_registry_entry(registry: Any, cfg: Mapping[str, Any], where: str, drop: Iterable[str], extra: Iterable[str],
                          errors: List[str]) -> None:
    name = cfg.get("type")
    if not isinstance(name, str):
        return
    if name not in registry:
        from ddr_restore.plugins import describe_loaded

        errors.append(f"{where}.type: unknown {registry.kind} type {name!r}; registered: {', '.join(registry.keys())}"
                      f"; {describe_loaded()}")
        return
    kwargs = {k: v for k, v in cfg.items() if k != "type" and k not in drop}
    for k in extra:
        kwargs.setdefault(k, None)
    errors.extend(_check_kwargs(registry.get(name), kwargs, where))


def _check_components(opt: Dict[str, Any], errors: List[str]) -> None:
    """Resolve every ``type:`` name and check its keyword arguments against the class, without building it."""
    from ddr_restore.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY
    from ddr_restore.train import schedulers

    if isinstance(opt.get("network_g"), Mapping):
        _check_registry_entry(ARCH_REGISTRY, opt["network_g"], "network_g", (), (), errors)
    for phase, cfg in (opt.get("datasets") or {}).items():
        if isinstance(cfg, Mapping):
            _check_registry_entry(DATASET_REGISTRY, cfg, f"datasets.{phase}", LOADER_KEYS, ("phase",), errors)
    train = opt.get("train") or {}
    for term in loss_terms(train):
        if term.cfg.get("type") == "PerceptualLoss" and "PerceptualLoss" not in LOSS_REGISTRY:
            errors.append(f"{term.where}.type: BasicSR's PerceptualLoss (a weighted VGG feature distance) is not part "
                          "of ddr_restore; use a registered loss, e.g. LPIPSLoss with net: vgg (registered: "
                          f"{', '.join(LOSS_REGISTRY.keys())})")
            continue
        _check_registry_entry(LOSS_REGISTRY, term.cfg, term.where, (), (), errors)
    for name, cfg in ((opt.get("val") or {}).get("metrics") or {}).items():
        if isinstance(cfg, Mapping):
            from ddr_restore.metrics.catalog import metric_option_errors  # builds the (cheap) metric: values too

            errors.extend(metric_option_errors(cfg, f"val.metrics.{name}"))
    for key, lookup in (("optim_g", schedulers.optimizer_class), ("scheduler", schedulers.scheduler_class)):
        cfg = train.get(key)
        if isinstance(cfg, Mapping) and isinstance(cfg.get("type"), str):
            try:
                cls = lookup(cfg["type"], f"train.{key}.type")
            except KeyError as err:
                errors.append(err.args[0])
                continue
            errors.extend(_check_kwargs(cls, {k: v for k, v in cfg.items() if k != "type"}, f"train.{key}", skip=1))


def _check_consistency(opt: Dict[str, Any], errors: List[str]) -> None:
    train = opt.get("train") or {}
    if isinstance(train, Mapping):
        _check_loss_names(train, errors)
    datasets = opt.get("datasets") or {}
    if isinstance(datasets, Mapping) and "train" not in datasets:
        errors.append("datasets.train: missing required key")
    tcfg = datasets.get("train") if isinstance(datasets, Mapping) else None
    if isinstance(tcfg, Mapping):
        prog = {k: tcfg.get(k) for k in ("mini_batch_sizes", "gt_sizes", "iters")}
        given = [k for k, v in prog.items() if v is not None]
        if given and len(given) != 3:
            errors.append(f"datasets.train: progressive training needs mini_batch_sizes, gt_sizes and iters together "
                          f"(given: {', '.join(given)})")
        elif given and len({len(v) for v in prog.values()}) != 1:
            errors.append("datasets.train: mini_batch_sizes, gt_sizes and iters must have the same length")
        elif given and max(prog["mini_batch_sizes"]) > tcfg.get("batch_size_per_gpu", 1):
            errors.append(f"datasets.train.mini_batch_sizes: largest value {max(prog['mini_batch_sizes'])} exceeds "
                          f"batch_size_per_gpu {tcfg.get('batch_size_per_gpu', 1)} (the loader batch is subsampled)")
    amp = train.get("amp") if isinstance(train, Mapping) else None
    if amp is True:
        errors.append("train.amp: use 'bf16', 'fp16' or false (true is ambiguous)")


def validate_options(opt: Mapping[str, Any], check_components: bool = True) -> Dict[str, Any]:
    """Validate ``opt`` against :data:`SCHEMA` and return a copy with defaults filled in.

    Raises:
        OptionsError: listing every problem found, one per line, each starting with its dotted key path.
    """
    if not isinstance(opt, Mapping):
        raise OptionsError(f"options: expected a mapping, got {type(opt).__name__}")
    _import_user_modules(opt.get("imports"))
    errors: List[str] = []
    out = _check_mapping(opt, SCHEMA, "", errors)
    _check_consistency(out, errors)
    if check_components:
        _check_components(out, errors)
    if errors:
        raise OptionsError("invalid options:\n  " + "\n  ".join(errors))
    # The experiments root is fixed once, as an absolute path, so resuming does not depend on the CWD.
    root = out["path"].get("experiments_root") or "experiments"
    out["path"]["experiments_root"] = str(Path(os.path.expanduser(root)).resolve())
    for key in ("pretrain_network_g", "resume_state"):
        if out["path"].get(key):
            out["path"][key] = str(Path(os.path.expanduser(out["path"][key])).resolve())
    return out


def _import_user_modules(imports: Any) -> None:
    """Import the ``imports:`` modules first, so that the checks below see the parts they register."""
    if imports is None:
        return
    if not isinstance(imports, (list, tuple)):
        raise OptionsError(f"imports: expected a list of module names (e.g. [my_project.losses]), got {imports!r}")
    from ddr_restore.plugins import import_modules

    try:
        import_modules(imports, key="imports")
    except InputError as err:
        raise OptionsError(str(err)) from err


def parse_options(path: Union[str, os.PathLike], overrides: Sequence[str] = (), check_components: bool = True) -> Dict[str, Any]:
    """Load ``path``, apply ``--set`` overrides and validate; returns the resolved options."""
    opt = load_options(path)
    opt = apply_overrides(opt, overrides)
    try:
        return validate_options(opt, check_components=check_components)
    except OptionsError as err:
        raise OptionsError(f"{path}: {err}") from None


def dump_options(opt: Mapping[str, Any], path: Union[str, os.PathLike], header: Sequence[str] = ()) -> Path:
    """Write resolved options as YAML with ``# ...`` header lines (e.g. the command line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(_plain(opt), sort_keys=False)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def plain_options(opt: Mapping[str, Any]) -> Dict[str, Any]:
    """Options as plain YAML/``weights_only``-safe data: str keys, lists, non-finite floats as strings."""
    return _plain(opt)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------------- changes on resume
# Dotted-key patterns (fnmatch) that may change when a run is resumed; see the module docstring for the reasons.
RESUME_MUTABLE: Tuple[str, ...] = (
    "train.total_iter",
    "logger", "logger.*",
    "val", "val.*",
    "datasets.val*",
    "datasets.train.num_worker_per_gpu", "datasets.train.pin_memory", "datasets.train.persistent_workers",
    "datasets.train.prefetch_mode",
    "num_gpu", "dist_params", "dist_params.*", "find_unused_parameters",
    "path", "path.*",
    "name", "model_type", "is_train",
    "imports",  # where the parts' code is imported from; the parts themselves (network_g, losses) are compared
    "train.losses.*.switch_hint",  # compared after the aliases are moved into train.losses (_canonical_losses)
    # speed options: the same model, optimizer state and data order in another precision / layout / compiler
    "train.amp", "train.tf32", "train.channels_last", "train.compile",
    "train.optim_g.fused", "train.optim_g.foreach",
    "train.losses.*.compile", "train.losses.*.autocast",  # the DDR fast path: same loss, another execution
)

_ABSENT = "(absent)"


def flatten_options(opt: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are values; an empty mapping is kept as ``{}``."""
    if isinstance(opt, Mapping) and opt:
        out: Dict[str, Any] = {}
        for key, value in opt.items():
            out.update(flatten_options(value, f"{prefix}{key}."))
        return out
    value = _plain(opt)
    return {prefix[:-1]: dict(value) if isinstance(value, Mapping) else value}


def _schema_default(key: str) -> Any:
    """The schema default of a dotted key (``_MISSING`` when it has none or the key is not in the schema)."""
    node: Optional[Key] = None
    children: Optional[Mapping[str, Key]] = SCHEMA
    for part in key.split("."):
        if node is not None and node.entry is not None:
            node, children = node.entry, node.entry.children
            continue
        if children is None or part not in children:
            return _MISSING
        node = children[part]
        children = node.children
    return node.default if node is not None else _MISSING


def _mutable(key: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUME_MUTABLE)


def resume_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> Tuple[List[Tuple[str, Any, Any]],
                                                                            List[Tuple[str, Any, Any]]]:
    """Compare the options a checkpoint was trained with (``saved``) with the resumed run's (``new``).

    Returns ``(applied, refused)``: lists of ``(dotted key, old value, new value)``; a key missing on one side has
    the value ``"(absent)"``. ``manual_seed: null`` in ``new`` is not a change (the checkpoint's seed is used).
    See the module docstring for which keys may change.
    """
    old_flat, new_flat = flatten_options(_canonical_losses(saved)), flatten_options(_canonical_losses(new))
    # A change is reported under the key the user wrote (train.pixel_opt.x rather than train.losses.l_pix.x): as the
    # new options write the term, or as the saved ones did for a term the new options drop.
    new_train = new.get("train")
    new_names = {t.name for t in loss_terms(new_train)} if isinstance(new_train, Mapping) else set()
    spelled = {k: v for k, v in _alias_spelling(saved).items() if k[len("train.losses."):] not in new_names}
    spelled.update(_alias_spelling(new))
    applied: List[Tuple[str, Any, Any]] = []
    refused: List[Tuple[str, Any, Any]] = []
    for key in sorted(set(old_flat) | set(new_flat)):
        old, value = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
        if old == value or (key == "manual_seed" and value in (None, _ABSENT)):
            continue
        if _ABSENT in (old, value) and (value if old == _ABSENT else old) == _schema_default(key):
            continue  # a key with its default that one side's version of the schema did not have yet
        (applied if _mutable(key) else refused).append((_respell(key, spelled), old, value))
    return applied, refused


def _canonical_losses(opt: Mapping[str, Any]) -> Dict[str, Any]:
    """``opt`` with every loss term under ``train.losses.<name>`` (aliases moved there, ``~`` terms dropped), so
    that options are compared term by term whichever way a term is written."""
    out = dict(opt)
    train = out.get("train")
    if not isinstance(train, Mapping):
        return out
    train = dict(train)
    terms = {t.name: t.cfg for t in loss_terms(train)}
    for key in (*LOSS_ALIASES, "losses"):
        train.pop(key, None)
    if terms:
        train["losses"] = terms
    out["train"] = train
    return out


def _alias_spelling(opt: Mapping[str, Any]) -> Dict[str, str]:
    """``{"train.losses.l_pix": "train.pixel_opt", ...}`` for the aliases ``opt`` uses."""
    train = opt.get("train")
    if not isinstance(train, Mapping):
        return {}
    return {f"train.losses.{name}": f"train.{key}" for key, name in LOSS_ALIASES.items()
            if isinstance(train.get(key), Mapping)}


def _respell(key: str, spelled: Mapping[str, str]) -> str:
    for canonical, written in spelled.items():
        if key == canonical or key.startswith(canonical + "."):
            return written + key[len(canonical):]
    return key
