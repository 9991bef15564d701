"""Checkpoint files: atomic writes, safe loads, and finding the newest complete training state.

Layout (BasicSR's): ``models/net_g_<iter>.pth`` and ``models/net_g_latest.pth`` hold ``{"params": state_dict}``
plus ``"params_ema"`` when EMA is on; ``training_states/<iter>.state`` holds everything else needed to continue
(iteration, epoch, position in the epoch, optimizer, scheduler, EMA, AMP scaler, RNG states, best metrics).
The network file of an iteration is always written before its state file, so a state file whose network file
exists and both load is a complete checkpoint.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    "atomic_save",
    "safe_load",
    "load_network",
    "rng_state",
    "set_rng_state",
    "find_latest_state",
]

PathLike = Union[str, os.PathLike]


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` it over ``path``.

    A crash at any point leaves either the old file or the new one, never a partial file; the temporary file is
    removed when the write fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def safe_load(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt/foreign pickles: say which file
        raise RuntimeError(f"cannot load checkpoint {path}: {err}") from err


def load_network(
    net: torch.nn.Module, path: PathLike, param_key: Optional[str] = "params", strict: bool = True
) -> Tuple[list, list]:
    """Load weights from a ``{"params": ..., "params_ema": ...}`` file (or a bare state dict) into ``net``.

    A ``module.`` prefix (DDP/DataParallel) is stripped. Returns (missing_keys, unexpected_keys).
    """
    data = safe_load(path)
    if param_key and isinstance(data, Mapping) and param_key in data:
        state = data[param_key]
    elif param_key and isinstance(data, Mapping) and any(isinstance(v, Mapping) for v in data.values()):
        raise KeyError(f"{path}: no {param_key!r} entry (found: {', '.join(map(str, data))}); set path.param_key_g")
    else:
        state = data
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    result = net.load_state_dict(state, strict=strict)
    return list(result.missing_keys), list(result.unexpected_keys)


def rng_state() -> Dict[str, Any]:
    """RNG states of python ``random``, numpy, torch CPU (and CUDA when available), in a weights_only-safe form."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


_STATE_RE = re.compile(r"^(\d+)\.state$")


def find_latest_state(training_states: PathLike, models: PathLike) -> Optional[Tuple[int, Path]]:
    """The newest complete checkpoint: (iteration, state path), or None.

    Complete means ``<iter>.state`` and ``net_g_<iter>.pth`` both exist and load; an unreadable pair is skipped
    (with the next older one tried), temporary files are ignored.
    """
    folder = Path(training_states)
    if not folder.is_dir():
        return None
    candidates = sorted(
        ((int(m.group(1)), p) for p in folder.iterdir() if (m := _STATE_RE.match(p.name))), reverse=True
    )
    for iteration, path in candidates:
        net_path = Path(models) / f"net_g_{iteration}.pth"
        try:
            state = safe_load(path)
            safe_load(net_path)
        except (RuntimeError, FileNotFoundError):
            continue
        if isinstance(state, Mapping) and state.get("iter") == iteration:
            return iteration, path
    return None
