"""open_clip model + tokenizer for DDR: backbone names, where the weights come from, freezing.

Where the CLIP weights come from (``pretrained``), in order of precedence:

1. an explicit value passed by the caller:
   - ``"none"`` (or ``"random"``): random initialisation, fully offline. A loud warning is logged: DDR values are
     then meaningless (use this for tests, timing and plumbing only);
   - a local file: a plain state dict in open_clip / OpenAI key layout (``.pt``/``.pth``/``.bin``, loaded with
     ``torch.load(weights_only=True)``; ``.safetensors`` also works), or OpenAI's original TorchScript archive
     (e.g. ``ViT-B-32.pt`` from the OpenAI CDN), which is read with ``torch.jit.load`` (the TorchScript
     deserializer, no Python pickle) and its weights copied into the open_clip model;
   - an open_clip pretrained tag such as ``"openai"`` (downloads through the Hugging Face hub or uses its cache).
2. ``pretrained=None`` (the default of :class:`~ddr_restore.ddr.descriptor.DDR`): the file named by the environment
   variable ``DDR_CLIP_CHECKPOINT`` when it is set, else the tag ``"openai"``.

A tag is looked up in the local caches first (the Hugging Face hub cache, then open_clip's ``~/.cache/clip``), so
cached weights load with no network access at all. Otherwise, before anything is downloaded, one TCP connection to the
hub (``HF_ENDPOINT``, or the proxy that serves it) is tried for at most ``DDR_HUB_PROBE_TIMEOUT`` seconds (default 3):
an unreachable hub, or ``HF_HUB_OFFLINE=1``, fails within seconds with :class:`ClipWeightsUnavailableError`, whose
message names the switch the caller exposes (``switch_hint``: ``--pretrained``, ``train.ddr_opt.pretrained``, ...),
``DDR_CLIP_CHECKPOINT`` and ``none``. (Without the probe, huggingface_hub retries each of open_clip's two file names
five times with back-off: about 50 s before the same failure.)
"""
from __future__ import annotations

import difflib
import logging
import os
import pickle
import socket
import threading
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import nn

from ddr_restore.errors import CheckpointError, InputError, MissingPathError, OptionTypeError

__all__ = [
    "ENV_CHECKPOINT",
    "ENV_PROBE_TIMEOUT",
    "RANDOM_INIT_SEED",
    "ClipBundle",
    "ClipWeightsUnavailableError",
    "probe_endpoint",
    "resolve_backbone",
    "resolve_pretrained",
    "load_clip",
    "freeze",
    "is_torchscript_archive",
    "load_checkpoint_into",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a local CLIP checkpoint, used when ``pretrained`` is None.
ENV_CHECKPOINT = "DDR_CLIP_CHECKPOINT"
#: Environment variable: seconds allowed for the hub reachability probe (default 3; 0 skips the probe).
ENV_PROBE_TIMEOUT = "DDR_HUB_PROBE_TIMEOUT"
_DEFAULT_PROBE_TIMEOUT = 3.0
#: Seed of the random CLIP initialisation (``pretrained="none"``): random weights are the same in every process, so
#: scores of a file repeat between runs. The caller's global RNG is left untouched (``torch.random.fork_rng``).
RANDOM_INIT_SEED = 0

_RANDOM_VALUES = ("none", "random")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_OPENAI_URLS = {
    # Where OpenAI's original archives live, for the instructions in error messages.
    "ViT-B-32-quickgelu": "https://openaipublic.azureedge.net/clip/models/"
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
}


@dataclass
class ClipBundle:
    """A frozen CLIP model with what DDR needs to feed it."""

    model: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    model_name: str  #: the open_clip model name actually built (e.g. "ViT-B-32-quickgelu")
    source: str  #: "random", "tag:<tag>" or "file:<path>"
    is_random: bool
    image_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


def _open_clip():
    # Imported lazily: open_clip costs seconds to import and must not load with `import ddr_restore`.
    import open_clip

    return open_clip


def _is_random(pretrained: Optional[str]) -> bool:
    return isinstance(pretrained, str) and pretrained.strip().lower() in _RANDOM_VALUES


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.lower().endswith(_CHECKPOINT_SUFFIXES) or os.path.exists(value)


def resolve_pretrained(pretrained: Optional[str]) -> str:
    """Apply the precedence rule: explicit value > ``$DDR_CLIP_CHECKPOINT`` > ``"openai"``.

    Returns ``"none"``, a path string, or a tag. Raises MissingPathError (a FileNotFoundError) when the env var names
    a missing file.
    """
    if pretrained is not None:
        if not isinstance(pretrained, (str, os.PathLike)):
            raise OptionTypeError(f"pretrained must be a tag, a checkpoint path, 'none' or None; got {pretrained!r}")
        value = os.fspath(pretrained).strip()
        if not value:
            raise InputError("pretrained is an empty string; use a tag (e.g. 'openai'), a checkpoint path or 'none'")
        return "none" if _is_random(value) else value
    env = os.environ.get(ENV_CHECKPOINT, "").strip()
    if env:
        if not os.path.isfile(env):
            raise MissingPathError(f"${ENV_CHECKPOINT} points to {env!r}, which is not a file")
        return env
    return "openai"


def resolve_backbone(backbone: str, pretrained: Optional[str] = None) -> str:
    """Map a backbone name to an open_clip model name.

    Accepts open_clip names (``"ViT-B-32"``, ``"RN50-quickgelu"``) and OpenAI-style aliases (``"ViT-B/32"``,
    ``"RN50"``), case-insensitively. A plain name whose ``-quickgelu`` variant exists means OpenAI's QuickGELU model
    (that is what OpenAI's weights, and the official DDR code, use), unless ``pretrained`` is an open_clip tag that
    was trained with standard GELU (e.g. ``"laion2b_s34b_b79k"``), in which case the plain config is used.

    Raises:
        InputError (a ValueError): unknown backbone (the message lists a few valid names and close matches).
    """
    open_clip = _open_clip()
    if not isinstance(backbone, str) or not backbone.strip():
        raise InputError(f"backbone must be a model name such as 'ViT-B-32', got {backbone!r}")
    known = open_clip.list_models()
    by_lower = {m.lower(): m for m in known}
    key = backbone.strip().replace("/", "-").lower()
    if key not in by_lower:
        close = difflib.get_close_matches(key, list(by_lower), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(by_lower[c] for c in close)}?" if close else ""
        raise InputError(
            f"unknown CLIP backbone {backbone!r}. Valid examples: ViT-B-32 (default, = OpenAI ViT-B/32), ViT-B-16, "
            f"ViT-L-14, RN50, RN101 (open_clip knows {len(known)} names, see open_clip.list_models()).{hint}"
        )
    name = by_lower[key]
    quick = by_lower.get(key + "-quickgelu")
    if quick is None:
        return name
    if pretrained is not None and not _is_random(pretrained) and not _looks_like_path(pretrained):
        cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if cfg and not cfg.get("quick_gelu", False):
            return name  # a tag trained with standard GELU: keep the matching activation
    return quick


def is_torchscript_archive(path: os.PathLike | str) -> bool:
    """True when ``path`` is a TorchScript zip archive (OpenAI's original CLIP ``.pt`` files are)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    # torch.save archives hold <root>/data.pkl only; TorchScript adds constants.pkl and a code/ folder.
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def freeze(model: nn.Module) -> nn.Module:
    """Freeze ``model`` in place: eval mode, and every parameter turned into a buffer with requires_grad False.

    As buffers, the weights still move with ``.to()`` and stay in ``state_dict`` under the same keys, but
    ``parameters()`` is empty: no optimizer, DDP gradient hook or parent ``requires_grad_(True)`` can reach them.
    """
    model.eval()
    for module in model.modules():
        for name in list(module._parameters):
            param = module._parameters.pop(name)
            # None (e.g. bias=False) stays an attribute that reads as None, as modules expect.
            module.register_buffer(name, None if param is None else param.detach().requires_grad_(False))
    return model


def _safetensors_errors() -> Tuple[type, ...]:
    # A damaged .safetensors file raises the library's own error type (an Exception, not a ValueError).
    try:
        from safetensors import SafetensorError
    except ImportError:
        return ()
    return (SafetensorError,)


def load_checkpoint_into(model: nn.Module, path: os.PathLike | str, model_name: str = "") -> None:
    """Load a local CLIP checkpoint into an open_clip ``model`` (in place, strict).

    Accepts a plain state dict in open_clip/OpenAI key layout (``torch.load(weights_only=True)``, optionally under
    ``"state_dict"`` and with ``module.`` prefixes; ``.safetensors`` too) or a TorchScript archive such as OpenAI's
    ``ViT-B-32.pt``. Raises CheckpointError (a ValueError) naming the file when it does not fit.
    """
    open_clip = _open_clip()
    path = Path(path)
    model_name = model_name or type(model).__name__
    try:
        if is_torchscript_archive(path):
            # OpenAI's archives: torch.load(weights_only=True) refuses TorchScript, so use the TorchScript loader
            # (C++ deserializer, no Python unpickling) and copy its (OpenAI-layout, fp16) weights into the model.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # jit.load deprecation: still the only reader
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
            # OpenAI's archives carry three config scalars; scripted open_clip models also save the model's
            # non-persistent buffers (attn_mask). Neither belongs in the state dict.
            non_persistent = {n for n, _ in model.named_buffers()} - set(model.state_dict())
            for extra in ("input_resolution", "context_length", "vocab_size", *non_persistent):
                state.pop(extra, None)
            if "logit_scale" in state and state["logit_scale"].shape != model.logit_scale.shape:
                state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
            model.load_state_dict(state, strict=True)
        else:
            # Plain state dicts (optionally under "state_dict", with "module." prefixes): open_clip's loader,
            # with weights_only=True so a checkpoint can never run code.
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, AssertionError, StopIteration, EOFError,
            pickle.UnpicklingError, zipfile.BadZipFile, *_safetensors_errors()) as err:
        msg = _shorten(err, 400) or type(err).__name__
        raise CheckpointError(
            f"cannot load CLIP checkpoint {path} into backbone {model_name}: {msg}. Expected a state dict in "
            "open_clip/OpenAI key layout for this backbone, or OpenAI's TorchScript archive."
        ) from err


# ---------------------------------------------------------------------------------------------- where to say it
def _switch_usage(switch: Optional[str], value: str) -> str:
    """How a user sets ``pretrained`` to ``value`` through ``switch`` (a flag, an option-file key or Python)."""
    if not switch:
        return f"DDR(pretrained='{value}')"
    if switch.startswith("-"):
        return f"{switch} {value}"
    if switch.endswith("="):  # a Python keyword argument such as "pretrained="
        return f"{switch}'{value}'"
    return f"{switch}: {value} in the option file (or --set {switch}={value})"


def _switch_unset(switch: Optional[str]) -> str:
    if not switch:
        return "leave pretrained=None"
    if switch.startswith("-"):
        return f"leave out {switch}"
    if switch.endswith("="):
        return f"leave {switch}None"
    return f"remove {switch}"


def _shorten(text: object, limit: int = 240) -> str:
    """``text`` on one line, cut at a word boundary (with "...") when longer than ``limit``."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + " ..."


class ClipWeightsUnavailableError(InputError, RuntimeError):
    """The CLIP weights of a pretrained tag are neither cached nor downloadable (offline, unreachable hub).

    A :class:`~ddr_restore.errors.InputError` (console scripts print one line and exit 2); also a RuntimeError, as
    this failure was before. The message names the switch that selects the weights (``switch``: a flag such as
    ``--pretrained``, an option-file key such as ``train.ddr_opt.pretrained``, or None for the Python argument),
    ``DDR_CLIP_CHECKPOINT`` and ``none``. A caller that exposes the choice under another name re-raises
    ``err.with_switch(name)``.
    """

    def __init__(self, model_name: str, tag: str, reason: str, switch: Optional[str] = None) -> None:
        self.model_name = model_name
        self.tag = tag
        self.reason = reason
        self.switch = switch
        super().__init__(self._message())

    def __reduce__(self):  # keeps the exception picklable (multiprocessing, DDP workers)
        return (type(self), (self.model_name, self.tag, self.reason, self.switch))

    def with_switch(self, switch: Optional[str]) -> "ClipWeightsUnavailableError":
        """The same error, its message naming ``switch`` (e.g. ``"--ddr-pretrained"``); the cause is kept."""
        new = type(self)(self.model_name, self.tag, self.reason, switch)
        new.__cause__ = self.__cause__
        return new

    def _message(self) -> str:
        url = _OPENAI_URLS.get(self.model_name) if self.tag == "openai" else None
        example = "/path/to/" + (url.rsplit("/", 1)[-1] if url else "clip_checkpoint.pt")
        origin = f" (OpenAI's original file for this backbone: {url})" if url else ""
        return (
            f"cannot obtain CLIP weights for {self.model_name} (pretrained tag {self.tag!r}): {self.reason}. "
            f"Use a local checkpoint file: {_switch_usage(self.switch, example)}, or set "
            f"{ENV_CHECKPOINT}={example} and {_switch_unset(self.switch)}; a state dict in open_clip/OpenAI layout "
            f"or OpenAI's TorchScript .pt{origin}. For random weights (tests and plumbing only, scores are "
            f"meaningless): {_switch_usage(self.switch, 'none')}."
        )


# ---------------------------------------------------------------------------------------------- fetching a tag
def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _has_hub() -> bool:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(getattr(constants, "ENDPOINT", "https://huggingface.co"))


def _probe_timeout() -> float:
    raw = os.environ.get(ENV_PROBE_TIMEOUT, "").strip()
    if not raw:
        return _DEFAULT_PROBE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"${ENV_PROBE_TIMEOUT} must be a number of seconds, got {raw!r}") from None
    return max(value, 0.0)


def _hub_file(cfg: dict) -> Tuple[str, List[str]]:
    """(repo id, file names to try, preferred first) of a pretrained config's ``hf_hub`` entry."""
    open_clip = _open_clip()
    # open_clip's convention: "org/repo/" (default file name) or "org/repo/file.bin".
    repo_id, filename = os.path.split(cfg["hf_hub"])
    weights = getattr(open_clip.pretrained, "HF_WEIGHTS_NAME", "open_clip_pytorch_model.bin")
    safe = getattr(open_clip.pretrained, "HF_SAFE_WEIGHTS_NAME", "open_clip_model.safetensors")
    filename = filename or weights
    names = [filename]
    # open_clip prefers a .safetensors twin of the named file; look for the same files it would download.
    if filename == weights:
        names.insert(0, safe)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo_id, names


def _cached_tag_file(cfg: dict) -> Optional[str]:
    """The local file of a pretrained config when some cache already holds it (no network access), else None."""
    if cfg.get("hf_hub") and _has_hub():
        from huggingface_hub import try_to_load_from_cache

        repo_id, names = _hub_file(cfg)
        for name in names:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if cfg.get("url"):
        # open_clip's own cache of direct downloads (its download function checks the SHA-256 again).
        local = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(local):
            return _open_clip().pretrained.download_pretrained_from_url(cfg["url"])
    return None


def _proxy_for(url: str) -> Optional[str]:
    """The proxy URL the HTTP clients would use for ``url`` (``*_proxy`` variables, ``no_proxy``), or None."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def probe_endpoint(url: str, timeout: float = _DEFAULT_PROBE_TIMEOUT) -> Optional[str]:
    """Try one TCP connection to ``url``'s host (or to the proxy that serves it) for at most ``timeout`` seconds.

    Name resolution is inside the time limit too (the attempt runs in a daemon thread), so a hanging DNS server or
    a black-holed address costs ``timeout`` seconds, not the minutes of the HTTP clients' retries.

    Returns:
        None when the connection opened, else a short reason (``"huggingface.co:443: Name or service not known"``).
    """
    target = _proxy_for(url) or url
    parts = urllib.parse.urlsplit(target)
    host = parts.hostname
    if not host:
        return f"cannot parse a host name from {target!r}"
    try:
        port = parts.port or {"https": 443, "http": 80, "socks5": 1080, "socks5h": 1080}.get(parts.scheme, 443)
    except ValueError:
        return f"bad port in {target!r}"
    via = " (proxy)" if target is not url else ""
    outcome: List[Optional[str]] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as err:
            outcome.append(err.strerror or str(err) or type(err).__name__)

    worker = threading.Thread(target=attempt, name="ddr-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"{host}:{port}{via}: no answer within {timeout:g} s"
    return None if outcome[0] is None else f"{host}:{port}{via}: {outcome[0]}"


def _fetch_tag(model_name: str, tag: str, switch: Optional[str]) -> Tuple[str, dict]:
    """Local file of the weights of an open_clip tag: from a cache, else downloaded after a reachability probe."""
    open_clip = _open_clip()
    cfg = dict(open_clip.get_pretrained_cfg(model_name, tag) or {})
    cached = _cached_tag_file(cfg)
    if cached:
        return cached, cfg
    if _hub_offline():
        raise ClipWeightsUnavailableError(
            model_name, tag, "HF_HUB_OFFLINE is set and the weights are not in the local cache", switch
        )
    use_hub = bool(cfg.get("hf_hub")) and _has_hub()
    url = _hub_endpoint() if use_hub else str(cfg.get("url", ""))
    if not url:
        raise ClipWeightsUnavailableError(model_name, tag, "open_clip lists no download location for it", switch)
    timeout = _probe_timeout()
    problem = probe_endpoint(url, timeout) if timeout > 0 else None
    if problem:
        host = urllib.parse.urlsplit(url).netloc or url
        raise ClipWeightsUnavailableError(
            model_name, tag, f"they are not in the local cache and {host} cannot be reached ({problem})", switch
        )
    try:
        path = open_clip.pretrained.download_pretrained(cfg)
    except Exception as err:  # hub/network errors come in many types; all mean "no weights here"
        raise ClipWeightsUnavailableError(model_name, tag, f"the download failed ({_shorten(err)})", switch) from err
    if not path or not os.path.isfile(path):
        raise ClipWeightsUnavailableError(model_name, tag, "the download returned no file", switch)
    return path, cfg


class _DropRandomInitNotice(logging.Filter):
    # open_clip logs "No pretrained weights loaded ... initialized randomly" on the root logger whenever it builds a
    # model without weights, also when this module loads them right after: misleading, so it is dropped here (a
    # random model gets this module's own, louder warning).
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def _empty_model(model_name: str) -> nn.Module:
    """An open_clip model with open_clip's default initialisation (weights are loaded by the caller)."""
    open_clip = _open_clip()
    notice = _DropRandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        return open_clip.create_model(model_name, pretrained=None, load_weights=False)
    finally:
        root.removeFilter(notice)


def _random_model(model_name: str) -> nn.Module:
    """open_clip's random initialisation under a fixed seed, leaving the caller's RNG state as it was."""
    with torch.random.fork_rng(devices=[]):  # the model is built on the CPU: only the CPU generator is used
        torch.manual_seed(RANDOM_INIT_SEED)
        return _empty_model(model_name)


def load_clip(backbone: str = "ViT-B-32", pretrained: Optional[str] = None,
              switch_hint: Optional[str] = None) -> ClipBundle:
    """Build a frozen, eval-mode open_clip model (fp32, CPU) and its tokenizer.

    Args:
        backbone: open_clip model name or OpenAI alias (see :func:`resolve_backbone`).
        pretrained: tag, local checkpoint path, ``"none"``, or None (see the module docstring for precedence).
            ``"none"`` gives the same random weights in every process (seed :data:`RANDOM_INIT_SEED`).
        switch_hint: how the caller's users set ``pretrained``, named in error messages: a flag
            (``"--pretrained"``), an option-file key (``"train.ddr_opt.pretrained"``), or None for the Python
            argument (``DDR(pretrained=...)``).

    Raises:
        InputError (a ValueError): unknown backbone / tag, or a checkpoint that does not fit the backbone
            (:class:`~ddr_restore.errors.CheckpointError`).
        MissingPathError (a FileNotFoundError): a checkpoint path that does not exist.
        ClipWeightsUnavailableError: a tag whose weights are not cached and cannot be fetched (offline,
            ``HF_HUB_OFFLINE=1``, hub unreachable); raised within a few seconds.
    """
    open_clip = _open_clip()
    value = resolve_pretrained(pretrained)
    model_name = resolve_backbone(backbone, value)
    is_random = value == "none"
    label = switch_hint or "pretrained="
    cfg: dict = {}
    model: Any
    if is_random:
        model = _random_model(model_name)
        source = "random"
        logger.warning(
            "\n" + "!" * 78 + "\n!! DDR: CLIP %s is RANDOMLY INITIALISED (pretrained='none'). DDR / Q_DDR values\n"
            "!! are MEANINGLESS as quality scores or training signal; use only for tests, timing, plumbing.\n"
            + "!" * 78,
            model_name,
        )
    elif _looks_like_path(value):
        path = Path(value).expanduser()
        if not path.is_file():
            raise MissingPathError(f"CLIP checkpoint not found: {path} (set by {label})")
        model = _empty_model(model_name)
        load_checkpoint_into(model, path, model_name)
        source = f"file:{path}"
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if value not in tags:
            raise InputError(
                f"unknown pretrained value {value!r} for backbone {model_name} (set by {label}): not an existing "
                f"file, not 'none', and not one of its open_clip tags: {', '.join(tags) or '(none)'}"
            )
        weights, cfg = _fetch_tag(model_name, value, switch_hint)
        model = _empty_model(model_name)
        load_checkpoint_into(model, weights, model_name)
        source = f"tag:{value}"
    freeze(model)
    try:
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as err:
        raise RuntimeError(f"cannot build the text tokenizer for {model_name}: {err}") from err
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    # A tag's own normalisation wins over the model config's (as open_clip.create_model merges them).
    pre = {**(getattr(model.visual, "preprocess_cfg", {}) or {}), **{k: cfg[k] for k in ("mean", "std") if k in cfg}}
    mean = tuple(float(v) for v in pre.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in pre.get("std", open_clip.OPENAI_DATASET_STD))
    return ClipBundle(model, tokenizer, model_name, source, is_random, size, mean, std)  # type: ignore[arg-type]
