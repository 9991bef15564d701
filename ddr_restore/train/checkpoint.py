"""Checkpoint files: atomic writes, safe loads, and finding the newest complete training state.

Layout (BasicSR's): ``models/net_g_<iter>.pth`` and ``models/net_g_latest.pth`` hold ``{"params": state_dict}``
plus ``"params_ema"`` when EMA is on; ``training_states/<iter>.state`` holds everything else needed to continue
(iteration, epoch, position in the epoch, optimizer, scheduler, EMA, AMP scaler, RNG states, best metrics).
The network file of an iteration is always written before its state file, so a state file whose network file
exists and both load is a complete checkpoint.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ddr_restore.errors import CheckpointError, MissingPathError

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


def _torch_detail(err: BaseException) -> str:
    """The informative part of torch's unpickling error, without its advice to retry with weights_only=False.

    That advice would have the user execute arbitrary code from an untrusted file; this package never does.
    """
    text = str(err)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return f"it stores a Python object of type {m.group(1)} besides tensors"
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", text, flags=re.S)
    if m and m.group(1).strip():
        return m.group(1).strip().rstrip(".")
    if "central directory" in text or "zip archive" in text:
        return "its zip archive is incomplete"
    first = text.strip().split("\n", 1)[0].split(". ", 1)[0].strip().rstrip(".")
    if "weights_only" in first or not first:
        return type(err).__name__
    return first


def safe_load(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code from the file.

    Raises:
        MissingPathError: (a ``FileNotFoundError``) the file does not exist.
        CheckpointError: (an ``InputError``) the file is empty, truncated, not a PyTorch file, or pickles Python
            objects; the message names the file and what is wrong, and never suggests ``weights_only=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"checkpoint file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"cannot load checkpoint {path}: the file is empty (0 bytes; an interrupted copy or "
                              "save?); use another checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _torch_detail(err)
        if detail.startswith("it stores a Python object"):
            raise CheckpointError(
                f"cannot load checkpoint {path}: {detail}, and checkpoints are only loaded as plain tensors "
                "(torch.load weights_only=True, which never runs code from a file); save the weights as a state "
                "dict instead, e.g. torch.save({'params': net.state_dict()}, path)"
            ) from None
        raise CheckpointError(f"cannot load checkpoint {path} ({size} bytes): not a readable PyTorch checkpoint "
                              f"({detail}); the file is corrupt, truncated or of another format") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ImportError, IndexError) as err:
        raise CheckpointError(f"cannot load checkpoint {path} ({size} bytes): not a readable PyTorch checkpoint "
                              f"({_torch_detail(err)}); the file is corrupt, truncated or of another format") from None


def _shape(value: Any) -> str:
    return str(list(value.shape)) if hasattr(value, "shape") else type(value).__name__


def _trained_with_hint(path: Path) -> str:
    """Where the option file a checkpoint was trained with usually is; names the file when it can be found."""
    hint = ("the experiment folder holds the option file the checkpoint was trained with "
            "(experiments/<name>/<file>.yml): use it, or the same network_g settings")
    exp_dir = path.resolve().parent.parent
    if path.resolve().parent.name == "models" and exp_dir.is_dir():
        ymls = sorted(p for p in exp_dir.glob("*.yml") if p.is_file())
        if ymls:
            hint += f"; for this checkpoint: {', '.join(str(p) for p in ymls[:2])}"
    return hint


def _mismatch_message(path: Path, net: torch.nn.Module, options_file: Optional[PathLike],
                      mismatched: list, missing: list, unexpected: list) -> str:
    source = f"option file {options_file}" if options_file else "the network options"
    parts = []
    if mismatched:
        shown = "; ".join(f"{k}: checkpoint {a} vs network {b}" for k, a, b in mismatched[:3])
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        parts.append(f"{len(mismatched)} tensor(s) differ in shape: {shown}{more}")
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        parts.append(f"{len(missing)} tensor(s) of the network are missing from the checkpoint: "
                     f"{', '.join(missing[:3])}{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        parts.append(f"{len(unexpected)} tensor(s) of the checkpoint are not in the network: "
                     f"{', '.join(unexpected[:3])}{more}")
    return (f"checkpoint {path} does not fit the {type(net).__name__} built from {source}: {'; '.join(parts)}. "
            f"The network options differ from those the checkpoint was trained with; {_trained_with_hint(path)}.")


def load_network(
    net: torch.nn.Module,
    path: PathLike,
    param_key: Optional[str] = "params",
    strict: bool = True,
    options_file: Optional[PathLike] = None,
) -> Tuple[list, list]:
    """Load weights from a ``{"params": ..., "params_ema": ...}`` file (or a bare state dict) into ``net``.

    A ``module.`` prefix (DDP/DataParallel) is stripped. Returns (missing_keys, unexpected_keys) (both empty when
    ``strict``).

    Args:
        net: the network to load into.
        path: the checkpoint file.
        param_key: the entry holding the state dict (``params``, ``params_ema``); None loads a bare state dict.
        strict: require exactly the network's keys. Shapes must match in any case.
        options_file: the option file ``net`` was built from, named in the error message.

    Raises:
        MissingPathError: the file does not exist.
        CheckpointError: the file cannot be read, has no ``param_key`` entry, or does not fit ``net`` (one
            paragraph: both files, the first mismatched tensors with both shapes, and where the option file the
            checkpoint was trained with usually is).
    """
    path = Path(path)
    data = safe_load(path)
    if param_key and isinstance(data, Mapping) and param_key in data:
        state = data[param_key]
    elif param_key and isinstance(data, Mapping) and any(isinstance(v, Mapping) for v in data.values()):
        raise CheckpointError(f"checkpoint {path}: no {param_key!r} entry (found: {', '.join(map(str, data))}); "
                              "choose one with path.param_key_g (training) or the param-key option (evaluation)")
    else:
        state = data
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: expected a state dict of tensors"
                              + (f" under {param_key!r}" if param_key else "") + f", found {type(state).__name__}")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    own = net.state_dict()
    mismatched = [(k, _shape(state[k]), _shape(v)) for k, v in own.items()  # in the network's order
                  if k in state and isinstance(v, torch.Tensor) and isinstance(state[k], torch.Tensor)
                  and v.shape != state[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(_mismatch_message(path, net, options_file, mismatched,
                                                missing if strict else [], unexpected if strict else []))
    try:
        result = net.load_state_dict(state, strict=strict)
    except RuntimeError as err:  # anything the checks above did not foresee: still one message naming the file
        raise CheckpointError(f"checkpoint {path} does not fit the {type(net).__name__} built from "
                              f"{options_file or 'the network options'}: {str(err).splitlines()[0]}; "
                              f"{_trained_with_hint(path)}") from None
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
        except (CheckpointError, FileNotFoundError):
            continue
        if isinstance(state, Mapping) and state.get("iter") == iteration:
            return iteration, path
    return None
