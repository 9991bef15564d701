"""What an ablation runs: a base option file, grid axes, named variants and seeds, expanded into cells.

Sources (:func:`load_spec` merges them; the command line adds to or replaces what a grid file says):

* ``--grid KEY.PATH=v1,v2,...``: one axis. The values are read as one YAML flow sequence (``[v1,v2,...]``), so
  ``0,0.01,1e-3`` are numbers, ``true`` a bool, ``{type: L1Loss}`` a mapping and ``~`` null (an option switched
  off). Several ``--grid`` make the cartesian product.
* ``--seeds 0,1,2``: every cell is run once per seed (``manual_seed``).
* ``--set KEY.PATH=VALUE``: applied to every cell, after its axis values (e.g. a shorter ``train.total_iter``).
* a grid file (YAML)::

      name: nafnet_losses             # default: the file's stem
      base: ../nafnet_psnr.yml        # relative to this file
      seeds: [0, 1, 2]
      set:                            # every cell, before its own values
        train.total_iter: 1000
      grid:                           # axes: a list of values, or {values: [...], label: λ_d}
        train.losses.ddr.loss_weight: {values: [0, 0.01, 0.1], label: λ_d}
      variants:                       # one more axis: named sets of overrides (e.g. whole loss variants)
        psnr: {}
        psnr+lpips: {train.losses.lpips: {type: LPIPSLoss, loss_weight: 1.0, net: vgg}}
      variant_label: loss             # the variants' column header (default: variant)
      test: {preset: gopro, root: datasets/GoPro}   # see ddr_restore.ablate.runner.resolve_test
      metrics: [psnr, ssim, lpips]

An override key is a dotted option path whose value *replaces* that node (a mapping value replaces the whole
mapping; ``~`` switches a loss term off). The key's parent must exist in the base options unless the value is a
mapping: ``train.losses.ddr.loss_weight`` needs a term ``train.losses.ddr`` in the base (the message lists the
terms there are), while ``train.losses.lpips: {type: LPIPSLoss}`` adds a term. Whether the value is allowed is
checked by the options schema when the cells are planned, before anything runs.
"""
from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ddr_restore.errors import InputError, MissingPathError

__all__ = ["Axis", "Cell", "AblationSpec", "parse_grid_arg", "parse_seeds", "parse_set_arg", "load_grid_file",
           "load_spec", "expand_cells", "apply_overrides", "format_value", "VARIANT_KEY", "SEED_LABEL"]

PathLike = Union[str, os.PathLike]

#: the key of the axis made of named variants (it is not an option path)
VARIANT_KEY = "variant"
SEED_LABEL = "seed"

_PART = re.compile(r"^[A-Za-z0-9_-]+$")
_FILE_KEYS = ("name", "base", "seeds", "set", "grid", "variants", "variant_label", "test", "metrics")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Axis:
    """One dimension of the grid.

    Attributes:
        key: the dotted option path the values are written to, or :data:`VARIANT_KEY` for named variants.
        values: the values (YAML-typed) or, for variants, the variant names.
        label: the column header in results.csv / results.md and the plot axis.
        variants: for the variant axis, name -> ``{dotted key: value}`` overrides.
    """

    key: str
    values: Tuple[Any, ...]
    label: str
    variants: Optional[Mapping[str, Mapping[str, Any]]] = None

    @property
    def is_variant(self) -> bool:
        """True for the axis of named variants."""
        return self.variants is not None

    @property
    def numeric(self) -> bool:
        """True when every value is a real number (not a bool): the axis is plotted as a line with error bars."""
        return not self.is_variant and all(_is_number(v) for v in self.values)


@dataclass(frozen=True)
class Cell:
    """One training run: a point of the grid and a seed.

    Attributes:
        name: folder and experiment name (unique; letters, digits, ``._+-``).
        group: the name without the seed (one row of the summary table).
        seed: ``manual_seed``.
        values: axis label -> value (the variant name on the variant axis), in axis order.
        overrides: ``(dotted key, value)`` pairs applied to the base options in this order: the grid file's
            ``set``, the axis values, the command line's ``--set``.
    """

    name: str
    group: str
    seed: int
    values: Mapping[str, Any]
    overrides: Tuple[Tuple[str, Any], ...]


@dataclass
class AblationSpec:
    """Everything that defines an ablation (see the module docstring); :func:`expand_cells` makes its cells."""

    base: Path
    axes: List[Axis] = field(default_factory=list)
    seeds: List[int] = field(default_factory=lambda: [0])
    common: List[Tuple[str, Any]] = field(default_factory=list)
    #: overrides applied after the axis values (``--set`` on the command line)
    last: List[Tuple[str, Any]] = field(default_factory=list)
    test: Optional[Dict[str, Any]] = None
    metrics: Optional[List[str]] = None
    name: Optional[str] = None
    #: the grid file the spec came from (paths in ``test`` are relative to the working directory, as in options)
    grid_file: Optional[Path] = None

    def cells(self) -> List["Cell"]:
        """The cells in run order (see :func:`expand_cells`)."""
        return expand_cells(self)


# ------------------------------------------------------------------------------------------------------ parsing
def _yaml(text: str, what: str) -> Any:
    from ddr_restore.train.options import yaml_load

    import yaml

    try:
        return yaml_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"{what}: cannot parse {text!r} as YAML: {err}") from None


def _check_key(key: Any, what: str) -> str:
    if not isinstance(key, str) or not key or not all(_PART.match(p) for p in key.split(".")):
        raise InputError(f"{what}: bad option key {key!r} (dotted names of letters, digits, '_' or '-', "
                         "e.g. train.losses.ddr.loss_weight)")
    return key


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_grid_arg(text: str) -> Axis:
    """``"train.losses.ddr.loss_weight=0,0.01,0.1"`` -> an :class:`Axis` (values typed by YAML, at least one)."""
    if "=" not in text:
        raise InputError(f"--grid {text!r}: expected KEY.PATH=v1,v2,... (e.g. train.losses.ddr.loss_weight=0,0.1)")
    key, raw = text.split("=", 1)
    key = _check_key(key.strip(), f"--grid {text!r}")
    values = _yaml(f"[{raw}]", f"--grid {key}")
    return _axis(key, values, key, f"--grid {key}")


def _axis(key: str, values: Any, label: Any, what: str) -> Axis:
    if not isinstance(values, (list, tuple)) or not values:
        raise InputError(f"{what}: expected a non-empty list of values, got {values!r}")
    seen: List[Any] = []
    for v in values:
        if v in seen and type(v) is type(seen[seen.index(v)]):
            raise InputError(f"{what}: the value {v!r} is listed twice")
        seen.append(v)
    if not isinstance(label, str) or not label.strip():
        raise InputError(f"{what}: label must be a non-empty string, got {label!r}")
    return Axis(key=key, values=tuple(values), label=label.strip())


def parse_seeds(value: Union[str, int, Sequence[Any], None], what: str = "--seeds") -> List[int]:
    """``"0,1,2"`` / ``[0, 1, 2]`` / ``3`` -> distinct non-negative integers, in the given order."""
    if value is None:
        return [0]
    if isinstance(value, str):
        value = _yaml(f"[{value}]", what)
    if isinstance(value, bool) or isinstance(value, int):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"{what}: expected a list of integers such as 0,1,2, got {value!r}")
    seeds: List[int] = []
    for s in value:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise InputError(f"{what}: seeds are integers >= 0, got {s!r}")
        if s in seeds:
            raise InputError(f"{what}: seed {s} is listed twice")
        seeds.append(s)
    return seeds


def parse_set_arg(text: str) -> Tuple[str, Any]:
    """``"train.total_iter=100"`` -> ``("train.total_iter", 100)`` (the value read as YAML, as ``ddr-train --set``)."""
    if "=" not in text:
        raise InputError(f"--set {text!r}: expected KEY.PATH=VALUE (e.g. train.total_iter=1000)")
    key, raw = text.split("=", 1)
    key = _check_key(key.strip(), f"--set {text!r}")
    return key, (_yaml(raw, f"--set {key}") if raw.strip() else None)


def _overrides(data: Any, what: str) -> List[Tuple[str, Any]]:
    if data is None:
        return []
    if not isinstance(data, Mapping):
        raise InputError(f"{what}: expected a mapping of dotted option keys to values, got {type(data).__name__}")
    return [(_check_key(k, f"{what}.{k}"), v) for k, v in data.items()]


def load_grid_file(path: PathLike) -> AblationSpec:
    """Read a grid file (see the module docstring); errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"grid file not found: {path}")
    data = _yaml(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: a grid file is a mapping ({', '.join(_FILE_KEYS)})")
    unknown = [k for k in data if k not in _FILE_KEYS]
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} (allowed: {', '.join(_FILE_KEYS)})")
    base = data.get("base")
    if base is not None and not isinstance(base, str):
        raise InputError(f"{path}: base: expected the path of an option file, got {base!r}")
    axes: List[Axis] = []
    grid = data.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise InputError(f"{path}: grid: expected a mapping of option keys to lists of values")
    for key, spec in grid.items():
        where = f"{path}: grid.{key}"
        _check_key(key, where)
        if isinstance(spec, Mapping):
            extra = [k for k in spec if k not in ("values", "label")]
            if extra or "values" not in spec:
                raise InputError(f"{where}: expected a list of values or {{values: [...], label: ...}}")
            axes.append(_axis(key, spec["values"], spec.get("label", key), where))
        else:
            axes.append(_axis(key, spec, key, where))
    variants = data.get("variants")
    if variants is not None:
        if not isinstance(variants, Mapping) or not variants:
            raise InputError(f"{path}: variants: expected a mapping of variant names to overrides")
        parsed = {str(n): dict(_overrides(v, f"{path}: variants.{n}")) for n, v in variants.items()}
        label = data.get("variant_label", VARIANT_KEY)
        if not isinstance(label, str) or not label.strip():
            raise InputError(f"{path}: variant_label: expected a non-empty string, got {label!r}")
        axes.append(Axis(key=VARIANT_KEY, values=tuple(parsed), label=label.strip(), variants=parsed))
    test = data.get("test")
    if test is not None and not isinstance(test, Mapping):
        raise InputError(f"{path}: test: expected a mapping (preset/root/... or dataset: ...), got {test!r}")
    metrics = data.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
        raise InputError(f"{path}: metrics: expected a list of metric names, got {metrics!r}")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise InputError(f"{path}: name: expected a string, got {name!r}")
    return AblationSpec(
        base=(path.parent / base) if base else Path(),
        axes=axes,
        seeds=parse_seeds(data.get("seeds"), f"{path}: seeds"),
        common=_overrides(data.get("set"), f"{path}: set"),
        test=dict(test) if test is not None else None,
        metrics=list(metrics) if metrics is not None else None,
        name=name or path.stem,
        grid_file=path,
    )


def load_spec(
    base: Optional[PathLike] = None,
    grid: Sequence[str] = (),
    seeds: Union[str, Sequence[int], None] = None,
    grid_file: Optional[PathLike] = None,
    overrides: Sequence[str] = (),
) -> AblationSpec:
    """Merge a grid file with command-line arguments: ``base`` and ``seeds`` replace the file's, ``grid`` axes are
    added to its axes and ``overrides`` (``KEY.PATH=VALUE``) are applied to every cell after the axis values."""
    spec = load_grid_file(grid_file) if grid_file is not None else AblationSpec(base=Path())
    if base is not None:
        spec.base = Path(base)
    if spec.base == Path():
        raise InputError("no base option file: give -opt FILE.yml (or base: in the grid file)")
    if not spec.base.is_file():
        raise MissingPathError(f"base option file not found: {spec.base}")
    if seeds is not None:
        spec.seeds = parse_seeds(seeds)
    spec.axes = spec.axes + [parse_grid_arg(g) for g in grid]
    spec.last = spec.last + [parse_set_arg(s) for s in overrides]
    keys = [a.key for a in spec.axes]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise InputError(f"grid: the axis {twice[0]} is given twice (merge its values into one --grid)")
    labels = [a.label for a in spec.axes]
    if len(set(labels)) != len(labels) or SEED_LABEL in labels:
        raise InputError(f"grid: axis labels must be distinct and not {SEED_LABEL!r}: {', '.join(labels)}")
    if spec.name is None:
        spec.name = spec.base.stem
    return spec


# ---------------------------------------------------------------------------------------------------- expansion
def format_value(value: Any) -> str:
    """A short text for a value in cell names, tables and plot labels (``0.05``, ``1e-05``, ``true``, ``~``)."""
    if value is None:
        return "~"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float: 0.05, 1e-05, 1.0
    if isinstance(value, Mapping):
        kind = value.get("type")
        return str(kind) if isinstance(kind, str) else "{" + ",".join(f"{k}:{format_value(v)}" for k, v in
                                                                          value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _short_keys(keys: Sequence[str]) -> Dict[str, str]:
    """The shortest dotted suffix (at least two parts when the key has them) that tells each key apart."""
    out: Dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(min(2, len(parts)), len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if sum(1 for k in keys if k == suffix or k.endswith("." + suffix)) == 1:
                out[key] = suffix
                break
        else:
            out[key] = key
    return out


def _safe(text: str) -> str:
    return _SAFE_NAME.sub("-", text).strip("-") or "x"


def expand_cells(spec: AblationSpec) -> List[Cell]:
    """The cartesian product of the axes (first axis slowest), each point once per seed (seeds innermost, so the
    seeds of one point finish together and its row of the table fills early).

    Cell names join ``<short key>-<value>`` (or the variant name) with ``_`` and end in ``_seed<N>``; a name that
    two cells would share after making it file-name safe is an error.
    """
    short = _short_keys([a.key for a in spec.axes if not a.is_variant])
    cells: List[Cell] = []
    names: Dict[str, Tuple[Any, ...]] = {}
    for point in itertools.product(*(a.values for a in spec.axes)) if spec.axes else [()]:
        parts, values = [], {}
        overrides: List[Tuple[str, Any]] = list(spec.common)
        for axis, value in zip(spec.axes, point):
            values[axis.label] = value
            if axis.is_variant:
                parts.append(_safe(str(value)))
                overrides.extend(axis.variants[value].items())
            else:
                parts.append(_safe(f"{short[axis.key]}-{format_value(value)}"))
                overrides.append((axis.key, value))
        overrides.extend(spec.last)
        group = "_".join(parts) or "base"
        if group in names and names[group] != point:
            raise InputError(f"grid: two cells would share the name {group!r} ({names[group]} and {point}); "
                             "use values that differ as text")
        names[group] = point
        for seed in spec.seeds:
            cells.append(Cell(name=f"{group}_seed{seed}", group=group, seed=seed, values=dict(values),
                              overrides=tuple(overrides)))
    return cells


# ---------------------------------------------------------------------------------------------------- overrides
def _describe_terms(train: Any) -> str:
    from ddr_restore.train.options import loss_terms

    if not isinstance(train, Mapping):
        return ""
    try:
        terms = loss_terms(train)
    except Exception:  # a malformed train section is reported by the schema check
        return ""
    return "; its loss terms: " + ", ".join(f"{t.name} ({t.where})" for t in terms) if terms else ""


def apply_overrides(opt: Mapping[str, Any], overrides: Sequence[Tuple[str, Any]], where: str = "") -> Dict[str, Any]:
    """A deep copy of ``opt`` with each ``(dotted key, value)`` written in order (the value replaces the node).

    Raises:
        InputError: naming the key, when its parent is missing from the options (unless the value is a mapping,
            which may create missing parents) or is not a mapping.
    """
    import copy

    out = copy.deepcopy(dict(opt))
    for key, value in overrides:
        parts = key.split(".")
        node: Dict[str, Any] = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None and isinstance(value, Mapping):
                child = node[part] = {}
            if child is None:
                parent = ".".join(parts[: i + 1])
                hint = _describe_terms(out.get("train")) if parent.startswith("train.") else ""
                raise InputError(f"{where}{key}: the base options have no {parent}{hint}")
            if not isinstance(child, dict):
                parent = ".".join(parts[: i + 1])
                raise InputError(f"{where}{key}: {parent} is a {type(child).__name__} ({child!r}), not a mapping")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out
