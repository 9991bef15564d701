"""Name -> class registries and `type:` + kwargs construction (BasicSR-style composition).

Each component family has one registry. A class (or factory function) registers itself with a decorator::

    @ARCH_REGISTRY.register()
    class NAFNet(nn.Module): ...

and an option dict such as ``{"type": "NAFNet", "width": 32}`` builds it with ``ARCH_REGISTRY.build(cfg)``.
Registration happens when the defining module is imported; ``load_builtin(kind)`` imports the package's own
modules for that kind explicitly (no folder scanning), so ``import ddr_restore`` stays cheap.
"""
from __future__ import annotations

import copy
import importlib
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from ddr_restore.errors import OptionTypeError

__all__ = ["Registry", "ARCH_REGISTRY", "LOSS_REGISTRY", "DATASET_REGISTRY", "METRIC_REGISTRY", "load_builtin"]


class Registry:
    """A mapping from names to classes/functions with a decorator for registration."""

    def __init__(self, kind: str, builtin_modules: Iterable[str] = ()) -> None:
        self.kind = kind
        self._objects: Dict[str, Callable[..., Any]] = {}
        self._builtin_modules = tuple(builtin_modules)
        self._builtin_loaded = False

    def register(self, name: Optional[str] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register the decorated object under ``name`` (default: its ``__name__``)."""

        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or obj.__name__
            existing = self._objects.get(key)
            if existing is not None and existing is not obj:
                # Re-importing the same module (e.g. importlib.reload) re-registers an equal object: allow that.
                same_origin = (getattr(existing, "__module__", None), getattr(existing, "__qualname__", None)) == (
                    getattr(obj, "__module__", None),
                    getattr(obj, "__qualname__", None),
                )
                if not same_origin:
                    raise KeyError(f"{self.kind} registry: the name {key!r} is already registered by {existing!r}")
            self._objects[key] = obj
            return obj

        return decorator

    def _ensure_builtin(self) -> None:
        if not self._builtin_loaded:
            self._builtin_loaded = True
            for module in self._builtin_modules:
                importlib.import_module(module)
            # Installed packages' parts (entry-point group ddr_restore.plugins), once per process, on first lookup.
            from ddr_restore.plugins import load_entry_points

            load_entry_points()

    def get(self, name: str) -> Callable[..., Any]:
        """Return the object registered as ``name``; unknown names raise a KeyError listing what exists."""
        self._ensure_builtin()
        try:
            return self._objects[name]
        except KeyError:
            from ddr_restore.plugins import describe_loaded

            raise KeyError(
                f"unknown {self.kind} type {name!r}; registered {self.kind} types: {', '.join(self.keys()) or '(none)'}"
                f"; {describe_loaded()}"
            ) from None

    def keys(self) -> list:
        """Sorted registered names (built-in modules are imported first)."""
        self._ensure_builtin()
        return sorted(self._objects)

    def __contains__(self, name: object) -> bool:
        self._ensure_builtin()
        return name in self._objects

    def build(self, cfg: Mapping[str, Any], where: str = "", **extra: Any) -> Any:
        """Build ``cfg['type'](**rest, **extra)``. ``cfg`` is not modified.

        ``where`` is the dotted option path used in error messages (e.g. ``"network_g"``).
        """
        label = where or self.kind
        if not isinstance(cfg, Mapping):
            raise OptionTypeError(f"{label}: expected a mapping with a 'type' key, got {type(cfg).__name__}")
        if "type" not in cfg:
            raise KeyError(f"{label}: missing required key 'type' (one of: {', '.join(self.keys())})")
        kwargs = copy.deepcopy(dict(cfg))
        type_name = kwargs.pop("type")
        try:
            factory = self.get(type_name)
        except KeyError as err:
            raise KeyError(f"{label}.type: {err.args[0]}") from None
        kwargs.update(extra)
        try:
            return factory(**kwargs)
        except TypeError as err:
            raise OptionTypeError(f"{label}: cannot build {self.kind} {type_name!r} with options {sorted(kwargs)}: {err}") from err


ARCH_REGISTRY = Registry("arch", ["ddr_restore.archs"])
LOSS_REGISTRY = Registry("loss", ["ddr_restore.losses"])
DATASET_REGISTRY = Registry("dataset", ["ddr_restore.data"])
METRIC_REGISTRY = Registry("metric", ["ddr_restore.metrics"])


def load_builtin(kind: str) -> None:
    """Import the package's own modules for one registry kind ('arch', 'loss', 'dataset', 'metric')."""
    registries = {r.kind: r for r in (ARCH_REGISTRY, LOSS_REGISTRY, DATASET_REGISTRY, METRIC_REGISTRY)}
    registries[kind]._ensure_builtin()
