"""The metric catalog: every image-quality metric by name, with what it is declared next to its code.

Modelled on pyiqa's ``create_metric``: ::

    from ddr_restore.metrics import create_metric, list_metrics

    lpips = create_metric("lpips", net="alex")      # built once; its network loads on first use
    lpips.info.better                                # "lower"
    lpips(restored_u8, target_u8)                    # a float
    q = create_metric("q_ddr", pretrained="none")    # no reference: q(restored_u8)
    list_metrics()                                   # ['lpips', 'psnr', 'psnr_realblur', 'q_ddr', ...]

A metric is a :class:`Metric` subclass registered with :func:`register_metric`, which declares, once and next to
the code, what the trainer, ``ddr-eval``, ``ddr-ablate`` and the option checks read: the direction
(``better="higher"|"lower"``), whether it needs a reference image, a display title and unit, and per-image
diagnostics it reports besides its value. Its options are the keyword arguments of its ``__init__`` (with their
defaults): there is no second table of options or directions anywhere else. The catalog is
:data:`ddr_restore.registry.METRIC_REGISTRY`, so ``val.metrics.<x>.type`` of a training option file names a
catalog metric, and BasicSR's names (``calculate_psnr``, ``calculate_ssim``) are aliases of ``psnr``/``ssim``.

Inputs: ``restored`` and ``reference`` are 8-bit RGB images, HWC ``uint8`` arrays (what is saved and compared);
float tensors in [0, 1] of shape (3,H,W) or (1,3,H,W) are quantised to that first (BasicSR's ``tensor2img``).
Heavy metrics (LPIPS, Q_DDR) load their network on the first call (or :meth:`Metric.load`), so creating one is
cheap and a caller builds it once and reuses it for every image.

A plain function registered with ``@METRIC_REGISTRY.register()`` (BasicSR style, ``fn(img, img2, **options)``)
still works: it is wrapped as a reference metric whose direction is its ``better`` attribute, else the
``better`` option, else ``"higher"``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import numpy as np

from ddr_restore.errors import InputError, UnknownNameError
from ddr_restore.registry import METRIC_REGISTRY

__all__ = ["MetricInfo", "Metric", "register_metric", "create_metric", "list_metrics", "metric_info",
           "metric_direction", "metric_option_errors", "BETTER"]

BETTER = ("higher", "lower")
_M = TypeVar("_M", bound=Type["Metric"])


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is. Declared by :func:`register_metric`; read by everyone who needs it."""

    name: str  #: catalog name (``val.metrics.<x>.type``, ``ddr-eval --metrics``)
    better: str  #: ``"higher"`` or ``"lower"``: the direction of improvement (best-value tracking, tables)
    needs_reference: bool  #: full-reference (needs the target) or no-reference
    options: Mapping[str, Any] = field(default_factory=dict)  #: option -> default (from ``__init__``)
    title: str = ""  #: short display name, e.g. ``"PSNR"``
    unit: str = ""  #: e.g. ``"dB"``
    description: str = ""  #: one line
    aliases: Tuple[str, ...] = ()  #: other accepted names (BasicSR's ``calculate_psnr`` ...)
    details: Tuple[str, ...] = ()  #: per-image diagnostics reported next to the value (e.g. ``ecc_converged``)

    def is_better(self, value: float, than: Optional[float]) -> bool:
        """Whether ``value`` improves on ``than`` (``None``: nothing to beat yet) in this metric's direction."""
        if than is None:
            return True
        return value > than if self.better == "higher" else value < than


def _options_of(cls: Callable[..., Any], skip: int = 0) -> Dict[str, Any]:
    """Keyword options of ``cls(...)`` with their defaults (``None`` for options without one)."""
    params = list(inspect.signature(cls).parameters.values())[skip:]
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _to_uint8(img: Any, what: str) -> np.ndarray:
    """An 8-bit HWC RGB array from a uint8 array or a [0,1] float tensor (clamped, x255, rounded)."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise InputError(f"{what}: expected an 8-bit image (uint8 HWC array) or a float tensor in [0,1], "
                             f"got a {img.dtype} array")
        return img
    import torch  # here, not at import: the catalog itself stays numpy-only

    if isinstance(img, torch.Tensor):
        from ddr_restore.imageio import tensor2img

        return tensor2img(img)
    raise InputError(f"{what}: expected a uint8 HWC array or a torch tensor, got {type(img).__name__}")


class Metric:
    """Base class of catalog metrics. Subclasses implement :meth:`score` (and, when heavy, :meth:`_load`)."""

    info: ClassVar[MetricInfo]

    def __init__(self) -> None:
        self.device: Any = "cpu"
        self._loaded = False

    @property
    def options(self) -> Dict[str, Any]:
        """The options this instance was built with (defaults filled in)."""
        return {k: getattr(self, k, v) for k, v in self.info.options.items()}

    # ------------------------------------------------------------------ heavy parts
    def to(self, device: Any) -> "Metric":
        """Run on ``device`` (a torch device or its name); moves an already loaded network."""
        self.device = device
        if self._loaded:
            self._move(device)
        return self

    def load(self) -> "Metric":
        """Load the heavy parts now (a network, weights) so that a failure shows before any image is scored.

        Raises a :class:`ddr_restore.errors.UserError` naming what is missing (e.g. LPIPS weights not fetched).
        """
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` has run."""
        return self._loaded

    def _load(self) -> None:
        """Build the network (subclasses with one). Light metrics have nothing to load."""

    def _move(self, device: Any) -> None:
        """Move the loaded network to ``device`` (subclasses with one)."""

    # ------------------------------------------------------------------ scoring
    def score(self, restored: np.ndarray, reference: Optional[np.ndarray]) -> float:
        """The value for one pair of uint8 HWC RGB images (``reference`` is None for no-reference metrics)."""
        raise NotImplementedError

    def score_with_details(self, restored: np.ndarray,
                           reference: Optional[np.ndarray]) -> Tuple[float, Dict[str, Any]]:
        """The value and the per-image diagnostics named in ``info.details`` (none by default)."""
        return self.score(restored, reference), {}

    def compute(self, restored: Any, reference: Any = None) -> Tuple[float, Dict[str, Any]]:
        """Check and convert the inputs, load if needed, and return ``(value, details)``."""
        r = _to_uint8(restored, f"{self.info.name}: restored image")
        ref = None
        if self.info.needs_reference:
            if reference is None:
                raise InputError(f"metric {self.info.name} needs a reference (target) image")
            ref = _to_uint8(reference, f"{self.info.name}: reference image")
            if ref.shape != r.shape:
                raise InputError(f"metric {self.info.name}: restored image is {r.shape} but the reference is "
                                 f"{ref.shape}")
        self.load()
        value, details = self.score_with_details(r, ref)
        return float(value), details

    def __call__(self, restored: Any, reference: Any = None) -> float:
        """The metric value of ``restored`` (against ``reference`` for full-reference metrics)."""
        return self.compute(restored, reference)[0]

    # ------------------------------------------------------------------ reporting
    def describe(self) -> Dict[str, Any]:
        """What a results summary records about this metric: its options and protocol facts."""
        return dict(self.options)

    def protocol(self) -> str:
        """One phrase saying exactly what is computed (for summaries)."""
        return self.info.description

    def caveats(self) -> List[str]:
        """Warnings a user must see about the values (e.g. a randomly initialised network)."""
        return []

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"


def register_metric(name: str, *, better: str, needs_reference: bool, title: str = "", unit: str = "",
                    aliases: Sequence[str] = (), details: Sequence[str] = ()) -> Callable[[_M], _M]:
    """Class decorator: declare a :class:`Metric` subclass and add it to the catalog under ``name`` (+ aliases).

    The options and their defaults are read from the class's ``__init__``; the description is the first line of
    its docstring.
    """
    if better not in BETTER:
        raise ValueError(f"metric {name}: better must be 'higher' or 'lower', got {better!r}")

    def decorator(cls: _M) -> _M:
        if not (isinstance(cls, type) and issubclass(cls, Metric)):
            raise TypeError(f"register_metric({name!r}) decorates a Metric subclass, got {cls!r}")
        doc = (inspect.getdoc(cls) or "").strip().splitlines()
        cls.info = MetricInfo(name=name, better=better, needs_reference=needs_reference, options=_options_of(cls),
                              title=title or name, unit=unit, description=doc[0] if doc else "",
                              aliases=tuple(aliases), details=tuple(details))
        METRIC_REGISTRY.register(name)(cls)
        for alias in aliases:
            METRIC_REGISTRY.register(alias)(cls)
        return cls

    return decorator


class _FunctionMetric(Metric):
    """A BasicSR-style metric function ``fn(img, img2, **options)`` used as a catalog metric."""

    def __init__(self, fn: Callable[..., float], name: str, better: Optional[str], **options: Any) -> None:
        super().__init__()
        declared = getattr(fn, "better", None)
        if better is not None and declared is not None and better != declared:
            raise InputError(f"metric {name}: better: {better} contradicts the function's own {declared!r}")
        direction = declared or better or "higher"
        if direction not in BETTER:
            raise InputError(f"metric {name}: better must be 'higher' or 'lower', got {direction!r}")
        doc = (inspect.getdoc(fn) or "").strip().splitlines()
        self.info = MetricInfo(name=name, better=direction, needs_reference=True,  # type: ignore[misc]
                               options=_options_of(fn, skip=2), title=name, description=doc[0] if doc else "")
        self._fn = fn
        self._kwargs = dict(options)

    @property
    def options(self) -> Dict[str, Any]:
        return {**self.info.options, **self._kwargs}

    def score(self, restored: np.ndarray, reference: Optional[np.ndarray]) -> float:
        return float(self._fn(restored, reference, **self._kwargs))


def _resolve(name: str, where: str = "") -> Callable[..., Any]:
    label = f"{where}: " if where else ""
    if not isinstance(name, str) or name not in METRIC_REGISTRY:
        raise UnknownNameError(f"{label}unknown metric {name!r}; the metric catalog has: {_catalog_text()}")
    return METRIC_REGISTRY.get(name)


def _catalog_text() -> str:
    parts = []
    for n in list_metrics():
        info = metric_info(n)
        alias = f", alias {'/'.join(info.aliases)}" if info.aliases else ""
        ref = "full-reference" if info.needs_reference else "no-reference"
        parts.append(f"{n} ({info.better} is better, {ref}{alias})")
    others = [n for n in METRIC_REGISTRY.keys() if not _is_catalog_class(METRIC_REGISTRY.get(n))]
    return "; ".join(parts + [f"{n} (registered function)" for n in others])


def _is_catalog_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Metric) and hasattr(obj, "info")


def list_metrics() -> List[str]:
    """The catalog's metric names, sorted (aliases and plain registered functions left out)."""
    return sorted(n for n in METRIC_REGISTRY.keys()
                  if _is_catalog_class(METRIC_REGISTRY.get(n)) and METRIC_REGISTRY.get(n).info.name == n)


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of a catalog name or alias (no network is built). Unknown: ``UnknownNameError``."""
    obj = _resolve(name)
    if _is_catalog_class(obj):
        return obj.info
    return _FunctionMetric(obj, name, None).info


def metric_direction(name: str) -> str:
    """``"higher"`` or ``"lower"``: which way metric ``name`` improves (read from the catalog)."""
    return metric_info(name).better


def create_metric(name: str, *, where: str = "", **options: Any) -> Metric:
    """Build catalog metric ``name`` with ``options`` (its ``__init__`` keywords); cheap, nothing heavy loads yet.

    ``better`` may be given for a plain registered function that does not declare its direction; for a catalog
    metric it must agree with the declared one (the direction is the metric's, not the option file's).
    ``where`` (e.g. ``"val.metrics.lpips"``) prefixes error messages.

    Raises:
        UnknownNameError: ``name`` is not in the catalog (the message lists the catalog).
        InputError: an unknown option (the accepted ones are listed) or a bad value.
    """
    label = f"{where}: " if where else f"metric {name}: "
    obj = _resolve(name, f"{where}.type" if where else "")
    better = options.pop("better", None)
    if better is not None and better not in BETTER:
        raise InputError(f"{label}better must be 'higher' or 'lower', got {better!r}")
    if not _is_catalog_class(obj):
        unknown = sorted(set(options) - set(_options_of(obj, skip=2)))
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(obj).parameters.values()):
            raise InputError(f"{label}unknown option(s) {', '.join(unknown)} for {name} "
                             f"(accepted: {', '.join(_options_of(obj, skip=2)) or 'none'})")
        return _FunctionMetric(obj, name, better, **options)
    info: MetricInfo = obj.info
    if better is not None and better != info.better:
        raise InputError(f"{label}better: {better} contradicts the catalog: {info.name} is {info.better}-is-better "
                         "(remove 'better')")
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise InputError(f"{label}unknown option(s) {', '.join(unknown)} for {info.name} "
                         f"(accepted: {', '.join(info.options) or 'none'})")
    try:
        return obj(**options)
    except InputError as err:
        raise InputError(f"{label}{err}") from err
    except (TypeError, ValueError) as err:  # a bad option value
        raise InputError(f"{label}{err}") from err


def metric_option_errors(cfg: Mapping[str, Any], where: str) -> List[str]:
    """Problems of one ``{type: ..., <options>}`` metric entry (e.g. ``val.metrics.psnr``), as error lines.

    Builds the (cheap) metric object, so unknown names, unknown options and bad values are all found without
    loading any network.
    """
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    if kwargs.get("better") not in (None, *BETTER):
        kwargs.pop("better")  # the option schema reports a bad value already
    name = cfg.get("type")
    if not isinstance(name, str):
        return [f"{where}.type: missing (one of: {', '.join(list_metrics())})"]
    if name not in METRIC_REGISTRY:
        return [f"{where}.type: unknown metric type {name!r}; the metric catalog has: {_catalog_text()}"]
    try:
        create_metric(name, where=where, **kwargs)
    except InputError as err:
        return [str(err)]
    return []
