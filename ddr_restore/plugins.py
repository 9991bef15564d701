"""Users' own parts: modules that register networks, losses, datasets or metrics with ddr_restore's decorators.

Two ways to bring them in, with no edit to ddr_restore:

* the option file's top-level ``imports:`` list, imported before the options are validated
  (:func:`import_modules`)::

      imports: [my_project.archs, my_project.losses]
      network_g: {type: MyNet, width: 32}

* an installed package that declares an entry point in the group :data:`ENTRY_POINT_GROUP`
  (``ddr_restore.plugins``), loaded once, on the first registry lookup (:func:`load_entry_points`)::

      # the plugin package's setup.cfg
      [options.entry_points]
      ddr_restore.plugins =
          my_project = my_project.ddr_parts

  The value names a module (imported) or a function taking no argument (called once after its module is imported).

The modules loaded either way are recorded (:func:`loaded_modules`), so an unknown ``type:`` message can say which
plugin modules were searched (:func:`describe_loaded`).
"""
from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any, List, Sequence

from ddr_restore.errors import InputError

__all__ = ["ENTRY_POINT_GROUP", "import_modules", "load_entry_points", "loaded_modules", "describe_loaded"]

#: The entry-point group an installed package uses to register its parts (see the module docstring).
ENTRY_POINT_GROUP = "ddr_restore.plugins"

_loaded: List[str] = []  # module names, in load order (no duplicates)
_failed: List[str] = []  # "name (error)" for entry points that could not be loaded
_entry_points_done = False


def _record(name: str) -> None:
    if name not in _loaded:
        _loaded.append(name)


def _is_missing(err: ModuleNotFoundError, module: str) -> bool:
    """True when ``err`` says ``module`` itself (or a parent package of it) does not exist, rather than something
    the module imports."""
    missing = err.name or ""
    return bool(missing) and (module == missing or module.startswith(missing + "."))


def import_modules(modules: Sequence[Any], key: str = "imports") -> List[str]:
    """Import each module named in ``modules`` (the option ``key``), so that the parts it registers can be named by
    ``type:``. Already imported modules are not imported again.

    Raises:
        InputError: naming ``key[i]`` and the module when an entry is not a dotted module name, the module does not
            exist (the message suggests PYTHONPATH) or importing it raised an exception (chained, so ``--debug``
            shows the user's traceback).
    """
    names: List[str] = []
    for i, name in enumerate(modules):
        where = f"{key}[{i}]"
        if not isinstance(name, str) or not name or not all(part.isidentifier() for part in name.split(".")):
            raise InputError(f"{where}: expected a dotted module name such as my_project.losses, got {name!r}")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if _is_missing(err, name):
                raise InputError(
                    f"{where}: cannot import module {name!r}: no module named {err.name!r} (is its folder on "
                    "PYTHONPATH, or its package installed in this environment?)"
                ) from err
            raise InputError(f"{where}: importing module {name!r} failed: {type(err).__name__}: {err}") from err
        except Exception as err:  # the user's module raised: their error, reported with the key that named it
            raise InputError(f"{where}: importing module {name!r} failed: {type(err).__name__}: {err}") from err
        _record(name)
        names.append(name)
    return names


def load_entry_points() -> List[str]:
    """Load every ``ddr_restore.plugins`` entry point once per process; returns the modules loaded.

    A plugin that fails to load does not stop the others or the caller (an unrelated installed package must not
    break every run): a warning names it, and :func:`describe_loaded` lists it.
    """
    global _entry_points_done
    if _entry_points_done:
        return []
    _entry_points_done = True  # set first: a plugin's own registry lookups must not load the group again
    from importlib.metadata import entry_points

    loaded: List[str] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if inspect.isfunction(obj):  # a registration hook; a module or a class is registered by its import
                obj()
        except Exception as err:  # noqa: BLE001 - reported, never fatal (see the docstring)
            _failed.append(f"{ep.value} ({type(err).__name__}: {err})")
            warnings.warn(f"{ENTRY_POINT_GROUP} entry point {ep.name!r} = {ep.value!r} failed to load: "
                          f"{type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)
            continue
        module = ep.value.split(":")[0].strip()
        _record(module)
        loaded.append(module)
    return loaded


def loaded_modules() -> List[str]:
    """Plugin modules loaded so far (``imports:`` entries and entry points), in load order."""
    return list(_loaded)


def describe_loaded() -> str:
    """One sentence for error messages: which plugin modules were loaded (and which failed)."""
    text = (f"plugin modules loaded: {', '.join(_loaded)}" if _loaded else
            f"no plugin modules loaded (add `imports: [my_package.my_module]` to the option file, or install a "
            f"package with a {ENTRY_POINT_GROUP!r} entry point)")
    if _failed:
        text += f"; failed to load: {'; '.join(_failed)}"
    return text
