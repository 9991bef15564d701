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

A tag that cannot be fetched (offline, ``HF_HUB_OFFLINE=1``) fails at once with instructions on providing a file.
"""
from __future__ import annotations

import difflib
import logging
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn

__all__ = [
    "ENV_CHECKPOINT",
    "ClipBundle",
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

    Returns ``"none"``, a path string, or a tag. Raises FileNotFoundError when the env var names a missing file.
    """
    if pretrained is not None:
        if not isinstance(pretrained, (str, os.PathLike)):
            raise TypeError(f"pretrained must be a tag, a checkpoint path, 'none' or None; got {pretrained!r}")
        value = os.fspath(pretrained).strip()
        if not value:
            raise ValueError("pretrained is an empty string; use a tag (e.g. 'openai'), a checkpoint path or 'none'")
        return "none" if _is_random(value) else value
    env = os.environ.get(ENV_CHECKPOINT, "").strip()
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"${ENV_CHECKPOINT} points to {env!r}, which is not a file")
        return env
    return "openai"


def resolve_backbone(backbone: str, pretrained: Optional[str] = None) -> str:
    """Map a backbone name to an open_clip model name.

    Accepts open_clip names (``"ViT-B-32"``, ``"RN50-quickgelu"``) and OpenAI-style aliases (``"ViT-B/32"``,
    ``"RN50"``), case-insensitively. A plain name whose ``-quickgelu`` variant exists means OpenAI's QuickGELU model
    (that is what OpenAI's weights, and the official DDR code, use), unless ``pretrained`` is an open_clip tag that
    was trained with standard GELU (e.g. ``"laion2b_s34b_b79k"``), in which case the plain config is used.

    Raises:
        ValueError: unknown backbone (the message lists a few valid names and close matches).
    """
    open_clip = _open_clip()
    if not isinstance(backbone, str) or not backbone.strip():
        raise ValueError(f"backbone must be a model name such as 'ViT-B-32', got {backbone!r}")
    known = open_clip.list_models()
    by_lower = {m.lower(): m for m in known}
    key = backbone.strip().replace("/", "-").lower()
    if key not in by_lower:
        close = difflib.get_close_matches(key, list(by_lower), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(by_lower[c] for c in close)}?" if close else ""
        raise ValueError(
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


def load_checkpoint_into(model: nn.Module, path: os.PathLike | str, model_name: str = "") -> None:
    """Load a local CLIP checkpoint into an open_clip ``model`` (in place, strict).

    Accepts a plain state dict in open_clip/OpenAI key layout (``torch.load(weights_only=True)``, optionally under
    ``"state_dict"`` and with ``module.`` prefixes; ``.safetensors`` too) or a TorchScript archive such as OpenAI's
    ``ViT-B-32.pt``. Raises ValueError naming the file when it does not fit.
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
            pickle.UnpicklingError, zipfile.BadZipFile) as err:
        msg = " ".join(str(err).split())[:400] or type(err).__name__
        raise ValueError(
            f"cannot load CLIP checkpoint {path} into backbone {model_name}: {msg}. Expected a state dict in "
            "open_clip/OpenAI key layout for this backbone, or OpenAI's TorchScript archive."
        ) from err


def _offline_instructions(model_name: str, tag: str) -> str:
    url = _OPENAI_URLS.get(model_name)
    where = f" OpenAI's original file for this backbone: {url}." if url and tag == "openai" else ""
    offline = " (HF_HUB_OFFLINE is set, so nothing is downloaded)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return (
        f"cannot obtain CLIP weights for backbone {model_name} with pretrained tag {tag!r}{offline}. "
        f"Provide a local checkpoint instead: DDR(pretrained='/path/to/checkpoint.pt') "
        f"(a state dict in open_clip/OpenAI layout, or OpenAI's TorchScript .pt), or set {ENV_CHECKPOINT}="
        f"/path/to/checkpoint.pt and leave pretrained unset (None).{where} Use pretrained='none' for random "
        "weights (plumbing/tests only: DDR values are then meaningless)."
    )


def load_clip(backbone: str = "ViT-B-32", pretrained: Optional[str] = None) -> ClipBundle:
    """Build a frozen, eval-mode open_clip model (fp32, CPU) and its tokenizer.

    Args:
        backbone: open_clip model name or OpenAI alias (see :func:`resolve_backbone`).
        pretrained: tag, local checkpoint path, ``"none"``, or None (see the module docstring for precedence).

    Raises:
        ValueError: unknown backbone / tag, or a checkpoint that does not fit the backbone.
        FileNotFoundError: a checkpoint path that does not exist.
        RuntimeError: a tag whose weights cannot be fetched (offline); the message says how to give a file.
    """
    open_clip = _open_clip()
    value = resolve_pretrained(pretrained)
    model_name = resolve_backbone(backbone, value)
    is_random = value == "none"
    model: Any
    if is_random:
        model = open_clip.create_model(model_name, pretrained=None, load_weights=False)
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
            raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
        model = open_clip.create_model(model_name, pretrained=None, load_weights=False)
        load_checkpoint_into(model, path, model_name)
        source = f"file:{path}"
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if value not in tags:
            raise ValueError(
                f"unknown pretrained value {value!r} for backbone {model_name}: not an existing file, not 'none', "
                f"and not one of its open_clip tags: {', '.join(tags) or '(none)'}"
            )
        try:
            model = open_clip.create_model(model_name, pretrained=value)
        except Exception as err:  # hub/network errors come in many types; all mean "no weights here"
            raise RuntimeError(_offline_instructions(model_name, value) + f" [cause: {str(err)[:300]}]") from err
        source = f"tag:{value}"
    freeze(model)
    try:
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as err:
        raise RuntimeError(f"cannot build the text tokenizer for {model_name}: {err}") from err
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return ClipBundle(model, tokenizer, model_name, source, is_random, size, mean, std)  # type: ignore[arg-type]
